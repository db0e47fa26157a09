//! The GPT on a kernel device: the same forward and backward as the CPU reference ([`crate::cpu::gpt`]), as
//! a sequence of kernel launches and GEMMs over device buffers laid out by the parameter table.
//!
//! Buffers:
//! - parameters: fp32 master weights (`params`) and a bf16 mirror of the whole buffer (`params_bf16`, what
//!   the GEMMs and gathers read; the optimizer kernels rewrite it after every update); scalar parameters
//!   are read as fp32 straight from the master buffer;
//! - gradients: fp32, the parameter layout, accumulated (`+=`) across micro-batches until [`KernelModel::step`];
//! - optimizer state: the four flat fp32 buffers of [`MuonAdamW`] (the host object keeps the groups, the step
//!   count and the layout; the values live here and are synced for checkpoints);
//! - the activation arena: everything forward saves for backward plus the backward scratch, sized from the
//!   micro-batch `(b, t)` ([`ArenaLayout`], with a per-component memory report).
//!
//! Precision: bf16 activations and GEMM operands with fp32 accumulation, fp32 row statistics (RMSNorm rstd,
//! attention log-sum-exp, per-token losses), fp32 parameter gradients, fp32 optimizer math.

use super::kernels::attention::{self, AttnImpl, AttnShape};
use super::kernels::elementwise::{
    add_bf16, add_f32_bf16, cast_f32_to_bf16, relu2_backward, relu2_forward,
};
use super::kernels::model_ops::{self, GateShape};
use super::kernels::muon::{muon_step, MuonScratch, Stack};
use super::kernels::reduce::{self, Reduction};
use super::kernels::rope_qknorm::{rope_qknorm_backward, rope_qknorm_forward, RopeShape};
use super::kernels::{adamw, cross_entropy, embedding, rmsnorm};
use super::{Buffer, DevPtr, Device, Dtype, Gemm, Op};
use crate::config::{ModelConfig, ROPE_BASE, SMEAR_CHANNELS, SOFTCAP, VE_GATE_CHANNELS};
use crate::cpu::gpt::check_batch;
use crate::optim::{MuonAdamW, SetupArgs, StepJob, StepSettings};
use crate::params::{ParamTable, Slot};
use crate::safetensors::Tensor;
use crate::train::device::ModelDevice;
use half::bf16;
use std::collections::BTreeMap;
use std::fmt::Write as _;

const BF16: usize = 2;
const F32: usize = 4;
/// Every arena part starts on a 256-byte boundary (vector loads, cuBLASLt alignment).
const ALIGN: usize = 256;

fn dev_err(e: super::DeviceError) -> String {
    e.to_string()
}

/// Where each activation of one micro-batch lives. Built twice by [`ArenaLayout::new`]: once to size the
/// arena, once over the allocation.
struct Acts {
    ids: DevPtr,
    targets: DevPtr,
    emb: DevPtr,
    xe: DevPtr,
    rstd0: DevPtr,
    smear_g: DevPtr,
    /// res[i]: the residual stream entering layer i (res[0] = x0); res[L] leaves the last layer.
    res: Vec<DevPtr>,
    layers: Vec<LayerActs>,
    xf: DevPtr,
    xnf: DevPtr,
    rstd_f: DevPtr,
    logits: DevPtr,
    losses: DevPtr,
    loss_sum: DevPtr,
    reduce_scratch: DevPtr,
    // Backward scratch, shared by all layers.
    dres: DevPtr,
    dx_mid: DevPtr,
    dx0: DevPtr,
    dxn: DevPtr,
    wide1: DevPtr,
    wide2: DevPtr,
    dy: DevPtr,
    dq: DevPtr,
    dk: DevPtr,
    dv: DevPtr,
    dqk: DevPtr,
    delta: DevPtr,
    ve: DevPtr,
    dve: DevPtr,
    dxe: DevPtr,
    pscratch: DevPtr,
}

/// What one layer's forward saves. `qk` is the raw (pre-RoPE) q‖k GEMM output, rows `(H + Hkv)·D` wide.
struct LayerActs {
    xa: DevPtr,
    xn1: DevPtr,
    rstd1: DevPtr,
    qk: DevPtr,
    q: DevPtr,
    k: DevPtr,
    v: DevPtr,
    rstd_q: DevPtr,
    rstd_k: DevPtr,
    gate: DevPtr,
    y: DevPtr,
    lse: DevPtr,
    xb: DevPtr,
    xn2: DevPtr,
    rstd2: DevPtr,
    h: DevPtr,
}

/// Hands out aligned parts of an arena starting at `base`, recording their sizes per component.
struct Carver {
    base: u64,
    at: usize,
    parts: Vec<(usize, usize)>,
    report: BTreeMap<&'static str, usize>,
}

impl Carver {
    fn take(&mut self, component: &'static str, bytes: usize) -> DevPtr {
        let bytes = bytes.max(1);
        self.at = self.at.next_multiple_of(ALIGN);
        let p = DevPtr(self.base + self.at as u64);
        self.parts.push((self.at, bytes));
        self.at += bytes;
        *self.report.entry(component).or_default() += bytes;
        p
    }
}

/// The activation arena's layout for a micro-batch `(b, t)` of a model.
pub struct ArenaLayout {
    /// Total bytes (one allocation on a GPU).
    pub bytes: usize,
    /// Bytes per component, for the memory report.
    pub report: BTreeMap<&'static str, usize>,
    acts: Acts,
    parts: Vec<(usize, usize)>,
}

