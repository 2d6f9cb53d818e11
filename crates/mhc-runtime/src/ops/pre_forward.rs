use bytemuck::Zeroable;
use mhc_core::shape::expect_per_token;
use mhc_core::{DType, Dims, Error, PreForwardInputs, PreParams, Result, SinkhornParams};
use mhc_wgsl::{CoopTile, Family, Projection, SplitTile, Tile};

use super::{kernel_dims, to_u32};
use crate::dispatch::Chunks;
use crate::pipeline::Kernel;
use crate::{Context, GpuTensor, PreSplit};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    norm_eps: f32,
    hc_eps: f32,
    post_mult: f32,
    sinkhorn_iters: u32,
    sinkhorn_eps: f32,
    norm_eps_up: f32,
    _pad: u32,
}

/// Outputs of mhc_pre forward on the GPU (SPEC.md section 1). With a fused Sinkhorn
/// projection, `h_res` holds the projected matrices and `h_res_logits` the raw logits that
/// Sinkhorn backward needs.
#[derive(Debug, Clone)]
pub struct PreForwardOutputs {
    /// The h_pre-weighted sum of the n streams (the sublayer's input), bf16 `[..., D]`.
    pub h_in: GpuTensor,
    /// The post gates (mhc_post's `post_layer_mix`), f32 `[..., n]`.
    pub h_post: GpuTensor,
    /// The residual mix: Sinkhorn-projected with a fused Sinkhorn, the raw logits otherwise;
    /// f32 `[..., n, n]`.
    pub h_res: GpuTensor,
    /// `1 / sqrt(mean(x^2) + norm_eps)` per token, f32 `[...]`; saved for backward.
    pub inv_rms: GpuTensor,
    /// The projection before normalisation, f32 `[..., M]`; saved for backward.
    pub h_mix: GpuTensor,
    /// The pre gates, `+ hc_eps` included, f32 `[..., n]`; saved for backward.
    pub h_pre: GpuTensor,
    /// The raw logits, f32 `[..., n, n]`: required with a fused Sinkhorn, unused without.
    pub h_res_logits: Option<GpuTensor>,
}

impl PreForwardOutputs {
    /// Zeroed outputs for `dims`, leading dims kept.
    pub fn zeros(ctx: &Context, dims: &Dims, fused_sinkhorn: bool) -> Result<Self> {
        let (n, d, m) = (dims.n, dims.d, dims.m());
        let f32t = |name: &str, tr: &[usize]| GpuTensor::zeros(ctx, name, &dims.out_shape(tr), DType::F32);
        Ok(Self {
            h_in: GpuTensor::zeros(ctx, "h_in", &dims.out_shape(&[d]), DType::BF16)?,
            h_post: f32t("h_post", &[n])?,
            h_res: f32t("h_res", &[n, n])?,
            inv_rms: f32t("inv_rms", &[])?,
            h_mix: f32t("h_mix", &[m])?,
            h_pre: f32t("h_pre", &[n])?,
            h_res_logits: if fused_sinkhorn { Some(f32t("h_res_logits", &[n, n])?) } else { None },
        })
    }

    fn validate(&self, dims: &Dims, fused_sinkhorn: bool) -> Result<()> {
        let (t, n) = (dims.t, dims.n);
        expect_per_token("h_in", &self.h_in, DType::BF16, t, &[dims.d])?;
        expect_per_token("h_post", &self.h_post, DType::F32, t, &[n])?;
        expect_per_token("h_res", &self.h_res, DType::F32, t, &[n, n])?;
        expect_per_token("inv_rms", &self.inv_rms, DType::F32, t, &[])?;
        expect_per_token("h_mix", &self.h_mix, DType::F32, t, &[dims.m()])?;
        expect_per_token("h_pre", &self.h_pre, DType::F32, t, &[n])?;
        match (&self.h_res_logits, fused_sinkhorn) {
            (Some(l), true) => expect_per_token("h_res_logits", l, DType::F32, t, &[n, n]),
            (None, true) => Err(Error::Missing { tensor: "h_res_logits (needed with a fused Sinkhorn)".into() }),
            _ => Ok(()),
        }
    }
}

