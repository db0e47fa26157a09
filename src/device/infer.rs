//! KV-cached inference on a kernel device: [`KernelModel`] as an [`InferModel`], the device twin of
//! [`crate::cpu::infer`] (spec §1.5), op for op.
//!
//! The cache ([`DeviceCache`]) keeps, per layer, bf16 keys and values `(rows, t_max, hkv, d)` (GQA heads,
//! every position: no ring buffer for the sliding-window layers, as upstream), each row's length (rows may
//! hold sequences of different lengths), and each row's normalized embedding of its last token for the
//! smear of the next one-token step. A step of `t` tokens per row:
//! - embedding, norm; smear within the chunk (`t > 1`, its first position not smeared, as the CPU
//!   reference) or from the cached previous embedding (`t = 1`, `decode_smear`);
//! - per layer: residual mix + norm, the q/k/v GEMMs, the value-embedding gate, RoPE + QK-norm at each row's
//!   own positions writing k and v into the cache (`kv_rope_append`), then attention: a prefill from
//!   position 0 runs the flash-attention forward on each row's cache slice; any other step runs the
//!   flash-decoding kernel (`decode_attention`, split over the key axis and combined when the context is
//!   long); the projection, the MLP;
//! - backout, final norm and the LM head on each row's last position only; the bf16 logits are copied to
//!   the host and softcapped there.
//!
//! Sampling runs on the host (the engine's [`crate::engine::sample_next_token`]): it needs the logits of
//! every row anyway for the tool state machine and the seeded RNG shared with the CPU reference, and
//! the copy is `rows · vocab` bf16 per step (64 KiB per row at a 32768 vocabulary, a few microseconds over
//! PCIe next to a decode step of milliseconds), plus a top-k over the vocabulary on one CPU core.

use half::bf16;

use super::kernels::attention::{attention_forward, AttnShape};
use super::kernels::decode::{self, StepShape};
use super::kernels::elementwise::relu2_forward;
use super::kernels::embedding;
use super::kernels::model_ops;
use super::kernels::rmsnorm;
use super::memory::{gate_shape, BF16, F32};
use super::model::KernelModel;
use super::{Buffer, DevPtr, Device, Dtype, Gemm, Result};
use crate::config::{softcap, ModelConfig, SMEAR_CHANNELS};
use crate::engine::InferModel;
use crate::params::Slot;

/// The KV cache of a kernel device and the step scratch. Device memory is allocated at the first step
/// (so that [`InferModel::new_cache`] stays infallible) and the scratch grows to the largest step seen.
pub struct DeviceCache {
    pub rows: usize,
    pub t_max: usize,
    /// Each row's length.
    lens: Vec<usize>,
    bufs: Option<CacheBufs>,
    scratch: Option<Scratch>,
}

struct CacheBufs {
    /// (n_layer, rows, t_max, kv_dim) bf16.
    k: Buffer,
    v: Buffer,
    /// (rows, C) bf16: the normalized embedding of each row's last token (zero for an empty row).
    prev: Buffer,
    /// (rows) i32: each row's length before the step.
    pos: Buffer,
}

/// Scratch of a step of up to `n` tokens over up to `rows` rows.
struct Scratch {
    n: usize,
    rows: usize,
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
    smear_g: Buffer,
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
    rstd_f: Buffer,
    logits: Buffer,
    /// Split partials of the decode kernel and the split count they fit.
    part: Option<(Buffer, Buffer, usize)>,
}

impl Scratch {
    fn new(dev: &dyn Device, cfg: &ModelConfig, n: usize, rows: usize) -> Result<Scratch> {
        let (c, qd, kvd, md, h) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.mlp_dim(), cfg.n_head);
        let bf = |w: usize| dev.alloc(n * w * BF16);
        let t = n; // a batch-1 prefill: the longest sequence of the step
        Ok(Scratch {
            n,
            rows,
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
            smear_g: dev.alloc(n * F32)?,
            qk: bf(qd + kvd)?,
            v: bf(kvd)?,
            q: bf(qd)?,
            y: bf(qd)?,
            ve: bf(kvd)?,
            gate: dev.alloc(n * cfg.n_kv_head * F32)?,
            h: bf(md)?,
            act: bf(md)?,
            lse: dev.alloc(h * t * F32)?,
            last: dev.alloc(rows * c * BF16)?,
            last_mid: dev.alloc(rows * c * BF16)?,
            xf: dev.alloc(rows * c * BF16)?,
            xnf: dev.alloc(rows * c * BF16)?,
            rstd_f: dev.alloc(rows * F32)?,
            logits: dev.alloc(rows * cfg.padded_vocab() * BF16)?,
            part: None,
        })
    }
}

