//! The SFT/midtraining conversation loader: a hand-checked case, a plain reference implementation of
//! upstream's `sft_data_generator_bos_bestfit` on random conversations (rows, padding, targets, resume), and
//! all-masked micro-batches (loss 0, gradient 0, counted) on the CPU reference and the kernel emulator.

use nanochat::backend::Backend;
use nanochat::config::ModelConfig;
use nanochat::cpu::model::CpuModel;
use nanochat::data::sft::{RenderedConversations, SftConfig, SftLoader, SftState, Supervision};
use nanochat::device::{model::KernelModel, Schedule};
use nanochat::model::ModelDevice;
use nanochat::optim::SetupArgs;
use nanochat::params::ParamTable;
use nanochat::rng::Rng;
use std::sync::Arc;

type Conv = (Vec<u32>, Vec<u8>);

fn loader(convs: &[Conv], cfg: SftConfig) -> SftLoader {
    SftLoader::new(Arc::new(RenderedConversations(convs.to_vec())), cfg).unwrap()
}

fn cfg(b: usize, t: usize, buffer: usize, sup: Supervision) -> SftConfig {
    SftConfig {
        buffer,
        ..SftConfig::new(b, t, 0, sup)
    }
}

/// Worked by hand from the spec: T = 6 (rows of 7), a buffer of 4, BOS = 0.
#[test]
fn hand_checked_rows_targets_and_state() {
    let convs: Vec<Conv> = vec![
        (vec![0, 10, 11, 12, 13], vec![0, 0, 1, 1, 1]),
        (vec![0, 20, 21], vec![0, 1, 1]),
        (vec![0, 30, 31, 32], vec![0, 0, 0, 0]),
        (vec![0, 40], vec![0, 1]),
    ];
    let mut sft = loader(&convs, cfg(1, 6, 4, Supervision::Masked));
    let mut mid = loader(&convs, cfg(1, 6, 4, Supervision::All));
    // Row 1: c0 (5 tokens), then c3 fills the last 2.
    let (s, m) = (sft.next_batch().unwrap(), mid.next_batch().unwrap());
    assert_eq!(s.inputs, [0, 10, 11, 12, 13, 0]);
    assert_eq!(s.targets, [-1, 11, 12, 13, -1, 40]);
    assert_eq!(m.targets, [10, 11, 12, 13, 0, 40]);
    // Row 2: c0 again (5), nothing of length <= 2 left: BOS padding, nothing predicted from position 4 on.
    let (s, m) = (sft.next_batch().unwrap(), mid.next_batch().unwrap());
    assert_eq!(s.inputs, [0, 10, 11, 12, 13, 0]);
    assert_eq!(s.targets, [-1, 11, 12, 13, -1, -1]);
    assert_eq!(m.targets, [10, 11, 12, 13, -1, -1]);
    // Row 3: c2 (4, all masked) then c1 (3).
    let s = sft.next_batch().unwrap();
    assert_eq!(s.inputs, [0, 30, 31, 32, 0, 20]);
    assert_eq!(s.targets, [-1, -1, -1, -1, 20, 21]);
    let state = sft.state();
    assert_eq!(
        state,
        SftState {
            rank: 0,
            world_size: 1,
            cursor: 0,
            epoch: 3,
            consumed: 5,
            batches: 3,
            buffer: vec![1, 2, 3]
        }
    );
    let st = sft.stats();
    assert_eq!(
        (st.rows, st.conversations, st.padding_tokens, st.all_masked_rows),
        (3, 5, 2, 0)
    );
    assert_eq!(st.supervised_targets, 4 + 3 + 2);
}

/// Upstream's generator written out plainly: a list buffer, a cursor, render = truncate to min(2048, T+1).
struct Reference {
    convs: Vec<Conv>,
    b: usize,
    t: usize,
    world: usize,
    buffer_size: usize,
    masked: bool,
    buffer: Vec<(usize, Conv)>,
    cursor: usize,
    epoch: u64,
    consumed: u64,
    it: u64,
    all_masked_rows: u64,
}

impl Reference {
    fn new(convs: &[Conv], b: usize, t: usize, rank: usize, world: usize, buffer_size: usize, masked: bool) -> Self {
        Reference {
            convs: convs.to_vec(),
            b,
            t,
            world,
            buffer_size,
            masked,
            buffer: vec![],
            cursor: rank,
            epoch: 1,
            consumed: rank as u64,
            it: 0,
            all_masked_rows: 0,
        }
    }