impl ArenaLayout {
    /// The layout with parts addressed from `base`.
    fn new(cfg: &ModelConfig, b: usize, t: usize, base: u64) -> ArenaLayout {
        let (c, nh, nkv, d, vp, l) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim(),
            cfg.padded_vocab(),
            cfg.n_layer,
        );
        let n = b * t;
        let (qd, kvd, md) = (nh * d, nkv * d, cfg.mlp_dim());
        let mut cv = Carver {
            base,
            at: 0,
            parts: Vec::new(),
            report: BTreeMap::new(),
        };
        let rows = |w: usize| n * w * BF16;
        const EMB: &str = "embedding, norm, smear";
        const RES: &str = "residual stream (L+1 copies)";
        const LAYER: &str = "saved per-layer activations";
        const HEAD: &str = "final norm, logits, losses";
        const BWD: &str = "backward scratch";
        let ids = cv.take(EMB, n * 4);
        let targets = cv.take(EMB, n * 4);
        let emb = cv.take(EMB, rows(c));
        let xe = cv.take(EMB, rows(c));
        let rstd0 = cv.take(EMB, n * F32);
        let smear_g = cv.take(EMB, n * F32);
        let res = (0..=l).map(|_| cv.take(RES, rows(c))).collect();
        let layers = (0..l)
            .map(|_| LayerActs {
                xa: cv.take(LAYER, rows(c)),
                xn1: cv.take(LAYER, rows(c)),
                rstd1: cv.take(LAYER, n * F32),
                qk: cv.take(LAYER, rows(qd + kvd)),
                q: cv.take(LAYER, rows(qd)),
                k: cv.take(LAYER, rows(kvd)),
                v: cv.take(LAYER, rows(kvd)),
                rstd_q: cv.take(LAYER, n * nh * F32),
                rstd_k: cv.take(LAYER, n * nkv * F32),
                gate: cv.take(LAYER, n * nkv * F32),
                y: cv.take(LAYER, rows(qd)),
                lse: cv.take(LAYER, n * nh * F32),
                xb: cv.take(LAYER, rows(c)),
                xn2: cv.take(LAYER, rows(c)),
                rstd2: cv.take(LAYER, n * F32),
                h: cv.take(LAYER, rows(md)),
            })
            .collect();
        let xf = cv.take(HEAD, rows(c));
        let xnf = cv.take(HEAD, rows(c));
        let rstd_f = cv.take(HEAD, n * F32);
        let logits = cv.take(HEAD, rows(vp));
        let losses = cv.take(HEAD, n * F32);
        let loss_sum = cv.take(HEAD, F32);
        let reduce_scratch = cv.take(HEAD, reduce::partials_for(n) * F32);
        let gate_shape = gate_shape(cfg, n);
        let pscratch_len = [
            model_ops::ve_gate_scratch(&gate_shape),
            model_ops::smear_scratch(n, SMEAR_CHANNELS),
            model_ops::backout_scratch(n),
            rmsnorm::mix_backward_scratch(n),
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let acts = Acts {
            ids,
            targets,
            emb,
            xe,
            rstd0,
            smear_g,
            res,
            layers,
            xf,
            xnf,
            rstd_f,
            logits,
            losses,
            loss_sum,
            reduce_scratch,
            dres: cv.take(BWD, rows(c)),
            dx_mid: cv.take(BWD, rows(c)),
            dx0: cv.take(BWD, n * c * F32),
            dxn: cv.take(BWD, rows(c)),
            wide1: cv.take(BWD, rows(md)),
            wide2: cv.take(BWD, rows(md)),
            dy: cv.take(BWD, rows(qd)),
            dq: cv.take(BWD, rows(qd)),
            dk: cv.take(BWD, rows(kvd)),
            dv: cv.take(BWD, rows(kvd)),
            dqk: cv.take(BWD, rows(qd + kvd)),
            delta: cv.take(BWD, n * nh * F32),
            ve: cv.take(BWD, rows(kvd)),
            dve: cv.take(BWD, rows(kvd)),
            dxe: cv.take(BWD, rows(c)),
            pscratch: cv.take(BWD, pscratch_len * F32),
        };
        ArenaLayout {
            bytes: cv.at.next_multiple_of(ALIGN),
            report: cv.report,
            acts,
            parts: cv.parts,
        }
    }

    /// Arena bytes of a micro-batch `(b, t)`.
    pub fn size(cfg: &ModelConfig, b: usize, t: usize) -> usize {
        ArenaLayout::new(cfg, b, t, 0).bytes
    }
}

/// The activation arena of the current micro-batch shape. On a device with guard pages (the emulator) every
/// part is its own allocation, so an overrun of one activation into the next is caught; on a GPU it is one.
struct Arena {
    b: usize,
    t: usize,
    acts: Acts,
    _buffers: Vec<Buffer>,
}

fn gate_shape(cfg: &ModelConfig, n: usize) -> GateShape {
    GateShape {
        n,
        c: cfg.n_embd,
        hkv: cfg.n_kv_head,
        d: cfg.head_dim(),
        k: VE_GATE_CHANNELS,
        v_stride: cfg.kv_dim(),
    }
}

/// Device memory of the model outside the arena, in bytes per component.
pub fn static_memory(table: &ParamTable, opt: &MuonAdamW) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    m.insert("parameters (fp32 master)", table.numel * F32);
    m.insert("parameters (bf16 copy)", table.numel * BF16);
    m.insert("gradients (fp32)", table.numel * F32);
    let state: usize = opt.state_buffers().iter().map(|b| b.len() * F32).sum();
    m.insert("optimizer state", state);
    let mut muon = 0;
    for s in muon_stacks(opt) {
        muon += MuonScratch::sizes(s).iter().sum::<usize>();
    }
    m.insert("Muon scratch", muon);
    m
}

/// Settings for listing the jobs of a step (their shapes do not depend on the settings).
const NO_SETTINGS: StepSettings = StepSettings {
    lr_multiplier: 1.0,
    muon_momentum: 0.0,
    muon_weight_decay: 0.0,
};

/// The distinct Muon stacks a step updates.
fn muon_stacks(opt: &MuonAdamW) -> Vec<Stack> {
    let mut v: Vec<Stack> = Vec::new();
    for job in opt.plan(&NO_SETTINGS) {
        if let StepJob::Muon {
            count,
            dims: (m, n),
            ..
        } = job
        {
            let s = Stack { k: count, m, n };
            if !v.contains(&s) {
                v.push(s);
            }
        }
    }
    v
}

