//! The GPT of upstream nanochat on the CPU reference ops: forward (saving what backward needs) and backward,
//! over the flat parameter and gradient buffers laid out by the parameter table.
//!
//! Forward, per spec §1.4:
//!   x = rmsnorm(wte[idx]); x = smear(x); x0 = x
//!   for each layer i:  x = resid_λ[i]·x + x0_λ[i]·x0
//!                      x = x + attn(rmsnorm(x), ve_i)      (RoPE, QK-norm ×1.2, sliding window, GQA)
//!                      x = x + mlp(rmsnorm(x))             (ReLU²)
//!                      x_mid = x if i == L/2
//!   x = x − backout_λ·x_mid; logits = lm_head(rmsnorm(x))[:, :V]; 15·tanh(logits/15); cross-entropy
//!
//! [`Storage::Bf16`] rounds to bf16 wherever the kernel devices store bf16 (the parameter mirror, every saved
//! activation, every gradient that travels between kernels), computing in fp32 in between: the precision the
//! kernels can reach at best, used to tell expected bf16 error from a kernel bug (`parity --device cpu-bf16`).

use super::ops::{self, AttnShape};
use super::profile::{self, PhaseGuard};
use crate::config::{ModelConfig, ROPE_BASE};
use crate::model::check_batch;
use crate::params::{ParamTable, Slot};
use std::borrow::Cow;

/// Where the CPU reference keeps its numbers between ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// fp32 everywhere (upstream on a CPU).
    #[default]
    F32,
    /// Rounded to bf16 where the kernel devices store bf16 (see the module documentation).
    Bf16,
}

pub struct Gpt {
    pub config: ModelConfig,
    pub table: ParamTable,
    pub storage: Storage,
    cos: Vec<f32>,
    sin: Vec<f32>,
    windows: Vec<usize>,
}

/// One layer's matrices, (out, in): q (H·D, C), k/v (Hkv·D, C), attention proj (C, H·D), fc (4C, C), mlp proj (C, 4C).
struct LayerWeights<'a> {
    wq: &'a [f32],
    wk: &'a [f32],
    wv: &'a [f32],
    wo: &'a [f32],
    wfc: &'a [f32],
    wmp: &'a [f32],
}

/// What one layer's forward saves for its backward. Shapes with N = B·T rows.
struct LayerActs {
    x_in: Vec<f32>,                   // (N, C) residual stream entering the layer
    xa: Vec<f32>,                     // (N, C) after the lambda mix: the block input
    xn1: Vec<f32>,                    // (N, C) rmsnorm(xa)
    rstd1: Vec<f32>,                  // (N)
    q_rope: Vec<f32>,                 // (N, H·D) after RoPE, before QK-norm
    rstd_q: Vec<f32>,                 // (N·H)
    q: Vec<f32>,                      // (N, H·D) attention input
    k_rope: Vec<f32>,                 // (N, Hkv·D)
    rstd_k: Vec<f32>,                 // (N·Hkv)
    k: Vec<f32>,                      // (N, Hkv·D)
    v: Vec<f32>,                      // (N, Hkv·D) after the value-embedding gate
    ve: Option<(Vec<f32>, Vec<f32>)>, // ((N, Hkv·D) gathered value embedding, (N, Hkv) gate)
    y: Vec<f32>,                      // (N, H·D) attention output
    lse: Vec<f32>,                    // (B, H, T)
    xb: Vec<f32>,                     // (N, C) after the attention residual
    xn2: Vec<f32>,                    // (N, C)
    rstd2: Vec<f32>,                  // (N)
    h: Vec<f32>,                      // (N, 4C) c_fc output, before ReLU²
}

/// Result of a forward pass; keeps the activations for `backward`.
pub struct Forward {
    pub b: usize,
    pub t: usize,
    /// Mean cross-entropy over targets != -1 (NaN without targets or when every target is ignored).
    pub loss: f32,
    /// Per-token loss (N), 0 where the target is ignored; empty without targets.
    pub losses: Vec<f32>,
    /// Softcapped logits (N, Vp); only the first `vocab_size` columns are meaningful.
    pub logits: Vec<f32>,
    ids: Vec<u32>,
    targets: Vec<i32>,
    emb: Vec<f32>,
    rstd0: Vec<f32>,
    xe: Vec<f32>,
    x0: Vec<f32>,
    layers: Vec<LayerActs>,
    x_mid: Vec<f32>,
    xf: Vec<f32>,
    rstd_f: Vec<f32>,
    xnf: Vec<f32>,
}

