//! Layer-level API: [`MhcPre`] owns the parameters of mhc_pre and pairs its forward with the
//! backward that needs the forward's saved tensors; [`MhcPost`] does the same for mhc_post.
//! Contexts hold handles to the tensors they save, not copies: overwriting `x` between forward
//! and backward changes the gradients, as it would in an autograd framework without version
//! counters.

use mhc_core::shape::{expect_dtype, expect_exact};
use mhc_core::{
    DType, Error, MAX_STREAMS, PostForwardInputs, PreBackwardInputs, PreForwardInputs, PreParams, Result,
    SinkhornParams, TensorMeta,
};

use crate::ops::{self, PostBackwardOutputs, PreBackwardOutputs, PreForwardOutputs, SgdUpdate};
use crate::{Context, GpuTensor};

/// What [`MhcPre::forward`] returns for the rest of the block: `h_in` `[..., D]` bf16 (the
/// sublayer's input), `h_post` `[..., n]` and `h_res` `[..., n, n]` f32 (mhc_post's mixes).
#[derive(Debug, Clone)]
pub struct PreOutput {
    /// The sublayer's input, bf16 `[..., D]`.
    pub h_in: GpuTensor,
    /// mhc_post's `post_layer_mix`, f32 `[..., n]`.
    pub h_post: GpuTensor,
    /// Sinkhorn-projected when the layer fuses Sinkhorn, the raw logits otherwise.
    pub h_res: GpuTensor,
}

/// What [`MhcPre::backward`] needs from the forward. `h_res_logits` is present exactly when
/// the layer fuses Sinkhorn.
#[derive(Debug, Clone)]
pub struct PreCtx {
    /// The forward's input, bf16 `[..., n, D]`.
    pub x: GpuTensor,
    /// `1 / sqrt(mean(x^2) + norm_eps)` per token, f32 `[...]`.
    pub inv_rms: GpuTensor,
    /// The projection before normalisation, f32 `[..., M]`.
    pub h_mix: GpuTensor,
    /// The pre gates, `+ hc_eps` included, f32 `[..., n]`.
    pub h_pre: GpuTensor,
    /// The forward's h_post output, f32 `[..., n]`.
    pub h_post: GpuTensor,
    /// The raw h_res logits, f32 `[..., n, n]`, that Sinkhorn backward starts from.
    pub h_res_logits: Option<GpuTensor>,
}

/// Gradients of mhc_pre: dx `[..., n, D]` bf16; dphi, dalpha, dbias and dgamma f32, shaped
/// like the parameters (dgamma also when the layer has no gamma).
pub type PreGrads = PreBackwardOutputs;

/// The mhc_pre half of an mHC layer: projection weights `phi` `[M, K]`, gates `alpha` `[3]`,
/// `bias` `[M]` and the optional RMSNorm weight `gamma` `[n, D]`, all f32 on the GPU.
///
/// ```no_run
/// use mhc_core::random::{PreInputs, TensorRng};
/// use mhc_core::{Dims, PreParams, SinkhornParams};
/// use mhc_runtime::layer::MhcPre;
/// use mhc_runtime::{Context, GpuTensor};
/// let ctx = Context::new()?;
/// let host = PreInputs::random(&mut TensorRng::new(7), &Dims::new(16, 4, 256)?, true);
/// let up = |name, t| GpuTensor::upload(&ctx, name, t);
/// let gamma = host.gamma.as_ref().map(|g| up("gamma", g)).transpose()?;
/// let mut pre = MhcPre::new(
///     up("phi", &host.phi)?, up("alpha", &host.alpha)?, up("bias", &host.bias)?, gamma,
///     PreParams::default(), Some(SinkhornParams::default()),
/// )?;
/// let x = up("x", &host.x)?;
/// let (out, saved) = pre.forward(&ctx, &x)?;
/// // ... the sublayer and mhc_post produce the gradients of h_in, h_post and h_res ...
/// # let (dh_in, dh_post, dh_res) = (out.h_in.clone(), out.h_post.clone(), out.h_res.clone());
/// let grads = pre.backward(&ctx, &saved, &dh_in, &dh_post, &dh_res)?;
/// pre.sgd_step(&ctx, &grads, 1e-3)?;
/// # Ok::<(), mhc_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MhcPre {
    phi: GpuTensor,
    alpha: GpuTensor,
    bias: GpuTensor,
    gamma: Option<GpuTensor>,
    params: PreParams,
    sinkhorn: Option<SinkhornParams>,
    n: usize,
    d: usize,
}

/// The stream count `n` with `n * n + 2n == m`, if there is one the kernels support.
fn streams_of(m: usize) -> Option<usize> {
    (1..=MAX_STREAMS).find(|n| n * n + 2 * n == m)
}

