//! mhc: DeepSeek's mHC (Manifold-Constrained Hyper-Connections) operators as portable WGSL
//! compute shaders on wgpu. See the README for an overview and SPEC.md for the math.
//!
//! - [`core`]: shapes, validation, errors, host tensors and the golden f64 CPU reference.
//! - [`wgsl`]: the WGSL kernels and their specialisation.
//! - [`runtime`]: the wgpu context, GPU tensors and the operators ([`runtime::ops`]).

#![warn(missing_docs)]

pub mod exec;

pub use mhc_core as core;
pub use mhc_runtime as runtime;
pub use mhc_wgsl as wgsl;
