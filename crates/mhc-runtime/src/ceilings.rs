//! The two ceilings every operator is measured against: a WGSL copy kernel's bandwidth and a
//! WGSL FMA kernel's rate, both run through the same dispatch path as the operators.

use mhc_core::{DType, Error, Result, TensorMeta};
use mhc_wgsl::Family;

use crate::dispatch::Chunks;
use crate::{Context, GpuTensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    iters: u32,
    _pad: [u32; 2],
}

/// Copies `src` into `dst` (same size, a multiple of 16 bytes) with 16-byte loads and stores.
pub fn copy(ctx: &Context, src: &GpuTensor, dst: &GpuTensor) -> Result<()> {
    let bytes = (src.numel() * src.dtype().size_bytes()) as u64;
    if !bytes.is_multiple_of(16) {
        return Err(Error::Data { tensor: "src".into(), detail: format!("{bytes} bytes, not a multiple of 16") });
    }
    if (dst.numel() * dst.dtype().size_bytes()) as u64 != bytes {
        return Err(Error::Data { tensor: "dst".into(), detail: format!("not src's {bytes} bytes") });
    }
    ctx.check_whole("src", src)?;
    let spec = mhc_wgsl::bench();
    let wg = u64::from(spec.get("WG").expect("bench spec sets WG"));
    let pipeline = ctx.pipeline(Family::Bench, "copy", &spec)?;
    let len = u32::try_from(bytes / 16)
        .map_err(|_| Error::TooLarge { what: "src".into(), detail: "over 2^32 vec4".into() })?;
    // A grid-stride loop: one row of workgroups is enough to fill the GPU.
    let groups = (u64::from(len).div_ceil(wg)).min(u64::from(ctx.max_workgroups_per_dimension())) as usize;
    let params = |_: usize, _: &std::ops::Range<usize>| Ok(ctx.uniform(&Params { len, iters: 0, _pad: [0; 2] }));
    ctx.submit("copy ceiling", |pass| {
        ctx.record_chunks(pass, &pipeline, &Chunks::whole(1), &[], &[(1, src), (2, dst)], params, |_| groups)
    })
}

/// Runs `groups` workgroups of FMA chains, `iters` steps each; returns the flops done.
pub fn fma(ctx: &Context, groups: u32, iters: u32) -> Result<u64> {
    let spec = mhc_wgsl::bench();
    let wg = spec.get("WG").expect("bench spec sets WG");
    let pipeline = ctx.pipeline(Family::Bench, "fma_rate", &spec)?;
    // Written only if the chains hit an impossible value; bounds checks keep it in range.
    let sink = GpuTensor::zeros(ctx, "sink", &[4], DType::F32)?;
    let groups = groups.min(ctx.max_workgroups_per_dimension());
    let params = |_: usize, _: &std::ops::Range<usize>| Ok(ctx.uniform(&Params { len: 0, iters, _pad: [0; 2] }));
    ctx.submit("fma ceiling", |pass| {
        ctx.record_chunks(pass, &pipeline, &Chunks::whole(1), &[], &[(3, &sink)], params, |_| groups as usize)
    })?;
    // 8 chains of vec4 FMAs, 2 flops each.
    Ok(u64::from(groups) * u64::from(wg) * u64::from(iters) * 8 * 4 * 2)
}