impl Forward {
    /// Softcapped logits sliced to the real vocabulary, (N, V).
    pub fn logits_unpadded(&self, v: usize) -> Vec<f32> {
        let vp = self.logits.len() / (self.b * self.t);
        self.logits
            .chunks_exact(vp)
            .flat_map(|r| r[..v].iter().copied())
            .collect()
    }

    /// Number of targets that are not ignored.
    pub fn valid_targets(&self) -> usize {
        self.targets.iter().filter(|&&y| y >= 0).count()
    }
}

impl Gpt {
    pub fn new(config: &ModelConfig) -> Result<Gpt, String> {
        config.validate()?;
        super::keep_freed_memory();
        let table = ParamTable::new(config);
        // Upstream precomputes 10x the sequence length of RoPE positions.
        let (cos, sin) = ops::rope_tables(10 * config.sequence_len, config.head_dim(), ROPE_BASE);
        Ok(Gpt {
            config: config.clone(),
            table,
            storage: Storage::F32,
            cos,
            sin,
            windows: config.window_sizes(),
        })
    }

    /// Rounds `v` to bf16 in [`Storage::Bf16`]; nothing in fp32.
    fn store(&self, v: &mut [f32]) {
        if self.storage == Storage::Bf16 {
            v.iter_mut().for_each(|x| *x = half::bf16::from_f32(*x).to_f32());
        }
    }

