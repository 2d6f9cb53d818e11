//! The mHC operators on the GPU. Each validates its tensors (errors name the tensor), picks the
//! specialised pipeline, and records its dispatches over token chunks that fit the device's
//! binding limit. The `*_into` forms write into outputs the caller allocated.

mod optim;
mod post;
mod pre_backward;
mod pre_forward;
mod sinkhorn;

pub use optim::sgd_step;
pub(crate) use optim::{SgdUpdate, sgd_steps};
pub use post::{PostBackwardOutputs, post_backward, post_backward_into, post_forward, post_forward_into};
pub use pre_backward::{PreBackwardOutputs, pre_backward, pre_backward_into};
pub use pre_forward::{PreForwardOutputs, pre_forward, pre_forward_into};
pub use sinkhorn::{sinkhorn_backward, sinkhorn_backward_into, sinkhorn_forward, sinkhorn_forward_into};

use mhc_core::{Dims, Error, Result, TensorMeta};

use crate::{Context, GpuTensor};

impl Context {
    /// A tensor bound whole (weights, partial sums) must fit one binding.
    pub(crate) fn check_whole(&self, name: &str, t: &GpuTensor) -> Result<()> {
        let bytes = (t.numel() * t.dtype().size_bytes()) as u64;
        if bytes > self.max_binding_size() {
            return Err(Error::TooLarge {
                what: name.into(),
                detail: format!("{bytes} bytes, the device binds at most {} in one binding", self.max_binding_size()),
            });
        }
        Ok(())
    }
}

/// n and D as the kernels' u32 constants, with K = n * D, which they also hold, in range.
pub(crate) fn kernel_dims(dims: &Dims) -> Result<(u32, u32)> {
    to_u32(dims.k(), "K = n * D")?;
    Ok((to_u32(dims.n, "n")?, to_u32(dims.d, "D")?))
}

/// Sizes and counts the kernels index with 32-bit integers.
pub(crate) fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::TooLarge { what: what.into(), detail: format!("{v} exceeds u32 indexing") })
}
