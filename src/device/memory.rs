//! Memory planning of the GPT on a kernel device: the activation arena of one micro-batch (every part carved
//! from a size table, [`carve`]), the memory of everything else, the memory report and the largest device
//! batch that fits. The arena is carved by one function in three placements: sizing, inside one allocation
//! (a GPU), or one allocation per part (the emulator, whose guard pages then catch an overrun of one
//! activation into the next).

use super::kernels::embedding::{self, DeviceIds};
use super::kernels::model_ops::{self, GateShape};
use super::kernels::muon::{MuonScratch, Stack};
use super::kernels::reduce;
use super::kernels::rmsnorm;
use super::{Buffer, DevPtr, Device, DeviceError};
use crate::config::{ModelConfig, SMEAR_CHANNELS, VE_GATE_CHANNELS};
use crate::optim::{MuonAdamW, StepJob, StepSettings};
use crate::params::ParamTable;
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub(super) const BF16: usize = 2;
pub(super) const F32: usize = 4;
/// Every arena part starts on a 256-byte boundary (vector loads, cuBLASLt alignment).
pub(super) const ALIGN: usize = 256;

/// Where each activation of one micro-batch lives: every field is carved by [`carve`], so a field added
/// here and there has its own memory (there is no other list of the fields).
pub(super) struct Acts {
    /// The token ids, their buckets by id and the targets, uploaded together ([`embedding::upload_batch`]).
    pub(super) ids: DevPtr,
    /// Inside `ids`' part, at [`embedding::targets_at`].
    pub(super) targets: DevPtr,
    pub(super) emb: DevPtr,
    pub(super) xe: DevPtr,
    pub(super) rstd0: DevPtr,
    pub(super) smear_g: DevPtr,
    /// res[i]: the residual stream entering layer i (res[0] = x0); res[L] leaves the last layer.
    pub(super) res: Vec<DevPtr>,
    pub(super) layers: Vec<LayerActs>,
    pub(super) xf: DevPtr,
    pub(super) xnf: DevPtr,
    pub(super) rstd_f: DevPtr,
    pub(super) logits: DevPtr,
    pub(super) losses: DevPtr,
    pub(super) loss_sum: DevPtr,
    pub(super) reduce_scratch: DevPtr,
    // Backward scratch, shared by all layers.
    pub(super) dres: DevPtr,
    pub(super) dx_mid: DevPtr,
    pub(super) dx0: DevPtr,
    pub(super) dxn: DevPtr,
    pub(super) wide1: DevPtr,
    pub(super) wide2: DevPtr,
    pub(super) dy: DevPtr,
    pub(super) dq: DevPtr,
    pub(super) dk: DevPtr,
    pub(super) dv: DevPtr,
    pub(super) dqk: DevPtr,
    pub(super) delta: DevPtr,
    pub(super) ve: DevPtr,
    pub(super) dve: DevPtr,
    pub(super) dxe: DevPtr,
    pub(super) pscratch: DevPtr,
}

/// What one layer's forward saves. `qk` is the raw (pre-RoPE) q‖k GEMM output, rows `(H + Hkv)·D` wide.
pub(super) struct LayerActs {
    pub(super) xa: DevPtr,
    pub(super) xn1: DevPtr,
    pub(super) rstd1: DevPtr,
    pub(super) qk: DevPtr,
    pub(super) q: DevPtr,
    pub(super) k: DevPtr,
    pub(super) v: DevPtr,
    pub(super) rstd_q: DevPtr,
    pub(super) rstd_k: DevPtr,
    pub(super) gate: DevPtr,
    pub(super) y: DevPtr,
    pub(super) lse: DevPtr,
    pub(super) xb: DevPtr,
    pub(super) xn2: DevPtr,
    pub(super) rstd2: DevPtr,
    pub(super) h: DevPtr,
}

/// Where the carver puts each part.
enum Placement<'a> {
    /// Offsets from 0: for sizing only.
    Plan,
    /// Inside one allocation starting at this address.
    At(u64),
    /// Each part its own allocation.
    EachPart(&'a dyn Device),
}

/// Hands out aligned parts of an arena, recording their offsets and sizes per component.
struct Carver<'a> {
    placement: Placement<'a>,
    at: usize,
    parts: Vec<(usize, usize)>,
    report: BTreeMap<&'static str, usize>,
    buffers: Vec<Buffer>,
    /// The first failed allocation (`EachPart`); later parts are not allocated.
    error: Option<DeviceError>,
}

