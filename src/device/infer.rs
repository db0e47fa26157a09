//! KV-cached inference on a kernel device: [`KernelModel`] as an [`InferModel`], the device twin of
//! [`crate::cpu::infer`] (spec §1.5), op for op.
//!
//! The cache ([`DeviceCache`]) keeps, per layer, bf16 keys and values `(rows, t_max, hkv, d)` (GQA heads,
//! every position: no ring buffer for the sliding-window layers, as upstream), each row's length (rows hold
//! sequences of different lengths), and each row's normalized embedding of its last token for the smear of
//! its next one-token step. A step feeds any subset of the rows, each its own number of tokens:
//! - embedding, norm; smear within each chunk (its first position not smeared, as the CPU reference) or,
//!   for a one-token chunk, from the row's cached previous embedding (`decode_smear`);
//! - per layer: residual mix + norm, the q/k/v GEMMs, the value-embedding gate, RoPE + QK-norm at each row's
//!   own positions writing k and v into the cache (`kv_rope_append`), then attention: a chunk of several
//!   tokens on an empty row (a prefill) runs the flash-attention forward on its row's cache slice; every
//!   other token runs the flash-decoding kernel (`decode_attention`, split over the key axis and combined
//!   when the context is long); the projection, the MLP;
//! - backout, final norm and the LM head on each row's last position only; the bf16 logits are copied to
//!   the host and softcapped there.
//!
//! Sampling runs on the host (the engine's [`crate::engine::sample_next_token`]): it needs the logits of
//! every row anyway for the tool state machine and the seeded RNG shared with the CPU reference, and
//! the copy is `rows · vocab` bf16 per step (64 KiB per row at a 32768 vocabulary, a few microseconds over
//! PCIe), plus a one-pass top-k on one CPU core (about 50 µs per row at k = 50; docs/engine.md).
//!
//! [`Inference`] is the model every program opens for inference
//! ([`crate::backend::Backend::open_inference`]): the CPU reference or [`KernelModel::for_inference`];
//! [`infer_view`] generates with a model in training on its own device.

use half::bf16;

use super::kernels::attention::{attention_forward, AttnShape};
use super::kernels::decode::{self, StepShape, StepTokens, TokenTable};
use super::kernels::elementwise::relu2_forward;
use super::kernels::embedding;
use super::kernels::model_ops;
use super::kernels::rmsnorm;
use super::memory::{gate_shape, BF16, F32};
use super::model::KernelModel;
use super::{Buffer, DevPtr, Device, Dtype, Gemm, Result};
use crate::config::{softcap, ModelConfig, SMEAR_CHANNELS};
use crate::cpu::infer::{CpuInfer, KvCache};
use crate::engine::InferModel;
use crate::params::Slot;

/// The KV cache of a kernel device and the step scratch (which grows to the largest step seen).
pub struct DeviceCache {
    pub rows: usize,
    pub t_max: usize,
    /// Each row's length.
    lens: Vec<usize>,
    bufs: CacheBufs,
    scratch: Option<Scratch>,
}

struct CacheBufs {
    /// (n_layer, rows, t_max, kv_dim) bf16.
    k: Buffer,
    v: Buffer,
    /// (rows, C) bf16: the normalized embedding of each row's last token (zero for an empty row).
    prev: Buffer,
}

/// Scratch of a step of up to `n` tokens.
struct Scratch {
    n: usize,
    /// The step's token table ([`StepTokens::table`]).
    tok: Buffer,
    ids: Buffer,
    emb: Buffer,
    xe: Buffer,
    x0: Buffer,
    res: [Buffer; 2],
    xmid: Buffer,
    xa: Buffer,
    xn: Buffer,
    xb: Buffer,
    rstd: Buffer,
    qk: Buffer,
    v: Buffer,
    q: Buffer,
    y: Buffer,
    ve: Buffer,
    gate: Buffer,
    h: Buffer,
    act: Buffer,
    lse: Buffer,
    last: Buffer,
    last_mid: Buffer,
    xf: Buffer,
    xnf: Buffer,
    logits: Buffer,
    /// Split partials of the decode kernel and the split count they fit.
    part: Option<(Buffer, Buffer, usize)>,
}

