//! The parameter table: the single source of truth for every tensor of the model.
//!
//! For each tensor it holds the upstream name, shape, stored dtype, initialisation and optimizer group. The flat
//! layout is derived from it: tensor-major and layer-stacked, so all L copies of a matrix are contiguous as
//! `(L, out, in)` (Muon runs batched over the stack; elementwise optimizer kernels launch once per slot).
//! Gradients and optimizer state use the same layout. Checkpoints, safetensors import/export and optimizer
//! dispatch all read this table; nothing else knows offsets.
//!
//! Every slot starts on a multiple of [`SLOT_ALIGN`] elements (the gaps between slots are zero padding that
//! belongs to no parameter), so that each slot is 256-byte aligned in the bf16 copy and 512-byte aligned in
//! the fp32 master and gradients on a device, as fast GEMM kernels want their operands. Files (checkpoints,
//! safetensors) hold every parameter under its name, so the padding never reaches them.

use crate::config::{ModelConfig, SMEAR_CHANNELS, VE_GATE_CHANNELS};
use crate::rng::Rng;
use std::ops::Range;

/// Slot offsets in the flat buffer are multiples of this many elements (256 bytes of bf16).
pub const SLOT_ALIGN: usize = 128;

/// One stacked tensor family of the flat buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    Wte,
    LmHead,
    ValueEmbeds,
    AttnQ,
    AttnK,
    AttnV,
    AttnProj,
    VeGate,
    MlpFc,
    MlpProj,
    ResidLambdas,
    X0Lambdas,
    SmearGate,
    SmearLambda,
    BackoutLambda,
}

/// Optimizer group (spec §2.1). AdamW groups in upstream order, then Muon (grouped by shape at run time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    AdamLmHead,
    AdamEmbedding,
    AdamValueEmbeds,
    AdamResid,
    AdamX0,
    AdamSmear,
    Muon,
}

/// How a tensor is stored at bf16 precision on GPU: embeddings in the compute dtype, everything else fp32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreDtype {
    F32,
    Compute,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Normal {
        std: f32,
    },
    Uniform {
        lo: f32,
        hi: f32,
    },
    Zeros,
    Const(f32),
    /// Element i of n gets `from + (to - from) * i / max(n - 1, 1)`.
    Ramp {
        from: f32,
        to: f32,
    },
}

#[derive(Clone, Debug)]
pub struct SlotSpec {
    pub slot: Slot,
    /// Layer index of each stacked copy (one entry, 0, for unstacked tensors).
    pub layers: Vec<usize>,
    /// Shape of one copy; linear weights are (out, in).
    pub shape: Vec<usize>,
    /// Offset of the first copy in the flat buffer, in elements.
    pub offset: usize,
    pub init: Init,
    pub group: Group,
    pub dtype: StoreDtype,
}

impl SlotSpec {
    pub fn numel_each(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn count(&self) -> usize {
        self.layers.len()
    }
    pub fn numel(&self) -> usize {
        self.numel_each() * self.count()
    }
    /// The whole stack.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel()
    }
    /// Copy `k` of the stack.
    pub fn copy_range(&self, k: usize) -> Range<usize> {
        let n = self.numel_each();
        self.offset + k * n..self.offset + (k + 1) * n
    }
    /// A 2-D view (rows, cols) of one copy: 1-D tensors are one row.
    pub fn matrix_dims(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            s => panic!("slot {:?} has unsupported rank {}", self.slot, s.len()),
        }
    }
}