/// mhc_pre forward; with `sinkhorn` set, h_res comes out projected by Sinkhorn-Knopp in the
/// same kernel. On a context created with `ContextOptions::cooperative_matrix`, the projection
/// runs on f16 tensor cores where the shape allows (accuracy in docs/PERFORMANCE.md).
///
/// ```no_run
/// use mhc_core::{PreForwardInputs, PreParams, random::{PreInputs, TensorRng}, Dims};
/// use mhc_runtime::{Context, GpuTensor, ops};
/// let ctx = Context::new()?;
/// let host = PreInputs::random(&mut TensorRng::new(7), &Dims::new(16, 4, 256)?, true);
/// let up = |name, t| GpuTensor::upload(&ctx, name, t);
/// let (x, phi, alpha, bias) = (up("x", &host.x)?, up("phi", &host.phi)?, up("alpha", &host.alpha)?, up("bias", &host.bias)?);
/// let gamma = up("gamma", host.gamma.as_ref().unwrap())?;
/// let inputs = PreForwardInputs { x: &x, phi: &phi, alpha: &alpha, bias: &bias, gamma: Some(&gamma) };
/// let out = ops::pre_forward(&ctx, &inputs, &PreParams::default(), None)?;
/// let h_in = out.h_in.read(&ctx)?; // bf16 [16, 256]
/// # Ok::<(), mhc_core::Error>(())
/// ```
pub fn pre_forward(
    ctx: &Context,
    inp: &PreForwardInputs<'_, GpuTensor>,
    p: &PreParams,
    sinkhorn: Option<&SinkhornParams>,
) -> Result<PreForwardOutputs> {
    let dims = inp.validate()?;
    let out = PreForwardOutputs::zeros(ctx, &dims, sinkhorn.is_some())?;
    pre_forward_into(ctx, inp, &out, p, sinkhorn)?;
    Ok(out)
}

