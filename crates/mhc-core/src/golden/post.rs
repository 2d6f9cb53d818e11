use crate::shape::{Dims, PostForwardInputs, post_backward_dims};
use crate::{DType, HostTensor, Result};

/// SPEC.md section 4 forward on flat slices: `x [t*D]`, `residual [t*n*D]`, `plm [t*n]`,
/// `comb [t*n*n]`; returns `out [t*n*D]`.
pub fn post_forward_f64(dims: &Dims, x: &[f64], residual: &[f64], plm: &[f64], comb: &[f64]) -> Vec<f64> {
    let (n, d) = (dims.n, dims.d);
    let mut out = vec![0.0; dims.t * n * d];
    for tok in 0..dims.t {
        for i in 0..n {
            for dd in 0..d {
                let mut acc = plm[tok * n + i] * x[tok * d + dd];
                for j in 0..n {
                    acc += comb[tok * n * n + j * n + i] * residual[(tok * n + j) * d + dd];
                }
                out[(tok * n + i) * d + dd] = acc;
            }
        }
    }
    out
}

/// Unrounded gradients of mhc_post.
#[derive(Debug, Clone)]
pub struct PostGradsF64 {
    /// Gradient of `x`, `[t*D]`.
    pub dx: Vec<f64>,
    /// Gradient of `residual`, `[t*n*D]`.
    pub dresidual: Vec<f64>,
    /// Gradient of `post_layer_mix`, `[t*n]`.
    pub dpost_layer_mix: Vec<f64>,
    /// Gradient of `comb_res_mix`, `[t*n*n]`, row-major (j, i).
    pub dcomb_res_mix: Vec<f64>,
}

/// mhc_post backward in f64 (SPEC.md section 4), unrounded: what results are compared against.
pub fn post_backward_f64(
    dims: &Dims,
    x: &[f64],
    residual: &[f64],
    plm: &[f64],
    comb: &[f64],
    d_out: &[f64],
) -> PostGradsF64 {
    let (t, n, d) = (dims.t, dims.n, dims.d);
    let mut g = PostGradsF64 {
        dx: vec![0.0; t * d],
        dresidual: vec![0.0; t * n * d],
        dpost_layer_mix: vec![0.0; t * n],
        dcomb_res_mix: vec![0.0; t * n * n],
    };
    for tok in 0..t {
        let dout = |i: usize, dd: usize| d_out[(tok * n + i) * d + dd];
        for dd in 0..d {
            g.dx[tok * d + dd] = (0..n).map(|i| plm[tok * n + i] * dout(i, dd)).sum();
            for j in 0..n {
                g.dresidual[(tok * n + j) * d + dd] = (0..n).map(|i| comb[tok * n * n + j * n + i] * dout(i, dd)).sum();
            }
        }
        for i in 0..n {
            g.dpost_layer_mix[tok * n + i] = (0..d).map(|dd| dout(i, dd) * x[tok * d + dd]).sum();
            for j in 0..n {
                g.dcomb_res_mix[tok * n * n + j * n + i] =
                    (0..d).map(|dd| dout(i, dd) * residual[(tok * n + j) * d + dd]).sum();
            }
        }
    }
    g
}

/// mhc_post forward on the CPU: `out [..., n, D]` bf16, leading dims those of `residual`.
pub fn post_forward(inp: &PostForwardInputs<'_, HostTensor>) -> Result<HostTensor> {
    let dims = inp.validate()?;
    let out = post_forward_f64(
        &dims,
        &inp.x.to_f64(),
        &inp.residual.to_f64(),
        &inp.post_layer_mix.to_f64(),
        &inp.comb_res_mix.to_f64(),
    );
    HostTensor::from_f64(dims.out_shape(&[dims.n, dims.d]), DType::BF16, &out)
}

/// Gradients of mhc_post: dx `[..., D]` and dresidual `[..., n, D]` bf16, dpost_layer_mix
/// (the shape of post_layer_mix) and dcomb_res_mix `[..., n, n]` f32.
#[derive(Debug, Clone)]
pub struct PostGrads {
    /// Gradient of `x`, `sum_i post_layer_mix_i * d_out_i`: bf16 `[..., D]`.
    pub dx: HostTensor,
    /// Gradient of `residual`, row j `sum_i comb_res_mix[j, i] * d_out_i`: bf16 `[..., n, D]`.
    pub dresidual: HostTensor,
    /// Gradient of `post_layer_mix`, `sum_d d_out_i * x`: f32, shaped like `post_layer_mix`.
    pub dpost_layer_mix: HostTensor,
    /// Gradient of `comb_res_mix`, `[j, i]` = `sum_d d_out_i * residual_j`: f32 `[..., n, n]`.
    pub dcomb_res_mix: HostTensor,
}

/// mhc_post backward on the host: the f64 reference rounded like the GPU's outputs.
pub fn post_backward(inp: &PostForwardInputs<'_, HostTensor>, d_out: &HostTensor) -> Result<PostGrads> {
    let dims = post_backward_dims(inp, d_out)?;
    let g = post_backward_f64(
        &dims,
        &inp.x.to_f64(),
        &inp.residual.to_f64(),
        &inp.post_layer_mix.to_f64(),
        &inp.comb_res_mix.to_f64(),
        &d_out.to_f64(),
    );
    let (n, d) = (dims.n, dims.d);
    Ok(PostGrads {
        dx: HostTensor::from_f64(dims.out_shape(&[d]), DType::BF16, &g.dx)?,
        dresidual: HostTensor::from_f64(dims.out_shape(&[n, d]), DType::BF16, &g.dresidual)?,
        dpost_layer_mix: HostTensor::from_f64(inp.post_layer_mix.shape_vec(), DType::F32, &g.dpost_layer_mix)?,
        dcomb_res_mix: HostTensor::from_f64(dims.out_shape(&[n, n]), DType::F32, &g.dcomb_res_mix)?,
    })
}
