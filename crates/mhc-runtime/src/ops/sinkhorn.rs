use mhc_core::shape::{expect_per_token, sinkhorn_dims};
use mhc_core::{DType, Dims, Result, SinkhornParams, TensorMeta};
use mhc_wgsl::Family;

use super::to_u32;
use crate::{Context, GpuTensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    iters: u32,
    eps: f32,
    _pad: u32,
}

/// Sinkhorn-Knopp projection of `[..., n, n]` f32 logits (SPEC.md section 3).
pub fn sinkhorn_forward(ctx: &Context, logits: &GpuTensor, p: &SinkhornParams) -> Result<GpuTensor> {
    sinkhorn_dims("logits", logits)?;
    let out = GpuTensor::zeros(ctx, "out", logits.shape(), DType::F32)?;
    sinkhorn_forward_into(ctx, logits, &out, p)?;
    Ok(out)
}

/// [`sinkhorn_forward`] into an existing `out` (f32, shaped like `logits`).
pub fn sinkhorn_forward_into(ctx: &Context, logits: &GpuTensor, out: &GpuTensor, p: &SinkhornParams) -> Result<()> {
    let dims = sinkhorn_dims("logits", logits)?;
    expect_per_token("out", out, DType::F32, dims.t, &[dims.n, dims.n])?;
    run(ctx, &dims, "forward", p, &[(1, logits, "logits"), (3, out, "out")])
}

/// The gradient of the logits from `d_out`; the forward iterations are recomputed.
pub fn sinkhorn_backward(
    ctx: &Context,
    logits: &GpuTensor,
    d_out: &GpuTensor,
    p: &SinkhornParams,
) -> Result<GpuTensor> {
    let dims = sinkhorn_dims("logits", logits)?;
    let out = GpuTensor::zeros(ctx, "d_logits", &dims.out_shape(&[dims.n, dims.n]), DType::F32)?;
    sinkhorn_backward_into(ctx, logits, d_out, &out, p)?;
    Ok(out)
}

/// [`sinkhorn_backward`] into an existing `d_logits` (f32, shaped like `logits`).
pub fn sinkhorn_backward_into(
    ctx: &Context,
    logits: &GpuTensor,
    d_out: &GpuTensor,
    d_logits: &GpuTensor,
    p: &SinkhornParams,
) -> Result<()> {
    let dims = sinkhorn_dims("logits", logits)?;
    expect_per_token("d_out", d_out, DType::F32, dims.t, &[dims.n, dims.n])?;
    expect_per_token("d_logits", d_logits, DType::F32, dims.t, &[dims.n, dims.n])?;
    run(ctx, &dims, "backward", p, &[(1, logits, "logits"), (2, d_out, "d_out"), (3, d_logits, "d_logits")])
}

fn run(
    ctx: &Context,
    dims: &Dims,
    entry: &'static str,
    p: &SinkhornParams,
    rows: &[(u32, &GpuTensor, &str)],
) -> Result<()> {
    p.validate()?;
    let spec = mhc_wgsl::sinkhorn(to_u32(dims.n, "n")?);
    let wg = spec.get("WG").expect("sinkhorn spec sets WG") as usize;
    let pipeline = ctx.pipeline(Family::Sinkhorn, entry, &spec)?;
    let chunks = ctx.chunks_for(dims.t, rows)?;
    let params = |_: usize, r: &std::ops::Range<usize>| {
        Ok(ctx.uniform(&Params { t: to_u32(r.len(), "tokens")?, iters: p.iters, eps: p.eps, _pad: 0 }))
    };
    ctx.submit(&format!("sinkhorn {entry}"), |pass| {
        ctx.record_chunks(pass, &pipeline, &chunks, rows, &[], params, |r| r.len().div_ceil(wg))
    })
}
