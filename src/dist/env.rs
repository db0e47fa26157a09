//! Rank discovery: which process of a data-parallel job this is, from whatever launched it.
//!
//! Launchers describe the job in environment variables, each in its own dialect: torchrun (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), Open MPI's `mpirun`
//! (`OMPI_COMM_WORLD_*`), MPICH/Hydra (`PMI_RANK`, `PMI_SIZE`, `MPI_LOCALRANKID`, `MPI_LOCALNRANKS`) and Slurm's
//! `srun` (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_NTASKS_PER_NODE`/`SLURM_TASKS_PER_NODE`, the
//! first host of `SLURM_JOB_NODELIST` as master). [`discover`] reads all of them and returns one [`RankInfo`]
//! that says where each value came from. Nothing set means one rank.
//!
//! Precedence: explicit torchrun-style variables, then Open MPI, then MPICH, then Slurm. Slurm's variables are
//! also present when `mpirun` runs inside an allocation (they then describe the allocation, not the ranks), so
//! they are only used when no MPI launcher is; any other pair of launchers that disagrees on rank or world size
//! is an error naming both sets of variables.

use std::fmt;

/// The default rendezvous port (torchrun's).
pub const DEFAULT_PORT: u16 = 29500;

/// A value and the variable (or rule) it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub source: String,
}

impl<T> Sourced<T> {
    fn new(value: T, source: impl Into<String>) -> Sourced<T> {
        Sourced {
            value,
            source: source.into(),
        }
    }
}

/// This process's place in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankInfo {
    pub rank: Sourced<usize>,
    pub world_size: Sourced<usize>,
    /// Rank among the processes of this node (picks the GPU).
    pub local_rank: Sourced<usize>,
    pub local_world_size: Sourced<usize>,
    /// Where rank 0 listens.
    pub master_addr: Sourced<String>,
    pub master_port: Sourced<u16>,
    /// The launcher whose variables gave rank and world size ("none" for a lone process).
    pub launcher: &'static str,
}

impl RankInfo {
    /// A lone process: rank 0 of 1.
    pub fn single() -> RankInfo {
        RankInfo {
            rank: Sourced::new(0, "default"),
            world_size: Sourced::new(1, "default"),
            local_rank: Sourced::new(0, "default"),
            local_world_size: Sourced::new(1, "default"),
            master_addr: Sourced::new("127.0.0.1".into(), "default"),
            master_port: Sourced::new(DEFAULT_PORT, "default"),
            launcher: "none",
        }
    }

    pub fn is_distributed(&self) -> bool {
        self.world_size.value > 1
    }
}

impl fmt::Display for RankInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rank {} ({}) of {} ({}), local rank {} ({}) of {} ({}), master {} ({}):{} ({}), launcher {}",
            self.rank.value,
            self.rank.source,
            self.world_size.value,
            self.world_size.source,
            self.local_rank.value,
            self.local_rank.source,
            self.local_world_size.value,
            self.local_world_size.source,
            self.master_addr.value,
            self.master_addr.source,
            self.master_port.value,
            self.master_port.source,
            self.launcher
        )
    }
}

/// One launcher's variable names: rank, size, local rank, local size.
struct Dialect {
    launcher: &'static str,
    rank: &'static str,
    size: &'static str,
    local_rank: &'static str,
    local_size: &'static str,
}

const DIALECTS: [Dialect; 4] = [
    Dialect {
        launcher: "torchrun-style env",
        rank: "RANK",
        size: "WORLD_SIZE",
        local_rank: "LOCAL_RANK",
        local_size: "LOCAL_WORLD_SIZE",
    },
    Dialect {
        launcher: "Open MPI",
        rank: "OMPI_COMM_WORLD_RANK",
        size: "OMPI_COMM_WORLD_SIZE",
        local_rank: "OMPI_COMM_WORLD_LOCAL_RANK",
        local_size: "OMPI_COMM_WORLD_LOCAL_SIZE",
    },
    Dialect {
        launcher: "MPICH/Hydra",
        rank: "PMI_RANK",
        size: "PMI_SIZE",
        local_rank: "MPI_LOCALRANKID",
        local_size: "MPI_LOCALNRANKS",
    },
    Dialect {
        launcher: "Slurm",
        rank: "SLURM_PROCID",
        size: "SLURM_NTASKS",
        local_rank: "SLURM_LOCALID",
        local_size: "SLURM_NTASKS_PER_NODE",
    },
];

/// What one launcher's variables say.
struct Found {
    dialect: &'static Dialect,
    rank: usize,
    size: usize,
    local_rank: Option<usize>,
    local_size: Option<Sourced<usize>>,
}

