use mhc_core::shape::{expect_per_token, expect_post_layer_mix, post_backward_dims};
use mhc_core::{DType, Dims, PostForwardInputs, Result, TensorMeta};
use mhc_wgsl::{Family, Spec};

use super::{kernel_dims, to_u32};
use crate::{Context, GpuTensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    _pad: [u32; 3],
}

/// mhc_post forward: `out [..., n, D]` bf16 (SPEC.md section 4).
pub fn post_forward(ctx: &Context, inp: &PostForwardInputs<'_, GpuTensor>) -> Result<GpuTensor> {
    let dims = inp.validate()?;
    let out = GpuTensor::zeros(ctx, "out", &dims.out_shape(&[dims.n, dims.d]), DType::BF16)?;
    post_forward_into(ctx, inp, &out)?;
    Ok(out)
}

/// [`post_forward`] into an existing `out` (bf16, `[..., n, D]`), so that a model's steady
/// state allocates nothing.
pub fn post_forward_into(ctx: &Context, inp: &PostForwardInputs<'_, GpuTensor>, out: &GpuTensor) -> Result<()> {
    let dims = inp.validate()?;
    expect_per_token("out", out, DType::BF16, dims.t, &[dims.n, dims.d])?;
    let rows = [
        (1, inp.x, "x"),
        (2, inp.residual, "residual"),
        (3, inp.post_layer_mix, "post_layer_mix"),
        (4, inp.comb_res_mix, "comb_res_mix"),
        (5, out, "out"),
    ];
    let (n, d) = kernel_dims(&dims)?;
    let columns = ctx.post_forward_columns().unwrap_or_else(|| mhc_wgsl::post_forward_columns(d, dims.t));
    let spec = mhc_wgsl::post_forward(n, d, columns, ctx.target());
    // Invocations per token: one per word of CPI columns.
    let per_token = dims.d / spec.get("CPI").expect("post spec sets CPI") as usize;
    run(ctx, &dims, "forward", &spec, &rows, |tokens, wg| (tokens * per_token).div_ceil(wg))
}

/// Gradients of mhc_post: dx `[..., D]`, dresidual `[..., n, D]` (bf16), dpost_layer_mix
/// (shaped like post_layer_mix) and dcomb_res_mix `[..., n, n]` (f32).
#[derive(Debug, Clone)]
pub struct PostBackwardOutputs {
    /// Gradient of the sublayer output `x`, bf16 `[..., D]`.
    pub dx: GpuTensor,
    /// Gradient of `residual`, bf16 `[..., n, D]`.
    pub dresidual: GpuTensor,
    /// Gradient of `post_layer_mix`, f32, shaped like it.
    pub dpost_layer_mix: GpuTensor,
    /// Gradient of `comb_res_mix`, f32 `[..., n, n]`.
    pub dcomb_res_mix: GpuTensor,
}

impl PostBackwardOutputs {
    /// Zeroed gradients for `dims`; dpost_layer_mix takes `post_layer_mix_shape`.
    pub fn zeros(ctx: &Context, dims: &Dims, post_layer_mix_shape: &[usize]) -> Result<Self> {
        let (n, d) = (dims.n, dims.d);
        Ok(Self {
            dx: GpuTensor::zeros(ctx, "dx", &dims.out_shape(&[d]), DType::BF16)?,
            dresidual: GpuTensor::zeros(ctx, "dresidual", &dims.out_shape(&[n, d]), DType::BF16)?,
            dpost_layer_mix: GpuTensor::zeros(ctx, "dpost_layer_mix", post_layer_mix_shape, DType::F32)?,
            dcomb_res_mix: GpuTensor::zeros(ctx, "dcomb_res_mix", &dims.out_shape(&[n, n]), DType::F32)?,
        })
    }
}

/// mhc_post backward from `d_out` `[..., n, D]` bf16 (SPEC.md section 4).
pub fn post_backward(
    ctx: &Context,
    inp: &PostForwardInputs<'_, GpuTensor>,
    d_out: &GpuTensor,
) -> Result<PostBackwardOutputs> {
    let dims = post_backward_dims(inp, d_out)?;
    let out = PostBackwardOutputs::zeros(ctx, &dims, inp.post_layer_mix.shape())?;
    post_backward_into(ctx, inp, d_out, &out)?;
    Ok(out)
}

/// [`post_backward`] into existing gradient tensors.
pub fn post_backward_into(
    ctx: &Context,
    inp: &PostForwardInputs<'_, GpuTensor>,
    d_out: &GpuTensor,
    out: &PostBackwardOutputs,
) -> Result<()> {
    let dims = post_backward_dims(inp, d_out)?;
    let (t, n, d) = (dims.t, dims.n, dims.d);
    expect_per_token("dx", &out.dx, DType::BF16, t, &[d])?;
    expect_per_token("dresidual", &out.dresidual, DType::BF16, t, &[n, d])?;
    expect_post_layer_mix("dpost_layer_mix", &out.dpost_layer_mix, t, n)?;
    expect_per_token("dcomb_res_mix", &out.dcomb_res_mix, DType::F32, t, &[n, n])?;
    let rows = [
        (1, inp.x, "x"),
        (2, inp.residual, "residual"),
        (3, inp.post_layer_mix, "post_layer_mix"),
        (4, inp.comb_res_mix, "comb_res_mix"),
        (6, d_out, "d_out"),
        (7, &out.dx, "dx"),
        (8, &out.dresidual, "dresidual"),
        (9, &out.dpost_layer_mix, "dpost_layer_mix"),
        (10, &out.dcomb_res_mix, "dcomb_res_mix"),
    ];
    let (n, d) = kernel_dims(&dims)?;
    let spec = mhc_wgsl::post_backward(n, d, ctx.target());
    // One workgroup a token.
    run(ctx, &dims, "backward", &spec, &rows, |tokens, _| tokens)
}

/// Dispatches `entry` over token chunks; `groups(tokens, WG)` sizes each chunk's grid.
fn run(
    ctx: &Context,
    dims: &Dims,
    entry: &'static str,
    spec: &Spec,
    rows: &[(u32, &GpuTensor, &str)],
    groups: impl Fn(usize, usize) -> usize,
) -> Result<()> {
    let wg = spec.get("WG").expect("post spec sets WG") as usize;
    let pipeline = ctx.pipeline(Family::Post, entry, spec)?;
    let chunks = ctx.chunks_for(dims.t, rows)?;
    let params =
        |_: usize, r: &std::ops::Range<usize>| Ok(ctx.uniform(&Params { t: to_u32(r.len(), "tokens")?, _pad: [0; 3] }));
    ctx.submit(&format!("mhc_post {entry}"), |pass| {
        ctx.record_chunks(pass, &pipeline, &chunks, rows, &[], params, |r| groups(r.len(), wg))
    })
}