impl Scratch {
    fn new(dev: &dyn Device, cfg: &ModelConfig, n: usize) -> Result<Scratch> {
        let (c, qd, kvd, md, h) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.mlp_dim(), cfg.n_head);
        let bf = |w: usize| dev.alloc(n * w * BF16);
        Ok(Scratch {
            n,
            tok: dev.alloc(7 * n * 4)?,
            ids: dev.alloc(embedding::ids_bytes(n))?,
            emb: bf(c)?,
            xe: bf(c)?,
            x0: bf(c)?,
            res: [bf(c)?, bf(c)?],
            xmid: bf(c)?,
            xa: bf(c)?,
            xn: bf(c)?,
            xb: bf(c)?,
            rstd: dev.alloc(n * F32)?,
            qk: bf(qd + kvd)?,
            v: bf(kvd)?,
            q: bf(qd)?,
            y: bf(qd)?,
            ve: bf(kvd)?,
            gate: dev.alloc(n * cfg.n_kv_head * F32)?,
            h: bf(md)?,
            act: bf(md)?,
            lse: dev.alloc(h * n * F32)?,
            last: bf(c)?,
            last_mid: bf(c)?,
            xf: bf(c)?,
            xnf: bf(c)?,
            logits: dev.alloc(n * cfg.padded_vocab() * BF16)?,
            part: None,
        })
    }
}

impl DeviceCache {
    /// Each row's length.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Device bytes of the keys and values.
    pub fn kv_bytes(cfg: &ModelConfig, rows: usize, t_max: usize) -> usize {
        2 * cfg.n_layer * rows * t_max * cfg.kv_dim() * BF16
    }

    fn check_row(&self, row: usize) -> std::result::Result<(), String> {
        if row < self.rows {
            Ok(())
        } else {
            Err(format!("row {row} is outside the cache's {} rows", self.rows))
        }
    }
}

impl KernelModel {
    #[allow(clippy::too_many_arguments)]
    fn gemm_into(
        &self,
        out: DevPtr,
        ldc: usize,
        x: DevPtr,
        lda: usize,
        w: DevPtr,
        n: usize,
        m: usize,
        k: usize,
        beta: f32,
    ) -> Result<()> {
        let g = Gemm::new(n, m, k, x, w, out, Dtype::Bf16).transpose_b();
        self.dev.gemm(&Gemm { lda, ldc, beta, ..g })
    }

    fn alloc_cache(&self, rows: usize, t_max: usize) -> Result<DeviceCache> {
        let dev = self.dev.as_ref();
        let cfg = &self.config;
        let kv = DeviceCache::kv_bytes(cfg, rows, t_max) / 2;
        let bufs = CacheBufs {
            k: dev.alloc(kv.max(BF16))?,
            v: dev.alloc(kv.max(BF16))?,
            prev: dev.alloc((rows * cfg.n_embd * BF16).max(BF16))?,
        };
        dev.zero(bufs.prev.ptr(), rows * cfg.n_embd * BF16)?;
        Ok(DeviceCache {
            rows,
            t_max,
            lens: vec![0; rows],
            bufs,
            scratch: None,
        })
    }

    fn copy_row_dev(&self, cache: &mut DeviceCache, src: usize, dst: usize) -> Result<()> {
        let dev = self.dev.as_ref();
        let cfg = &self.config;
        let (kvd, c, len) = (cfg.kv_dim(), cfg.n_embd, cache.lens[src]);
        let b = &cache.bufs;
        if src != dst {
            for l in 0..cfg.n_layer {
                let at = |r: usize| (l * cache.rows + r) * cache.t_max * kvd;
                dev.copy(b.k.at::<bf16>(at(dst)), b.k.at::<bf16>(at(src)), len * kvd * BF16)?;
                dev.copy(b.v.at::<bf16>(at(dst)), b.v.at::<bf16>(at(src)), len * kvd * BF16)?;
            }
            dev.copy(b.prev.at::<bf16>(dst * c), b.prev.at::<bf16>(src * c), c * BF16)?;
        }
        cache.lens[dst] = len;
        Ok(())
    }

