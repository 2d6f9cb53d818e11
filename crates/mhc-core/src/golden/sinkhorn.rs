use crate::shape::{Dims, SinkhornParams, expect_per_token, sinkhorn_dims};
use crate::{DType, HostTensor, Result};

/// One normalisation step: its output and the denominators it divided by.
struct Step {
    out: Vec<f64>,
    denom: Vec<f64>,
    cols: bool,
}

/// Divides each column (cols) or row of the `n x n` row-major `p` by its sum + eps.
fn normalise(n: usize, p: &[f64], eps: f64, cols: bool) -> Step {
    let at = |a: usize, b: usize| if cols { b * n + a } else { a * n + b };
    let denom: Vec<f64> = (0..n).map(|a| (0..n).map(|b| p[at(a, b)]).sum::<f64>() + eps).collect();
    let mut out = p.to_vec();
    for a in 0..n {
        for b in 0..n {
            out[at(a, b)] /= denom[a];
        }
    }
    Step { out, denom, cols }
}

/// Softmax over each row, then the normalisation steps of SPEC.md section 3.
fn forward_token(n: usize, logits: &[f64], p: &SinkhornParams) -> (Vec<f64>, Vec<Step>) {
    let eps = p.eps as f64;
    let mut soft = vec![0.0; n * n];
    for j in 0..n {
        let row = &logits[j * n..(j + 1) * n];
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        for i in 0..n {
            soft[j * n + i] = (row[i] - mx).exp() / sum;
        }
    }
    let start: Vec<f64> = soft.iter().map(|s| s + eps).collect();
    let mut steps = vec![normalise(n, &start, eps, true)];
    for _ in 1..p.iters {
        let prev = &steps.last().expect("at least one step").out;
        let rows = normalise(n, prev, eps, false);
        let cols = normalise(n, &rows.out, eps, true);
        steps.push(rows);
        steps.push(cols);
    }
    (soft, steps)
}

/// Sinkhorn forward on flat `[t, n, n]` logits.
pub fn sinkhorn_forward_f64(n: usize, logits: &[f64], p: &SinkhornParams) -> Vec<f64> {
    logits.chunks_exact(n * n).flat_map(|l| forward_token(n, l, p).1.pop().expect("at least one step").out).collect()
}

/// The exact gradient of [`sinkhorn_forward_f64`] with respect to the logits.
pub fn sinkhorn_backward_f64(n: usize, logits: &[f64], d_out: &[f64], p: &SinkhornParams) -> Vec<f64> {
    let mut d_logits = Vec::with_capacity(logits.len());
    for (l, dq) in logits.chunks_exact(n * n).zip(d_out.chunks_exact(n * n)) {
        let (soft, steps) = forward_token(n, l, p);
        let mut g = dq.to_vec();
        for st in steps.iter().rev() {
            let at = |a: usize, b: usize| if st.cols { b * n + a } else { a * n + b };
            for a in 0..n {
                let dot: f64 = (0..n).map(|b| g[at(a, b)] * st.out[at(a, b)]).sum();
                for b in 0..n {
                    g[at(a, b)] = (g[at(a, b)] - dot) / st.denom[a];
                }
            }
        }
        for j in 0..n {
            let row = j * n..(j + 1) * n;
            let dot: f64 = g[row.clone()].iter().zip(&soft[row.clone()]).map(|(a, b)| a * b).sum();
            d_logits.extend(row.map(|r| soft[r] * (g[r] - dot)));
        }
    }
    d_logits
}

/// Sinkhorn-Knopp projection of `[..., n, n]` f32 logits (SPEC.md section 3).
pub fn sinkhorn_forward(logits: &HostTensor, p: &SinkhornParams) -> Result<HostTensor> {
    let dims = sinkhorn_dims("logits", logits)?;
    p.validate()?;
    HostTensor::from_f64(logits.shape_vec(), DType::F32, &sinkhorn_forward_f64(dims.n, &logits.to_f64(), p))
}

/// The gradient of the logits given `d_out` of the projection's output.
pub fn sinkhorn_backward(logits: &HostTensor, d_out: &HostTensor, p: &SinkhornParams) -> Result<HostTensor> {
    let dims: Dims = sinkhorn_dims("logits", logits)?;
    expect_per_token("d_out", d_out, DType::F32, dims.t, &[dims.n, dims.n])?;
    p.validate()?;
    let g = sinkhorn_backward_f64(dims.n, &logits.to_f64(), &d_out.to_f64(), p);
    HostTensor::from_f64(logits.shape_vec(), DType::F32, &g)
}
