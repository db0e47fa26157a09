//! The GPT's forward and backward on a kernel device, to be read side by side with the CPU reference
//! ([`crate::cpu::gpt`]): the same ops in the same order, as kernel launches and GEMMs over the activation
//! arena ([`super::memory`]) and the flat parameter buffers of [`KernelModel`]. One line per op: the
//! launchers take (outputs, saved statistics, inputs, weights, sizes) as the CPU functions do; GEMMs go
//! through [`KernelModel::linear`] and [`KernelModel::linear_backward`] over [`Mat`] views.

use super::kernels::attention::{self, AttnShape};
use super::kernels::elementwise::{add_bf16, add_f32_bf16, relu2_backward, relu2_forward};
use super::kernels::model_ops;
use super::kernels::reduce::{self, Reduction};
use super::kernels::rope_qknorm::{rope_qknorm_backward, rope_qknorm_forward, RopeShape};
use super::kernels::{cross_entropy, embedding, rmsnorm};
use super::memory::{gate_shape, Acts, BF16, F32};
use super::model::KernelModel;
use super::{DevPtr, Dtype, Gemm, Op, Result};
use crate::config::SMEAR_CHANNELS;
use crate::model::check_batch;
use crate::params::Slot;
use half::bf16;

/// A bf16 activation matrix of `cols` columns whose rows are `ld` elements apart (`ld > cols` for q and k,
/// which sit side by side in one `(n, qd + kvd)` buffer).
#[derive(Clone, Copy)]
struct Mat {
    ptr: DevPtr,
    cols: usize,
    ld: usize,
}

/// A dense `(rows, cols)` bf16 matrix at `ptr`.
fn mat(ptr: DevPtr, cols: usize) -> Mat {
    Mat { ptr, cols, ld: cols }
}

/// `cols` columns of a matrix whose rows are `ld` elements apart.
fn strided(ptr: DevPtr, cols: usize, ld: usize) -> Mat {
    Mat { ptr, cols, ld }
}

impl KernelModel {
    /// `out (n, m) = x (n, k) @ Wᵀ` with W `(m, k)` bf16 at `w`; m and k are the views' widths.
    fn linear(&self, out: Mat, x: Mat, w: DevPtr, n: usize) -> Result<()> {
        self.linear_beta(out, x, w, n, 0.0)
    }

    /// `out (n, m) += x (n, k) @ Wᵀ` (a residual added in the GEMM's epilogue).
    fn linear_add(&self, out: Mat, x: Mat, w: DevPtr, n: usize) -> Result<()> {
        self.linear_beta(out, x, w, n, 1.0)
    }

    fn linear_beta(&self, out: Mat, x: Mat, w: DevPtr, n: usize, beta: f32) -> Result<()> {
        let g = Gemm::new(n, out.cols, x.cols, x.ptr, w, out.ptr, Dtype::Bf16).transpose_b();
        self.dev.gemm(&Gemm {
            lda: x.ld,
            ldc: out.ld,
            beta,
            ..g
        })
    }

    /// Backward of [`KernelModel::linear`]: `dx (n, k) bf16 = dout (n, m) @ W` and `dw (m, k) f32 += doutᵀ @ x`
    /// (x dense).
    fn linear_backward(&self, dx: DevPtr, dw: DevPtr, dout: Mat, x: Mat, w: DevPtr, n: usize) -> Result<()> {
        self.linear_backward_beta(dx, 0.0, dw, dout, x, w, n)
    }

