use mhc_core::shape::{expect_exact, expect_per_token};
use mhc_core::{DType, Dims, Error, PreBackwardInputs, PreParams, Result};
use mhc_wgsl::Family;

use super::{kernel_dims, to_u32};
use crate::dispatch::row_bytes;
use crate::{Context, GpuTensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    hc_eps: f32,
    post_mult: f32,
    wg_base: u32,
    seg_tokens: u32,
    accumulate: u32,
    n_small: u32,
    n_segs: u32,
}

/// Gradients of mhc_pre on the GPU (SPEC.md section 2).
#[derive(Debug, Clone)]
pub struct PreBackwardOutputs {
    /// Gradient of `x`, bf16 `[..., n, D]`.
    pub dx: GpuTensor,
    /// Gradient of `phi`, f32 `[M, K]`, summed over tokens.
    pub dphi: GpuTensor,
    /// Gradient of `alpha`, f32 `[3]`.
    pub dalpha: GpuTensor,
    /// Gradient of `bias`, f32 `[M]`.
    pub dbias: GpuTensor,
    /// Gradient of `gamma`, f32 `[n, D]` (also when gamma is absent).
    pub dgamma: GpuTensor,
}

impl PreBackwardOutputs {
    /// Zeroed gradients for `dims` (dx keeps x's leading dims).
    pub fn zeros(ctx: &Context, dims: &Dims) -> Result<Self> {
        let (n, d, m, k) = (dims.n, dims.d, dims.m(), dims.k());
        Ok(Self {
            dx: GpuTensor::zeros(ctx, "dx", &dims.out_shape(&[n, d]), DType::BF16)?,
            dphi: GpuTensor::zeros(ctx, "dphi", &[m, k], DType::F32)?,
            dalpha: GpuTensor::zeros(ctx, "dalpha", &[3], DType::F32)?,
            dbias: GpuTensor::zeros(ctx, "dbias", &[m], DType::F32)?,
            dgamma: GpuTensor::zeros(ctx, "dgamma", &[n, d], DType::F32)?,
        })
    }

    fn validate(&self, dims: &Dims) -> Result<()> {
        let (n, d, m, k) = (dims.n, dims.d, dims.m(), dims.k());
        expect_per_token("dx", &self.dx, DType::BF16, dims.t, &[n, d])?;
        expect_exact("dphi", &self.dphi, DType::F32, &[m, k])?;
        expect_exact("dalpha", &self.dalpha, DType::F32, &[3])?;
        expect_exact("dbias", &self.dbias, DType::F32, &[m])?;
        expect_exact("dgamma", &self.dgamma, DType::F32, &[n, d])
    }
}

/// Workgroups the `cols` pass aims for, rounded down to whole token segments: two waves on an
/// H100 or H200 (3 workgroups of 168 registers an invocation on each of 132 multiprocessors).
/// A count just past a whole number of waves leaves most of the card idle through a short last
/// wave, and fewer segments leave `finish` fewer partials. On an H100 (docs/perf-history.md,
/// twenty-seventh session) this took mhc_pre backward from 1019 to 980 us at 8192 x 4 x 7168
/// and from 238 to 234 at 4096 x 4 x 2560, the other bench shapes within 0.1%, against 1024
/// workgroups or just over.
const COLS_MAX_GROUPS: usize = 792;
/// Below this norm_eps, `cols` checks for tokens whose coef = dinv_rms * inv_rms^3 / K passed
/// f32's range and forms their dx again (`dx_big_coef` in pre_backward.wgsl), which cost it
/// 1.5-1.9% on an H100 (docs/perf-history.md, thirty-second session). At or above it inv_rms is
/// under 1e10, and coef would pass the range only with output gradients of about 1e17 or more.
const BIG_COEF_NORM_EPS: f32 = 1e-20;
/// Bytes of dphi partial sums the `cols` pass may keep (one slice per token segment).
const PARTIALS_BUDGET: u64 = 64 << 20;
/// Tokens a `cols` segment adds up in plain f32 where its partials are few bytes (`finish`
/// adds the segments with compensation). A segment's rounding error grows with its length,
/// and with few columns there are few dgamma values for SPEC.md's norm test to average over:
/// at 530,000 tokens and K = 2 on lavapipe, segments of 518 tokens left dgamma's error above
/// 1e-5 on 2 of 300 random inputs and above 5e-6 on 4 (mean 9.2e-7); segments of 128, above
/// 5e-6 on none of 600 (mean 3.4e-7, largest 4.4e-6).
const ACCURATE_SEG_TOKENS: usize = 128;
/// Partials small enough that segments of [`ACCURATE_SEG_TOKENS`] cost nothing measurable
/// (at the bench shapes one segment's partials alone take about 1 MB or more).
const SMALL_PARTIALS: u64 = 1 << 20;