/// The GPT with its parameters, gradients and optimizer state on a kernel device.
pub struct KernelModel {
    dev: Box<dyn Device>,
    config: ModelConfig,
    table: ParamTable,
    windows: Vec<usize>,
    attn: AttnImpl,
    opt: MuonAdamW,
    params: Buffer,
    params_bf16: Buffer,
    grads: Buffer,
    /// (L, 2) f32: each layer's (resid, x0) lambdas side by side, as the mix kernels read them; refreshed
    /// from the master weights after every update.
    lambda_pairs: Buffer,
    /// (L, 2) f32: their accumulated gradients, moved into `grads` at the step.
    dlambda_pairs: Buffer,
    state: [Buffer; 4],
    muon_scratch: Vec<(Stack, MuonScratch)>,
    cos: Buffer,
    sin: Buffer,
    positions: usize,
    arena: Option<Arena>,
}

impl KernelModel {
    /// Uploads `params` (fp32, the table's layout) and fresh optimizer state to `dev`.
    pub fn new(
        dev: Box<dyn Device>,
        config: &ModelConfig,
        params: &[f32],
        optimizer: &SetupArgs,
    ) -> Result<KernelModel, String> {
        config.validate()?;
        let table = ParamTable::new(config);
        if params.len() != table.numel {
            return Err(format!(
                "{} parameters given, the model has {}",
                params.len(),
                table.numel
            ));
        }
        let d = config.head_dim();
        let attn = if d == 64 || d == 128 {
            AttnImpl::Flash
        } else {
            AttnImpl::Naive
        };
        let mut opt = MuonAdamW::new(&table, optimizer);
        // The device orthogonalises through bf16 GEMMs, as upstream does in its bf16 compute dtype.
        opt.bf16_orthogonalization = true;
        let positions = 10 * config.sequence_len;
        let (cos, sin) = crate::cpu::ops::rope_tables(positions, d, ROPE_BASE);
        let l = config.n_layer;
        let numel = table.numel;
        let d_ = dev.as_ref();
        let state_lens = opt.state_buffers().map(|b| b.len());
        let mk = || -> super::Result<_> {
            let params_buf = d_.upload_new(params)?;
            let params_bf16 = d_.alloc(numel * BF16)?;
            cast_f32_to_bf16(d_, params_bf16.ptr(), params_buf.ptr(), numel)?;
            let grads = d_.alloc(numel * F32)?;
            d_.zero(grads.ptr(), numel * F32)?;
            let lambda_pairs = d_.alloc(2 * l * F32)?;
            let dlambda_pairs = d_.alloc(2 * l * F32)?;
            d_.zero(dlambda_pairs.ptr(), 2 * l * F32)?;
            let state = state_lens.map(|len| {
                let b = d_.alloc(len.max(1) * F32)?;
                d_.zero(b.ptr(), len.max(1) * F32)?;
                Ok(b)
            });
            let [a, b, c, e] = state;
            Ok((
                params_buf,
                params_bf16,
                grads,
                lambda_pairs,
                dlambda_pairs,
                [a?, b?, c?, e?],
                d_.upload_new(&cos)?,
                d_.upload_new(&sin)?,
            ))
        };
        let (params_buf, params_bf16, grads, lambda_pairs, dlambda_pairs, state, cos, sin) =
            mk().map_err(|e| format!("{}: {e}", dev.name()))?;
        let mut muon_scratch = Vec::new();
        for s in muon_stacks(&opt) {
            let scratch = MuonScratch::new(dev.as_ref(), s).map_err(dev_err)?;
            muon_scratch.push((s, scratch));
        }
        let model = KernelModel {
            windows: config.window_sizes(),
            config: config.clone(),
            table,
            attn,
            opt,
            params: params_buf,
            params_bf16,
            grads,
            lambda_pairs,
            dlambda_pairs,
            state,
            muon_scratch,
            cos,
            sin,
            positions,
            arena: None,
            dev,
        };
        model.refresh_lambda_pairs().map_err(dev_err)?;
        Ok(model)
    }

    /// Chooses the attention kernels (flash needs head_dim 64 or 128; naive is the slow second oracle).
    pub fn set_attention(&mut self, imp: AttnImpl) {
        self.attn = imp;
    }

    pub fn device(&self) -> &dyn Device {
        self.dev.as_ref()
    }

    /// Device memory per component for micro-batches `(b, t)`, and the total, as printable lines.
    pub fn memory_report(&self, b: usize, t: usize) -> String {
        let mut out = String::new();
        let mut total = 0;
        let arena = ArenaLayout::new(&self.config, b, t, 0);
        let stat = static_memory(&self.table, &self.opt);
        for (what, bytes) in stat.iter().chain(arena.report.iter()) {
            let _ = writeln!(
                out,
                "  {what:<32} {:>10.1} MiB",
                *bytes as f64 / (1 << 20) as f64
            );
            total += bytes;
        }
        let _ = write!(
            out,
            "  {:<32} {:>10.1} MiB (device batch {b} x {t})",
            "total",
            total as f64 / (1 << 20) as f64
        );
        if let Some((free, device_total)) = self.dev.memory_info() {
            // What is allocated now (parameters, gradients, state, scratch) counts as available to the plan.
            let allocated = stat.values().sum::<usize>()
                + self
                    .arena
                    .as_ref()
                    .map_or(0, |a| ArenaLayout::size(&self.config, a.b, a.t));
            let _ = write!(
                out,
                "\n  device: {:.1} GiB total, {:.1} GiB free; largest device batch at T = {t}: {}",
                device_total as f64 / (1u64 << 30) as f64,
                free as f64 / (1u64 << 30) as f64,
                self.largest_batch(t, free + allocated)
                    .map_or("none (the model alone does not fit)".to_string(), |x| x
                        .to_string())
            );
        }
        out
    }