impl Carver<'_> {
    fn new(placement: Placement<'_>) -> Carver<'_> {
        Carver {
            placement,
            at: 0,
            parts: Vec::new(),
            report: BTreeMap::new(),
            buffers: Vec::new(),
            error: None,
        }
    }

    fn take(&mut self, component: &'static str, bytes: usize) -> DevPtr {
        let bytes = bytes.max(1);
        self.at = self.at.next_multiple_of(ALIGN);
        self.parts.push((self.at, bytes));
        *self.report.entry(component).or_default() += bytes;
        let p = match self.placement {
            Placement::Plan => DevPtr(self.at as u64),
            Placement::At(base) => DevPtr(base + self.at as u64),
            Placement::EachPart(_) if self.error.is_some() => DevPtr(0),
            Placement::EachPart(dev) => match dev.alloc(bytes) {
                Ok(buf) => {
                    let p = buf.ptr();
                    self.buffers.push(buf);
                    p
                }
                Err(e) => {
                    self.error = Some(e);
                    DevPtr(0)
                }
            },
        };
        self.at += bytes;
        p
    }
}

/// Carves every activation of a micro-batch `(b, t)` of a model, in order.
fn carve(cfg: &ModelConfig, b: usize, t: usize, cv: &mut Carver) -> Acts {
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
    let rows = |w: usize| n * w * BF16;
    const EMB: &str = "embedding, norm, smear";
    const RES: &str = "residual stream (L+1 copies)";
    const LAYER: &str = "saved per-layer activations";
    const HEAD: &str = "final norm, logits, losses";
    const BWD: &str = "backward scratch";
    let ids = cv.take(EMB, embedding::batch_bytes(n));
    let targets = embedding::targets_at(ids, n);
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
    Acts {
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
    }
}

/// The activation arena's layout for a micro-batch `(b, t)` of a model.
pub struct ArenaLayout {
    /// Total bytes (one allocation on a GPU).
    pub bytes: usize,
    /// Bytes per component, for the memory report.
    pub report: BTreeMap<&'static str, usize>,
    /// (offset, bytes) of every part, in order.
    pub parts: Vec<(usize, usize)>,
}

impl ArenaLayout {
    pub fn new(cfg: &ModelConfig, b: usize, t: usize) -> ArenaLayout {
        let mut cv = Carver::new(Placement::Plan);
        carve(cfg, b, t, &mut cv);
        ArenaLayout {
            bytes: cv.at.next_multiple_of(ALIGN),
            report: cv.report,
            parts: cv.parts,
        }
    }

    /// Arena bytes of a micro-batch `(b, t)`.
    pub fn size(cfg: &ModelConfig, b: usize, t: usize) -> usize {
        ArenaLayout::new(cfg, b, t).bytes
    }
}

/// The activation arena of the current micro-batch shape. On a device with guard pages (the emulator) every
/// part is its own allocation, so an overrun of one activation into the next is caught; on a GPU it is one.
pub(super) struct Arena {
    pub(super) b: usize,
    pub(super) t: usize,
    pub(super) acts: Acts,
    /// The ids of the micro-batch the last forward ran on.
    pub(super) ids: Option<DeviceIds>,
    _buffers: Vec<Buffer>,
}

impl Arena {
    /// Allocates the arena of micro-batches `(b, t)` on `dev`.
    pub(super) fn allocate(dev: &dyn Device, cfg: &ModelConfig, b: usize, t: usize) -> Result<Arena, DeviceError> {
        if dev.guard_pages() {
            let mut cv = Carver::new(Placement::EachPart(dev));
            let acts = carve(cfg, b, t, &mut cv);
            if let Some(e) = cv.error {
                return Err(e);
            }
            return Ok(Arena {
                b,
                t,
                acts,
                ids: None,
                _buffers: cv.buffers,
            });
        }
        let buf = dev.alloc(ArenaLayout::size(cfg, b, t))?;
        let acts = carve(cfg, b, t, &mut Carver::new(Placement::At(buf.ptr().0)));
        Ok(Arena {
            b,
            t,
            acts,
            ids: None,
            _buffers: vec![buf],
        })
    }
}