/// One upstream parameter: a named copy inside a slot.
#[derive(Clone, Debug)]
pub struct ParamRef {
    pub name: String,
    pub slot: Slot,
    /// Index of the copy inside the slot's stack.
    pub index: usize,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

#[derive(Clone, Debug)]
pub struct ParamTable {
    pub config: ModelConfig,
    pub slots: Vec<SlotSpec>,
    /// Every upstream parameter, in upstream module order.
    pub params: Vec<ParamRef>,
    /// Length of the flat buffer: the parameters plus the padding between slots.
    pub numel: usize,
}

impl ParamTable {
    pub fn new(cfg: &ModelConfig) -> ParamTable {
        let (c, l, vp) = (cfg.n_embd, cfg.n_layer, cfg.padded_vocab());
        let s = 3f32.sqrt() / (c as f32).sqrt();
        let all_layers: Vec<usize> = (0..l).collect();
        let ve_layers = cfg.ve_layers();
        use Group::*;
        use Slot::*;
        let spec = |slot, layers: &Vec<usize>, shape: Vec<usize>, init, group, dtype| SlotSpec {
            slot,
            layers: layers.clone(),
            shape,
            offset: 0,
            init,
            group,
            dtype,
        };
        let one = vec![0];
        let f32d = StoreDtype::F32;
        let mut slots = vec![
            spec(
                Wte,
                &one,
                vec![vp, c],
                Init::Normal { std: 0.8 },
                AdamEmbedding,
                StoreDtype::Compute,
            ),
            spec(LmHead, &one, vec![vp, c], Init::Normal { std: 0.001 }, AdamLmHead, f32d),
            spec(
                ValueEmbeds,
                &ve_layers,
                vec![vp, cfg.kv_dim()],
                Init::Uniform { lo: -s, hi: s },
                AdamValueEmbeds,
                StoreDtype::Compute,
            ),
            spec(
                AttnQ,
                &all_layers,
                vec![cfg.q_dim(), c],
                Init::Uniform { lo: -s, hi: s },
                Muon,
                f32d,
            ),
            spec(
                AttnK,
                &all_layers,
                vec![cfg.kv_dim(), c],
                Init::Uniform { lo: -s, hi: s },
                Muon,
                f32d,
            ),
            spec(
                AttnV,
                &all_layers,
                vec![cfg.kv_dim(), c],
                Init::Uniform { lo: -s, hi: s },
                Muon,
                f32d,
            ),
            spec(AttnProj, &all_layers, vec![c, cfg.q_dim()], Init::Zeros, Muon, f32d),
            spec(
                VeGate,
                &ve_layers,
                vec![cfg.n_kv_head, VE_GATE_CHANNELS],
                Init::Uniform { lo: 0.0, hi: 0.02 },
                Muon,
                f32d,
            ),
            spec(
                MlpFc,
                &all_layers,
                vec![cfg.mlp_dim(), c],
                Init::Uniform {
                    lo: -0.4 * s,
                    hi: 0.4 * s,
                },
                Muon,
                f32d,
            ),
            spec(MlpProj, &all_layers, vec![c, cfg.mlp_dim()], Init::Zeros, Muon, f32d),
            spec(
                ResidLambdas,
                &one,
                vec![l],
                Init::Ramp { from: 1.15, to: 1.05 },
                AdamResid,
                f32d,
            ),
            spec(
                X0Lambdas,
                &one,
                vec![l],
                Init::Ramp { from: 0.20, to: 0.05 },
                AdamX0,
                f32d,
            ),
            spec(
                SmearGate,
                &one,
                vec![1, SMEAR_CHANNELS],
                Init::Uniform { lo: 0.0, hi: 0.02 },
                AdamSmear,
                f32d,
            ),
            spec(SmearLambda, &one, vec![1], Init::Zeros, AdamSmear, f32d),
            spec(BackoutLambda, &one, vec![1], Init::Const(0.2), AdamSmear, f32d),
        ];
        let mut offset = 0usize;
        for s in slots.iter_mut() {
            offset = offset.next_multiple_of(SLOT_ALIGN);
            s.offset = offset;
            offset += s.numel();
        }
        let mut table = ParamTable {
            config: cfg.clone(),
            slots,
            params: Vec::new(),
            numel: offset,
        };
        table.params = table.upstream_order();
        table
    }

