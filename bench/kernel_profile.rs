//! `kernel_bench --profile --device emu`: the emulator's counters for every kernel launch of a training step
//! (forward, backward and the MuonAdamW update, from the model's own launch sequence), at the inner shapes
//! of the d12 and d26 models with the token axis and the layer count scaled down, plus registers, shared
//! memory and sm_90 occupancy from the ptxas report. Needs the profiling build
//! (`--features emu-profile`).
//!
//! What is scaled: the micro-batch is 1 x `--profile-seq` tokens instead of 32 x 2048 and the model has
//! `--profile-layers` layers instead of 12 or 26; model width, heads, head dim, MLP width, vocabulary,
//! block sizes and tile shapes are those of the real step, so every warp-level request is one the real
//! step issues. Grids along the token axis are smaller, and grids of more than `--profile-blocks` blocks
//! run an even sample of them (first and last included): the per-request ratios (sectors per request,
//! bank conflicts, active lanes) do not depend on how many blocks run, the instruction counts are those of
//! the blocks that ran.

use nanochat::config::ModelConfig;
use nanochat::device::emu::EmuDevice;
use nanochat::device::model::KernelModel;
use nanochat::device::profile::{self, LaunchCounters, Profile, Resources, SiteCounters, Totals};
use nanochat::device::Schedule;
use nanochat::model::ModelDevice;
use nanochat::optim::{SetupArgs, StepSettings};
use nanochat::params::ParamTable;
use nanochat::rng::Rng;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What the profile run is asked for.
pub struct ProfileArgs {
    pub depths: Vec<usize>,
    pub seq: usize,
    pub layers: usize,
    pub max_blocks: usize,
    pub vocab: usize,
}

/// One kernel at one launch shape of one step, summed over its launches.
pub struct Row {
    pub kernel: String,
    pub shape: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dyn_smem: u32,
    pub launches: usize,
    pub blocks_run: u64,
    pub totals: Totals,
    pub instructions: BTreeMap<String, u64>,
    pub sites: Vec<SiteCounters>,
    pub res: Option<Resources>,
    pub blocks_per_sm: u32,
    pub occupancy: f64,
}

impl Row {
    fn threads(&self) -> u32 {
        self.block[0] * self.block[1] * self.block[2]
    }
    fn smem_bytes(&self) -> u32 {
        self.dyn_smem + self.res.map_or(0, |r| r.static_smem)
    }
}

/// The counters of one training step of the model of `depth`, scaled as the module says.
fn profile_step(depth: usize, a: &ProfileArgs) -> Result<Vec<LaunchCounters>, String> {
    let mut cfg = ModelConfig::from_depth(depth, 64, 128, a.seq, a.vocab, "SSSL");
    cfg.n_layer = a.layers;
    cfg.validate()?;
    let table = ParamTable::new(&cfg);
    let mut params = vec![0.0; table.numel];
    table.init(&mut params, 42);
    let dev = Box::new(EmuDevice::new(Schedule::Forward));
    let mut model = KernelModel::new(dev, &cfg, &params, &SetupArgs::default())?;
    drop(params);
    let (b, t) = (1, a.seq);
    let mut rng = Rng::new(7);
    let (ids, targets) = rng.token_batch(cfg.vocab_size, b * t);
    let settings = StepSettings::BENCH;
    eprintln!(
        "profiling d{depth}: n_embd {}, {} heads, vocab {}, {} layers, 1 x {t} tokens",
        cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_layer
    );
    let p = Profile::start(a.max_blocks)?;
    let run = model
        .forward_backward(&ids, &targets, b, t, 1.0)
        .and_then(|_| model.step(&settings));
    let launches = p.stop()?;
    run?;
    Ok(launches)
}

fn merge_sites(into: &mut Vec<SiteCounters>, from: &[SiteCounters]) {
    for s in from {
        let key = (s.op.clone(), s.location());
        match into.iter_mut().find(|x| (x.op.clone(), x.location()) == key) {
            Some(x) => {
                x.requests += s.requests;
                x.lanes += s.lanes;
                x.bytes += s.bytes;
                x.sectors += s.sectors;
                x.ideal_sectors += s.ideal_sectors;
                x.wavefronts += s.wavefronts;
                x.ideal_wavefronts += s.ideal_wavefronts;
                x.min_size = x.min_size.min(s.min_size);
                x.max_size = x.max_size.max(s.max_size);
            }
            None => into.push(s.clone()),
        }
    }
}