fn parse_usize(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<usize>, String> {
    match env(name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a non-negative integer (set by the launcher or by hand?)")),
    }
}

fn read_dialect(env: &dyn Fn(&str) -> Option<String>, d: &'static Dialect) -> Result<Option<Found>, String> {
    let rank = parse_usize(env, d.rank)?;
    let size = parse_usize(env, d.size)?;
    let (rank, size) = match (rank, size) {
        (None, None) => return Ok(None),
        (Some(r), Some(s)) => (r, s),
        (Some(_), None) => {
            return Err(format!(
                "{} is set but {} is not: incomplete {} settings",
                d.rank, d.size, d.launcher
            ))
        }
        (None, Some(_)) => {
            return Err(format!(
                "{} is set but {} is not: incomplete {} settings",
                d.size, d.rank, d.launcher
            ))
        }
    };
    if size == 0 || rank >= size {
        return Err(format!("{}={rank} is outside {}={size}", d.rank, d.size));
    }
    let local_rank = parse_usize(env, d.local_rank)?;
    let mut local_size = parse_usize(env, d.local_size)?.map(|v| Sourced::new(v, d.local_size));
    if d.launcher == "Slurm" && local_size.is_none() {
        local_size = slurm_tasks_on_this_node(env)?;
    }
    Ok(Some(Found {
        dialect: d,
        rank,
        size,
        local_rank,
        local_size,
    }))
}

/// Tasks on this node from `SLURM_TASKS_PER_NODE` (e.g. `2(x3),1`) and `SLURM_NODEID`.
fn slurm_tasks_on_this_node(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Sourced<usize>>, String> {
    let (Some(spec), Some(node)) = (env("SLURM_TASKS_PER_NODE"), parse_usize(env, "SLURM_NODEID")?) else {
        return Ok(None);
    };
    let bad = || format!("SLURM_TASKS_PER_NODE={spec:?} is not of the form 2(x3),1");
    let mut at = 0;
    for part in spec.split(',') {
        let (n, reps) = match part.split_once("(x") {
            Some((n, r)) => (n, r.strip_suffix(')').ok_or_else(bad)?),
            None => (part, "1"),
        };
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        let reps: usize = reps.trim().parse().map_err(|_| bad())?;
        if node < at + reps {
            return Ok(Some(Sourced::new(n, "SLURM_TASKS_PER_NODE at SLURM_NODEID")));
        }
        at += reps;
    }
    Err(format!(
        "SLURM_NODEID={node} is beyond the {at} nodes of SLURM_TASKS_PER_NODE={spec:?}"
    ))
}

/// The first host of a Slurm node list: `node[01-04],x` → `node01`, `gpu[3,5-7]-ib` → `gpu3-ib`, `a,b` → `a`.
pub fn first_slurm_host(list: &str) -> Result<String, String> {
    let bad = |why: &str| format!("SLURM_JOB_NODELIST={list:?}: {why}");
    let mut out = String::new();
    let mut chars = list.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            ',' => break,
            '[' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some(']') => break,
                        Some(c) => inner.push(c),
                        None => return Err(bad("unclosed '['")),
                    }
                }
                let first = inner.split(',').next().unwrap_or("");
                let start = first.split('-').next().unwrap_or("").trim();
                if start.is_empty() || !start.chars().all(|c| c.is_ascii_digit()) {
                    return Err(bad("a bracket range must start with a number"));
                }
                out.push_str(start);
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Err(bad("no host name"));
    }
    Ok(out)
}