    fn upstream_order(&self) -> Vec<ParamRef> {
        let mut out = Vec::new();
        let mut push = |name: String, slot: Slot, index: usize| {
            let spec = self.slot(slot);
            out.push(ParamRef {
                name,
                slot,
                index,
                shape: spec.shape.clone(),
                range: spec.copy_range(index),
            });
        };
        push("transformer.wte.weight".into(), Slot::Wte, 0);
        for i in 0..self.config.n_layer {
            let h = format!("transformer.h.{i}");
            push(format!("{h}.attn.c_q.weight"), Slot::AttnQ, i);
            push(format!("{h}.attn.c_k.weight"), Slot::AttnK, i);
            push(format!("{h}.attn.c_v.weight"), Slot::AttnV, i);
            push(format!("{h}.attn.c_proj.weight"), Slot::AttnProj, i);
            if let Some(k) = self.config.ve_index(i) {
                push(format!("{h}.attn.ve_gate.weight"), Slot::VeGate, k);
            }
            push(format!("{h}.mlp.c_fc.weight"), Slot::MlpFc, i);
            push(format!("{h}.mlp.c_proj.weight"), Slot::MlpProj, i);
        }
        push("lm_head.weight".into(), Slot::LmHead, 0);
        for (k, layer) in self.config.ve_layers().into_iter().enumerate() {
            push(format!("value_embeds.{layer}.weight"), Slot::ValueEmbeds, k);
        }
        push("resid_lambdas".into(), Slot::ResidLambdas, 0);
        push("x0_lambdas".into(), Slot::X0Lambdas, 0);
        push("smear_gate.weight".into(), Slot::SmearGate, 0);
        push("smear_lambda".into(), Slot::SmearLambda, 0);
        push("backout_lambda".into(), Slot::BackoutLambda, 0);
        out
    }

    pub fn slot(&self, slot: Slot) -> &SlotSpec {
        self.slots
            .iter()
            .find(|s| s.slot == slot)
            .expect("every Slot variant is in the table")
    }

    /// Range of copy `index` of `slot` (e.g. layer i's c_q, or the k-th value embedding).
    pub fn range(&self, slot: Slot, index: usize) -> Range<usize> {
        self.slot(slot).copy_range(index)
    }

    pub fn by_name(&self, name: &str) -> Option<&ParamRef> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Fills `buf` (len `numel`, padding zeroed) per the init rules of spec §1.6, one independent RNG stream per copy.
    pub fn init(&self, buf: &mut [f32], seed: u64) {
        assert_eq!(buf.len(), self.numel, "parameter buffer has the wrong length");
        buf.fill(0.0); // the padding between slots
        for (si, spec) in self.slots.iter().enumerate() {
            for k in 0..spec.count() {
                let dst = &mut buf[spec.copy_range(k)];
                let mut rng = Rng::stream(seed, (si as u64) << 32 | k as u64);
                let n = dst.len();
                match spec.init {
                    Init::Normal { std } => dst.iter_mut().for_each(|x| *x = std * rng.normal()),
                    Init::Uniform { lo, hi } => dst.iter_mut().for_each(|x| *x = rng.uniform(lo, hi)),
                    Init::Zeros => dst.fill(0.0),
                    Init::Const(v) => dst.fill(v),
                    Init::Ramp { from, to } => {
                        let denom = (n.max(2) - 1) as f32;
                        for (i, x) in dst.iter_mut().enumerate() {
                            *x = from + (to - from) * i as f32 / denom;
                        }
                    }
                }
            }
        }
    }