impl DeviceCache {
    fn empty(rows: usize, t_max: usize) -> DeviceCache {
        DeviceCache {
            rows,
            t_max,
            lens: vec![0; rows],
            bufs: None,
            scratch: None,
        }
    }

    /// Each row's length.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Device bytes of the keys and values.
    pub fn kv_bytes(cfg: &ModelConfig, rows: usize, t_max: usize) -> usize {
        2 * cfg.n_layer * rows * t_max * cfg.kv_dim() * BF16
    }
}

fn alloc_bufs(dev: &dyn Device, cfg: &ModelConfig, rows: usize, t_max: usize) -> Result<CacheBufs> {
    let kv = cfg.n_layer * rows * t_max * cfg.kv_dim() * BF16;
    let bufs = CacheBufs {
        k: dev.alloc(kv.max(BF16))?,
        v: dev.alloc(kv.max(BF16))?,
        prev: dev.alloc(rows * cfg.n_embd * BF16)?,
        pos: dev.alloc(rows * 4)?,
    };
    dev.zero(bufs.prev.ptr(), rows * cfg.n_embd * BF16)?;
    Ok(bufs)
}

impl KernelModel {
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

    /// One cached step: `ids (rows, t)` at each row's length; returns each row's last softcapped logits.
    fn cached_step(&self, cache: &mut DeviceCache, ids: &[u32], t: usize) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let dev = self.dev.as_ref();
        let rows = cache.rows;
        let n = rows * t;
        let (c, nh, nkv, d, vp, v) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim(),
            cfg.padded_vocab(),
            cfg.vocab_size,
        );
        let (qd, kvd, md) = (nh * d, nkv * d, cfg.mlp_dim());
        if t == 0 || ids.len() != n {
            return super::err(format!(
                "expected {rows}x{t} = {n} token ids for a cache of {rows} rows, got {}",
                ids.len()
            ));
        }
        if let Some((r, &l)) = cache.lens.iter().enumerate().find(|(_, &l)| l + t > cache.t_max) {
            return super::err(format!(
                "the KV cache holds {} positions; row {r} uses {l} and {t} more do not fit",
                cache.t_max
            ));
        }
        if cache.lens.iter().any(|&l| l + t > self.positions) {
            return super::err(format!("positions beyond the rotary tables ({})", self.positions));
        }
        if cache.bufs.is_none() {
            cache.bufs = Some(alloc_bufs(dev, cfg, rows, cache.t_max)?);
        }
        if cache.scratch.as_ref().is_none_or(|s| s.n < n || s.rows < rows) {
            cache.scratch = None;
            cache.scratch = Some(Scratch::new(dev, cfg, n.max(rows), rows)?);
        }
        let pos = cache.lens.clone();
        let bufs = cache.bufs.as_ref().expect("allocated");
        let sc = cache.scratch.as_mut().expect("allocated");
        let pos_i32: Vec<i32> = pos.iter().map(|&p| p as i32).collect();
        dev.upload(bufs.pos.ptr(), bytemuck::cast_slice(&pos_i32))?;
        let ids_dev = embedding::upload_ids(dev, sc.ids.ptr(), ids, vp)?.ids;
        let shape = |window: usize| StepShape {
            rows,
            t,
            h: nh,
            hkv: nkv,
            d,
            t_max: cache.t_max,
            window,
        };

        // Embedding, norm, smear.
        embedding::embedding_forward(dev, sc.emb.ptr(), ids_dev, self.weight(Slot::Wte, 0), ids, vp, c)?;
        rmsnorm::rmsnorm_forward(dev, sc.xe.ptr(), sc.rstd.ptr(), sc.emb.ptr(), n, c)?;
        let (gate_w, lambda) = (self.master(Slot::SmearGate, 0), self.master(Slot::SmearLambda, 0));
        if t == 1 {
            decode::decode_smear(
                dev,
                sc.x0.ptr(),
                bufs.prev.ptr(),
                sc.xe.ptr(),
                gate_w,
                lambda,
                rows,
                c,
                SMEAR_CHANNELS,
            )?;
        } else {
            model_ops::smear_forward(
                dev,
                sc.x0.ptr(),
                sc.smear_g.ptr(),
                sc.xe.ptr(),
                gate_w,
                lambda,
                n,
                t,
                c,
                SMEAR_CHANNELS,
            )?;
            for r in 0..rows {
                dev.copy(
                    bufs.prev.at::<bf16>(r * c),
                    sc.xe.at::<bf16>((r * t + t - 1) * c),
                    c * BF16,
                )?;
            }
        }

        let layer_kv = rows * cache.t_max * kvd;
        let prefill = t > 1 && pos.iter().all(|&p| p == 0);
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
            let s = shape(self.windows[i]);
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
                bufs.pos.ptr(),
                &pos,
                s,
                w,
                self.positions,
            )?;
            if prefill {
                // Each row's cache slice of t positions is a (1, t, hkv, d) tensor: the training attention.
                let a = AttnShape {
                    b: 1,
                    t,
                    h: nh,
                    hkv: nkv,
                    d,
                    window: s.window,
                };
                for r in 0..rows {
                    let (q, y) = (sc.q.at::<bf16>(r * t * qd), sc.y.at::<bf16>(r * t * qd));
                    let (kr, vr) = (
                        kl.at::<bf16>(r * cache.t_max * kvd),
                        vl.at::<bf16>(r * cache.t_max * kvd),
                    );
                    attention_forward(dev, self.attn, y, sc.lse.ptr(), q, kr, vr, a)?;
                }
            } else {
                let splits = decode::choose_splits(&s, decode::max_keys(&s, &pos));
                let (po, pml) = decode::split_scratch(&s, splits);
                if splits > 1 && sc.part.as_ref().is_none_or(|p| p.2 < splits) {
                    sc.part = None;
                    let (po_max, pml_max) = decode::split_scratch(&StepShape { rows: sc.n, t: 1, ..s }, splits);
                    sc.part = Some((
                        dev.alloc(po_max.max(po) * F32)?,
                        dev.alloc(pml_max.max(pml) * F32)?,
                        splits,
                    ));
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
                    bufs.pos.ptr(),
                    &pos,
                    s,
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

        // Each row's last position: backout, final norm, head.
        let (last, last_mid) = if t == 1 {
            (cur, sc.xmid.ptr())
        } else {
            for r in 0..rows {
                let src = (r * t + t - 1) * c;
                dev.copy(sc.last.at::<bf16>(r * c), cur.at::<bf16>(src), c * BF16)?;
                dev.copy(sc.last_mid.at::<bf16>(r * c), sc.xmid.at::<bf16>(src), c * BF16)?;
            }
            (sc.last.ptr(), sc.last_mid.ptr())
        };
        let backout = self.master(Slot::BackoutLambda, 0);
        model_ops::backout_forward(dev, sc.xf.ptr(), last, last_mid, backout, rows * c)?;
        rmsnorm::rmsnorm_forward(dev, sc.xnf.ptr(), sc.rstd_f.ptr(), sc.xf.ptr(), rows, c)?;
        self.gemm_into(
            sc.logits.ptr(),
            vp,
            sc.xnf.ptr(),
            c,
            self.weight(Slot::LmHead, 0),
            rows,
            vp,
            c,
            0.0,
        )?;
        let raw: Vec<bf16> = dev.download_vec(sc.logits.ptr(), rows * vp)?;
        cache.lens.iter_mut().for_each(|l| *l += t);
        Ok(raw
            .chunks_exact(vp)
            .flat_map(|r| r[..v].iter().map(|z| softcap(z.to_f32())))
            .collect())
    }

    /// A `rows`-row cache of `t_max` positions holding copies of the one-row cache `one`.
    fn expand_cache(&self, one: &DeviceCache, rows: usize, t_max: usize) -> Result<DeviceCache> {
        if one.rows != 1 {
            return super::err(format!(
                "only a batch-1 cache can be expanded (this one has {} rows)",
                one.rows
            ));
        }
        let len = one.lens[0];
        if t_max < len {
            return super::err(format!(
                "cannot expand a cache holding {len} positions into one of {t_max}"
            ));
        }
        let mut out = DeviceCache::empty(rows, t_max);
        let Some(src) = &one.bufs else {
            return Ok(out);
        };
        let dev = self.dev.as_ref();
        let cfg = &self.config;
        let bufs = alloc_bufs(dev, cfg, rows, t_max)?;
        let kvd = cfg.kv_dim();
        for l in 0..cfg.n_layer {
            let from = l * one.t_max * kvd;
            for r in 0..rows {
                let to = (l * rows + r) * t_max * kvd;
                dev.copy(bufs.k.at::<bf16>(to), src.k.at::<bf16>(from), len * kvd * BF16)?;
                dev.copy(bufs.v.at::<bf16>(to), src.v.at::<bf16>(from), len * kvd * BF16)?;
            }
        }
        for r in 0..rows {
            dev.copy(bufs.prev.at::<bf16>(r * cfg.n_embd), src.prev.ptr(), cfg.n_embd * BF16)?;
        }
        out.bufs = Some(bufs);
        out.lens = vec![len; rows];
        Ok(out)
    }
}