    /// The largest device batch size at sequence length `t` whose memory fits in `free` bytes (None if
    /// not even 1 does).
    pub fn largest_batch(&self, t: usize, free: usize) -> Option<usize> {
        largest_batch(&self.config, &self.table, &self.opt, t, free)
    }

    fn slot_ptr(&self, slot: Slot, k: usize) -> DevPtr {
        self.params_bf16.at::<bf16>(self.table.range(slot, k).start)
    }

    fn slot_f32(&self, slot: Slot, k: usize) -> DevPtr {
        self.params.at::<f32>(self.table.range(slot, k).start)
    }

    fn grad_ptr(&self, slot: Slot, k: usize) -> DevPtr {
        self.grads.at::<f32>(self.table.range(slot, k).start)
    }

    /// Copies each layer's (resid, x0) lambdas into `lambda_pairs`.
    fn refresh_lambda_pairs(&self) -> super::Result<()> {
        for i in 0..self.config.n_layer {
            let pair = self.lambda_pairs.at::<f32>(2 * i);
            self.dev
                .copy(pair, self.slot_f32(Slot::ResidLambdas, 0).at::<f32>(i), F32)?;
            self.dev.copy(
                pair.at::<f32>(1),
                self.slot_f32(Slot::X0Lambdas, 0).at::<f32>(i),
                F32,
            )?;
        }
        Ok(())
    }

    /// Makes sure the arena fits micro-batches `(b, t)`.
    fn ensure_arena(&mut self, b: usize, t: usize) -> Result<(), String> {
        if self.arena.as_ref().is_some_and(|a| a.b == b && a.t == t) {
            return Ok(());
        }
        self.arena = None; // free the old one first
        let sized = ArenaLayout::new(&self.config, b, t, 0);
        let dev = self.dev.as_ref();
        let oom = |e: super::DeviceError| {
            // The parameters, gradients and state are allocated already: `free` excludes them.
            let fits = dev.memory_info().map(|(free, _)| {
                let fixed: usize = static_memory(&self.table, &self.opt).values().sum();
                largest_batch(&self.config, &self.table, &self.opt, t, free + fixed)
            });
            let hint = match fits {
                Some(Some(n)) => format!("the largest that fits now is {n}"),
                Some(None) => "not even 1 fits next to the model".to_string(),
                None => "lower it".to_string(),
            };
            format!(
                "{}: the activations of a {b} x {t} micro-batch need {:.1} MiB: {e}; --device-batch-size: {hint}",
                dev.name(),
                sized.bytes as f64 / (1 << 20) as f64
            )
        };
        let (acts, buffers) = if dev.guard_pages() {
            // One allocation per part; point each part at its own base.
            let mut buffers = Vec::new();
            for &(_, bytes) in &sized.parts {
                buffers.push(dev.alloc(bytes).map_err(oom)?);
            }
            let bases: Vec<DevPtr> = buffers.iter().map(Buffer::ptr).collect();
            let ArenaLayout {
                mut acts, parts, ..
            } = sized;
            remap(&mut acts, &parts, &bases);
            (acts, buffers)
        } else {
            let buf = dev.alloc(sized.bytes).map_err(oom)?;
            let acts = ArenaLayout::new(&self.config, b, t, buf.ptr().0).acts;
            (acts, vec![buf])
        };
        self.arena = Some(Arena {
            b,
            t,
            acts,
            _buffers: buffers,
        });
        Ok(())
    }

    fn gemm(&self, g: Gemm) -> super::Result<()> {
        self.dev.gemm(&g)
    }