    /// Distinct Muon shapes, ascending (upstream sorts its Muon groups by shape tuple).
    pub fn muon_shapes(&self) -> Vec<(usize, usize)> {
        let mut shapes: Vec<(usize, usize)> = self
            .slots
            .iter()
            .filter(|s| s.group == Group::Muon && s.count() > 0)
            .map(|s| s.matrix_dims())
            .collect();
        shapes.sort();
        shapes.dedup();
        shapes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(n_layer: usize, n_kv_head: usize, vocab: usize) -> ModelConfig {
        ModelConfig {
            sequence_len: 256,
            vocab_size: vocab,
            n_layer,
            n_head: 2,
            n_kv_head,
            n_embd: 128,
            window_pattern: "SSSL".into(),
        }
    }

    #[test]
    fn layout_is_packed_up_to_alignment_and_matches_counts() {
        for cfg in [small(4, 2, 512), small(3, 1, 700), small(1, 1, 100)] {
            let t = ParamTable::new(&cfg);
            let mut end = 0usize;
            for s in &t.slots {
                assert_eq!(s.offset, end.next_multiple_of(SLOT_ALIGN), "{:?}", s.slot);
                end = s.offset + s.numel();
            }
            assert_eq!(t.numel, end);
            // Every parameter element belongs to exactly one upstream parameter; the rest is padding.
            let mut covered = vec![0u8; t.numel];
            for p in &t.params {
                assert_eq!(p.range.len(), p.shape.iter().product::<usize>(), "{}", p.name);
                covered[p.range.clone()].iter_mut().for_each(|c| *c += 1);
            }
            assert!(covered.iter().all(|&c| c <= 1));
            assert_eq!(covered.iter().filter(|&&c| c == 1).count(), cfg.counts().total);
            assert!(t.numel - cfg.counts().total < SLOT_ALIGN * t.slots.len());
        }
    }

    #[test]
    fn every_matrix_slot_is_256_byte_aligned_at_every_depth() {
        for depth in 4..=32 {
            let cfg = ModelConfig::from_depth(depth, 64, 128, 2048, 32768, "SSSL");
            let t = ParamTable::new(&cfg);
            for s in &t.slots {
                // bf16 copy, fp32 master and fp32 gradients: the same element offset.
                for bytes in [2, 4] {
                    assert_eq!(
                        s.offset * bytes % 256,
                        0,
                        "d{depth} {:?} at element {}",
                        s.slot,
                        s.offset
                    );
                }
                // The matrices the GEMMs read copy by copy (every rank-2 slot but the tiny gates, which
                // only elementwise kernels read) stay aligned in every copy of the stack.
                if s.shape.len() == 2 && !matches!(s.slot, Slot::VeGate | Slot::SmearGate) {
                    for k in 0..s.count() {
                        let at = s.copy_range(k).start;
                        assert_eq!(at * 2 % 256, 0, "d{depth} {:?} copy {k} at element {at}", s.slot);
                    }
                }
            }
        }
    }

    #[test]
    fn names_and_shapes_follow_upstream() {
        let t = ParamTable::new(&small(3, 1, 700));
        let names: Vec<&str> = t.params.iter().map(|p| p.name.as_str()).collect();
        assert!(names.contains(&"transformer.h.0.attn.ve_gate.weight"));
        assert!(!names.contains(&"transformer.h.1.attn.ve_gate.weight"));
        assert!(names.contains(&"value_embeds.2.weight"));
        assert_eq!(t.by_name("transformer.wte.weight").unwrap().shape, vec![704, 128]);
        assert_eq!(
            t.by_name("transformer.h.2.attn.c_k.weight").unwrap().shape,
            vec![64, 128]
        );
        assert_eq!(
            t.by_name("transformer.h.2.attn.ve_gate.weight").unwrap().shape,
            vec![1, 12]
        );
        assert_eq!(t.by_name("smear_gate.weight").unwrap().shape, vec![1, 24]);
        // GQA gives separate Muon shapes for q and k/v.
        assert_eq!(
            t.muon_shapes(),
            vec![(1, 12), (64, 128), (128, 128), (128, 512), (512, 128)]
        );
    }

    #[test]
    fn init_follows_spec() {
        let cfg = small(4, 2, 512);
        let t = ParamTable::new(&cfg);
        let mut buf = vec![f32::NAN; t.numel];
        t.init(&mut buf, 42);
        assert!(buf.iter().all(|x| x.is_finite()));
        let get = |slot, k| &buf[t.range(slot, k)];
        assert_eq!(
            get(Slot::ResidLambdas, 0),
            &[1.15, 1.15 - 0.1 / 3.0, 1.15 - 0.2 / 3.0, 1.05][..]
        );
        assert!((get(Slot::X0Lambdas, 0)[3] - 0.05).abs() < 1e-7);
        assert_eq!(get(Slot::BackoutLambda, 0), &[0.2]);
        assert_eq!(get(Slot::SmearLambda, 0), &[0.0]);
        assert!(get(Slot::AttnProj, 2).iter().all(|&x| x == 0.0));
        let s = 3f32.sqrt() / 128f32.sqrt();
        assert!(get(Slot::MlpFc, 1).iter().all(|&x| x.abs() <= 0.4 * s));
        assert!(get(Slot::VeGate, 1).iter().all(|&x| (0.0..0.02).contains(&x)));
        let wte = get(Slot::Wte, 0);
        let std = (wte.iter().map(|x| x * x).sum::<f32>() / wte.len() as f32).sqrt();
        assert!((std - 0.8).abs() < 0.02, "wte std {std}");
        let mut again = vec![0.0; t.numel];
        t.init(&mut again, 42);
        assert_eq!(buf, again);
    }
}