/// Reads the job layout from the process environment.
pub fn from_env() -> Result<RankInfo, String> {
    discover(&|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// Reads the job layout through `env` (a variable lookup; tests pass a map).
pub fn discover(env: &dyn Fn(&str) -> Option<String>) -> Result<RankInfo, String> {
    let mut found = Vec::new();
    for d in &DIALECTS {
        if let Some(f) = read_dialect(env, d)? {
            found.push(f);
        }
    }
    // Slurm around an MPI launcher describes the allocation, not the ranks.
    let mpi = found
        .iter()
        .any(|f| matches!(f.dialect.launcher, "Open MPI" | "MPICH/Hydra"));
    if mpi {
        found.retain(|f| f.dialect.launcher != "Slurm");
    }
    let Some(main) = found.first() else {
        return single_with_master(env);
    };
    for other in &found[1..] {
        if other.rank != main.rank || other.size != main.size {
            return Err(format!(
                "conflicting launch settings: {}={} {}={} ({}) but {}={} {}={} ({}); unset one of them",
                main.dialect.rank,
                main.rank,
                main.dialect.size,
                main.size,
                main.dialect.launcher,
                other.dialect.rank,
                other.rank,
                other.dialect.size,
                other.size,
                other.dialect.launcher
            ));
        }
    }
    let d = main.dialect;
    let (local_rank, local_world_size) = match (main.local_rank, main.local_size.clone()) {
        (Some(lr), Some(ls)) => (Sourced::new(lr, d.local_rank), ls),
        (Some(lr), None) if main.size == 1 => (Sourced::new(lr, d.local_rank), Sourced::new(1, "world size 1")),
        (None, None) => (
            Sourced::new(main.rank, format!("{} (one node assumed)", d.rank)),
            Sourced::new(main.size, format!("{} (one node assumed)", d.size)),
        ),
        (Some(_), None) => {
            return Err(format!(
                "{} is set but {} is not: incomplete {} settings",
                d.local_rank, d.local_size, d.launcher
            ))
        }
        (None, Some(_)) => {
            return Err(format!(
                "{} is set but {} is not: incomplete {} settings",
                d.local_size, d.local_rank, d.launcher
            ))
        }
    };
    if local_rank.value >= local_world_size.value || local_world_size.value > main.size {
        return Err(format!(
            "local rank {} ({}) must be below the local world size {} ({}), itself at most the world size {}",
            local_rank.value, local_rank.source, local_world_size.value, local_world_size.source, main.size
        ));
    }
    let single_node = local_world_size.value == main.size;
    let master_addr = master_addr(env, single_node, d)?;
    let master_port = master_port(env)?;
    Ok(RankInfo {
        rank: Sourced::new(main.rank, d.rank),
        world_size: Sourced::new(main.size, d.size),
        local_rank,
        local_world_size,
        master_addr,
        master_port,
        launcher: d.launcher,
    })
}

/// No launcher: one rank (the master variables are still read, so a typo there is still reported).
fn single_with_master(env: &dyn Fn(&str) -> Option<String>) -> Result<RankInfo, String> {
    let mut info = RankInfo::single();
    info.master_port = master_port(env)?;
    if let Some(a) = env("MASTER_ADDR") {
        info.master_addr = Sourced::new(a, "MASTER_ADDR");
    }
    Ok(info)
}

fn master_addr(
    env: &dyn Fn(&str) -> Option<String>,
    single_node: bool,
    d: &Dialect,
) -> Result<Sourced<String>, String> {
    if let Some(a) = env("MASTER_ADDR") {
        return Ok(Sourced::new(a, "MASTER_ADDR"));
    }
    for var in ["SLURM_JOB_NODELIST", "SLURM_NODELIST"] {
        if let Some(list) = env(var) {
            return Ok(Sourced::new(first_slurm_host(&list)?, format!("first host of {var}")));
        }
    }
    if single_node {
        return Ok(Sourced::new("127.0.0.1".into(), "default (all ranks on this node)"));
    }
    Err(format!(
        "the job spans several nodes ({} < {}) but MASTER_ADDR is not set: set it to the host of rank 0",
        d.local_size, d.size
    ))
}

fn master_port(env: &dyn Fn(&str) -> Option<String>) -> Result<Sourced<u16>, String> {
    match env("MASTER_PORT") {
        None => Ok(Sourced::new(DEFAULT_PORT, "default")),
        Some(v) => match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(Sourced::new(p, "MASTER_PORT")),
            _ => Err(format!("MASTER_PORT={v:?} is not a port number (1..65535)")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(vars: &[(&str, &str)]) -> Result<RankInfo, String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        discover(&|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_one_rank() {
        let info = run(&[]).unwrap();
        assert_eq!((info.rank.value, info.world_size.value), (0, 1));
        assert_eq!(info.master_port.value, 29500);
        assert!(!info.is_distributed());
    }

    #[test]
    fn torchrun_env() {
        let info = run(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "8"),
            ("MASTER_ADDR", "10.0.0.7"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap();
        assert_eq!(info.rank, Sourced::new(5, "RANK"));
        assert_eq!(info.world_size, Sourced::new(16, "WORLD_SIZE"));
        assert_eq!(info.local_rank, Sourced::new(1, "LOCAL_RANK"));
        assert_eq!(info.local_world_size, Sourced::new(8, "LOCAL_WORLD_SIZE"));
        assert_eq!(info.master_addr, Sourced::new("10.0.0.7".into(), "MASTER_ADDR"));
        assert_eq!(info.master_port, Sourced::new(1234, "MASTER_PORT"));
    }

    #[test]
    fn open_mpi_on_one_node_defaults_to_localhost() {
        let info = run(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ])
        .unwrap();
        assert_eq!(info.rank.source, "OMPI_COMM_WORLD_RANK");
        assert_eq!(info.local_rank.value, 1);
        assert_eq!(info.master_addr.value, "127.0.0.1");
        assert_eq!(info.launcher, "Open MPI");
    }

    #[test]
    fn open_mpi_across_nodes_needs_a_master() {
        let err = run(&[
            ("OMPI_COMM_WORLD_RANK", "9"),
            ("OMPI_COMM_WORLD_SIZE", "16"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "8"),
        ])
        .unwrap_err();
        assert!(err.contains("MASTER_ADDR"), "{err}");
    }

    #[test]
    fn mpich_hydra() {
        let info = run(&[
            ("PMI_RANK", "3"),
            ("PMI_SIZE", "4"),
            ("MPI_LOCALRANKID", "3"),
            ("MPI_LOCALNRANKS", "4"),
        ])
        .unwrap();
        assert_eq!((info.rank.value, info.world_size.value), (3, 4));
        assert_eq!(info.local_world_size.source, "MPI_LOCALNRANKS");
    }

    #[test]
    fn slurm_with_node_list_and_tasks_per_node() {
        let info = run(&[
            ("SLURM_PROCID", "6"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NODEID", "3"),
            ("SLURM_TASKS_PER_NODE", "2(x3),2"),
            ("SLURM_JOB_NODELIST", "node[01-04],x"),
        ])
        .unwrap();
        assert_eq!(info.rank, Sourced::new(6, "SLURM_PROCID"));
        assert_eq!(info.local_world_size.value, 2);
        assert_eq!(info.master_addr.value, "node01");
        assert_eq!(info.master_addr.source, "first host of SLURM_JOB_NODELIST");
        assert_eq!(info.launcher, "Slurm");
    }

    #[test]
    fn slurm_node_lists() {
        assert_eq!(first_slurm_host("node[01-04],x").unwrap(), "node01");
        assert_eq!(first_slurm_host("gpu[3,5-7]-ib,cpu1").unwrap(), "gpu3-ib");
        assert_eq!(first_slurm_host("a,b").unwrap(), "a");
        assert_eq!(first_slurm_host("single").unwrap(), "single");
        assert_eq!(first_slurm_host("r1-n[007-009]").unwrap(), "r1-n007");
        assert!(first_slurm_host("node[01-04").is_err());
        assert!(first_slurm_host("").is_err());
    }

    #[test]
    fn mpirun_inside_a_slurm_allocation_uses_mpi() {
        let info = run(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("SLURM_JOB_NODELIST", "n[1-2]"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "1"),
        ])
        .unwrap();
        assert_eq!(info.rank.value, 1);
        assert_eq!(info.master_addr.value, "n1");
    }

    #[test]
    fn conflicts_name_both_sets_of_variables() {
        let err = run(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
        ])
        .unwrap_err();
        assert!(
            err.contains("RANK=0") && err.contains("OMPI_COMM_WORLD_RANK=1"),
            "{err}"
        );
        // Agreeing launchers are fine.
        let ok = run(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
        ]);
        assert_eq!(ok.unwrap().rank.source, "RANK");
    }

    #[test]
    fn incomplete_and_bad_values_name_the_variable() {
        let err = run(&[("RANK", "1")]).unwrap_err();
        assert!(err.contains("RANK") && err.contains("WORLD_SIZE"), "{err}");
        let err = run(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(err.contains("RANK=2") && err.contains("WORLD_SIZE=2"), "{err}");
        let err = run(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(err.contains("RANK=\"x\""), "{err}");
        let err = run(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")]).unwrap_err();
        assert!(err.contains("LOCAL_WORLD_SIZE"), "{err}");
        let err = run(&[("MASTER_PORT", "99999")]).unwrap_err();
        assert!(err.contains("MASTER_PORT"), "{err}");
        let err = run(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "2"),
            ("LOCAL_WORLD_SIZE", "2"),
        ])
        .unwrap_err();
        assert!(err.contains("LOCAL_RANK"), "{err}");
    }

    #[test]
    fn torchrun_without_local_variables_assumes_one_node() {
        let info = run(&[("RANK", "1"), ("WORLD_SIZE", "3")]).unwrap();
        assert_eq!(info.local_rank.value, 1);
        assert_eq!(info.local_world_size.value, 3);
        assert!(info.local_rank.source.contains("one node assumed"));
    }
}