    /// `out (n, m) bf16 (+)= x (n, k) @ W^T` with W (m, k) bf16 at `w`; x rows `ldx` apart.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        out: DevPtr,
        ldo: usize,
        x: DevPtr,
        ldx: usize,
        w: DevPtr,
        n: usize,
        k: usize,
        m: usize,
        accumulate: bool,
    ) -> super::Result<()> {
        self.gemm(Gemm {
            lda: ldx,
            ldc: ldo,
            beta: if accumulate { 1.0 } else { 0.0 },
            ..Gemm::new(n, m, k, x, w, out, Dtype::Bf16).transpose_b()
        })
    }

    /// Backward of [`KernelModel::linear`]: `dx (n, k) bf16 (+)= dout (n, m) @ W` (unless `dx` is None)
    /// and `dw (m, k) f32 += dout^T @ x`. `dout` rows `ldd` apart.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        dx: Option<(DevPtr, bool)>,
        dw: DevPtr,
        dout: DevPtr,
        ldd: usize,
        x: DevPtr,
        w: DevPtr,
        n: usize,
        k: usize,
        m: usize,
    ) -> super::Result<()> {
        if let Some((dx, accumulate)) = dx {
            self.gemm(Gemm {
                lda: ldd,
                beta: if accumulate { 1.0 } else { 0.0 },
                ..Gemm::new(n, k, m, dout, w, dx, Dtype::Bf16)
            })?;
        }
        self.gemm(Gemm {
            op_a: Op::T,
            lda: ldd,
            beta: 1.0,
            ..Gemm::new(m, k, n, dout, x, dw, Dtype::F32)
        })
    }

    /// Forward over `ids (b, t)`. With targets: per-token losses into the arena and, when `dloss != 0`, the
    /// logits replaced by the gradient of `dloss · Σ losses` (ready for [`KernelModel::backward`]). Returns
    /// the sum of the losses (0 without targets).
    fn forward(
        &mut self,
        ids: &[u32],
        targets: Option<&[i32]>,
        b: usize,
        t: usize,
        dloss: f32,
    ) -> Result<f32, String> {
        check_batch(&self.config, self.positions, ids, targets, b, t)?;
        self.ensure_arena(b, t)?;
        self.forward_kernels(ids, targets, b, t, dloss)
            .map_err(|e| format!("{}: forward: {e}", self.dev.name()))
    }

    fn forward_kernels(
        &self,
        ids: &[u32],
        targets: Option<&[i32]>,
        b: usize,
        t: usize,
        dloss: f32,
    ) -> super::Result<f32> {
        let cfg = &self.config;
        let dev = self.dev.as_ref();
        let a = &self.arena.as_ref().expect("arena allocated").acts;
        let (c, nh, nkv, d, vp, v) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim(),
            cfg.padded_vocab(),
            cfg.vocab_size,
        );
        let (qd, kvd, md) = (nh * d, nkv * d, cfg.mlp_dim());
        let n = b * t;
        let ids_i32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        dev.upload(a.ids, bytemuck::cast_slice(&ids_i32))?;

        // Embedding, norm, smear: res[0] = x0.
        embedding::embedding_forward(dev, a.emb, a.ids, self.slot_ptr(Slot::Wte, 0), ids, vp, c)?;
        rmsnorm::rmsnorm_forward(dev, a.xe, a.rstd0, a.emb, n, c)?;
        model_ops::smear_forward(
            dev,
            a.res[0],
            a.smear_g,
            a.xe,
            self.slot_f32(Slot::SmearGate, 0),
            self.slot_f32(Slot::SmearLambda, 0),
            n,
            t,
            c,
            SMEAR_CHANNELS,
        )?;

        for (i, la) in a.layers.iter().enumerate() {
            rmsnorm::mix_rmsnorm_forward(
                dev,
                la.xa,
                la.xn1,
                la.rstd1,
                a.res[i],
                a.res[0],
                self.lambda_pairs.at::<f32>(2 * i),
                n,
                c,
            )?;
            // q‖k side by side in `qk`; v on its own (the gate adds into it, attention reads it dense).
            let w = qd + kvd;
            self.linear(
                la.qk,
                w,
                la.xn1,
                c,
                self.slot_ptr(Slot::AttnQ, i),
                n,
                c,
                qd,
                false,
            )?;
            self.linear(
                la.qk.at::<bf16>(qd),
                w,
                la.xn1,
                c,
                self.slot_ptr(Slot::AttnK, i),
                n,
                c,
                kvd,
                false,
            )?;
            self.linear(
                la.v,
                kvd,
                la.xn1,
                c,
                self.slot_ptr(Slot::AttnV, i),
                n,
                c,
                kvd,
                false,
            )?;
            if let Some(kv) = cfg.ve_index(i) {
                self.gather_ve(a, ids, kv)?;
                model_ops::ve_gate_forward(
                    dev,
                    la.v,
                    la.gate,
                    la.xn1,
                    a.ve,
                    self.slot_f32(Slot::VeGate, kv),
                    gate_shape(cfg, n),
                )?;
            }
            let rope = |heads| self.rope_shape(n, t, heads);
            let (cos, sin) = (self.cos.ptr(), self.sin.ptr());
            rope_qknorm_forward(dev, la.q, la.rstd_q, la.qk, cos, sin, rope(nh))?;
            rope_qknorm_forward(
                dev,
                la.k,
                la.rstd_k,
                la.qk.at::<bf16>(qd),
                cos,
                sin,
                rope(nkv),
            )?;
            let shape = self.attn_shape(b, t, i);
            attention::attention_forward(dev, self.attn, la.y, la.lse, la.q, la.k, la.v, shape)?;
            dev.copy(la.xb, la.xa, n * c * BF16)?;
            self.linear(
                la.xb,
                c,
                la.y,
                qd,
                self.slot_ptr(Slot::AttnProj, i),
                n,
                qd,
                c,
                true,
            )?;

            rmsnorm::rmsnorm_forward(dev, la.xn2, la.rstd2, la.xb, n, c)?;
            self.linear(
                la.h,
                md,
                la.xn2,
                c,
                self.slot_ptr(Slot::MlpFc, i),
                n,
                c,
                md,
                false,
            )?;
            relu2_forward(dev, a.wide1, la.h, n * md)?;
            dev.copy(a.res[i + 1], la.xb, n * c * BF16)?;
            self.linear(
                a.res[i + 1],
                c,
                a.wide1,
                md,
                self.slot_ptr(Slot::MlpProj, i),
                n,
                md,
                c,
                true,
            )?;
        }

        let l = cfg.n_layer;
        model_ops::backout_forward(
            dev,
            a.xf,
            a.res[l],
            a.res[cfg.backout_layer() + 1],
            self.slot_f32(Slot::BackoutLambda, 0),
            n * c,
        )?;
        rmsnorm::rmsnorm_forward(dev, a.xnf, a.rstd_f, a.xf, n, c)?;
        self.linear(
            a.logits,
            vp,
            a.xnf,
            c,
            self.slot_ptr(Slot::LmHead, 0),
            n,
            c,
            vp,
            false,
        )?;
        let Some(y) = targets else {
            return Ok(0.0);
        };
        dev.upload(a.targets, bytemuck::cast_slice(y))?;
        cross_entropy::softcap_ce(dev, a.logits, a.losses, a.targets, dloss, n, v, vp)?;
        reduce::reduce(
            dev,
            a.loss_sum,
            a.reduce_scratch,
            a.losses,
            Dtype::F32,
            n,
            Reduction::Sum,
        )?;
        Ok(dev.download_vec::<f32>(a.loss_sum, 1)?[0])
    }

    /// RoPE + QK-norm over `heads` heads of the q‖k rows of `n` tokens (sequences of `t`).
    fn rope_shape(&self, n: usize, t: usize, heads: usize) -> RopeShape {
        RopeShape {
            n,
            t,
            heads,
            d: self.config.head_dim(),
            pos0: 0,
            x_stride: self.config.q_dim() + self.config.kv_dim(),
            positions: self.positions,
        }
    }

    /// Gathers value embedding `kv` of the batch's tokens into `a.ve` (forward, and again in backward).
    fn gather_ve(&self, a: &Acts, ids: &[u32], kv: usize) -> super::Result<()> {
        let cfg = &self.config;
        embedding::embedding_forward(
            self.dev.as_ref(),
            a.ve,
            a.ids,
            self.slot_ptr(Slot::ValueEmbeds, kv),
            ids,
            cfg.padded_vocab(),
            cfg.kv_dim(),
        )
    }

    fn attn_shape(&self, b: usize, t: usize, layer: usize) -> AttnShape {
        let cfg = &self.config;
        AttnShape {
            b,
            t,
            h: cfg.n_head,
            hkv: cfg.n_kv_head,
            d: cfg.head_dim(),
            window: self.windows[layer],
        }
    }

    /// Backward of the last [`KernelModel::forward`] (which must have run with targets and `dloss != 0`):
    /// adds the parameter gradients into `grads` (and the lambda pairs' into `dlambda_pairs`).
    fn backward(&self, ids: &[u32], b: usize, t: usize) -> super::Result<()> {
        let cfg = &self.config;
        let dev = self.dev.as_ref();
        let a = &self.arena.as_ref().expect("arena allocated").acts;
        let (c, nh, nkv, d, vp) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim(),
            cfg.padded_vocab(),
        );
        let (qd, kvd, md) = (nh * d, nkv * d, cfg.mlp_dim());
        let n = b * t;
        let rows = |w: usize| n * w * BF16;

        // Head (the logits hold their gradient now) and final norm.
        self.linear_backward(
            Some((a.dxn, false)),
            self.grad_ptr(Slot::LmHead, 0),
            a.logits,
            vp,
            a.xnf,
            self.slot_ptr(Slot::LmHead, 0),
            n,
            c,
            vp,
        )?;
        let mid = cfg.backout_layer();
        rmsnorm::rmsnorm_backout_backward(
            dev,
            a.dres,
            a.dx_mid,
            self.grad_ptr(Slot::BackoutLambda, 0),
            a.pscratch,
            a.dxn,
            a.xf,
            a.rstd_f,
            a.res[mid + 1],
            self.slot_f32(Slot::BackoutLambda, 0),
            n,
            c,
        )?;
        dev.zero(a.dx0, n * c * F32)?;

        // `dres` carries the gradient of the residual stream down the layers.
        for i in (0..cfg.n_layer).rev() {
            let la = &a.layers[i];
            if i == mid {
                add_bf16(dev, a.dres, a.dx_mid, n * c)?;
            }
            // MLP: res[i+1] = xb + relu²(xn2 · Wfcᵀ) · Wmpᵀ.
            relu2_forward(dev, a.wide1, la.h, n * md)?;
            self.linear_backward(
                Some((a.wide2, false)),
                self.grad_ptr(Slot::MlpProj, i),
                a.dres,
                c,
                a.wide1,
                self.slot_ptr(Slot::MlpProj, i),
                n,
                md,
                c,
            )?;
            relu2_backward(dev, a.wide1, a.wide2, la.h, n * md)?;
            self.linear_backward(
                Some((a.dxn, false)),
                self.grad_ptr(Slot::MlpFc, i),
                a.wide1,
                md,
                la.xn2,
                self.slot_ptr(Slot::MlpFc, i),
                n,
                c,
                md,
            )?;
            rmsnorm::rmsnorm_backward(dev, a.dres, a.dxn, la.xb, la.rstd2, n, c)?;

            // Attention: xb = xa + y · Woᵀ.
            self.linear_backward(
                Some((a.dy, false)),
                self.grad_ptr(Slot::AttnProj, i),
                a.dres,
                c,
                la.y,
                self.slot_ptr(Slot::AttnProj, i),
                n,
                qd,
                c,
            )?;
            let shape = self.attn_shape(b, t, i);
            attention::attention_backward(
                dev, self.attn, a.dq, a.dk, a.dv, a.delta, a.dy, la.y, la.lse, la.q, la.k, la.v,
                shape,
            )?;
            let w = qd + kvd;
            let rope = |heads| self.rope_shape(n, t, heads);
            let (cos, sin) = (self.cos.ptr(), self.sin.ptr());
            rope_qknorm_backward(
                dev,
                a.dqk,
                a.dq,
                la.qk,
                la.rstd_q,
                cos,
                sin,
                rope(nh),
                w,
                false,
            )?;
            rope_qknorm_backward(
                dev,
                a.dqk.at::<bf16>(qd),
                a.dk,
                la.qk.at::<bf16>(qd),
                la.rstd_k,
                cos,
                sin,
                rope(nkv),
                w,
                false,
            )?;
            self.linear_backward(
                Some((a.dxn, false)),
                self.grad_ptr(Slot::AttnQ, i),
                a.dqk,
                w,
                la.xn1,
                self.slot_ptr(Slot::AttnQ, i),
                n,
                c,
                qd,
            )?;
            self.linear_backward(
                Some((a.dxn, true)),
                self.grad_ptr(Slot::AttnK, i),
                a.dqk.at::<bf16>(qd),
                w,
                la.xn1,
                self.slot_ptr(Slot::AttnK, i),
                n,
                c,
                kvd,
            )?;
            self.linear_backward(
                Some((a.dxn, true)),
                self.grad_ptr(Slot::AttnV, i),
                a.dv,
                kvd,
                la.xn1,
                self.slot_ptr(Slot::AttnV, i),
                n,
                c,
                kvd,
            )?;
            if let Some(kv) = cfg.ve_index(i) {
                self.gather_ve(a, ids, kv)?;
                model_ops::ve_gate_backward(
                    dev,
                    a.dve,
                    a.dxn,
                    self.grad_ptr(Slot::VeGate, kv),
                    a.pscratch,
                    a.dv,
                    la.gate,
                    la.xn1,
                    a.ve,
                    self.slot_f32(Slot::VeGate, kv),
                    gate_shape(cfg, n),
                )?;
                embedding::embedding_backward(
                    dev,
                    self.grad_ptr(Slot::ValueEmbeds, kv),
                    a.dve,
                    ids,
                    vp,
                    kvd,
                )?;
            }
            // Norm and lambda mix (xa = rl · res[i] + xl · x0) in one pass.
            rmsnorm::rmsnorm_mix_backward(
                dev,
                a.dres,
                a.dx0,
                self.dlambda_pairs.at::<f32>(2 * i),
                a.pscratch,
                a.dres,
                a.dxn,
                la.xa,
                la.rstd1,
                a.res[i],
                a.res[0],
                self.lambda_pairs.at::<f32>(2 * i),
                n,
                c,
            )?;
        }
        // Layer 0's residual input is x0 itself.
        add_f32_bf16(dev, a.dres, a.dx0, a.dres, n * c)?;

        // Smear, embedding norm, gather.
        dev.zero(a.dxe, rows(c))?;
        model_ops::smear_backward(
            dev,
            a.dxe,
            self.grad_ptr(Slot::SmearGate, 0),
            self.grad_ptr(Slot::SmearLambda, 0),
            a.pscratch,
            a.dres,
            a.xe,
            self.slot_f32(Slot::SmearGate, 0),
            self.slot_f32(Slot::SmearLambda, 0),
            n,
            t,
            c,
            SMEAR_CHANNELS,
        )?;
        dev.zero(a.dxn, rows(c))?;
        rmsnorm::rmsnorm_backward(dev, a.dxn, a.dxe, a.emb, a.rstd0, n, c)?;
        embedding::embedding_backward(dev, self.grad_ptr(Slot::Wte, 0), a.dxn, ids, vp, c)
    }

    /// Moves the accumulated lambda-pair gradients into the gradient buffer's lambda slots.
    fn flush_lambda_grads(&self) -> super::Result<()> {
        for i in 0..self.config.n_layer {
            let pair = self.dlambda_pairs.at::<f32>(2 * i);
            self.dev
                .copy(self.grad_ptr(Slot::ResidLambdas, 0).at::<f32>(i), pair, F32)?;
            self.dev.copy(
                self.grad_ptr(Slot::X0Lambdas, 0).at::<f32>(i),
                pair.at::<f32>(1),
                F32,
            )?;
        }
        Ok(())
    }

    fn run_step(&mut self, settings: &StepSettings) -> super::Result<()> {
        self.flush_lambda_grads()?;
        let dev = self.dev.as_ref();
        let [m, v, mom, second] = &self.state;
        for job in self.opt.begin_step(settings) {
            match job {
                StepJob::AdamW {
                    range,
                    state,
                    hyper,
                } => adamw::adamw_step(
                    dev,
                    self.params.at::<f32>(range.start),
                    Some(self.params_bf16.at::<bf16>(range.start)),
                    self.grads.at::<f32>(range.start),
                    m.at::<f32>(state),
                    v.at::<f32>(state),
                    range.len(),
                    &hyper,
                )?,
                StepJob::Muon {
                    range,
                    state,
                    second: s_off,
                    count,
                    dims: (rows, cols),
                    hyper,
                } => {
                    let stack = Stack {
                        k: count,
                        m: rows,
                        n: cols,
                    };
                    let scratch = &self
                        .muon_scratch
                        .iter()
                        .find(|(s, _)| *s == stack)
                        .expect("scratch allocated for every Muon stack")
                        .1;
                    muon_step(
                        dev,
                        scratch,
                        self.params.at::<f32>(range.start),
                        Some(self.params_bf16.at::<bf16>(range.start)),
                        self.grads.at::<f32>(range.start),
                        mom.at::<f32>(state),
                        second.at::<f32>(s_off),
                        &hyper,
                    )?
                }
            }
        }
        dev.zero(self.grads.ptr(), self.table.numel * F32)?;
        dev.zero(self.dlambda_pairs.ptr(), 2 * self.config.n_layer * F32)?;
        self.refresh_lambda_pairs()?;
        dev.synchronize()
    }

    /// Copies the device optimizer state into the host optimizer object.
    fn sync_state_to_host(&mut self) -> super::Result<()> {
        let dev = self.dev.as_ref();
        let bufs = &self.state;
        for (host, buf) in self.opt.state_buffers_mut().into_iter().zip(bufs) {
            dev.download(buf.ptr(), bytemuck::cast_slice_mut(host))?;
        }
        Ok(())
    }
}