impl MhcPre {
    /// A layer over the given parameters; `n` and `D` are read from `bias` (`[M]`, `M = n*n +
    /// 2n`) and `phi` (`[M, n*D]`), and every tensor is checked against them. With `sinkhorn`
    /// set, `h_res` is projected by Sinkhorn-Knopp inside the forward kernel.
    pub fn new(
        phi: GpuTensor,
        alpha: GpuTensor,
        bias: GpuTensor,
        gamma: Option<GpuTensor>,
        params: PreParams,
        sinkhorn: Option<SinkhornParams>,
    ) -> Result<Self> {
        params.validate()?;
        if let Some(s) = &sinkhorn {
            s.validate()?;
        }
        expect_dtype("bias", &bias, DType::F32)?;
        let n = match bias.shape() {
            [m] => streams_of(*m),
            _ => None,
        }
        .ok_or_else(|| Error::shape("bias", format!("[n*n + 2n] with 1 <= n <= {MAX_STREAMS}"), bias.shape()))?;
        let m = n * n + 2 * n;
        expect_dtype("phi", &phi, DType::F32)?;
        let d = match phi.shape() {
            [rows, k] if *rows == m && *k > 0 && k % n == 0 => k / n,
            _ => return Err(Error::shape("phi", format!("[{m}, n*D] with n = {n}, D >= 1"), phi.shape())),
        };
        expect_exact("alpha", &alpha, DType::F32, &[3])?;
        if let Some(g) = &gamma {
            expect_exact("gamma", g, DType::F32, &[n, d])?;
        }
        Ok(Self { phi, alpha, bias, gamma, params, sinkhorn, n, d })
    }

    /// The projection weights `[M, K]` (updated in place by `sgd_step`).
    pub fn phi(&self) -> &GpuTensor {
        &self.phi
    }

    /// The three gate scales.
    pub fn alpha(&self) -> &GpuTensor {
        &self.alpha
    }

    /// The gate biases `[M]`.
    pub fn bias(&self) -> &GpuTensor {
        &self.bias
    }

    /// The RMSNorm weight `[n, D]`, if the layer has one.
    pub fn gamma(&self) -> Option<&GpuTensor> {
        self.gamma.as_ref()
    }

    /// The scalar options.
    pub fn params(&self) -> &PreParams {
        &self.params
    }

    /// The fused Sinkhorn's options, if h_res is projected in the forward.
    pub fn sinkhorn(&self) -> Option<&SinkhornParams> {
        self.sinkhorn.as_ref()
    }

    /// Streams `n` and stream width `D` the layer takes.
    pub fn streams(&self) -> (usize, usize) {
        (self.n, self.d)
    }

    fn inputs<'a>(&'a self, x: &'a GpuTensor) -> PreForwardInputs<'a, GpuTensor> {
        PreForwardInputs { x, phi: &self.phi, alpha: &self.alpha, bias: &self.bias, gamma: self.gamma.as_ref() }
    }

    /// mhc_pre forward of `x` `[..., n, D]` bf16 (SPEC.md section 1, then section 3 on h_res
    /// when Sinkhorn is fused).
    pub fn forward(&self, ctx: &Context, x: &GpuTensor) -> Result<(PreOutput, PreCtx)> {
        // Checked here so a wrong x is reported as x, not as phi not fitting it.
        let s = x.shape();
        if s.len() < 2 || s[s.len() - 2..] != [self.n, self.d] {
            return Err(Error::shape("x", format!("[..., {}, {}] (the layer's n and D)", self.n, self.d), s));
        }
        let out = ops::pre_forward(ctx, &self.inputs(x), &self.params, self.sinkhorn.as_ref())?;
        let PreForwardOutputs { h_in, h_post, h_res, inv_rms, h_mix, h_pre, h_res_logits } = out;
        let saved = PreCtx { x: x.clone(), inv_rms, h_mix, h_pre, h_post: h_post.clone(), h_res_logits };
        Ok((PreOutput { h_in, h_post, h_res }, saved))
    }

