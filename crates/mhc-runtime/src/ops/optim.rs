use mhc_core::shape::{expect_dtype, expect_exact};
use mhc_core::{DType, Error, Result, TensorMeta};
use mhc_wgsl::Family;

use super::to_u32;
use crate::{Context, GpuTensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    lr: f32,
    _pad: [u32; 2],
}

/// One parameter update: the tensor updated in place, its gradient, and the names errors use.
pub(crate) struct SgdUpdate<'a> {
    pub param: (&'a str, &'a GpuTensor),
    pub grad: (&'a str, &'a GpuTensor),
}

/// One plain SGD step on the GPU: `param[i] -= lr * grad[i]` for f32 tensors of equal shape.
///
/// ```no_run
/// use mhc_core::{DType, HostTensor};
/// use mhc_runtime::{Context, GpuTensor, ops};
/// let ctx = Context::new()?;
/// let w = GpuTensor::upload(&ctx, "w", &HostTensor::from_f32([3], vec![1.0, 2.0, 3.0])?)?;
/// let g = GpuTensor::upload(&ctx, "g", &HostTensor::from_f32([3], vec![0.5, 0.5, 0.5])?)?;
/// ops::sgd_step(&ctx, &w, &g, 0.1)?; // w is now [0.95, 1.95, 2.95]
/// # Ok::<(), mhc_core::Error>(())
/// ```
pub fn sgd_step(ctx: &Context, param: &GpuTensor, grad: &GpuTensor, lr: f32) -> Result<()> {
    sgd_steps(ctx, &[SgdUpdate { param: ("param", param), grad: ("grad", grad) }], lr)
}

/// Validates every update before recording any, so a bad tensor leaves all parameters as they
/// were, then records them all in one submission.
pub(crate) fn sgd_steps(ctx: &Context, updates: &[SgdUpdate<'_>], lr: f32) -> Result<()> {
    if !lr.is_finite() {
        return Err(Error::param("lr", format!("must be finite, got {lr}")));
    }
    for u in updates {
        let ((pname, param), (gname, grad)) = (u.param, u.grad);
        expect_dtype(pname, param, DType::F32)?;
        expect_exact(gname, grad, DType::F32, param.shape())?;
        to_u32(param.numel(), pname)?;
    }
    let spec = mhc_wgsl::optim();
    let wg = spec.get("WG").expect("optim spec sets WG") as usize;
    let pipeline = ctx.pipeline(Family::Optim, "sgd", &spec)?;
    // Elements play the part of tokens: long tensors are split into chunks that fit a binding.
    let mut plans = Vec::with_capacity(updates.len());
    for u in updates.iter().filter(|u| u.param.1.numel() > 0) {
        let rows = [(1, u.param.1, u.param.0), (2, u.grad.1, u.grad.0)];
        plans.push((ctx.chunks_for(u.param.1.numel(), &rows)?, rows));
    }
    let params = |_: usize, r: &std::ops::Range<usize>| {
        Ok(ctx.uniform(&Params { len: to_u32(r.len(), "elements")?, lr, _pad: [0; 2] }))
    };
    ctx.submit("sgd step", |pass| {
        for (chunks, rows) in &plans {
            ctx.record_chunks(pass, &pipeline, chunks, rows, &[], params, |r| r.len().div_ceil(wg))?;
        }
        Ok(())
    })
}