fn softcap(z: f32) -> f32 {
    SOFTCAP * (z / SOFTCAP).tanh()
}

/// Points every part of `acts` (laid out from base 0 with offsets `parts`) at `bases` instead.
fn remap(acts: &mut Acts, parts: &[(usize, usize)], bases: &[DevPtr]) {
    let map = |p: &mut DevPtr| {
        let i = parts
            .binary_search_by_key(&(p.0 as usize), |&(off, _)| off)
            .expect("every pointer of the layout starts a part");
        *p = bases[i];
    };
    for_each_ptr(acts, map);
}

/// Applies `f` to every pointer of `acts`.
fn for_each_ptr(a: &mut Acts, mut f: impl FnMut(&mut DevPtr)) {
    for p in [
        &mut a.ids,
        &mut a.targets,
        &mut a.emb,
        &mut a.xe,
        &mut a.rstd0,
        &mut a.smear_g,
        &mut a.xf,
        &mut a.xnf,
        &mut a.rstd_f,
        &mut a.logits,
        &mut a.losses,
        &mut a.loss_sum,
        &mut a.reduce_scratch,
        &mut a.dres,
        &mut a.dx_mid,
        &mut a.dx0,
        &mut a.dxn,
        &mut a.wide1,
        &mut a.wide2,
        &mut a.dy,
        &mut a.dq,
        &mut a.dk,
        &mut a.dv,
        &mut a.dqk,
        &mut a.delta,
        &mut a.ve,
        &mut a.dve,
        &mut a.dxe,
        &mut a.pscratch,
    ] {
        f(p);
    }
    for p in &mut a.res {
        f(p);
    }
    for la in &mut a.layers {
        for p in [
            &mut la.xa,
            &mut la.xn1,
            &mut la.rstd1,
            &mut la.qk,
            &mut la.q,
            &mut la.k,
            &mut la.v,
            &mut la.rstd_q,
            &mut la.rstd_k,
            &mut la.gate,
            &mut la.y,
            &mut la.lse,
            &mut la.xb,
            &mut la.xn2,
            &mut la.rstd2,
            &mut la.h,
        ] {
            f(p);
        }
    }
}

