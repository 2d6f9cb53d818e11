use crate::shape::{Dims, PreBackwardInputs, PreForwardInputs, PreParams};
use crate::{DType, HostTensor, Result};

use super::sigmoid;

/// Unrounded outputs of mhc_pre forward, token-major.
#[derive(Debug, Clone)]
pub struct PreForwardF64 {
    /// `sum_i h_pre_i * x_i`, `[t*D]`, before the bf16 rounding.
    pub h_in: Vec<f64>,
    /// The post gates `post_mult * sigmoid(...)`, `[t*n]`.
    pub h_post: Vec<f64>,
    /// The residual-mix logits, `[t*n*n]`, row-major (j, i).
    pub h_res: Vec<f64>,
    /// `1 / sqrt(mean(x^2) + norm_eps)` per token, `[t]`.
    pub inv_rms: Vec<f64>,
    /// The projection `(x * gamma) @ phi^T` before normalisation, `[t*M]`.
    pub h_mix: Vec<f64>,
    /// The pre gates, `+ hc_eps` included, `[t*n]`.
    pub h_pre: Vec<f64>,
}

/// SPEC.md section 1 on flat f64 slices: `x [t*K]`, `phi [M*K]`, `bias [M]`, `gamma [K]`.
pub fn pre_forward_f64(
    dims: &Dims,
    x: &[f64],
    phi: &[f64],
    alpha: &[f64],
    bias: &[f64],
    gamma: Option<&[f64]>,
    p: &PreParams,
) -> PreForwardF64 {
    let (t, n, d, k, m) = (dims.t, dims.n, dims.d, dims.k(), dims.m());
    let mut o = PreForwardF64 {
        h_in: vec![0.0; t * d],
        h_post: vec![0.0; t * n],
        h_res: vec![0.0; t * n * n],
        inv_rms: vec![0.0; t],
        h_mix: vec![0.0; t * m],
        h_pre: vec![0.0; t * n],
    };
    let mut vg = vec![0.0; k];
    for tok in 0..t {
        let v = &x[tok * k..(tok + 1) * k];
        let ss: f64 = v.iter().map(|a| a * a).sum();
        let inv_rms = 1.0 / (ss / k as f64 + p.norm_eps as f64).sqrt();
        for (i, g) in vg.iter_mut().enumerate() {
            *g = v[i] * gamma.map_or(1.0, |g| g[i]);
        }
        let h_mix = &mut o.h_mix[tok * m..(tok + 1) * m];
        for (mi, hm) in h_mix.iter_mut().enumerate() {
            *hm = phi[mi * k..(mi + 1) * k].iter().zip(&vg).map(|(a, b)| a * b).sum();
        }
        o.inv_rms[tok] = inv_rms;
        let tt = |mi: usize| h_mix[mi] * inv_rms;
        for i in 0..n {
            o.h_pre[tok * n + i] = sigmoid(alpha[0] * tt(i) + bias[i]) + p.hc_eps as f64;
            o.h_post[tok * n + i] = p.post_mult as f64 * sigmoid(alpha[1] * tt(n + i) + bias[n + i]);
        }
        for r in 0..n * n {
            o.h_res[tok * n * n + r] = alpha[2] * tt(2 * n + r) + bias[2 * n + r];
        }
        for dd in 0..d {
            o.h_in[tok * d + dd] = (0..n).map(|i| o.h_pre[tok * n + i] * v[i * d + dd]).sum();
        }
    }
    o
}

/// What mhc_pre forward saves for backward, as f64.
#[derive(Debug, Clone, Copy)]
pub struct PreSaved<'a> {
    /// `1 / sqrt(mean(x^2) + norm_eps)` per token, `[t]`.
    pub inv_rms: &'a [f64],
    /// The projection before normalisation, `[t*M]`.
    pub h_mix: &'a [f64],
    /// The pre gates, `+ hc_eps` included, `[t*n]`.
    pub h_pre: &'a [f64],
    /// The forward's h_post output, `[t*n]` (the post gate's derivative needs it).
    pub h_post: &'a [f64],
}

/// Unrounded gradients of mhc_pre.
#[derive(Debug, Clone)]
pub struct PreGradsF64 {
    /// Gradient of `x`, `[t*K]`.
    pub dx: Vec<f64>,
    /// Gradient of `phi`, `[M*K]`, summed over tokens.
    pub dphi: Vec<f64>,
    /// Gradient of `alpha`, `[3]`.
    pub dalpha: Vec<f64>,
    /// Gradient of `bias`, `[M]`.
    pub dbias: Vec<f64>,
    /// Gradient of `gamma`, `[K]` (also when gamma is absent).
    pub dgamma: Vec<f64>,
    /// The root-sum-square of the terms summed into each element of the sums above: the
    /// scale of an f32 sum's rounding error (see `accuracy::compare_sum`).
    pub term_rss: PreGradSums,
}