/// mhc_pre backward: the gradients of x and of the weights from dh_in, dh_post and dh_res and
/// the tensors mhc_pre forward saved (SPEC.md section 2). dh_res is the gradient of the h_res
/// logits: after a fused Sinkhorn, turn the projection's gradient into it with
/// [`super::sinkhorn_backward`] first (the layer API does).
pub fn pre_backward(
    ctx: &Context,
    inp: &PreBackwardInputs<'_, GpuTensor>,
    p: &PreParams,
) -> Result<PreBackwardOutputs> {
    let dims = inp.validate()?;
    let out = PreBackwardOutputs::zeros(ctx, &dims)?;
    pre_backward_into(ctx, inp, &out, p)?;
    Ok(out)
}

/// Runs the `rows`, `cols` and `finish` passes of `pre_backward.wgsl` in one submission.
pub fn pre_backward_into(
    ctx: &Context,
    inp: &PreBackwardInputs<'_, GpuTensor>,
    out: &PreBackwardOutputs,
    p: &PreParams,
) -> Result<()> {
    let dims = inp.validate()?;
    p.validate()?;
    out.validate(&dims)?;
    let f = &inp.fwd;
    let (t, m, k) = (dims.t, dims.m(), dims.k());
    let big_coef = p.norm_eps < BIG_COEF_NORM_EPS;
    let (n, d) = kernel_dims(&dims)?;
    let spec = mhc_wgsl::pre_backward(n, d, f.gamma.is_some(), big_coef, ctx.target());
    let get = |name| spec.get(name).map(|v| v as usize).expect("pre_backward spec sets TB and WG");
    let (tb, wg) = (get("TB"), get("WG"));
    let pair = spec.flag_value("PAIR") == Some(true);
    let pipe = |entry| ctx.pipeline(Family::PreBackward, entry, &spec);
    let (rows_p, cols_p, finish_p) = (pipe("rows")?, pipe("cols")?, pipe("finish")?);

    let tok_data = ctx.scratch("tok_data", &[t, m + 1], DType::F32)?;
    let per_token = [
        (1, f.x, "x"),
        (2, inp.dh_in, "dh_in"),
        (4, inp.inv_rms, "inv_rms"),
        (5, inp.h_mix, "h_mix"),
        (6, inp.h_pre, "h_pre"),
        (7, inp.h_post, "h_post"),
        (8, inp.dh_post, "dh_post"),
        (9, inp.dh_res, "dh_res"),
        (10, &tok_data, "tok_data"),
        (14, &out.dx, "dx"),
        (21, f.x, "x"),
        (22, inp.dh_in, "dh_in"),
    ];
    let chunks = ctx.chunks_for(t, &per_token)?;
    let rows_of = |slots: &[u32]| per_token.iter().copied().filter(|r| slots.contains(&r.0)).collect::<Vec<_>>();

    // dalpha / dbias partials: one row per `rows` workgroup over all chunks.
    let group_base: Vec<usize> = chunks
        .ranges
        .iter()
        .scan(0, |acc, r| {
            let base = *acc;
            *acc += r.len().div_ceil(tb);
            Some(base)
        })
        .collect();
    let groups = |ranges: &[std::ops::Range<usize>]| ranges.iter().map(|r| r.len().div_ceil(tb)).sum::<usize>();
    let n_small = groups(&chunks.ranges);
    // Bound whole, unlike the per-token tensors, so it caps the tokens of one call: a row for
    // each `rows` workgroup of each chunk.
    let small_bytes = (n_small * (m + 3) * 4) as u64;
    if small_bytes > ctx.max_binding_size() {
        let named: Vec<(&str, u64)> = per_token.iter().map(|&(_, g, name)| (name, row_bytes(g, t))).collect();
        let rows_fit = ctx.max_binding_size() as usize / ((m + 3) * 4);
        // The rows never shrink as tokens are added (another chunk only adds rounding), so the
        // most tokens that fit are found by bisection: `lo` tokens fit, `hi` do not.
        let (mut lo, mut hi) = (0, t);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if groups(&ctx.token_chunks(mid, &named)?) <= rows_fit {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        return Err(Error::TooLarge {
            what: "x".into(),
            detail: format!(
                "{t} tokens: mhc_pre backward's dbias/dalpha partials would take {small_bytes} bytes, the device \
                 binds at most {}; split the tokens over calls of at most {lo}",
                ctx.max_binding_size()
            ),
        });
    }
    let part_small = ctx.scratch("dbias/dalpha partials", &[n_small, m + 3], DType::F32)?;

    // dphi / dgamma partials: one slice per token segment, shared by all chunks.
    let col_blocks = (if pair { k / 2 } else { k }).div_ceil(wg);
    let longest = chunks.ranges.iter().map(|r| r.len()).max().unwrap_or(1);
    let slice_bytes = (m * k * 4) as u64;
    let max_segs = (PARTIALS_BUDGET.min(ctx.max_binding_size()) / slice_bytes).max(1) as usize;
    let accurate = longest.div_ceil(ACCURATE_SEG_TOKENS);
    let accurate = if accurate as u64 * slice_bytes <= SMALL_PARTIALS { accurate } else { 1 };
    let n_segs = (COLS_MAX_GROUPS / col_blocks).max(accurate).min(max_segs).min(longest).max(1);
    if slice_bytes > ctx.max_binding_size() {
        return Err(Error::TooLarge {
            what: "dphi".into(),
            detail: format!("{slice_bytes} bytes, the device binds at most {}", ctx.max_binding_size()),
        });
    }
    let part_phi = ctx.scratch("dphi partials", &[n_segs, m, k], DType::F32)?;
    let part_gamma = ctx.scratch("dgamma partials", &[n_segs, k], DType::F32)?;

    for (name, g) in [("phi", f.phi), ("alpha", f.alpha)] {
        ctx.check_whole(name, g)?;
    }
    let mut cols_whole = vec![(12, f.phi), (15, &part_phi), (16, &part_gamma)];
    cols_whole.extend(f.gamma.map(|g| (13, g)));

    let params = |i: usize, r: &std::ops::Range<usize>| {
        Ok(ctx.uniform(&Params {
            t: to_u32(r.len(), "tokens")?,
            hc_eps: p.hc_eps,
            post_mult: p.post_mult,
            wg_base: to_u32(group_base.get(i).copied().unwrap_or(0), "workgroups")?,
            seg_tokens: to_u32(r.len().div_ceil(n_segs), "tokens")?,
            accumulate: u32::from(i > 0),
            n_small: to_u32(n_small, "workgroups")?,
            n_segs: to_u32(n_segs, "segments")?,
        }))
    };
    // The redo of a token with a large coef also reads its inv_rms and h_mix.
    let mut cols_rows = vec![6, 10, 14, 21, 22];
    if big_coef {
        cols_rows.extend([4, 5]);
    }
    let one_chunk = crate::dispatch::Chunks::whole(t);
    ctx.submit("mhc_pre backward", |pass| {
        ctx.record_chunks(
            pass,
            &rows_p,
            &chunks,
            &rows_of(&[1, 2, 4, 5, 6, 7, 8, 9, 10]),
            &[(3, f.alpha), (11, &part_small)],
            params,
            |r| r.len().div_ceil(tb),
        )?;
        ctx.record_chunks(pass, &cols_p, &chunks, &rows_of(&cols_rows), &cols_whole, params, |_| col_blocks * n_segs)?;
        let finish_whole = [
            (11, &part_small),
            (15, &part_phi),
            (16, &part_gamma),
            (17, &out.dphi),
            (18, &out.dgamma),
            (19, &out.dalpha),
            (20, &out.dbias),
        ];
        // dphi / dgamma's workgroups, then one for each of dbias and dalpha's M + 3 values.
        ctx.record_chunks(pass, &finish_p, &one_chunk, &[], &finish_whole, params, |_| (m * k).div_ceil(wg) + m + 3)
    })
}
