//! The GPT's forward and backward on a kernel device, to be read side by side with the CPU reference
//! ([`crate::cpu::gpt`]): the same ops in the same order, as kernel launches and GEMMs over the activation
//! arena ([`super::memory`]) and the flat parameter buffers of [`KernelModel`].

use super::kernels::attention::{self, AttnShape};
use super::kernels::elementwise::{add_bf16, add_f32_bf16, relu2_backward, relu2_forward};
use super::kernels::model_ops;
use super::kernels::reduce::{self, Reduction};
use super::kernels::rope_qknorm::{rope_qknorm_backward, rope_qknorm_forward, RopeShape};
use super::kernels::{cross_entropy, embedding, rmsnorm};
use super::memory::{gate_shape, Acts, BF16, F32};
use super::model::KernelModel;
use super::{DevPtr, Dtype, Gemm, Op};
use crate::config::SMEAR_CHANNELS;
use crate::model::check_batch;
use crate::params::Slot;
use half::bf16;

impl KernelModel {
    fn gemm(&self, g: Gemm) -> crate::device::Result<()> {
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
    ) -> crate::device::Result<()> {
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
    ) -> crate::device::Result<()> {
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
    pub(super) fn forward(
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
    ) -> crate::device::Result<f32> {
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
    fn gather_ve(&self, a: &Acts, ids: &[u32], kv: usize) -> crate::device::Result<()> {
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
    pub(super) fn backward(&self, ids: &[u32], b: usize, t: usize) -> crate::device::Result<()> {
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
}