impl KernelModel {
    /// Puts the one-row cache `one` (a prefilled request) into row `row` of `cache`, whose other rows keep
    /// their sequences: rows of different lengths then decode together, each at its own position.
    pub fn insert_row(
        &self,
        cache: &mut DeviceCache,
        row: usize,
        one: &DeviceCache,
    ) -> std::result::Result<(), String> {
        self.insert_row_dev(cache, row, one)
            .map_err(|e| format!("{}: KV cache: {e}", self.dev.name()))
    }

    fn insert_row_dev(&self, cache: &mut DeviceCache, row: usize, one: &DeviceCache) -> Result<()> {
        let len = one.lens.first().copied().unwrap_or(0);
        if one.rows != 1 || row >= cache.rows || len > cache.t_max {
            return super::err(format!(
                "cannot put a {}-row cache of {len} positions into row {row} of a {}-row cache of {}",
                one.rows, cache.rows, cache.t_max
            ));
        }
        let dev = self.dev.as_ref();
        let cfg = &self.config;
        if cache.bufs.is_none() {
            cache.bufs = Some(alloc_bufs(dev, cfg, cache.rows, cache.t_max)?);
        }
        let dst = cache.bufs.as_ref().expect("allocated");
        let (kvd, c) = (cfg.kv_dim(), cfg.n_embd);
        match &one.bufs {
            Some(src) if len > 0 => {
                for l in 0..cfg.n_layer {
                    let from = l * one.t_max * kvd;
                    let to = (l * cache.rows + row) * cache.t_max * kvd;
                    dev.copy(dst.k.at::<bf16>(to), src.k.at::<bf16>(from), len * kvd * BF16)?;
                    dev.copy(dst.v.at::<bf16>(to), src.v.at::<bf16>(from), len * kvd * BF16)?;
                }
                dev.copy(dst.prev.at::<bf16>(row * c), src.prev.ptr(), c * BF16)?;
            }
            _ => dev.zero(dst.prev.at::<bf16>(row * c), c * BF16)?,
        }
        cache.lens[row] = len;
        Ok(())
    }
}