    /// One cached step over `rows` (distinct, checked), `lens[i]` tokens each: each row's last softcapped
    /// logits.
    fn cached_step(&self, cache: &mut DeviceCache, rows: &[usize], lens: &[usize], ids: &[u32]) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let dev = self.dev.as_ref();
        let n = ids.len();
        let (c, nh, nkv, d, vp, v) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim(),
            cfg.padded_vocab(),
            cfg.vocab_size,
        );
        let (qd, kvd, md) = (nh * d, nkv * d, cfg.mlp_dim());
        let row_len: Vec<usize> = rows.iter().map(|&r| cache.lens[r]).collect();
        let tok = StepTokens::new(rows, lens, &row_len);
        // Chunks of several tokens on empty rows are prefills: flash attention on their cache slice. The
        // other tokens go through the decode kernel.
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |o, &t| {
                *o += t;
                Some(*o - t)
            })
            .collect();
        let is_prefill = |i: usize| lens[i] > 1 && row_len[i] == 0;
        let sel: Vec<usize> = (0..rows.len())
            .filter(|&i| !is_prefill(i))
            .flat_map(|i| starts[i]..starts[i] + lens[i])
            .collect();
        if cache.scratch.as_ref().is_none_or(|s| s.n < n) {
            cache.scratch = None;
            cache.scratch = Some(Scratch::new(dev, cfg, n.max(8))?);
        }
        let bufs = &cache.bufs;
        let sc = cache.scratch.as_mut().expect("allocated");
        dev.upload(sc.tok.ptr(), bytemuck::cast_slice(&tok.table(&sel)))?;
        let table = TokenTable::at(sc.tok.ptr(), n, sel.len());
        let ids_dev = embedding::upload_ids(dev, sc.ids.ptr(), ids, vp)?.ids;
        let (cache_rows, t_max) = (cache.rows, cache.t_max);

        // Embedding, norm, smear.
        embedding::embedding_forward(dev, sc.emb.ptr(), ids_dev, self.weight(Slot::Wte, 0), ids, vp, c)?;
        rmsnorm::rmsnorm_forward(dev, sc.xe.ptr(), sc.rstd.ptr(), sc.emb.ptr(), n, c)?;
        let (gate_w, lambda) = (self.master(Slot::SmearGate, 0), self.master(Slot::SmearLambda, 0));
        decode::decode_smear(
            dev,
            sc.x0.ptr(),
            bufs.prev.ptr(),
            sc.xe.ptr(),
            gate_w,
            lambda,
            &table,
            &tok,
            cache_rows,
            c,
            SMEAR_CHANNELS,
        )?;

        let layer_kv = cache_rows * t_max * kvd;
        let mut cur = sc.x0.ptr();
        for i in 0..cfg.n_layer {
            let next = sc.res[i % 2].ptr();
            let lambdas = self.lambda_pairs.at::<f32>(2 * i);
            rmsnorm::mix_rmsnorm_forward(
                dev,
                sc.xa.ptr(),
                sc.xn.ptr(),
                sc.rstd.ptr(),
                cur,
                sc.x0.ptr(),
                lambdas,
                n,
                c,
            )?;
            let (xn, w) = (sc.xn.ptr(), qd + kvd);
            self.gemm_into(sc.qk.ptr(), w, xn, c, self.weight(Slot::AttnQ, i), n, qd, c, 0.0)?;
            self.gemm_into(
                sc.qk.at::<bf16>(qd),
                w,
                xn,
                c,
                self.weight(Slot::AttnK, i),
                n,
                kvd,
                c,
                0.0,
            )?;
            self.gemm_into(sc.v.ptr(), kvd, xn, c, self.weight(Slot::AttnV, i), n, kvd, c, 0.0)?;
            if let Some(kv) = cfg.ve_index(i) {
                let table = self.weight(Slot::ValueEmbeds, kv);
                embedding::embedding_forward(dev, sc.ve.ptr(), ids_dev, table, ids, vp, kvd)?;
                let wg = self.master(Slot::VeGate, kv);
                model_ops::ve_gate_forward(dev, sc.v.ptr(), sc.gate.ptr(), xn, sc.ve.ptr(), wg, gate_shape(cfg, n))?;
            }
            let s = StepShape {
                n,
                h: nh,
                hkv: nkv,
                d,
                t_max,
                window: self.windows[i],
            };
            let (kl, vl) = (bufs.k.at::<bf16>(i * layer_kv), bufs.v.at::<bf16>(i * layer_kv));
            let (cos, sin) = (self.cos.ptr(), self.sin.ptr());
            decode::kv_rope_append(
                dev,
                sc.q.ptr(),
                kl,
                vl,
                sc.qk.ptr(),
                sc.v.ptr(),
                cos,
                sin,
                &table,
                &tok,
                s,
                cache_rows,
                w,
                self.positions,
            )?;
            for (ci, &r) in rows.iter().enumerate().filter(|&(ci, _)| is_prefill(ci)) {
                // The row's cache slice of its first t positions is a (1, t, hkv, d) tensor: the training
                // attention reads it as written.
                let t = lens[ci];
                let a = AttnShape {
                    b: 1,
                    t,
                    h: nh,
                    hkv: nkv,
                    d,
                    window: s.window,
                };
                let (q, y) = (sc.q.at::<bf16>(starts[ci] * qd), sc.y.at::<bf16>(starts[ci] * qd));
                let (kr, vr) = (kl.at::<bf16>(r * t_max * kvd), vl.at::<bf16>(r * t_max * kvd));
                attention_forward(dev, self.attn, y, sc.lse.ptr(), q, kr, vr, a)?;
            }
            if !sel.is_empty() {
                let splits = decode::choose_splits(&s, sel.len(), decode::max_keys(&s, &tok, &sel));
                if splits > 1 && sc.part.as_ref().is_none_or(|p| p.2 < splits) {
                    sc.part = None;
                    let (po, pml) = decode::split_scratch(&StepShape { n: sc.n, ..s }, splits);
                    sc.part = Some((dev.alloc(po * F32)?, dev.alloc(pml * F32)?, splits));
                }
                let (part_o, part_ml) = match &sc.part {
                    Some((o, ml, _)) if splits > 1 => (o.ptr(), ml.ptr()),
                    _ => (DevPtr(0), DevPtr(0)),
                };
                decode::decode_attention(
                    dev,
                    sc.y.ptr(),
                    part_o,
                    part_ml,
                    sc.q.ptr(),
                    kl,
                    vl,
                    &table,
                    &tok,
                    &sel,
                    s,
                    cache_rows,
                    splits,
                )?;
            }
            dev.copy(sc.xb.ptr(), sc.xa.ptr(), n * c * BF16)?;
            self.gemm_into(
                sc.xb.ptr(),
                c,
                sc.y.ptr(),
                qd,
                self.weight(Slot::AttnProj, i),
                n,
                c,
                qd,
                1.0,
            )?;
            rmsnorm::rmsnorm_forward(dev, sc.xn.ptr(), sc.rstd.ptr(), sc.xb.ptr(), n, c)?;
            self.gemm_into(
                sc.h.ptr(),
                md,
                sc.xn.ptr(),
                c,
                self.weight(Slot::MlpFc, i),
                n,
                md,
                c,
                0.0,
            )?;
            relu2_forward(dev, sc.act.ptr(), sc.h.ptr(), n * md)?;
            dev.copy(next, sc.xb.ptr(), n * c * BF16)?;
            self.gemm_into(next, c, sc.act.ptr(), md, self.weight(Slot::MlpProj, i), n, c, md, 1.0)?;
            if i == cfg.backout_layer() {
                dev.copy(sc.xmid.ptr(), next, n * c * BF16)?;
            }
            cur = next;
        }

        // Each chunk's last position: backout, final norm, head. With one token a chunk they are all of them;
        // otherwise they are gathered (the embedding gather over the step's rows).
        let m = rows.len();
        let (last, last_mid) = if m == n {
            (cur, sc.xmid.ptr())
        } else {
            let idx: Vec<u32> = tok.last.iter().map(|&j| j as u32).collect();
            embedding::embedding_forward(dev, sc.last.ptr(), table.last, cur, &idx, n, c)?;
            embedding::embedding_forward(dev, sc.last_mid.ptr(), table.last, sc.xmid.ptr(), &idx, n, c)?;
            (sc.last.ptr(), sc.last_mid.ptr())
        };
        let backout = self.master(Slot::BackoutLambda, 0);
        model_ops::backout_forward(dev, sc.xf.ptr(), last, last_mid, backout, m * c)?;
        rmsnorm::rmsnorm_forward(dev, sc.xnf.ptr(), sc.rstd.ptr(), sc.xf.ptr(), m, c)?;
        self.gemm_into(
            sc.logits.ptr(),
            vp,
            sc.xnf.ptr(),
            c,
            self.weight(Slot::LmHead, 0),
            m,
            vp,
            c,
            0.0,
        )?;
        let raw: Vec<bf16> = dev.download_vec(sc.logits.ptr(), m * vp)?;
        for (&r, &t) in rows.iter().zip(lens) {
            cache.lens[r] += t;
        }
        Ok(raw
            .chunks_exact(vp)
            .flat_map(|r| r[..v].iter().map(|z| softcap(z.to_f32())))
            .collect())
    }
}

