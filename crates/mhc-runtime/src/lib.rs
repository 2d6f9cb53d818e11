//! The wgpu runtime of mhc: device setup ([`Context`]), GPU tensors ([`GpuTensor`]), the
//! pipeline cache, dispatch over token chunks, and the operators in [`ops`].

mod context;
mod dispatch;
pub mod ops;
mod pipeline;
mod tensor;

pub use context::{Capabilities, Context, ContextOptions, adapters};
pub use mhc_core::TensorMeta;
pub use tensor::GpuTensor;
pub use wgpu;