/// Per element of each of mhc_pre's weight gradients, a value over its terms (see
/// [`PreGradsF64::term_rss`]).
#[derive(Debug, Clone)]
pub struct PreGradSums {
    /// Of `dphi`'s, `[M*K]`.
    pub dphi: Vec<f64>,
    /// Of `dalpha`'s, `[3]`.
    pub dalpha: Vec<f64>,
    /// Of `dbias`'s, `[M]`.
    pub dbias: Vec<f64>,
    /// Of `dgamma`'s, `[K]`.
    pub dgamma: Vec<f64>,
}

/// SPEC.md section 2 on flat f64 slices.
#[allow(clippy::too_many_arguments)]
pub fn pre_backward_f64(
    dims: &Dims,
    x: &[f64],
    phi: &[f64],
    alpha: &[f64],
    gamma: Option<&[f64]>,
    saved: PreSaved<'_>,
    dh_in: &[f64],
    dh_post: &[f64],
    dh_res: &[f64],
    p: &PreParams,
) -> PreGradsF64 {
    let (t, n, d, k, m) = (dims.t, dims.n, dims.d, dims.k(), dims.m());
    let hc_eps = p.hc_eps as f64;
    let post_mult = p.post_mult as f64;
    let zeros = PreGradSums { dphi: vec![0.0; m * k], dalpha: vec![0.0; 3], dbias: vec![0.0; m], dgamma: vec![0.0; k] };
    let mut gr = PreGradsF64 {
        dx: vec![0.0; t * k],
        dphi: zeros.dphi.clone(),
        dalpha: zeros.dalpha.clone(),
        dbias: zeros.dbias.clone(),
        dgamma: zeros.dgamma.clone(),
        term_rss: zeros,
    };
    // Squares of the terms first, their roots at the end.
    let sq = &mut gr.term_rss;
    let gam = |i: usize| gamma.map_or(1.0, |g| g[i]);
    let (mut g, mut dh_mix, mut dv_mm) = (vec![0.0; m], vec![0.0; m], vec![0.0; k]);
    for tok in 0..t {
        let v = &x[tok * k..(tok + 1) * k];
        let dhi = &dh_in[tok * d..(tok + 1) * d];
        let inv_rms = saved.inv_rms[tok];
        let h_mix = &saved.h_mix[tok * m..(tok + 1) * m];
        let h_pre = &saved.h_pre[tok * n..(tok + 1) * n];
        for i in 0..n {
            let dh_pre: f64 = (0..d).map(|dd| dhi[dd] * v[i * d + dd]).sum();
            let s = h_pre[i] - hc_eps;
            let dh_pre2 = dh_pre * s * (1.0 - s);
            let hp = saved.h_post[tok * n + i];
            let dh_post2 = dh_post[tok * n + i] * hp * (1.0 - hp / post_mult);
            g[i] = alpha[0] * dh_pre2;
            g[n + i] = alpha[1] * dh_post2;
            let (a0, a1) = (dh_pre2 * h_mix[i] * inv_rms, dh_post2 * h_mix[n + i] * inv_rms);
            gr.dalpha[0] += a0;
            gr.dalpha[1] += a1;
            gr.dbias[i] += dh_pre2;
            gr.dbias[n + i] += dh_post2;
            sq.dalpha[0] += a0 * a0;
            sq.dalpha[1] += a1 * a1;
            sq.dbias[i] += dh_pre2 * dh_pre2;
            sq.dbias[n + i] += dh_post2 * dh_post2;
        }
        for r in 0..n * n {
            let dr = dh_res[tok * n * n + r];
            g[2 * n + r] = alpha[2] * dr;
            let a2 = dr * h_mix[2 * n + r] * inv_rms;
            gr.dalpha[2] += a2;
            gr.dbias[2 * n + r] += dr;
            sq.dalpha[2] += a2 * a2;
            sq.dbias[2 * n + r] += dr * dr;
        }
        let mut dinv_rms = 0.0;
        for mi in 0..m {
            dh_mix[mi] = g[mi] * inv_rms;
            dinv_rms += g[mi] * h_mix[mi];
        }
        dv_mm.fill(0.0);
        for mi in 0..m {
            let row = &phi[mi * k..(mi + 1) * k];
            let dphi = &mut gr.dphi[mi * k..(mi + 1) * k];
            let dphi_sq = &mut sq.dphi[mi * k..(mi + 1) * k];
            for kk in 0..k {
                dv_mm[kk] += dh_mix[mi] * row[kk];
                let term = dh_mix[mi] * v[kk] * gam(kk);
                dphi[kk] += term;
                dphi_sq[kk] += term * term;
            }
        }
        let rms_term = dinv_rms * inv_rms.powi(3) / k as f64;
        for kk in 0..k {
            let (i, dd) = (kk / d, kk % d);
            gr.dx[tok * k + kk] = dv_mm[kk] * gam(kk) - rms_term * v[kk] + h_pre[i] * dhi[dd];
            let term = v[kk] * dv_mm[kk];
            gr.dgamma[kk] += term;
            sq.dgamma[kk] += term * term;
        }
    }
    for v in [&mut sq.dphi, &mut sq.dalpha, &mut sq.dbias, &mut sq.dgamma] {
        v.iter_mut().for_each(|e| *e = e.sqrt());
    }
    gr
}