impl InferModel for KernelModel {
    type Cache = DeviceCache;
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn new_cache(&self, rows: usize, t_max: usize) -> std::result::Result<DeviceCache, String> {
        self.alloc_cache(rows, t_max).map_err(|e| {
            format!(
                "{}: a KV cache of {rows} rows x {t_max} positions ({:.1} MiB): {e}",
                self.dev.name(),
                DeviceCache::kv_bytes(&self.config, rows, t_max) as f64 / (1 << 20) as f64
            )
        })
    }
    fn row_len(&self, cache: &DeviceCache, row: usize) -> usize {
        cache.lens.get(row).copied().unwrap_or(0)
    }
    fn clear_row(&self, cache: &mut DeviceCache, row: usize) -> std::result::Result<(), String> {
        cache.check_row(row)?;
        let c = self.config.n_embd;
        self.dev
            .zero(cache.bufs.prev.at::<bf16>(row * c), c * BF16)
            .map_err(|e| format!("{}: KV cache: {e}", self.dev.name()))?;
        cache.lens[row] = 0;
        Ok(())
    }
    fn copy_row(&self, cache: &mut DeviceCache, src: usize, dst: usize) -> std::result::Result<(), String> {
        cache.check_row(src)?;
        cache.check_row(dst)?;
        self.copy_row_dev(cache, src, dst)
            .map_err(|e| format!("{}: KV cache: {e}", self.dev.name()))
    }
    fn forward_rows(
        &self,
        cache: &mut DeviceCache,
        rows: &[usize],
        lens: &[usize],
        ids: &[u32],
    ) -> std::result::Result<Vec<f32>, String> {
        if rows.is_empty() || rows.len() != lens.len() {
            return Err(format!(
                "a forward step needs one length per row and at least one row ({} rows, {} lengths)",
                rows.len(),
                lens.len()
            ));
        }
        let n: usize = lens.iter().sum();
        if ids.len() != n || lens.contains(&0) {
            return Err(format!(
                "expected {n} token ids for chunks of {lens:?} tokens (each at least 1), got {}",
                ids.len()
            ));
        }
        let mut seen = vec![false; cache.rows];
        for (&r, &t) in rows.iter().zip(lens) {
            cache.check_row(r)?;
            if std::mem::replace(&mut seen[r], true) {
                return Err(format!("row {r} appears twice in one forward step"));
            }
            let t0 = cache.lens[r];
            if t0 + t > cache.t_max {
                return Err(format!(
                    "the KV cache holds {} positions; {t0} are used in row {r} and {t} more do not fit",
                    cache.t_max
                ));
            }
            if t0 + t > self.positions {
                return Err(format!(
                    "position {} exceeds the RoPE table ({} positions)",
                    t0 + t,
                    self.positions
                ));
            }
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            ));
        }
        self.cached_step(cache, rows, lens, ids)
            .map_err(|e| format!("{}: cached forward: {e}", self.dev.name()))
    }
}