impl InferModel for KernelModel {
    type Cache = DeviceCache;
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn new_cache(&self, rows: usize, t_max: usize) -> DeviceCache {
        DeviceCache::empty(rows, t_max)
    }
    fn expand(&self, one: &DeviceCache, rows: usize, t_max: usize) -> std::result::Result<DeviceCache, String> {
        self.expand_cache(one, rows, t_max)
            .map_err(|e| format!("{}: KV cache: {e}", self.dev.name()))
    }
    fn forward_last(&self, cache: &mut DeviceCache, ids: &[u32], t: usize) -> std::result::Result<Vec<f32>, String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            ));
        }
        self.cached_step(cache, ids, t)
            .map_err(|e| format!("{}: cached forward: {e}", self.dev.name()))
    }
}

/// [`crate::engine::load::load_engine`] on a kernel device: the checkpoint's model on `dev`, KV-cached.
pub fn load_kernel_engine(
    dev: Box<dyn Device>,
    base: &std::path::Path,
    source: &str,
    model_tag: Option<&str>,
    step: Option<usize>,
) -> std::result::Result<
    (
        crate::engine::Engine<KernelModel>,
        crate::engine::load::ModelCard,
        Option<String>,
    ),
    String,
> {
    let (cfg, params, tok, card, notice) = crate::engine::load::load_parts(base, source, model_tag, step)?;
    let model = KernelModel::new(dev, &cfg, &params, &Default::default())?;
    Ok((crate::engine::Engine::new(model, tok), card, notice))
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
    let mut cache = m.new_cache(1, prompt.len() + n);
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
