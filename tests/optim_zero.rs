//! ZeRO-2 sharding of MuonAdamW (spec §2.4): on 2, 3 and 4 ranks (threads over the CPU ring), after two
//! steps every rank's optimizer state is exactly its slice (large AdamW tensors, rows along dim 0) or chunk
//! (Muon matrices, ceil(K/W) per rank in upstream group order) of the one-rank optimizer's state, and the
//! parameters are the one-rank parameters on every rank; likewise on a kernel device (the emulator), whose
//! sharded step runs the one-rank kernels on the owned rows and matrices.

use nanochat::backend::Backend;
use nanochat::config::ModelConfig;
use nanochat::device::{model::KernelModel, Schedule};
use nanochat::dist::env::discover;
use nanochat::dist::ring::connect;
use nanochat::dist::{Fingerprint, Solo, Timeouts};
use nanochat::model::ModelDevice;
use nanochat::optim::zero::ShardedMuonAdamW;
use nanochat::optim::{GroupKind, MuonAdamW, SetupArgs, StepSettings};
use nanochat::params::ParamTable;
use nanochat::safetensors::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config() -> ModelConfig {
    ModelConfig {
        sequence_len: 32,
        vocab_size: 100,
        n_layer: 3,
        n_head: 2,
        n_kv_head: 1,
        n_embd: 64,
        window_pattern: "SL".into(),
    }
}

const S: StepSettings = StepSettings {
    lr_multiplier: 0.7,
    muon_momentum: 0.9,
    muon_weight_decay: 0.1,
};

/// Gradients that are multiples of 1/1024 with small numerators: averaging W equal copies is exact, so
/// every rank sees exactly the one-rank gradient.
fn grads(n: usize, step: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 31 + step * 17) % 61) as f32 - 30.0) / 1024.0)
        .collect()
}

fn reference(table: &ParamTable, p0: &[f32]) -> (Vec<f32>, BTreeMap<String, Tensor>) {
    let mut opt = MuonAdamW::new(table, &SetupArgs::default());
    let mut p = p0.to_vec();
    for step in 0..2 {
        opt.step(&mut p, &grads(table.numel, step), &S);
    }
    (p, opt.state_tensors())
}

