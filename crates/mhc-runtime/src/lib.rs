//! The wgpu runtime of mhc: device setup ([`Context`]), GPU tensors ([`GpuTensor`]), the
//! pipeline cache, dispatch over token chunks, the operators in [`ops`], and the layer-level
//! API of [`layer`] (forward/backward pairs holding parameters, and an SGD step).

#![warn(missing_docs)]

mod batch;
pub mod ceilings;
mod context;
mod dispatch;
pub mod layer;
pub mod ops;
mod pipeline;
mod scratch;
mod tensor;
mod timing;

pub use context::{Capabilities, Context, ContextOptions, PreSplit, adapters};
pub use mhc_core::TensorMeta;
pub use mhc_wgsl::{SplitTile, Tile};
pub use tensor::GpuTensor;
pub use timing::{PassTime, max_timed_passes};
pub use wgpu;