pub(super) fn gate_shape(cfg: &ModelConfig, n: usize) -> GateShape {
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
pub(super) fn muon_stacks(opt: &MuonAdamW) -> Vec<Stack> {
    let mut v: Vec<Stack> = Vec::new();
    for job in opt.plan(&NO_SETTINGS) {
        if let StepJob::Muon {
            count, dims: (m, n), ..
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

/// Device memory per component for micro-batches `(b, t)`, and the total, as printable lines; with the
/// device's free memory and the largest batch that fits when the device reports them. `allocated`: the
/// bytes this model holds on the device now (they count as available to the plan).
pub(super) fn memory_report(
    cfg: &ModelConfig,
    table: &ParamTable,
    opt: &MuonAdamW,
    dev: &dyn Device,
    arena_now: Option<(usize, usize)>,
    b: usize,
    t: usize,
) -> String {
    let mut out = String::new();
    let mut total = 0;
    let arena = ArenaLayout::new(cfg, b, t);
    let stat = static_memory(table, opt);
    for (what, bytes) in stat.iter().chain(arena.report.iter()) {
        let _ = writeln!(out, "  {what:<32} {:>10.1} MiB", *bytes as f64 / (1 << 20) as f64);
        total += bytes;
    }
    let _ = write!(
        out,
        "  {:<32} {:>10.1} MiB (device batch {b} x {t})",
        "total",
        total as f64 / (1 << 20) as f64
    );
    if let Some((free, device_total)) = dev.memory_info() {
        let _ = write!(
            out,
            "\n  device: {:.1} GiB total, {:.1} GiB free; largest device batch at T = {t}: {}",
            device_total as f64 / (1u64 << 30) as f64,
            free as f64 / (1u64 << 30) as f64,
            largest_batch_now(cfg, table, opt, arena_now, t, free)
                .map_or("none (the model alone does not fit)".to_string(), |x| x.to_string())
        );
    }
    out
}

/// The bytes a model holds on its device: its static memory and, when allocated, the arena of micro-batches
/// `arena_now`.
pub fn held_bytes(cfg: &ModelConfig, table: &ParamTable, opt: &MuonAdamW, arena_now: Option<(usize, usize)>) -> usize {
    static_memory(table, opt).values().sum::<usize>() + arena_now.map_or(0, |(ab, at)| ArenaLayout::size(cfg, ab, at))
}

/// [`largest_batch`] for a model already on its device, whose `free` bytes (as the device reports them now)
/// exclude what the model holds: that memory counts as available (once).
pub fn largest_batch_now(
    cfg: &ModelConfig,
    table: &ParamTable,
    opt: &MuonAdamW,
    arena_now: Option<(usize, usize)>,
    t: usize,
    free: usize,
) -> Option<usize> {
    largest_batch(cfg, table, opt, t, free + held_bytes(cfg, table, opt, arena_now))
}

/// The largest device batch at sequence length `t` whose parameters, gradients, optimizer state and
/// activations fit in `free` bytes.
pub fn largest_batch(cfg: &ModelConfig, table: &ParamTable, opt: &MuonAdamW, t: usize, free: usize) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::SetupArgs;

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
    fn a_model_on_its_device_counts_its_own_memory_once() {
        let c = cfg(4);
        let table = ParamTable::new(&c);
        let opt = MuonAdamW::new(&table, &SetupArgs::default());
        let fixed: usize = static_memory(&table, &opt).values().sum();
        for b in [1, 3, 8] {
            // A device with room for exactly b rows before the model was put on it...
            let total_free = fixed + ArenaLayout::size(&c, b, 2048);
            assert_eq!(largest_batch(&c, &table, &opt, 2048, total_free), Some(b));
            // ...reports `total_free - fixed` once the model is there, and the same b must come out.
            let now = total_free - fixed;
            assert_eq!(largest_batch_now(&c, &table, &opt, None, 2048, now), Some(b));
            // With an arena of 1 x 2048 allocated too.
            let arena = ArenaLayout::size(&c, 1, 2048);
            assert_eq!(
                largest_batch_now(&c, &table, &opt, Some((1, 2048)), 2048, now - arena),
                Some(b)
            );
        }
    }

    #[test]
    fn arena_grows_with_the_batch_and_reports_every_byte() {
        let c = cfg(2);
        let (a1, a2) = (ArenaLayout::new(&c, 1, 256), ArenaLayout::new(&c, 2, 256));
        assert!(a2.bytes > a1.bytes && a2.bytes <= 2 * a1.bytes + ALIGN * a1.parts.len());
        let reported: usize = a1.report.values().sum();
        assert!(reported <= a1.bytes && a1.bytes - reported < ALIGN * a1.parts.len());
        // Parts are disjoint and in order.
        for w in a1.parts.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0);
        }
    }
}