fn sharded_run(world: usize, p0: &[f32]) -> Vec<(Vec<f32>, BTreeMap<String, Tensor>)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let p0 = p0.to_vec();
            std::thread::spawn(move || {
                let vars: HashMap<&str, String> = [
                    ("RANK", r.to_string()),
                    ("WORLD_SIZE", world.to_string()),
                    ("MASTER_PORT", port.to_string()),
                ]
                .into_iter()
                .collect();
                let info = discover(&|k| vars.get(k).cloned()).unwrap();
                let t = Timeouts {
                    connect: Duration::from_secs(30),
                    op: Duration::from_secs(30),
                };
                let mut comm = connect(&info, &Fingerprint::new(), &t).unwrap();
                let table = ParamTable::new(&config());
                let mut opt = ShardedMuonAdamW::new(&table, &SetupArgs::default(), r, world);
                let mut p = p0;
                for step in 0..2 {
                    opt.step(&mut p, &grads(table.numel, step), &S, comm.as_mut()).unwrap();
                }
                (p, opt.state_tensors())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Every rank's parameters are the one-rank parameters, and its state exactly its slice (large AdamW
/// tensors whose rows divide) or chunk (Muon matrices, `ceil(K/W)` per rank in group order) of the one-rank
/// state.
fn check_shards(
    world: usize,
    p_ref: &[f32],
    s_ref: &BTreeMap<String, Tensor>,
    ranks: &[(Vec<f32>, BTreeMap<String, Tensor>)],
    what: &str,
) {
    let table = ParamTable::new(&config());
    let groups = MuonAdamW::new(&table, &SetupArgs::default()).groups().to_vec();
    let shape_of = |name: &str| table.by_name(name).unwrap().shape.clone();
    let mut muon_owner: HashMap<String, usize> = HashMap::new();
    for g in &groups {
        if let GroupKind::Muon { .. } = g.kind {
            let chunk = g.params.len().div_ceil(world);
            for (i, name) in g.params.iter().enumerate() {
                muon_owner.insert(name.clone(), i / chunk);
            }
        }
    }
    let mut sharded_seen = 0;
    for (r, (p, state)) in ranks.iter().enumerate() {
        assert!(
            p == p_ref,
            "{what}, world {world}: rank {r}'s parameters differ from the one-rank run"
        );
        assert_eq!(state["step"].to_i64(), vec![2]);
        assert_eq!(state["zero.world_size"].to_i64(), vec![world as i64]);
        for (name, t_ref) in s_ref {
            if name == "step" {
                continue;
            }
            let (kind, param) = name.split_once('.').unwrap();
            let got = state.get(name);
            if kind.starts_with("exp_avg") {
                let shape = shape_of(param);
                let numel: usize = shape.iter().product();
                let full = t_ref.to_f32();
                let got = got.unwrap_or_else(|| panic!("rank {r} lacks {name}"));
                if numel >= 1024 && shape[0] % world == 0 {
                    // Rows [r·S0/W, (r+1)·S0/W) only.
                    let per = numel / world;
                    assert_eq!(got.shape[0], shape[0] / world, "{name}");
                    assert!(
                        got.to_f32() == full[r * per..(r + 1) * per],
                        "{what}, world {world} rank {r}: {name}"
                    );
                    sharded_seen += 1;
                } else {
                    assert!(
                        got.to_f32() == full,
                        "{what}, world {world} rank {r}: replicated {name}"
                    );
                }
            } else if muon_owner[param] == r {
                let got = got.unwrap_or_else(|| panic!("rank {r} owns {param} but lacks {name}"));
                assert_eq!(got.shape, t_ref.shape);
                assert!(got.to_f32() == t_ref.to_f32(), "{what}, world {world} rank {r}: {name}");
            } else {
                assert!(got.is_none(), "rank {r} holds {name} of rank {}", muon_owner[param]);
            }
        }
    }
    // lm_head, wte and the value embeddings have 128 padded rows: sharded on 2 and 4 ranks, not on 3.
    let ve = table
        .params
        .iter()
        .filter(|p| p.name.starts_with("value_embeds."))
        .count();
    assert!(ve > 0);
    let expect = if world == 3 { 0 } else { 2 * (2 + ve) * world };
    assert_eq!(sharded_seen, expect, "{what}, world {world}: sharded AdamW tensors");
}

#[test]
fn each_rank_holds_exactly_its_slice_or_chunk_of_the_one_rank_state() {
    let table = ParamTable::new(&config());
    let mut p0 = vec![0.0; table.numel];
    table.init(&mut p0, 5);
    let (p_ref, s_ref) = reference(&table, &p0);
    for world in [2, 3, 4] {
        check_shards(world, &p_ref, &s_ref, &sharded_run(world, &p0), "cpu");
    }
}

/// The kernel device (emulator): one rank, then `world` ranks as threads over the CPU ring, each with its
/// optimizer sharded on its own emulated device; two steps of the same gradients.
fn emu_run(world: usize, p0: &[f32]) -> Vec<(Vec<f32>, BTreeMap<String, Tensor>)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let p0 = p0.to_vec();
            std::thread::spawn(move || {
                let dev = Backend::Emu.kernel_device(Schedule::Forward).unwrap();
                let mut model = KernelModel::new(dev, &config(), &p0, &SetupArgs::default()).unwrap();
                let mut boxed: Box<dyn ModelDevice> = if world == 1 {
                    Box::new(model)
                } else {
                    let vars: HashMap<&str, String> = [
                        ("RANK", r.to_string()),
                        ("WORLD_SIZE", world.to_string()),
                        ("MASTER_PORT", port.to_string()),
                    ]
                    .into_iter()
                    .collect();
                    let info = discover(&|k| vars.get(k).cloned()).unwrap();
                    let t = Timeouts {
                        connect: Duration::from_secs(60),
                        op: Duration::from_secs(120),
                    };
                    let comm = connect(&info, &Fingerprint::new(), &t).unwrap();
                    model = model
                        .data_parallel(&SetupArgs::default(), Arc::new(Mutex::new(comm)), r, world)
                        .unwrap();
                    Box::new(model)
                };
                let numel = boxed.table().numel;
                for step in 0..2 {
                    boxed.set_grads(&grads(numel, step)).unwrap();
                    boxed.step(&S).unwrap();
                }
                (boxed.params().unwrap(), boxed.optimizer_state().unwrap())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn the_kernel_device_shards_its_optimizer_as_the_cpu_reference_does() {
    let table = ParamTable::new(&config());
    let mut p0 = vec![0.0; table.numel];
    table.init(&mut p0, 5);
    let (p_ref, s_ref) = emu_run(1, &p0).remove(0);
    for world in [2, 3] {
        check_shards(world, &p_ref, &s_ref, &emu_run(world, &p0), "emu");
    }
}

#[test]
fn one_rank_sharded_equals_the_plain_optimizer_and_state_round_trips() {
    let table = ParamTable::new(&config());
    let mut p0 = vec![0.0; table.numel];
    table.init(&mut p0, 6);
    let (p_ref, s_ref) = reference(&table, &p0);
    let mut opt = ShardedMuonAdamW::new(&table, &SetupArgs::default(), 0, 1);
    let mut p = p0.clone();
    opt.step(&mut p, &grads(table.numel, 0), &S, &mut Solo).unwrap();
    let mid = opt.state_tensors();
    opt.step(&mut p, &grads(table.numel, 1), &S, &mut Solo).unwrap();
    assert!(p == p_ref);
    let state = opt.state_tensors();
    for (name, t) in &s_ref {
        assert!(state[name].data == t.data, "{name}");
    }
    // Resume from the saved mid state (a one-rank file of the plain optimizer loads too).
    let mut again = ShardedMuonAdamW::new(&table, &SetupArgs::default(), 0, 1);
    again.load_state_tensors(&mid).unwrap();
    let mut p2 = p0.clone();
    let mut plain = MuonAdamW::new(&table, &SetupArgs::default());
    plain.step(&mut p2, &grads(table.numel, 0), &S);
    again.step(&mut p2, &grads(table.numel, 1), &S, &mut Solo).unwrap();
    assert!(p2 == p_ref);
    let mut from_plain = ShardedMuonAdamW::new(&table, &SetupArgs::default(), 0, 1);
    from_plain.load_state_tensors(&plain.state_tensors()).unwrap();
}

#[test]
fn a_shard_of_another_world_size_or_rank_is_refused() {
    let table = ParamTable::new(&config());
    let two = ShardedMuonAdamW::new(&table, &SetupArgs::default(), 1, 2).state_tensors();
    let mut three = ShardedMuonAdamW::new(&table, &SetupArgs::default(), 1, 3);
    let e = three.load_state_tensors(&two).unwrap_err();
    assert!(e.contains("2 rank(s), this run has 3"), "{e}");
    let mut rank0 = ShardedMuonAdamW::new(&table, &SetupArgs::default(), 0, 2);
    let e = rank0.load_state_tensors(&two).unwrap_err();
    assert!(e.contains("belongs to rank 1"), "{e}");
    // The sharded state is smaller than the full state.
    let full = ShardedMuonAdamW::new(&table, &SetupArgs::default(), 0, 1).state_len();
    let half = ShardedMuonAdamW::new(&table, &SetupArgs::default(), 0, 2).state_len();
    assert!(half < full * 6 / 10, "{half} vs {full}");
}
