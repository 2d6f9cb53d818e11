//! The operators by name, the tensors each exchanges (SPEC.md section 6), and the bytes and
//! flops each must move and do: the floors `mhc bench` reports against.

use crate::Dims;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
/// The operators of SPEC.md, as `mhc run`, `check` and `bench` name them.
pub enum Op {
    /// mhc_pre forward (section 1).
    PreForward,
    /// mhc_pre backward (section 2).
    PreBackward,
    /// The Sinkhorn-Knopp projection of h_res logits (section 3).
    SinkhornForward,
    /// The gradient of the logits through that projection (section 3).
    SinkhornBackward,
    /// mhc_post forward (section 4).
    PostForward,
    /// mhc_post backward (section 4).
    PostBackward,
}

/// What an operator must move and compute at the least.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Bytes read plus bytes written, each tensor once.
    pub bytes: u64,
    /// Floating-point operations (an FMA counts 2).
    pub flops: u64,
}

impl Op {
    /// Every operator, in SPEC.md's order.
    pub const ALL: [Op; 6] =
        [Op::PreForward, Op::PreBackward, Op::SinkhornForward, Op::SinkhornBackward, Op::PostForward, Op::PostBackward];

    /// The command-line name (`pre-forward`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::PreForward => "pre-forward",
            Op::PreBackward => "pre-backward",
            Op::SinkhornForward => "sinkhorn-forward",
            Op::SinkhornBackward => "sinkhorn-backward",
            Op::PostForward => "post-forward",
            Op::PostBackward => "post-backward",
        }
    }

    /// The operator of a command-line name.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Input tensors, required ones first; `optional_inputs` lists those that may be absent.
    pub fn inputs(self) -> &'static [&'static str] {
        match self {
            Op::PreForward => &["x", "phi", "alpha", "bias", "gamma"],
            Op::PreBackward => &[
                "x", "phi", "alpha", "bias", "gamma", "inv_rms", "h_mix", "h_pre", "h_post", "dh_in", "dh_post",
                "dh_res",
            ],
            Op::SinkhornForward => &["logits"],
            Op::SinkhornBackward => &["logits", "d_out"],
            Op::PostForward => &["x", "residual", "post_layer_mix", "comb_res_mix"],
            Op::PostBackward => &["x", "residual", "post_layer_mix", "comb_res_mix", "d_out"],
        }
    }

    /// The inputs that may be absent.
    pub fn optional_inputs(self) -> &'static [&'static str] {
        match self {
            Op::PreForward | Op::PreBackward => &["gamma"],
            _ => &[],
        }
    }

    /// Output tensors in SPEC.md's order.
    pub fn outputs(self) -> &'static [&'static str] {
        match self {
            Op::PreForward => &["h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"],
            Op::PreBackward => &["dx", "dphi", "dalpha", "dbias", "dgamma"],
            Op::SinkhornForward => &["out"],
            Op::SinkhornBackward => &["d_logits"],
            Op::PostForward => &["out"],
            Op::PostBackward => &["dx", "dresidual", "dpost_layer_mix", "dcomb_res_mix"],
        }
    }

    /// The floor of the operator at `dims` (with gamma for mhc_pre; Sinkhorn at `iters`).
    pub fn cost(self, dims: &Dims, sinkhorn_iters: u32) -> Cost {
        let (t, n, d, m, k) = (dims.t as u64, dims.n as u64, dims.d as u64, dims.m() as u64, dims.k() as u64);
        let (bf, f) = (2, 4);
        let weights = (m * k + m + 3 + k) * f;
        // One normalisation of an n x n matrix: n^2 adds and n^2 divides.
        let sk_forward = (2 * n * n) * (2 * u64::from(sinkhorn_iters)) + 3 * n * n;
        match self {
            Op::PreForward => Cost {
                // x in; h_in, h_post, h_res, inv_rms, h_mix, h_pre out; phi, alpha, bias, gamma.
                bytes: t * (k * bf + d * bf + (n + n * n + 1 + m + n) * f) + weights,
                // h_mix: 2MK, sum of squares: 2K, h_in: 2K.
                flops: t * (2 * m * k + 4 * k),
            },
            Op::PreBackward => Cost {
                // x, dh_in in, dx out; saved and gradient per-token scalars in; the weights in
                // and their gradients out.
                bytes: t * (2 * k * bf + d * bf + (1 + m + 3 * n + n * n) * f) + 2 * weights,
                // dv_mm and dphi: 2MK each; dh_pre, dx, dgamma: about 8K.
                flops: t * (4 * m * k + 8 * k),
            },
            Op::SinkhornForward => Cost { bytes: t * 2 * n * n * f, flops: t * sk_forward },
            // A backward that kept every forward state would do about twice the forward's work
            // again; the kernel's recomputation of the states is its own choice, not counted.
            Op::SinkhornBackward => Cost { bytes: t * 3 * n * n * f, flops: t * sk_forward * 3 },
            Op::PostForward => {
                Cost { bytes: t * (d * bf + 2 * k * bf + (n + n * n) * f), flops: t * 2 * (n + n * n) * d }
            }
            Op::PostBackward => {
                Cost { bytes: t * (2 * d * bf + 3 * k * bf + 2 * (n + n * n) * f), flops: t * 4 * (n + n * n) * d }
            }
        }
    }
}