    /// [`KernelModel::linear_backward`] adding into `dx` (a second branch reading the same input).
    fn linear_backward_add(&self, dx: DevPtr, dw: DevPtr, dout: Mat, x: Mat, w: DevPtr, n: usize) -> Result<()> {
        self.linear_backward_beta(dx, 1.0, dw, dout, x, w, n)
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_backward_beta(
        &self,
        dx: DevPtr,
        dx_beta: f32,
        dw: DevPtr,
        dout: Mat,
        x: Mat,
        w: DevPtr,
        n: usize,
    ) -> Result<()> {
        let (k, m) = (x.cols, dout.cols);
        debug_assert_eq!(x.ld, k, "linear_backward reads x dense");
        let gx = Gemm::new(n, k, m, dout.ptr, w, dx, Dtype::Bf16);
        self.dev.gemm(&Gemm {
            lda: dout.ld,
            beta: dx_beta,
            ..gx
        })?;
        let gw = Gemm::new(m, k, n, dout.ptr, x.ptr, dw, Dtype::F32);
        self.dev.gemm(&Gemm {
            op_a: Op::T,
            lda: dout.ld,
            beta: 1.0,
            ..gw
        })
    }

    /// Forward over `ids (b, t)`. With targets: per-token losses into the arena, their sum into the f32 at
    /// `loss_sum` (on the device: nothing is read back) and, when `dloss != 0`, the logits replaced by the
    /// gradient of `dloss · Σ losses` (ready for [`KernelModel::backward`]). The ids, their buckets and the
    /// targets go to the device in one upload before the first launch; after it the forward only queues work.
    pub(super) fn forward(
        &mut self,
        ids: &[u32],
        targets: Option<&[i32]>,
        b: usize,
        t: usize,
        dloss: f32,
        loss_sum: Option<DevPtr>,
    ) -> std::result::Result<(), String> {
        check_batch(&self.config, self.positions, ids, targets, b, t)?;
        self.ensure_arena(b, t)?;
        let arena = self.arena.as_mut().expect("arena allocated");
        let vp = self.config.padded_vocab();
        let uploaded = embedding::upload_batch(self.dev.as_ref(), arena.acts.ids, ids, targets, vp);
        arena.ids = Some(uploaded.map_err(|e| format!("{}: forward: {e}", self.dev.name()))?);
        let loss_sum = loss_sum.unwrap_or(arena.acts.loss_sum);
        self.forward_kernels(ids, targets.is_some(), b, t, dloss, loss_sum)
            .map_err(|e| format!("{}: forward: {e}", self.dev.name()))
    }

    fn forward_kernels(
        &self,
        ids: &[u32],
        targets: bool,
        b: usize,
        t: usize,
        dloss: f32,
        loss_sum: DevPtr,
    ) -> Result<()> {
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
        let (cos, sin) = (self.cos.ptr(), self.sin.ptr());

        // Embedding, norm, smear: res[0] = x0.
        embedding::embedding_forward(dev, a.emb, a.ids, self.weight(Slot::Wte, 0), ids, vp, c)?;
        rmsnorm::rmsnorm_forward(dev, a.xe, a.rstd0, a.emb, n, c)?;
        let (smear_gate, smear_lambda) = (self.master(Slot::SmearGate, 0), self.master(Slot::SmearLambda, 0));
        model_ops::smear_forward(
            dev,
            a.res[0],
            a.smear_g,
            a.xe,
            smear_gate,
            smear_lambda,
            n,
            t,
            c,
            SMEAR_CHANNELS,
        )?;

        for (i, la) in a.layers.iter().enumerate() {
            // Attention: xa = rl · res[i] + xl · x0, xb = xa + attn(norm(xa)) · Woᵀ.
            let lambdas = self.lambda_pairs.at::<f32>(2 * i);
            rmsnorm::mix_rmsnorm_forward(dev, la.xa, la.xn1, la.rstd1, a.res[i], a.res[0], lambdas, n, c)?;
            // q‖k side by side in `qk`; v on its own (the gate adds into it, attention reads it dense).
            let (qk_q, qk_k) = (
                strided(la.qk, qd, qd + kvd),
                strided(la.qk.at::<bf16>(qd), kvd, qd + kvd),
            );
            let xn1 = mat(la.xn1, c);
            self.linear(qk_q, xn1, self.weight(Slot::AttnQ, i), n)?;
            self.linear(qk_k, xn1, self.weight(Slot::AttnK, i), n)?;
            self.linear(mat(la.v, kvd), xn1, self.weight(Slot::AttnV, i), n)?;
            if let Some(kv) = cfg.ve_index(i) {
                self.gather_ve(a, ids, kv)?;
                let gate_w = self.master(Slot::VeGate, kv);
                model_ops::ve_gate_forward(dev, la.v, la.gate, la.xn1, a.ve, gate_w, gate_shape(cfg, n))?;
            }
            rope_qknorm_forward(dev, la.q, la.rstd_q, qk_q.ptr, cos, sin, self.rope_shape(n, t, nh))?;
            rope_qknorm_forward(dev, la.k, la.rstd_k, qk_k.ptr, cos, sin, self.rope_shape(n, t, nkv))?;
            let shape = self.attn_shape(b, t, i);
            attention::attention_forward(dev, self.attn, la.y, la.lse, la.q, la.k, la.v, shape)?;
            dev.copy(la.xb, la.xa, n * c * BF16)?;
            self.linear_add(mat(la.xb, c), mat(la.y, qd), self.weight(Slot::AttnProj, i), n)?;

            // MLP: res[i+1] = xb + relu²(norm(xb) · Wfcᵀ) · Wmpᵀ.
            rmsnorm::rmsnorm_forward(dev, la.xn2, la.rstd2, la.xb, n, c)?;
            self.linear(mat(la.h, md), mat(la.xn2, c), self.weight(Slot::MlpFc, i), n)?;
            relu2_forward(dev, a.wide1, la.h, n * md)?;
            dev.copy(a.res[i + 1], la.xb, n * c * BF16)?;
            self.linear_add(mat(a.res[i + 1], c), mat(a.wide1, md), self.weight(Slot::MlpProj, i), n)?;
        }

        // Backout, final norm, head, loss.
        let (l, mid) = (cfg.n_layer, cfg.backout_layer());
        let backout = self.master(Slot::BackoutLambda, 0);
        model_ops::backout_forward(dev, a.xf, a.res[l], a.res[mid + 1], backout, n * c)?;
        rmsnorm::rmsnorm_forward(dev, a.xnf, a.rstd_f, a.xf, n, c)?;
        self.linear(mat(a.logits, vp), mat(a.xnf, c), self.weight(Slot::LmHead, 0), n)?;
        if !targets {
            return Ok(());
        }
        // The targets came with the ids (`forward`): no upload here, which would wait for the whole forward.
        cross_entropy::softcap_ce(dev, a.logits, a.losses, a.targets, dloss, n, v, vp)?;
        reduce::reduce(dev, loss_sum, a.reduce_scratch, a.losses, Dtype::F32, n, Reduction::Sum)
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
    fn gather_ve(&self, a: &Acts, ids: &[u32], kv: usize) -> Result<()> {
        let cfg = &self.config;
        let table = self.weight(Slot::ValueEmbeds, kv);
        embedding::embedding_forward(
            self.dev.as_ref(),
            a.ve,
            a.ids,
            table,
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
    pub(super) fn backward(&self, ids: &[u32], b: usize, t: usize) -> Result<()> {
        let cfg = &self.config;
        let dev = self.dev.as_ref();
        let arena = self.arena.as_ref().expect("arena allocated");
        let (a, tokens) = (&arena.acts, arena.ids.as_ref().expect("forward ran"));
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
        let (cos, sin) = (self.cos.ptr(), self.sin.ptr());

        // Head (the logits hold their gradient now), final norm and backout.
        let dlogits = mat(a.logits, vp);
        self.linear_backward(
            a.dxn,
            self.grad(Slot::LmHead, 0),
            dlogits,
            mat(a.xnf, c),
            self.weight(Slot::LmHead, 0),
            n,
        )?;
        let mid = cfg.backout_layer();
        let (backout, dbackout) = (self.master(Slot::BackoutLambda, 0), self.grad(Slot::BackoutLambda, 0));
        rmsnorm::rmsnorm_backout_backward(
            dev,
            a.dres,
            a.dx_mid,
            dbackout,
            a.pscratch,
            a.dxn,
            a.xf,
            a.rstd_f,
            a.res[mid + 1],
            backout,
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
            // MLP: res[i+1] = xb + relu²(xn2 · Wfcᵀ) · Wmpᵀ (relu² recomputed from the saved h).
            let dres = mat(a.dres, c);
            relu2_forward(dev, a.wide1, la.h, n * md)?;
            self.linear_backward(
                a.wide2,
                self.grad(Slot::MlpProj, i),
                dres,
                mat(a.wide1, md),
                self.weight(Slot::MlpProj, i),
                n,
            )?;
            relu2_backward(dev, a.wide1, a.wide2, la.h, n * md)?;
            self.linear_backward(
                a.dxn,
                self.grad(Slot::MlpFc, i),
                mat(a.wide1, md),
                mat(la.xn2, c),
                self.weight(Slot::MlpFc, i),
                n,
            )?;
            rmsnorm::rmsnorm_backward(dev, a.dres, a.dxn, la.xb, la.rstd2, n, c)?;

            // Attention: xb = xa + y · Woᵀ.
            self.linear_backward(
                a.dy,
                self.grad(Slot::AttnProj, i),
                dres,
                mat(la.y, qd),
                self.weight(Slot::AttnProj, i),
                n,
            )?;
            let shape = self.attn_shape(b, t, i);
            attention::attention_backward(
                dev, self.attn, a.dq, a.dk, a.dv, a.delta, a.dy, la.y, la.lse, la.q, la.k, la.v, shape,
            )?;
            let w = qd + kvd;
            let (dq_raw, dk_raw) = (strided(a.dqk, qd, w), strided(a.dqk.at::<bf16>(qd), kvd, w));
            let (q_raw, k_raw) = (la.qk, la.qk.at::<bf16>(qd));
            rope_qknorm_backward(
                dev,
                dq_raw.ptr,
                a.dq,
                q_raw,
                la.rstd_q,
                cos,
                sin,
                self.rope_shape(n, t, nh),
                w,
                false,
            )?;
            rope_qknorm_backward(
                dev,
                dk_raw.ptr,
                a.dk,
                k_raw,
                la.rstd_k,
                cos,
                sin,
                self.rope_shape(n, t, nkv),
                w,
                false,
            )?;
            let xn1 = mat(la.xn1, c);
            self.linear_backward(
                a.dxn,
                self.grad(Slot::AttnQ, i),
                dq_raw,
                xn1,
                self.weight(Slot::AttnQ, i),
                n,
            )?;
            self.linear_backward_add(
                a.dxn,
                self.grad(Slot::AttnK, i),
                dk_raw,
                xn1,
                self.weight(Slot::AttnK, i),
                n,
            )?;
            self.linear_backward_add(
                a.dxn,
                self.grad(Slot::AttnV, i),
                mat(a.dv, kvd),
                xn1,
                self.weight(Slot::AttnV, i),
                n,
            )?;
            if let Some(kv) = cfg.ve_index(i) {
                self.gather_ve(a, ids, kv)?;
                let (gate_w, dgate_w) = (self.master(Slot::VeGate, kv), self.grad(Slot::VeGate, kv));
                model_ops::ve_gate_backward(
                    dev,
                    a.dve,
                    a.dxn,
                    dgate_w,
                    a.pscratch,
                    a.dv,
                    la.gate,
                    la.xn1,
                    a.ve,
                    gate_w,
                    gate_shape(cfg, n),
                )?;
                embedding::embedding_backward(dev, self.grad(Slot::ValueEmbeds, kv), a.dve, tokens, kvd)?;
            }
            // Norm and lambda mix (xa = rl · res[i] + xl · x0) in one pass.
            let (lambdas, dlambdas) = (self.lambda_pairs.at::<f32>(2 * i), self.dlambda_pairs.at::<f32>(2 * i));
            rmsnorm::rmsnorm_mix_backward(
                dev, a.dres, a.dx0, dlambdas, a.pscratch, a.dres, a.dxn, la.xa, la.rstd1, a.res[i], a.res[0], lambdas,
                n, c,
            )?;
        }
        // Layer 0's residual input is x0 itself.
        add_f32_bf16(dev, a.dres, a.dx0, a.dres, n * c)?;

        // Smear, embedding norm, gather.
        dev.zero(a.dxe, rows(c))?;
        let (smear_gate, smear_lambda) = (self.master(Slot::SmearGate, 0), self.master(Slot::SmearLambda, 0));
        let (dsmear_gate, dsmear_lambda) = (self.grad(Slot::SmearGate, 0), self.grad(Slot::SmearLambda, 0));
        model_ops::smear_backward(
            dev,
            a.dxe,
            dsmear_gate,
            dsmear_lambda,
            a.pscratch,
            a.dres,
            a.xe,
            smear_gate,
            smear_lambda,
            n,
            t,
            c,
            SMEAR_CHANNELS,
        )?;
        dev.zero(a.dxn, rows(c))?;
        rmsnorm::rmsnorm_backward(dev, a.dxn, a.dxe, a.emb, a.rstd0, n, c)?;
        embedding::embedding_backward(dev, self.grad(Slot::Wte, 0), a.dxn, tokens, c)
    }
}