/// The largest device batch at sequence length `t` whose parameters, gradients, optimizer state and
/// activations fit in `free` bytes.
pub fn largest_batch(
    cfg: &ModelConfig,
    table: &ParamTable,
    opt: &MuonAdamW,
    t: usize,
    free: usize,
) -> Option<usize> {
    let fixed: usize = static_memory(table, opt).values().sum();
    let avail = free.checked_sub(fixed)?;
    // Arena bytes grow linearly with the batch (up to alignment): bisect on the exact size.
    let fits = |b: usize| ArenaLayout::size(cfg, b, t) <= avail;
    if !fits(1) {
        return None;
    }
    let (mut lo, mut hi) = (1usize, 2usize);
    while fits(hi) {
        lo = hi;
        hi *= 2;
        if hi > 1 << 20 {
            return Some(lo);
        }
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

impl ModelDevice for KernelModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device_name(&self) -> String {
        self.dev.name()
    }

    fn table(&self) -> &ParamTable {
        &self.table
    }

    fn forward_backward(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<f32, String> {
        let valid = targets.iter().filter(|&&y| y >= 0).count();
        let dloss = scale / valid.max(1) as f32;
        let sum = self.forward(ids, Some(targets), b, t, dloss)?;
        self.backward(ids, b, t)
            .map_err(|e| format!("{}: backward: {e}", self.dev.name()))?;
        // No supervised target (an all-masked SFT micro-batch): loss 0 and, with dloss 0, zero gradient.
        Ok(if valid == 0 { 0.0 } else { sum / valid as f32 })
    }

    fn token_losses(
        &mut self,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, String> {
        self.forward(ids, Some(targets), b, t, 0.0)?;
        let a = &self.arena.as_ref().expect("arena allocated").acts;
        self.dev.download_vec(a.losses, b * t).map_err(dev_err)
    }

    fn grads(&mut self) -> Result<Vec<f32>, String> {
        self.flush_lambda_grads().map_err(dev_err)?;
        self.dev
            .download_vec::<f32>(self.grads.ptr(), self.table.numel)
            .map_err(dev_err)
    }

    fn logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        self.forward(ids, None, b, t, 0.0)?;
        let (v, vp) = (self.config.vocab_size, self.config.padded_vocab());
        let a = &self.arena.as_ref().expect("arena allocated").acts;
        let raw: Vec<bf16> = self
            .dev
            .download_vec(a.logits, b * t * vp)
            .map_err(dev_err)?;
        Ok(raw
            .chunks_exact(vp)
            .flat_map(|r| r[..v].iter().map(|z| softcap(z.to_f32())))
            .collect())
    }

    fn last_logits(&mut self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        self.forward(ids, None, b, t, 0.0)?;
        let (v, vp) = (self.config.vocab_size, self.config.padded_vocab());
        let a = &self.arena.as_ref().expect("arena allocated").acts;
        let mut out = Vec::with_capacity(b * v);
        for r in 0..b {
            let row: Vec<bf16> = self
                .dev
                .download_vec(a.logits.at::<bf16>(((r + 1) * t - 1) * vp), v)
                .map_err(dev_err)?;
            out.extend(row.iter().map(|z| softcap(z.to_f32())));
        }
        Ok(out)
    }

    fn step(&mut self, settings: &StepSettings) -> Result<(), String> {
        self.run_step(settings)
            .map_err(|e| format!("{}: optimizer step: {e}", self.dev.name()))
    }

    fn params(&self) -> Result<Vec<f32>, String> {
        self.dev
            .download_vec::<f32>(self.params.ptr(), self.table.numel)
            .map_err(dev_err)
    }

    fn optimizer_state(&mut self) -> Result<BTreeMap<String, Tensor>, String> {
        self.sync_state_to_host().map_err(dev_err)?;
        Ok(self.opt.state_tensors())
    }

    fn load_optimizer_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        self.opt.load_state_tensors(state)?;
        let dev = self.dev.as_ref();
        for (host, buf) in self.opt.state_buffers().into_iter().zip(&self.state) {
            dev.upload(buf.ptr(), bytemuck::cast_slice(host))
                .map_err(dev_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(depth: usize) -> ModelConfig {
        ModelConfig::from_depth(depth, 64, 128, 2048, 32768, "SSSL")
    }

    #[test]
    fn largest_batch_is_the_last_that_fits() {
        let c = cfg(4);
        let table = ParamTable::new(&c);
        let opt = MuonAdamW::new(&table, &SetupArgs::default());
        let fixed: usize = static_memory(&table, &opt).values().sum();
        for b in [1, 3, 8] {
            let need = fixed + ArenaLayout::size(&c, b, 2048);
            assert_eq!(largest_batch(&c, &table, &opt, 2048, need), Some(b));
            assert_eq!(
                largest_batch(&c, &table, &opt, 2048, need - 1),
                Some(b - 1).filter(|&x| x > 0)
            );
        }
        assert_eq!(largest_batch(&c, &table, &opt, 2048, fixed / 2), None);
    }

    #[test]
    fn arena_grows_with_the_batch_and_reports_every_byte() {
        let c = cfg(2);
        let (a1, a2) = (
            ArenaLayout::new(&c, 1, 256, 0),
            ArenaLayout::new(&c, 2, 256, 0),
        );
        assert!(a2.bytes > a1.bytes && a2.bytes <= 2 * a1.bytes + ALIGN * a1.parts.len());
        let reported: usize = a1.report.values().sum();
        assert!(reported <= a1.bytes && a1.bytes - reported < ALIGN * a1.parts.len());
        // Parts are disjoint and in order.
        for w in a1.parts.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0);
        }
    }
}