    fn next(&mut self) -> (Vec<u32>, Vec<i32>) {
        let cap = self.t + 1;
        let (mut inputs, mut targets) = (vec![], vec![]);
        for _ in 0..self.b {
            let mut row: Vec<u32> = vec![];
            let mut mrow: Vec<u8> = vec![];
            let mut content_len = cap;
            while row.len() < cap {
                while self.buffer.len() < self.buffer_size {
                    let (ids, mask) = &self.convs[self.cursor];
                    let n = ids.len().min(2048).min(cap);
                    self.buffer.push((self.cursor, (ids[..n].to_vec(), mask[..n].to_vec())));
                    self.cursor += self.world;
                    if self.cursor >= self.convs.len() {
                        self.cursor %= self.convs.len();
                        self.epoch += 1;
                    }
                }
                let remaining = cap - row.len();
                let (mut best_idx, mut best_len) = (None, 0);
                for (i, (_, (ids, _))) in self.buffer.iter().enumerate() {
                    if ids.len() <= remaining && ids.len() > best_len {
                        best_idx = Some(i);
                        best_len = ids.len();
                    }
                }
                match best_idx {
                    Some(i) => {
                        let (_, (ids, mask)) = self.buffer.remove(i);
                        row.extend(ids);
                        mrow.extend(mask);
                        self.consumed += self.world as u64;
                    }
                    None => {
                        content_len = row.len();
                        row.extend(std::iter::repeat_n(0, remaining));
                        mrow.extend(std::iter::repeat_n(0, remaining));
                    }
                }
            }
            let mut y: Vec<i32> = row[1..].iter().map(|&x| x as i32).collect();
            for j in 0..self.t {
                if self.masked && mrow[j + 1] == 0 {
                    y[j] = -1;
                }
            }
            if content_len < cap {
                for v in &mut y[content_len - 1..] {
                    *v = -1;
                }
            }
            if y.iter().all(|&v| v == -1) {
                self.all_masked_rows += 1;
            }
            inputs.extend_from_slice(&row[..self.t]);
            targets.extend(y);
        }
        self.it += 1;
        (inputs, targets)
    }
}

fn random_convs(rng: &mut Rng, n: usize, max_len: u64, p_all_masked: f64) -> Vec<Conv> {
    (0..n)
        .map(|_| {
            let len = 1 + rng.below(max_len) as usize;
            let all_masked = rng.next_f64() < p_all_masked;
            let ids: Vec<u32> = std::iter::once(0)
                .chain((1..len).map(|_| 1 + rng.below(50) as u32))
                .collect();
            let mask: Vec<u8> = (0..len)
                .map(|k| if k == 0 || all_masked { 0 } else { rng.below(2) as u8 })
                .collect();
            (ids, mask)
        })
        .collect()
}

#[test]
fn matches_the_reference_on_random_conversations_and_resumes_exactly() {
    let mut rng = Rng::new(2024);
    let mut all_masked_rows = 0;
    for case in 0..40 {
        let n = 1 + rng.below(60) as usize;
        let t = 4 + rng.below(40) as usize;
        let b = 1 + rng.below(4) as usize;
        let world = 1 + rng.below(3) as usize;
        let rank = rng.below(world as u64) as usize;
        let buffer = 1 + rng.below(12) as usize;
        let masked = rng.below(2) == 0;
        // Lengths up to 1.5 rows (some truncated), a third of the conversations all masked in some cases.
        let convs = random_convs(
            &mut rng,
            n.max(world),
            (t as u64 * 3 / 2).max(2),
            if case % 3 == 0 { 0.9 } else { 0.2 },
        );
        let sup = if masked { Supervision::Masked } else { Supervision::All };
        let c = SftConfig {
            rank,
            world_size: world,
            ..cfg(b, t, buffer, sup)
        };
        let mut ours = loader(&convs, c);
        let mut reference = Reference::new(&convs, b, t, rank, world, buffer, masked);
        let batches = 1 + rng.below(12) as usize;
        let resume_at = rng.below(batches as u64) as usize;
        let mut state = None;
        for k in 0..batches {
            if k == resume_at {
                state = Some(ours.state());
            }
            let got = ours.next_batch().unwrap();
            let (inputs, targets) = reference.next();
            assert_eq!(got.inputs, inputs, "case {case} batch {k}: inputs");
            assert_eq!(got.targets, targets, "case {case} batch {k}: targets");
            let st = ours.state();
            assert_eq!(
                (st.cursor, st.epoch, st.consumed, st.batches),
                (reference.cursor, reference.epoch, reference.consumed, reference.it),
                "case {case} batch {k}: position"
            );
            let buf: Vec<usize> = reference.buffer.iter().map(|(i, _)| *i).collect();
            assert_eq!(st.buffer, buf, "case {case} batch {k}: buffer");
        }
        assert_eq!(ours.stats().all_masked_rows, reference.all_masked_rows, "case {case}");
        assert_eq!(ours.stats().rows, (batches * b) as u64);
        all_masked_rows += reference.all_masked_rows;
        // A loader resumed from the state taken before batch `resume_at` yields the same batches.
        let mut again = SftLoader::resume(Arc::new(RenderedConversations(convs.clone())), c, &state.unwrap()).unwrap();
        let mut replay = loader(&convs, c);
        for _ in 0..resume_at {
            replay.next_batch().unwrap();
        }
        for k in resume_at..batches {
            assert_eq!(
                again.next_batch().unwrap(),
                replay.next_batch().unwrap(),
                "case {case}: resumed batch {k}"
            );
        }
    }
    assert!(all_masked_rows > 0, "the random cases should include all-masked rows");
}