    /// The parameters as the ops read them: in [`Storage::Bf16`], the bf16 mirror of the matrices and
    /// embeddings (the scalars and the small gates stay fp32, as the kernels read them).
    fn stored_params<'a>(&self, params: &'a [f32]) -> Cow<'a, [f32]> {
        if self.storage == Storage::F32 {
            return Cow::Borrowed(params);
        }
        let mut p = params.to_vec();
        for e in &self.table.params {
            let fp32 = matches!(
                e.slot,
                Slot::ResidLambdas
                    | Slot::X0Lambdas
                    | Slot::SmearLambda
                    | Slot::BackoutLambda
                    | Slot::SmearGate
                    | Slot::VeGate
            );
            if !fp32 {
                self.store(&mut p[e.range.clone()]);
            }
        }
        Cow::Owned(p)
    }

    fn p<'a>(&self, params: &'a [f32], slot: Slot, k: usize) -> &'a [f32] {
        &params[self.table.range(slot, k)]
    }

    /// Layer i's slices of the stacked weights.
    fn layer<'a>(&self, params: &'a [f32], i: usize) -> LayerWeights<'a> {
        LayerWeights {
            wq: self.p(params, Slot::AttnQ, i),
            wk: self.p(params, Slot::AttnK, i),
            wv: self.p(params, Slot::AttnV, i),
            wo: self.p(params, Slot::AttnProj, i),
            wfc: self.p(params, Slot::MlpFc, i),
            wmp: self.p(params, Slot::MlpProj, i),
        }
    }

    fn scalar(&self, params: &[f32], slot: Slot, i: usize) -> f32 {
        params[self.table.slot(slot).offset + i]
    }

    /// Forward over `ids (b, t)`; with `targets` also the loss. Errors on out-of-range ids or lengths.
    pub fn forward(
        &self,
        params: &[f32],
        ids: &[u32],
        targets: Option<&[i32]>,
        b: usize,
        t: usize,
    ) -> Result<Forward, String> {
        let cfg = &self.config;
        let (c, nh, nkv, d, vp, v) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim(),
            cfg.padded_vocab(),
            cfg.vocab_size,
        );
        let n = b * t;
        if params.len() != self.table.numel {
            return Err(format!(
                "parameter buffer has {} elements, the model needs {}",
                params.len(),
                self.table.numel
            ));
        }
        check_batch(cfg, self.cos.len() / (d / 2), ids, targets, b, t)?;
        let _phase = PhaseGuard::enter("forward");
        let params = &*self.stored_params(params);

        // Embedding, norm, smear.
        let mut emb = vec![0.0; n * c];
        ops::embedding_forward(&mut emb, ids, self.p(params, Slot::Wte, 0), c);
        let (mut xe, mut rstd0) = (vec![0.0; n * c], vec![0.0; n]);
        ops::rmsnorm_forward(&mut xe, &mut rstd0, &emb, c);
        self.store(&mut xe);
        let (mut x0, mut smear_g) = (vec![0.0; n * c], vec![0.0; n]); // gate values: backward recomputes them
        let smear_lambda = self.scalar(params, Slot::SmearLambda, 0);
        ops::smear_forward(
            &mut x0,
            &mut smear_g,
            &xe,
            self.p(params, Slot::SmearGate, 0),
            smear_lambda,
            b,
            t,
            c,
        );
        self.store(&mut x0);

        let mut x = x0.clone();
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let mut x_mid = Vec::new();
        for i in 0..cfg.n_layer {
            let mut a = LayerActs::zeros(n, c, nh, nkv, d, b, t);
            let LayerWeights {
                wq,
                wk,
                wv,
                wo,
                wfc,
                wmp,
            } = self.layer(params, i);
            let (rl, xl) = (
                self.scalar(params, Slot::ResidLambdas, i),
                self.scalar(params, Slot::X0Lambdas, i),
            );

            ops::lambda_mix_forward(&mut a.xa, &x, &x0, rl, xl);
            self.store(&mut a.xa);
            a.x_in = x;
            ops::rmsnorm_forward(&mut a.xn1, &mut a.rstd1, &a.xa, c);
            self.store(&mut a.xn1);
            ops::linear_forward(&mut a.q_rope, &a.xn1, wq, n, c, nh * d);
            ops::linear_forward(&mut a.k_rope, &a.xn1, wk, n, c, nkv * d);
            ops::linear_forward(&mut a.v, &a.xn1, wv, n, c, nkv * d);
            self.store(&mut a.q_rope);
            self.store(&mut a.k_rope);
            self.store(&mut a.v);
            if let Some(kv) = cfg.ve_index(i) {
                let mut ve = vec![0.0; n * nkv * d];
                ops::embedding_forward(&mut ve, ids, self.p(params, Slot::ValueEmbeds, kv), nkv * d);
                let mut gate = vec![0.0; n * nkv];
                ops::ve_gate_forward(
                    &mut a.v,
                    &mut gate,
                    &a.xn1,
                    &ve,
                    self.p(params, Slot::VeGate, kv),
                    n,
                    c,
                    nkv,
                    d,
                );
                self.store(&mut a.v);
                a.ve = Some((ve, gate));
            }
            ops::rope_forward(&mut a.q_rope, &self.cos, &self.sin, t, nh, d, 0);
            ops::rope_forward(&mut a.k_rope, &self.cos, &self.sin, t, nkv, d, 0);
            ops::qk_norm_forward(&mut a.q, &mut a.rstd_q, &a.q_rope, d);
            ops::qk_norm_forward(&mut a.k, &mut a.rstd_k, &a.k_rope, d);
            self.store(&mut a.q);
            self.store(&mut a.k);
            let shape = AttnShape {
                b,
                t,
                h: nh,
                hkv: nkv,
                d,
                window: self.windows[i],
            };
            ops::attention_forward(&mut a.y, &mut a.lse, &a.q, &a.k, &a.v, shape);
            self.store(&mut a.y);
            ops::linear_forward(&mut a.xb, &a.y, wo, n, nh * d, c);
            a.xb.iter_mut().zip(&a.xa).for_each(|(o, r)| *o += r);
            self.store(&mut a.xb);

            ops::rmsnorm_forward(&mut a.xn2, &mut a.rstd2, &a.xb, c);
            self.store(&mut a.xn2);
            ops::linear_forward(&mut a.h, &a.xn2, wfc, n, c, 4 * c);
            self.store(&mut a.h);
            let mut act = vec![0.0; n * 4 * c];
            ops::relu2_forward(&mut act, &a.h);
            self.store(&mut act);
            let mut out = vec![0.0; n * c];
            ops::linear_forward(&mut out, &act, wmp, n, 4 * c, c);
            out.iter_mut().zip(&a.xb).for_each(|(o, r)| *o += r);
            self.store(&mut out);
            if i == cfg.backout_layer() {
                x_mid = out.clone();
            }
            x = out;
            layers.push(a);
        }

        let mut xf = vec![0.0; n * c];
        ops::backout_forward(&mut xf, &x, &x_mid, self.scalar(params, Slot::BackoutLambda, 0));
        let (mut xnf, mut rstd_f) = (vec![0.0; n * c], vec![0.0; n]);
        self.store(&mut xf);
        ops::rmsnorm_forward(&mut xnf, &mut rstd_f, &xf, c);
        self.store(&mut xnf);
        let mut logits = vec![0.0; n * vp];
        {
            let _prof = profile::span("lm_head");
            ops::linear_forward(&mut logits, &xnf, self.p(params, Slot::LmHead, 0), n, c, vp);
        }
        self.store(&mut logits);

        let (mut losses, mut loss, tg) = (Vec::new(), f32::NAN, targets.map(<[i32]>::to_vec).unwrap_or_default());
        if let Some(y) = targets {
            losses = vec![0.0; n];
            ops::softcap_ce_forward(&mut losses, &mut logits, y, v, vp);
            // A batch without a supervised target (an all-masked SFT micro-batch) has loss 0, not 0/0.
            let valid = y.iter().filter(|&&y| y >= 0).count().max(1);
            loss = (losses.iter().map(|&l| l as f64).sum::<f64>() / valid as f64) as f32;
        } else {
            for row in logits.chunks_exact_mut(vp) {
                row[..v].iter_mut().for_each(|z| *z = crate::config::softcap(*z));
            }
        }
        Ok(Forward {
            b,
            t,
            loss,
            losses,
            logits,
            ids: ids.to_vec(),
            targets: tg,
            emb,
            rstd0,
            xe,
            x0,
            layers,
            x_mid,
            xf,
            rstd_f,
            xnf,
        })
    }

    /// The gradient of the mean loss: `dloss = 1 / valid` for every non-ignored target.
    pub fn mean_dloss(fwd: &Forward) -> Vec<f32> {
        let valid = fwd.valid_targets().max(1) as f32;
        fwd.targets
            .iter()
            .map(|&y| if y >= 0 { 1.0 / valid } else { 0.0 })
            .collect()
    }

    /// Backward of the objective whose gradient with respect to each token's loss is `dloss (N)`; **adds** into
    /// `grads` (same layout as the parameters), so micro-batches accumulate.
    pub fn backward(&self, params: &[f32], fwd: &Forward, dloss: &[f32], grads: &mut [f32]) {
        self.backward_notify(params, fwd, dloss, grads, &mut |_, _, _| {});
    }

    /// [`Gpt::backward`] that calls `ready(slot, k, gradient)` as soon as the gradient of a large embedding-like
    /// parameter is complete for this micro-batch (lm_head first, then each layer's value embedding, from the
    /// last layer down), while the backward goes on: what a data-parallel step reduces early (overlap).
    pub fn backward_notify(
        &self,
        params: &[f32],
        fwd: &Forward,
        dloss: &[f32],
        grads: &mut [f32],
        ready: &mut dyn FnMut(Slot, usize, &[f32]),
    ) {
        let cfg = &self.config;
        let (c, nh, nkv, d, vp, v) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim(),
            cfg.padded_vocab(),
            cfg.vocab_size,
        );
        let (b, t) = (fwd.b, fwd.t);
        let n = b * t;
        assert!(
            fwd.targets.len() == n && dloss.len() == n,
            "backward needs a forward with targets"
        );
        assert_eq!(grads.len(), self.table.numel);
        let _phase = PhaseGuard::enter("backward");
        let params = &*self.stored_params(params);
        let r = |slot, k| self.table.range(slot, k);
        let at = |slot: Slot, i: usize| self.table.slot(slot).offset + i;

        // Head and final norm.
        let mut dlogits = vec![0.0; n * vp];
        ops::softcap_ce_backward(&mut dlogits, &fwd.logits, &fwd.targets, dloss, v, vp);
        self.store(&mut dlogits);
        let mut dxnf = vec![0.0; n * c];
        let wlm = self.p(params, Slot::LmHead, 0);
        let lm_prof = profile::span("lm_head");
        ops::linear_backward(
            Some(&mut dxnf),
            &mut grads[r(Slot::LmHead, 0)],
            &dlogits,
            &fwd.xnf,
            wlm,
            n,
            c,
            vp,
        );
        drop((lm_prof, dlogits));
        ready(Slot::LmHead, 0, &grads[r(Slot::LmHead, 0)]);
        self.store(&mut dxnf);
        let mut dxf = vec![0.0; n * c];
        ops::rmsnorm_backward(&mut dxf, &dxnf, &fwd.xf, &fwd.rstd_f, c);
        let mut dx = vec![0.0; n * c];
        let mut dx_mid = vec![0.0; n * c];
        let backout = self.scalar(params, Slot::BackoutLambda, 0);
        grads[at(Slot::BackoutLambda, 0)] += ops::backout_backward(&mut dx, &mut dx_mid, &dxf, &fwd.x_mid, backout);
        self.store(&mut dx);
        self.store(&mut dx_mid);

        let mut dx0 = vec![0.0; n * c];
        for i in (0..cfg.n_layer).rev() {
            let a = &fwd.layers[i];
            if i == cfg.backout_layer() {
                dx.iter_mut().zip(&dx_mid).for_each(|(g, m)| *g += m);
                self.store(&mut dx);
            }
            let LayerWeights {
                wq,
                wk,
                wv,
                wo,
                wfc,
                wmp,
            } = self.layer(params, i);

            // MLP: out = xb + relu²(xn2 · Wfcᵀ) · Wmpᵀ; dx is the gradient of `out`.
            let mut act = vec![0.0; n * 4 * c];
            ops::relu2_forward(&mut act, &a.h);
            let mut dact = vec![0.0; n * 4 * c];
            ops::linear_backward(
                Some(&mut dact),
                &mut grads[r(Slot::MlpProj, i)],
                &dx,
                &act,
                wmp,
                n,
                4 * c,
                c,
            );
            self.store(&mut dact);
            let mut dh = vec![0.0; n * 4 * c];
            ops::relu2_backward(&mut dh, &dact, &a.h);
            self.store(&mut dh);
            drop((act, dact));
            let mut dxn2 = vec![0.0; n * c];
            ops::linear_backward(
                Some(&mut dxn2),
                &mut grads[r(Slot::MlpFc, i)],
                &dh,
                &a.xn2,
                wfc,
                n,
                c,
                4 * c,
            );
            self.store(&mut dxn2);
            let mut dxb = dx; // residual path
            ops::rmsnorm_backward(&mut dxb, &dxn2, &a.xb, &a.rstd2, c);
            self.store(&mut dxb);

            // Attention: xb = xa + y · Woᵀ.
            let mut dy = vec![0.0; n * nh * d];
            ops::linear_backward(
                Some(&mut dy),
                &mut grads[r(Slot::AttnProj, i)],
                &dxb,
                &a.y,
                wo,
                n,
                nh * d,
                c,
            );
            self.store(&mut dy);
            let (mut dq, mut dk, mut dv) = (vec![0.0; n * nh * d], vec![0.0; n * nkv * d], vec![0.0; n * nkv * d]);
            let shape = AttnShape {
                b,
                t,
                h: nh,
                hkv: nkv,
                d,
                window: self.windows[i],
            };
            ops::attention_backward(&mut dq, &mut dk, &mut dv, &dy, &a.y, &a.lse, &a.q, &a.k, &a.v, shape);
            self.store(&mut dq);
            self.store(&mut dk);
            self.store(&mut dv);
            let (mut dq_rope, mut dk_rope) = (vec![0.0; n * nh * d], vec![0.0; n * nkv * d]);
            ops::qk_norm_backward(&mut dq_rope, &dq, &a.q_rope, &a.rstd_q, d);
            ops::qk_norm_backward(&mut dk_rope, &dk, &a.k_rope, &a.rstd_k, d);
            ops::rope_backward(&mut dq_rope, &self.cos, &self.sin, t, nh, d, 0);
            ops::rope_backward(&mut dk_rope, &self.cos, &self.sin, t, nkv, d, 0);
            self.store(&mut dq_rope);
            self.store(&mut dk_rope);
            let mut dxn1 = vec![0.0; n * c];
            if let (Some(kv), Some((ve, gate))) = (cfg.ve_index(i), &a.ve) {
                let mut dve = vec![0.0; n * nkv * d];
                let wg = self.p(params, Slot::VeGate, kv);
                let mut dwg = vec![0.0; wg.len()];
                ops::ve_gate_backward(&mut dve, &mut dwg, &mut dxn1, &dv, gate, &a.xn1, ve, wg, n, c, nkv, d);
                self.store(&mut dve);
                self.store(&mut dxn1);
                grads[r(Slot::VeGate, kv)]
                    .iter_mut()
                    .zip(&dwg)
                    .for_each(|(g, x)| *g += x);
                ops::embedding_backward(&mut grads[r(Slot::ValueEmbeds, kv)], &dve, &fwd.ids, nkv * d);
                ready(Slot::ValueEmbeds, kv, &grads[r(Slot::ValueEmbeds, kv)]);
            }
            ops::linear_backward(
                Some(&mut dxn1),
                &mut grads[r(Slot::AttnQ, i)],
                &dq_rope,
                &a.xn1,
                wq,
                n,
                c,
                nh * d,
            );
            ops::linear_backward(
                Some(&mut dxn1),
                &mut grads[r(Slot::AttnK, i)],
                &dk_rope,
                &a.xn1,
                wk,
                n,
                c,
                nkv * d,
            );
            ops::linear_backward(
                Some(&mut dxn1),
                &mut grads[r(Slot::AttnV, i)],
                &dv,
                &a.xn1,
                wv,
                n,
                c,
                nkv * d,
            );
            self.store(&mut dxn1);
            let mut dxa = dxb;
            ops::rmsnorm_backward(&mut dxa, &dxn1, &a.xa, &a.rstd1, c);

            // Lambda mix: xa = rl · x_in + xl · x0.
            let (rl, xl) = (
                self.scalar(params, Slot::ResidLambdas, i),
                self.scalar(params, Slot::X0Lambdas, i),
            );
            let mut dx_in = vec![0.0; n * c];
            let (drl, dxl) = ops::lambda_mix_backward(&mut dx_in, &mut dx0, &dxa, &a.x_in, &fwd.x0, rl, xl);
            grads[at(Slot::ResidLambdas, i)] += drl;
            grads[at(Slot::X0Lambdas, i)] += dxl;
            self.store(&mut dx_in);
            dx = dx_in;
        }
        // Layer 0's residual input is x0 itself.
        dx0.iter_mut().zip(&dx).for_each(|(a, b)| *a += b);
        self.store(&mut dx0);

        // Smear, embedding norm, gather.
        let mut dxe = vec![0.0; n * c];
        let (smear_gate, smear_lambda) = (
            self.p(params, Slot::SmearGate, 0),
            self.scalar(params, Slot::SmearLambda, 0),
        );
        let mut dgate = vec![0.0; smear_gate.len()];
        let mut dlambda = 0.0;
        ops::smear_backward(
            &mut dxe,
            &mut dgate,
            &mut dlambda,
            &dx0,
            &fwd.xe,
            smear_gate,
            smear_lambda,
            b,
            t,
            c,
        );
        grads[r(Slot::SmearGate, 0)]
            .iter_mut()
            .zip(&dgate)
            .for_each(|(g, x)| *g += x);
        grads[at(Slot::SmearLambda, 0)] += dlambda;
        self.store(&mut dxe);
        let mut demb = vec![0.0; n * c];
        ops::rmsnorm_backward(&mut demb, &dxe, &fwd.emb, &fwd.rstd0, c);
        self.store(&mut demb);
        ops::embedding_backward(&mut grads[r(Slot::Wte, 0)], &demb, &fwd.ids, c);
    }
}

impl LayerActs {
    fn zeros(n: usize, c: usize, nh: usize, nkv: usize, d: usize, b: usize, t: usize) -> LayerActs {
        let z = |k: usize| vec![0.0f32; k];
        LayerActs {
            x_in: Vec::new(),
            xa: z(n * c),
            xn1: z(n * c),
            rstd1: z(n),
            q_rope: z(n * nh * d),
            rstd_q: z(n * nh),
            q: z(n * nh * d),
            k_rope: z(n * nkv * d),
            rstd_k: z(n * nkv),
            k: z(n * nkv * d),
            v: z(n * nkv * d),
            ve: None,
            y: z(n * nh * d),
            lse: z(b * nh * t),
            xb: z(n * c),
            xn2: z(n * c),
            rstd2: z(n),
            h: z(n * 4 * c),
        }
    }
}