/// Groups the launches of each step by kernel and launch shape.
pub fn rows(args: &ProfileArgs, resources: &BTreeMap<String, Resources>) -> Result<Vec<Row>, String> {
    let mut out: Vec<Row> = Vec::new();
    for &depth in &args.depths {
        let shape = format!("d{depth}");
        for l in profile_step(depth, args)? {
            let i = match out
                .iter()
                .position(|r| r.shape == shape && r.kernel == l.kernel && r.grid == l.grid && r.block == l.block)
            {
                Some(i) => i,
                None => {
                    let res = resources.get(&l.kernel).copied();
                    out.push(Row {
                        kernel: l.kernel.clone(),
                        shape: shape.clone(),
                        grid: l.grid,
                        block: l.block,
                        dyn_smem: l.smem,
                        launches: 0,
                        blocks_run: 0,
                        totals: Totals::default(),
                        instructions: BTreeMap::new(),
                        sites: Vec::new(),
                        res,
                        blocks_per_sm: 0,
                        occupancy: 0.0,
                    });
                    out.len() - 1
                }
            };
            let r = &mut out[i];
            r.launches += 1;
            r.blocks_run += l.blocks_run;
            for (k, v) in &l.instructions {
                *r.instructions.entry(k.clone()).or_default() += v;
            }
            merge_sites(&mut r.sites, &l.sites);
        }
    }
    for r in &mut out {
        r.totals = Totals::of(&r.sites);
        let regs = r.res.map_or(0, |x| x.regs);
        (r.blocks_per_sm, r.occupancy) = profile::occupancy_sm90(r.threads(), regs, r.smem_bytes());
    }
    Ok(out)
}

/// The site whose global requests waste the most sectors, the one with the most extra shared-memory
/// wavefronts, and the one with the most idle lanes, each where it is more than 5% worse than ideal.
fn worst_sites(r: &Row) -> [Option<&SiteCounters>; 3] {
    let g = r
        .sites
        .iter()
        .filter(|s| s.is_global() && s.sectors * 20 > s.ideal_sectors * 21)
        .max_by_key(|s| s.sectors - s.ideal_sectors);
    let sh = r
        .sites
        .iter()
        .filter(|s| !s.is_global() && s.wavefronts * 20 > s.ideal_wavefronts * 21)
        .max_by_key(|s| s.wavefronts - s.ideal_wavefronts);
    let idle = |s: &SiteCounters| 32 * s.requests - s.lanes;
    let d = r
        .sites
        .iter()
        .filter(|s| s.lanes * 21 < 32 * s.requests * 20)
        .max_by_key(|s| idle(s));
    [g, sh, d]
}