#[test]
fn resume_refuses_a_foreign_state() {
    let convs = random_convs(&mut Rng::new(1), 5, 6, 0.0);
    let c = cfg(1, 8, 3, Supervision::Masked);
    let mut l = loader(&convs, c);
    l.next_batch().unwrap();
    let state = l.state();
    let other = SftConfig {
        rank: 1,
        world_size: 2,
        ..c
    };
    let src = Arc::new(RenderedConversations(convs.clone()));
    let err = SftLoader::resume(src.clone(), other, &state).err().unwrap();
    assert!(err.contains("rank 0 of 1"), "{err}");
    let bad = SftState {
        buffer: vec![7],
        ..state
    };
    let err = SftLoader::resume(src, c, &bad).err().unwrap();
    assert!(err.contains("beyond"), "{err}");
}

fn tiny_config() -> ModelConfig {
    ModelConfig {
        sequence_len: 16,
        vocab_size: 64,
        n_layer: 2,
        n_head: 2,
        n_kv_head: 2,
        n_embd: 64,
        window_pattern: "L".into(),
    }
}

/// An all-masked micro-batch through `model`: loss exactly 0, gradient exactly 0, nothing NaN; then a
/// supervised one still trains (non-zero gradient).
fn check_all_masked(model: &mut dyn ModelDevice, what: &str) {
    // Conversations whose masks are all 0 make rows without a supervised target.
    let convs: Vec<Conv> = (0..6).map(|k| (vec![0, 5 + k, 6, 7, 8], vec![0; 5])).collect();
    let mut l = loader(&convs, cfg(2, 16, 4, Supervision::Masked));
    let batch = l.next_batch().unwrap();
    assert!(batch.targets.iter().all(|&y| y == -1));
    assert_eq!(l.stats().all_masked_rows, 2);
    let loss = model
        .forward_backward(&batch.inputs, &batch.targets, 2, 16, 0.5)
        .unwrap();
    assert_eq!(loss, 0.0, "{what}: loss of an all-masked micro-batch");
    let grads = model.grads().unwrap();
    assert!(
        grads.iter().all(|&g| g == 0.0),
        "{what}: gradient of an all-masked micro-batch is not zero"
    );
    let mut targets = batch.targets.clone();
    targets[3] = 9;
    let loss = model.forward_backward(&batch.inputs, &targets, 2, 16, 0.5).unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{what}: {loss}");
    let grads = model.grads().unwrap();
    assert!(
        grads.iter().all(|g| g.is_finite()) && grads.iter().any(|&g| g != 0.0),
        "{what}"
    );
}

#[test]
fn all_masked_micro_batches_have_zero_loss_and_gradient() {
    let config = tiny_config();
    let table = ParamTable::new(&config);
    let mut params = vec![0.0; table.numel];
    table.init(&mut params, 3);
    let setup = SetupArgs {
        unembedding_lr: 0.004,
        embedding_lr: 0.2,
        matrix_lr: 0.02,
        weight_decay: 0.0,
        scalar_lr: 0.5,
    };
    let mut cpu = CpuModel::new(&config, params.clone(), &setup).unwrap();
    check_all_masked(&mut cpu, "cpu");
    let dev = Backend::Emu.kernel_device(Schedule::Forward).unwrap();
    let mut emu = KernelModel::new(dev, &config, &params, &setup).unwrap();
    check_all_masked(&mut emu, "emu");
}