/// A model opened for inference on any device ([`crate::backend::Backend::open_inference`]): the CPU
/// reference's KV-cached [`CpuInfer`] or a kernel device's [`KernelModel::for_inference`]. One type, so that
/// every program (chat_cli, chat_web, chat_eval, base_eval, the samples of train_gpt, the rollouts of chat_rl)
/// runs one code path whatever the device.
// One value per model or cache: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Inference {
    Cpu(CpuInfer),
    Kernel(KernelModel),
}

/// The KV cache of an [`Inference`] model.
// One value per model or cache: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum InferenceCache {
    Cpu(KvCache),
    Kernel(DeviceCache),
}

impl Inference {
    /// The device's name ("cpu", or the kernel device's).
    pub fn device_name(&self) -> String {
        match self {
            Inference::Cpu(_) => "cpu".into(),
            Inference::Kernel(m) => m.device().name(),
        }
    }

    /// Bytes of keys and values a cache of `rows` x `t_max` positions holds: fp32 on the CPU reference, bf16
    /// on the kernels.
    pub fn kv_bytes(&self, rows: usize, t_max: usize) -> usize {
        match self {
            Inference::Cpu(m) => 2 * DeviceCache::kv_bytes(&m.config, rows, t_max),
            Inference::Kernel(m) => DeviceCache::kv_bytes(&m.config, rows, t_max),
        }
    }
}