fn instr(r: &Row, prefix: &str) -> u64 {
    r.instructions
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

fn dims(d: [u32; 3]) -> String {
    match d {
        [x, 1, 1] => format!("{x}"),
        [x, y, 1] => format!("{x}x{y}"),
        [x, y, z] => format!("{x}x{y}x{z}"),
    }
}

/// The Markdown tables: one row per kernel and launch shape, then the source lines behind the figures
/// that are worse than ideal.
pub fn markdown(rows: &[Row], args: &ProfileArgs) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Training step of the d{} models with 1 x {} tokens and {} layers (inner dimensions, block and tile \
         shapes as in the real step), at most {} blocks per launch. sect/req: 32-byte sectors per global \
         request, actual / ideal; bank: shared-memory wavefronts per conflict-free wavefront (1 = no \
         conflicts); lanes: active lanes per memory request; regs and smem (static + dynamic, bytes) from \
         ptx/resources.txt (sm_90a); occ: theoretical occupancy on sm_90 (resident warps / 64, blocks per SM \
         in brackets); instructions per launch, warp-level.\n",
        args.depths
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" and d"),
        args.seq,
        args.layers,
        args.max_blocks
    );
    o += "| kernel | step | grid | block | launches | sect/req | bank | lanes | regs | smem | occ | ld+st global | ld+st shared | mma | ldmatrix | cp.async | shfl | bar |\n";
    o += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        let t = &r.totals;
        let n = r.launches.max(1) as f64;
        let per = |x: u64| -> String {
            if x == 0 {
                "".into()
            } else {
                format!("{:.0}", x as f64 / n)
            }
        };
        let sect = if t.global_requests == 0 {
            "-".to_string()
        } else {
            format!("{:.2} / {:.2}", t.sectors_per_request(), t.ideal_sectors_per_request())
        };
        let bank = if t.shared_requests == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", t.bank_conflict_degree())
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {:.0}% ({}) | {} | {} | {} | {} | {} | {} | {} |",
            r.kernel,
            r.shape,
            dims(r.grid),
            dims(r.block),
            r.launches,
            sect,
            bank,
            t.active_lanes(),
            r.res.map_or("?".into(), |x| x.regs.to_string()),
            r.smem_bytes(),
            r.occupancy * 100.0,
            r.blocks_per_sm,
            per(instr(r, "ld.global") + instr(r, "st.global")),
            per(instr(r, "ld.shared") + instr(r, "st.shared")),
            per(instr(r, "mma")),
            per(instr(r, "ldmatrix")),
            per(instr(r, "cp.async")),
            per(instr(r, "__shfl")),
            per(instr(r, "bar.sync")),
        );
    }
    o += "\nSource lines behind the figures worse than ideal (per kernel, over all its launch shapes: the line \
          wasting the most sectors, the one with the most extra shared-memory wavefronts, the one with the most \
          idle lanes; each where it is more than 5% from ideal):\n\n";
    o += "| kernel | global: line, op, sect/req actual / ideal | shared: line, op, bank-conflict degree | divergence: line, op, active lanes (requests) |\n";
    o += "|---|---|---|---|\n";
    let mut kernels: Vec<&str> = rows.iter().map(|r| r.kernel.as_str()).collect();
    kernels.sort();
    kernels.dedup();
    for k in kernels {
        let mut merged = Row {
            kernel: k.into(),
            shape: String::new(),
            grid: [0; 3],
            block: [0; 3],
            dyn_smem: 0,
            launches: 0,
            blocks_run: 0,
            totals: Totals::default(),
            instructions: BTreeMap::new(),
            sites: Vec::new(),
            res: None,
            blocks_per_sm: 0,
            occupancy: 0.0,
        };
        for r in rows.iter().filter(|r| r.kernel == k) {
            merge_sites(&mut merged.sites, &r.sites);
        }
        let [g, s, dv] = worst_sites(&merged);
        if g.is_none() && s.is_none() && dv.is_none() {
            continue;
        }
        let gs = g.map_or("".into(), |s| {
            format!(
                "{} {} {:.2} / {:.2}",
                s.location(),
                s.op,
                s.sectors as f64 / s.requests.max(1) as f64,
                s.ideal_sectors as f64 / s.requests.max(1) as f64
            )
        });
        let ss = s.map_or("".into(), |s| {
            format!(
                "{} {} {:.2}",
                s.location(),
                s.op,
                s.wavefronts as f64 / s.ideal_wavefronts.max(1) as f64
            )
        });
        let ds = dv.map_or("".into(), |s| {
            format!(
                "{} {} {:.1} ({})",
                s.location(),
                s.op,
                s.lanes as f64 / s.requests.max(1) as f64,
                s.requests
            )
        });
        let _ = writeln!(o, "| {k} | {gs} | {ss} | {ds} |");
    }
    o
}

/// One JSON object per kernel and launch shape (the schema the step projection reads).
pub fn json(rows: &[Row], args: &ProfileArgs) -> serde_json::Value {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let t = &r.totals;
            serde_json::json!({
                "kernel": r.kernel,
                "shape": r.shape,
                "grid": r.grid,
                "block": r.block,
                "launches": r.launches,
                "blocks_run": r.blocks_run,
                "tokens": args.seq,
                "layers": args.layers,
                "sectors_per_request": t.sectors_per_request(),
                "ideal_sectors_per_request": t.ideal_sectors_per_request(),
                "global_requests": t.global_requests,
                "bank_conflict_degree": t.bank_conflict_degree(),
                "shared_requests": t.shared_requests,
                "active_lanes": t.active_lanes(),
                "regs": r.res.map_or(0, |x| x.regs),
                "smem_bytes": r.smem_bytes(),
                "dynamic_smem_bytes": r.dyn_smem,
                "blocks_per_sm": r.blocks_per_sm,
                "occupancy": r.occupancy,
                "instructions": r.instructions,
            })
        })
        .collect();
    serde_json::Value::Array(items)
}

const BEGIN: &str = "<!-- kernel counters: begin (generated by kernel_bench --profile) -->";
const END: &str = "<!-- kernel counters: end -->";

/// Replaces the generated part of `doc` (between the markers) with `table`, or appends it with the
/// markers when the document has none.
pub fn splice(doc: &str, table: &str) -> String {
    let block = format!("{BEGIN}\n{table}{END}");
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &doc[..b], block, &doc[e + END.len()..]),
        _ => format!("{doc}\n{block}\n"),
    }
}