/// Outputs of mhc_pre forward: h_in `[..., D]` bf16, h_post `[..., n]`, h_res `[..., n, n]`,
/// and the saved inv_rms `[...]`, h_mix `[..., M]`, h_pre `[..., n]` (f32).
#[derive(Debug, Clone)]
pub struct PreForward {
    /// The h_pre-weighted sum of the n streams (the sublayer's input), bf16 `[..., D]`.
    pub h_in: HostTensor,
    /// The post gates (mhc_post's `post_layer_mix`), f32 `[..., n]`.
    pub h_post: HostTensor,
    /// The residual-mix logits, not Sinkhorn-projected, f32 `[..., n, n]`, row-major (j, i).
    pub h_res: HostTensor,
    /// `1 / sqrt(mean(x^2) + norm_eps)` per token, f32 `[...]`; saved for backward.
    pub inv_rms: HostTensor,
    /// The projection `(x * gamma) @ phi^T`, not normalised, f32 `[..., M]`; saved for
    /// backward.
    pub h_mix: HostTensor,
    /// The pre gates, `+ hc_eps` included, f32 `[..., n]`; saved for backward.
    pub h_pre: HostTensor,
}

/// mhc_pre forward on the CPU (SPEC.md section 1).
pub fn pre_forward(inp: &PreForwardInputs<'_, HostTensor>, p: &PreParams) -> Result<PreForward> {
    let dims = inp.validate()?;
    p.validate()?;
    let gamma = inp.gamma.map(HostTensor::to_f64);
    let o = pre_forward_f64(
        &dims,
        &inp.x.to_f64(),
        &inp.phi.to_f64(),
        &inp.alpha.to_f64(),
        &inp.bias.to_f64(),
        gamma.as_deref(),
        p,
    );
    let (n, d, m) = (dims.n, dims.d, dims.m());
    Ok(PreForward {
        h_in: HostTensor::from_f64(dims.out_shape(&[d]), DType::BF16, &o.h_in)?,
        h_post: HostTensor::from_f64(dims.out_shape(&[n]), DType::F32, &o.h_post)?,
        h_res: HostTensor::from_f64(dims.out_shape(&[n, n]), DType::F32, &o.h_res)?,
        inv_rms: HostTensor::from_f64(dims.out_shape(&[]), DType::F32, &o.inv_rms)?,
        h_mix: HostTensor::from_f64(dims.out_shape(&[m]), DType::F32, &o.h_mix)?,
        h_pre: HostTensor::from_f64(dims.out_shape(&[n]), DType::F32, &o.h_pre)?,
    })
}

/// Gradients of mhc_pre: dx `[..., n, D]` bf16, dphi `[M, K]`, dalpha `[3]`, dbias `[M]`,
/// dgamma `[n, D]` (f32).
#[derive(Debug, Clone)]
pub struct PreGrads {
    /// Gradient of `x`, bf16 `[..., n, D]`.
    pub dx: HostTensor,
    /// Gradient of `phi`, f32 `[M, K]`, summed over tokens.
    pub dphi: HostTensor,
    /// Gradient of `alpha`, f32 `[3]`.
    pub dalpha: HostTensor,
    /// Gradient of `bias`, f32 `[M]`.
    pub dbias: HostTensor,
    /// Gradient of `gamma`, f32 `[n, D]` (also when gamma was absent).
    pub dgamma: HostTensor,
}

/// mhc_pre backward on the CPU (SPEC.md section 2).
pub fn pre_backward(inp: &PreBackwardInputs<'_, HostTensor>, p: &PreParams) -> Result<PreGrads> {
    let dims = inp.validate()?;
    p.validate()?;
    let f = &inp.fwd;
    let gamma = f.gamma.map(HostTensor::to_f64);
    let (inv_rms, h_mix, h_pre, h_post) =
        (inp.inv_rms.to_f64(), inp.h_mix.to_f64(), inp.h_pre.to_f64(), inp.h_post.to_f64());
    let gr = pre_backward_f64(
        &dims,
        &f.x.to_f64(),
        &f.phi.to_f64(),
        &f.alpha.to_f64(),
        gamma.as_deref(),
        PreSaved { inv_rms: &inv_rms, h_mix: &h_mix, h_pre: &h_pre, h_post: &h_post },
        &inp.dh_in.to_f64(),
        &inp.dh_post.to_f64(),
        &inp.dh_res.to_f64(),
        p,
    );
    let (n, d, m, k) = (dims.n, dims.d, dims.m(), dims.k());
    Ok(PreGrads {
        dx: HostTensor::from_f64(dims.out_shape(&[n, d]), DType::BF16, &gr.dx)?,
        dphi: HostTensor::from_f64([m, k], DType::F32, &gr.dphi)?,
        dalpha: HostTensor::from_f64([3], DType::F32, &gr.dalpha)?,
        dbias: HostTensor::from_f64([m], DType::F32, &gr.dbias)?,
        dgamma: HostTensor::from_f64([n, d], DType::F32, &gr.dgamma)?,
    })
}