/// [`pre_forward`] into existing outputs (see [`PreForwardOutputs::zeros`]); `h_res_logits`
/// must be present when `sinkhorn` is set.
pub fn pre_forward_into(
    ctx: &Context,
    inp: &PreForwardInputs<'_, GpuTensor>,
    out: &PreForwardOutputs,
    p: &PreParams,
    sinkhorn: Option<&SinkhornParams>,
) -> Result<()> {
    let dims = inp.validate()?;
    p.validate()?;
    if let Some(s) = sinkhorn {
        s.validate()?;
    }
    out.validate(&dims, sinkhorn.is_some())?;
    for (name, t) in [("phi", inp.phi), ("alpha", inp.alpha), ("bias", inp.bias)] {
        ctx.check_whole(name, t)?;
    }
    if let Some(g) = inp.gamma {
        ctx.check_whole("gamma", g)?;
    }
    let (n, d) = kernel_dims(&dims)?;
    let tile = ctx.pre_forward_tile().unwrap_or_else(|| Tile::for_tokens(n, d, dims.t));
    let coop = if ctx.capabilities().cooperative_matrix { CoopTile::for_shape(n, d, dims.t) } else { None };
    let split = match (coop, ctx.pre_forward_split()) {
        (Some(_), _) => None,
        (None, Some(PreSplit::Off)) => None,
        (None, Some(PreSplit::Tile(forced))) if d.is_multiple_of(8) => Some(check_split(ctx, n, forced)?),
        (None, _) => SplitTile::for_shape(n, d, dims.t, ctx.max_workgroup_storage()),
    };
    let projection = match (coop, split) {
        (Some(c), _) => Projection::Coop(c.splits),
        (None, Some(s)) => Projection::Split(s),
        (None, None) => Projection::InMain,
    };
    let gamma = inp.gamma.is_some() && mhc_wgsl::gamma_in_project(dims.t);
    let spec = mhc_wgsl::pre_forward(n, d, sinkhorn.is_some(), gamma, ctx.target(), tile, projection);
    let tb = spec.get("TB").expect("pre_forward spec sets TB") as usize;
    let tokens_per_group = tb * spec.get("TPL").map_or(1, |v| v as usize);
    let slices = spec.get("DS").expect("pre_forward spec sets DS") as usize;
    let pipeline = ctx.pipeline(Family::PreForward, "main", &spec)?;
    let wg = spec.get("WG").expect("pre_forward spec sets WG") as usize;

    // gamma is folded into a copy of phi once per call, so the kernel reads one matrix, unless
    // `project` applies it as it stages phi (flag GAMMA): a dispatch fewer. The fold is
    // recorded in the same pass as the kernel: one submission, one timed pass.
    let gamma_in_project = spec.flag_value("GAMMA") == Some(true);
    let elements = dims.m() * dims.k();
    let folded = match inp.gamma.filter(|_| !gamma_in_project) {
        Some(g) => Some((
            ctx.scratch("phi * gamma", &[dims.m(), dims.k()], DType::F32)?,
            g,
            ctx.pipeline(Family::PreForward, "fold_gamma", &spec)?,
        )),
        None => None,
    };
    let fold_params = |_: usize, _: &std::ops::Range<usize>| {
        Ok(ctx.uniform(&Params { t: to_u32(elements, "phi")?, ..Params::zeroed() }))
    };
    let phi = folded.as_ref().map_or(inp.phi, |(f, _, _)| f);

    let mut rows = vec![
        (1, inp.x, "x"),
        (6, &out.h_in, "h_in"),
        (7, &out.h_post, "h_post"),
        (8, &out.h_res, "h_res"),
        (9, &out.inv_rms, "inv_rms"),
        (10, &out.h_mix, "h_mix"),
        (11, &out.h_pre, "h_pre"),
    ];
    if let (Some(l), Some(_)) = (&out.h_res_logits, sinkhorn) {
        rows.push((12, l, "h_res_logits"));
    }
    let coop = coop.map(|c| CoopProjection::new(ctx, &dims, c)).transpose()?;
    let split = match split {
        Some(s) => Some((
            s,
            ctx.pipeline(Family::PreForward, "project", &spec)?,
            ctx.scratch(
                "projection partials",
                &[dims.t, spec.get("PW").expect("pre_forward spec sets PW") as usize],
                DType::F32,
            )?,
        )),
        None => None,
    };
    // `main` reads phi (and gamma, where `project` applies it) for its projection, or,
    // after `project`'s, only to sum again a token whose sum of squares overflowed.
    let mut whole = vec![(2, phi), (3, inp.alpha), (4, inp.bias)];
    if let Some(g) = inp.gamma.filter(|_| gamma_in_project) {
        whole.push((14, g));
    }
    if let Some(c) = &coop {
        rows.push((16, &c.part, "projection partials"));
        whole.push((17, &c.unscale));
    }
    if let Some((_, _, part)) = &split {
        rows.push((16, part, "projection partials"));
    }
    let chunks = ctx.chunks_for(dims.t, &rows)?;
    let sk = sinkhorn.copied().unwrap_or_default();
    let params = |_: usize, range: &std::ops::Range<usize>| {
        Ok(ctx.uniform(&Params {
            t: to_u32(range.len(), "tokens")?,
            norm_eps: p.norm_eps,
            hc_eps: p.hc_eps,
            post_mult: p.post_mult,
            sinkhorn_iters: sk.iters,
            sinkhorn_eps: sk.eps,
            // What `main` uses for a token it sums again from x * 2^96 (pre_forward.wgsl).
            norm_eps_up: (f64::from(p.norm_eps) * 2f64.powi(192)) as f32,
            _pad: 0,
        }))
    };
    ctx.submit("mhc_pre forward", |pass| {
        if let Some((f, g, fold)) = &folded {
            let whole = [(13, inp.phi), (14, *g), (15, f)];
            ctx.record_chunks(pass, fold, &Chunks::whole(1), &[], &whole, fold_params, |_| elements.div_ceil(wg))?;
        }
        if let Some(c) = &coop {
            c.record(ctx, pass, phi, inp.x, &chunks)?;
        }
        if let Some((s, project, part)) = &split {
            let rows = [(1, inp.x, "x"), (18, part, "projection partials")];
            let mut whole = vec![(2, phi)];
            if let Some(g) = inp.gamma.filter(|_| gamma_in_project) {
                whole.push((14, g));
            }
            ctx.record_chunks(pass, project, &chunks, &rows, &whole, params, |r| {
                r.len().div_ceil(s.tokens() as usize) * s.splits as usize
            })?;
        }
        ctx.record_chunks(pass, &pipeline, &chunks, &rows, &whole, params, |r| {
            r.len().div_ceil(tokens_per_group) * slices
        })
    })
}