fn mismatch() -> String {
    "the KV cache belongs to a model on another device".to_string()
}

impl InferModel for Inference {
    type Cache = InferenceCache;
    fn config(&self) -> &ModelConfig {
        match self {
            Inference::Cpu(m) => InferModel::config(m),
            Inference::Kernel(m) => InferModel::config(m),
        }
    }
    fn new_cache(&self, rows: usize, t_max: usize) -> std::result::Result<InferenceCache, String> {
        Ok(match self {
            Inference::Cpu(m) => InferenceCache::Cpu(m.new_cache(rows, t_max)?),
            Inference::Kernel(m) => InferenceCache::Kernel(m.new_cache(rows, t_max)?),
        })
    }
    fn row_len(&self, cache: &InferenceCache, row: usize) -> usize {
        match (self, cache) {
            (Inference::Cpu(m), InferenceCache::Cpu(c)) => m.row_len(c, row),
            (Inference::Kernel(m), InferenceCache::Kernel(c)) => m.row_len(c, row),
            _ => 0,
        }
    }
    fn clear_row(&self, cache: &mut InferenceCache, row: usize) -> std::result::Result<(), String> {
        match (self, cache) {
            (Inference::Cpu(m), InferenceCache::Cpu(c)) => m.clear_row(c, row),
            (Inference::Kernel(m), InferenceCache::Kernel(c)) => m.clear_row(c, row),
            _ => Err(mismatch()),
        }
    }
    fn copy_row(&self, cache: &mut InferenceCache, src: usize, dst: usize) -> std::result::Result<(), String> {
        match (self, cache) {
            (Inference::Cpu(m), InferenceCache::Cpu(c)) => m.copy_row(c, src, dst),
            (Inference::Kernel(m), InferenceCache::Kernel(c)) => m.copy_row(c, src, dst),
            _ => Err(mismatch()),
        }
    }
    fn forward_rows(
        &self,
        cache: &mut InferenceCache,
        rows: &[usize],
        lens: &[usize],
        ids: &[u32],
    ) -> std::result::Result<Vec<f32>, String> {
        match (self, cache) {
            (Inference::Cpu(m), InferenceCache::Cpu(c)) => m.forward_rows(c, rows, lens, ids),
            (Inference::Kernel(m), InferenceCache::Kernel(c)) => m.forward_rows(c, rows, lens, ids),
            _ => Err(mismatch()),
        }
    }
}

impl Inference {
    /// The kernel model (None on the CPU reference).
    pub fn kernel(&mut self) -> Option<&mut KernelModel> {
        match self {
            Inference::Kernel(m) => Some(m),
            Inference::Cpu(_) => None,
        }
    }
}