    /// Gradients of the layer's input and parameters from those of its outputs: `dh_in`
    /// `[..., D]` bf16, `dh_post` `[..., n]` and `dh_res` `[..., n, n]` f32. With Sinkhorn
    /// fused, `dh_res` is the gradient of the projected `h_res`; Sinkhorn backward turns it
    /// into the gradient of the logits before mhc_pre backward (SPEC.md sections 3 and 2).
    pub fn backward(
        &self,
        ctx: &Context,
        saved: &PreCtx,
        dh_in: &GpuTensor,
        dh_post: &GpuTensor,
        dh_res: &GpuTensor,
    ) -> Result<PreGrads> {
        let inputs = PreBackwardInputs {
            fwd: self.inputs(&saved.x),
            inv_rms: &saved.inv_rms,
            h_mix: &saved.h_mix,
            h_pre: &saved.h_pre,
            h_post: &saved.h_post,
            dh_in,
            dh_post,
            dh_res,
        };
        // Checked before Sinkhorn backward so a wrong gradient is reported under its own name.
        inputs.validate()?;
        let logits = match (&self.sinkhorn, &saved.h_res_logits) {
            (Some(sp), Some(logits)) => Some((sp, logits)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::Missing { tensor: "h_res_logits (the layer fuses Sinkhorn)".into() });
            }
            (None, Some(_)) => {
                return Err(Error::Data {
                    tensor: "h_res_logits".into(),
                    detail: "saved by a forward with fused Sinkhorn, but this layer has none".into(),
                });
            }
        };
        // Sinkhorn backward and mhc_pre backward in one submission.
        ctx.batch(|| {
            let d_logits = logits.map(|(sp, l)| ops::sinkhorn_backward(ctx, l, dh_res, sp)).transpose()?;
            let inputs = PreBackwardInputs { dh_res: d_logits.as_ref().unwrap_or(dh_res), ..inputs };
            ops::pre_backward(ctx, &inputs, &self.params)
        })
    }

    /// One SGD step on every parameter (`p -= lr * dp`; gamma only when the layer has one),
    /// in one submission. All gradients are checked first, so an error updates nothing.
    pub fn sgd_step(&mut self, ctx: &Context, grads: &PreGrads, lr: f32) -> Result<()> {
        let mut updates = vec![
            SgdUpdate { param: ("phi", &self.phi), grad: ("dphi", &grads.dphi) },
            SgdUpdate { param: ("alpha", &self.alpha), grad: ("dalpha", &grads.dalpha) },
            SgdUpdate { param: ("bias", &self.bias), grad: ("dbias", &grads.dbias) },
        ];
        if let Some(g) = &self.gamma {
            updates.push(SgdUpdate { param: ("gamma", g), grad: ("dgamma", &grads.dgamma) });
        }
        ops::sgd_steps(ctx, &updates, lr)
    }
}

/// What [`MhcPost::backward`] needs from the forward: its four inputs.
#[derive(Debug, Clone)]
pub struct PostCtx {
    /// The sublayer's output, bf16 `[..., D]`.
    pub x: GpuTensor,
    /// The n streams entering the block, bf16 `[..., n, D]`.
    pub residual: GpuTensor,
    /// Weight of `x` in each output stream, f32 `[..., n]` (or `[..., n, 1]`).
    pub post_layer_mix: GpuTensor,
    /// Weights of the residual streams, f32 `[..., n, n]`.
    pub comb_res_mix: GpuTensor,
}

impl PostCtx {
    fn inputs(&self) -> PostForwardInputs<'_, GpuTensor> {
        PostForwardInputs {
            x: &self.x,
            residual: &self.residual,
            post_layer_mix: &self.post_layer_mix,
            comb_res_mix: &self.comb_res_mix,
        }
    }
}

/// The mhc_post half of an mHC layer (SPEC.md section 4); it has no parameters of its own.
///
/// ```no_run
/// # use mhc_core::random::{PostInputs, TensorRng};
/// # use mhc_core::Dims;
/// use mhc_runtime::layer::MhcPost;
/// use mhc_runtime::{Context, GpuTensor};
/// let ctx = Context::new()?;
/// # let host = PostInputs::random(&mut TensorRng::new(7), &Dims::new(16, 4, 256)?);
/// # let up = |name, t| GpuTensor::upload(&ctx, name, t);
/// # let (x, residual) = (up("x", &host.x)?, up("residual", &host.residual)?);
/// # let (h_post, h_res, d_out) = (up("plm", &host.post_layer_mix)?, up("comb", &host.comb_res_mix)?, up("d_out", &host.d_out)?);
/// // x: the sublayer's output; residual: the block's input; h_post, h_res: from MhcPre.
/// let (out, saved) = MhcPost.forward(&ctx, &x, &residual, &h_post, &h_res)?;
/// let grads = MhcPost.backward(&ctx, &saved, &d_out)?; // dx, dresidual, dpost_layer_mix, dcomb_res_mix
/// # Ok::<(), mhc_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MhcPost;

impl MhcPost {
    /// `out [..., n, D]` bf16 from the sublayer output `x` `[..., D]`, the `residual`
    /// streams `[..., n, D]` and the mixes from mhc_pre.
    pub fn forward(
        &self,
        ctx: &Context,
        x: &GpuTensor,
        residual: &GpuTensor,
        post_layer_mix: &GpuTensor,
        comb_res_mix: &GpuTensor,
    ) -> Result<(GpuTensor, PostCtx)> {
        let saved = PostCtx {
            x: x.clone(),
            residual: residual.clone(),
            post_layer_mix: post_layer_mix.clone(),
            comb_res_mix: comb_res_mix.clone(),
        };
        let out = ops::post_forward(ctx, &saved.inputs())?;
        Ok((out, saved))
    }

    /// Gradients of the four inputs from `d_out` `[..., n, D]` bf16.
    pub fn backward(&self, ctx: &Context, saved: &PostCtx, d_out: &GpuTensor) -> Result<PostBackwardOutputs> {
        ops::post_backward(ctx, &saved.inputs(), d_out)
    }
}