/// A layout forced through `ContextOptions::pre_forward_split`, if the device can run it. Its
/// workgroup memory is checked here from the layout, before naga counts it as it counts every
/// kernel's before compiling: a layout far past the limit unrolls its phi staging thousands of
/// times, which naga would take seconds to parse only for the kernel to be refused.
fn check_split(ctx: &Context, n: u32, s: SplitTile) -> Result<SplitTile> {
    let limits = ctx.device.limits();
    let shared = s.workgroup_bytes(n);
    let fits = s.splits >= 1
        && s.chunk_words >= 1
        && (1..=8).contains(&s.tokens_per_invocation)
        && s.invocations.is_power_of_two()
        && s.invocations <= limits.max_compute_invocations_per_workgroup
        && shared <= ctx.max_workgroup_storage();
    if fits {
        Ok(s)
    } else {
        Err(Error::param(
            "pre_forward_split",
            format!(
                "{s:?} does not fit this device (splits and chunk_words >= 1, tokens_per_invocation 1..=8, invocations a power of two <= {}, {shared} bytes of workgroup memory <= {})",
                limits.max_compute_invocations_per_workgroup,
                ctx.max_workgroup_storage()
            ),
        ))
    }
}

/// The cooperative-matrix projection of one call (`pre_forward_coop.wgsl`): phi split into
/// scaled f16 tiles, then partial sums over `splits` splits of K that `main` adds up.
struct CoopProjection {
    tile: CoopTile,
    k: usize,
    // Blocks of a row of phi that phi_top reduces.
    blocks: usize,
    phi_top: Kernel,
    split_phi: Kernel,
    project: Kernel,
    // The largest |phi| of each 2048 columns of each row.
    tops: GpuTensor,
    // f16 halves; the tensor type has no f16, so they are counted as f32 pairs.
    tiles: GpuTensor,
    unscale: GpuTensor,
    part: GpuTensor,
}

impl CoopProjection {
    fn new(ctx: &Context, dims: &Dims, tile: CoopTile) -> Result<Self> {
        let (n, d) = kernel_dims(dims)?;
        let spec = mhc_wgsl::pre_forward_coop(n, d, tile);
        let blocks = spec.get("NB").expect("pre_forward_coop spec sets NB") as usize;
        let tiles = ctx.scratch("phi f16 tiles", &[32 * dims.k()], DType::F32)?;
        // Bound whole: 32 rows of K where phi has M.
        ctx.check_whole("phi f16 tiles", &tiles)?;
        Ok(Self {
            tile,
            k: dims.k(),
            blocks,
            phi_top: ctx.pipeline(Family::PreForwardCoop, "phi_top", &spec)?,
            split_phi: ctx.pipeline(Family::PreForwardCoop, "split_phi", &spec)?,
            project: ctx.pipeline(Family::PreForwardCoop, "project", &spec)?,
            tops: ctx.scratch("phi block maxima", &[32 * blocks], DType::F32)?,
            tiles,
            unscale: ctx.scratch("phi tile scales", &[32], DType::F32)?,
            part: ctx.scratch("projection partials", &[dims.t, tile.partial_floats() as usize], DType::F32)?,
        })
    }

    fn record(
        &self,
        ctx: &Context,
        pass: &mut wgpu::ComputePass<'_>,
        phi: &GpuTensor,
        x: &GpuTensor,
        chunks: &Chunks,
    ) -> Result<()> {
        let params = |_: usize, range: &std::ops::Range<usize>| {
            // The coop kernels read only `t`, the first field of the operator's uniform.
            Ok(ctx.uniform(&Params { t: to_u32(range.len(), "tokens")?, ..Params::zeroed() }))
        };
        let blocks = Chunks::whole(32 * self.blocks);
        ctx.record_chunks(pass, &self.phi_top, &blocks, &[], &[(1, phi), (2, &self.tops)], params, |r| r.len())?;
        let whole = [(1, phi), (2, &self.tops), (3, &self.tiles), (7, &self.unscale)];
        let elements = Chunks::whole(32 * self.k);
        ctx.record_chunks(pass, &self.split_phi, &elements, &[], &whole, params, |r| r.len().div_ceil(256))?;
        let rows = [(4, x, "x"), (6, &self.part, "projection partials")];
        ctx.record_chunks(pass, &self.project, chunks, &rows, &[(5, &self.tiles)], params, |r| {
            r.len().div_ceil(self.tile.tokens() as usize) * self.tile.splits as usize
        })
    }
}
