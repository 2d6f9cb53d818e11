//! The golden reference: every operator of SPEC.md computed on the CPU with f64 accumulation and
//! one rounding per output. The `*_f64` functions take and return unrounded f64 values, for
//! gradient checks; the tensor functions validate their inputs and round like the GPU does.

mod post;
mod pre;
mod sinkhorn;

pub use post::{PostGrads, PostGradsF64, post_backward, post_backward_f64, post_forward, post_forward_f64};
pub use pre::{
    PreForward, PreForwardF64, PreGradSums, PreGrads, PreGradsF64, PreSaved, pre_backward, pre_backward_f64,
    pre_forward, pre_forward_f64,
};
pub use sinkhorn::{sinkhorn_backward, sinkhorn_backward_f64, sinkhorn_forward, sinkhorn_forward_f64};

pub(crate) fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}