/// KV-cached generation on the current weights of a model that may be in training ([`infer_view`]).
// One value per model or cache: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum InferView<'a> {
    /// The CPU reference's engine model over a copy of the parameters.
    Cpu(CpuInfer),
    /// A kernel model itself: its own weights and device, a KV cache next to them.
    Kernel(&'a KernelModel),
}

/// A KV-cached view of `model` for generation (train_gpt's samples, chat_rl's rollouts, base_eval's
/// samples): the model itself on a kernel device (no copy of the weights), the CPU reference's
/// [`CpuInfer`] over its parameters otherwise.
pub fn infer_view(model: &dyn crate::model::ModelDevice) -> std::result::Result<InferView<'_>, String> {
    match model.as_any().and_then(|a| a.downcast_ref::<KernelModel>()) {
        Some(k) => Ok(InferView::Kernel(k)),
        None => Ok(InferView::Cpu(CpuInfer::new(model.config(), model.params()?)?)),
    }
}

impl InferModel for InferView<'_> {
    type Cache = InferenceCache;
    fn config(&self) -> &ModelConfig {
        match self {
            InferView::Cpu(m) => InferModel::config(m),
            InferView::Kernel(m) => InferModel::config(*m),
        }
    }
    fn new_cache(&self, rows: usize, t_max: usize) -> std::result::Result<InferenceCache, String> {
        Ok(match self {
            InferView::Cpu(m) => InferenceCache::Cpu(m.new_cache(rows, t_max)?),
            InferView::Kernel(m) => InferenceCache::Kernel(m.new_cache(rows, t_max)?),
        })
    }
    fn row_len(&self, cache: &InferenceCache, row: usize) -> usize {
        match (self, cache) {
            (InferView::Cpu(m), InferenceCache::Cpu(c)) => m.row_len(c, row),
            (InferView::Kernel(m), InferenceCache::Kernel(c)) => m.row_len(c, row),
            _ => 0,
        }
    }
    fn clear_row(&self, cache: &mut InferenceCache, row: usize) -> std::result::Result<(), String> {
        match (self, cache) {
            (InferView::Cpu(m), InferenceCache::Cpu(c)) => m.clear_row(c, row),
            (InferView::Kernel(m), InferenceCache::Kernel(c)) => m.clear_row(c, row),
            _ => Err(mismatch()),
        }
    }
    fn copy_row(&self, cache: &mut InferenceCache, src: usize, dst: usize) -> std::result::Result<(), String> {
        match (self, cache) {
            (InferView::Cpu(m), InferenceCache::Cpu(c)) => m.copy_row(c, src, dst),
            (InferView::Kernel(m), InferenceCache::Kernel(c)) => m.copy_row(c, src, dst),
            _ => Err(mismatch()),
        }
    }
    fn forward_rows(
        &self,
        cache: &mut InferenceCache,
        rows: &[usize],
        lens: &[usize],
        ids: &[u32],
    ) -> std::result::Result<Vec<f32>, String> {
        match (self, cache) {
            (InferView::Cpu(m), InferenceCache::Cpu(c)) => m.forward_rows(c, rows, lens, ids),
            (InferView::Kernel(m), InferenceCache::Kernel(c)) => m.forward_rows(c, rows, lens, ids),
            _ => Err(mismatch()),
        }
    }
}

/// `n` tokens continuing `prompt` through the KV cache of any [`InferModel`] (greedy at temperature 0, else
/// sampled from `rng`), at most up to the model's context.
pub fn continue_cached<M: InferModel>(
    m: &M,
    prompt: &[u32],
    n: usize,
    rng: &mut crate::rng::Rng,
    temperature: f64,
) -> std::result::Result<Vec<u32>, String> {
    let n = n.min(m.config().sequence_len.saturating_sub(prompt.len()));
    let mut cache = m.new_cache(1, prompt.len() + n)?;
    let mut logits = m.forward_last(&mut cache, prompt, prompt.len())?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let next = crate::engine::sample_next_token(&logits, rng, temperature, None)?;
        out.push(next);
        if i + 1 < n {
            logits = m.forward_last(&mut cache, &[next], 1)?;
        }
    }
    Ok(out)
}
