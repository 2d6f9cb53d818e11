//! Core of mhc: shapes and their validation, errors, host tensors, and the golden CPU reference
//! of DeepSeek's mHC operators (see SPEC.md).

#![warn(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!("mhc exchanges tensors as little-endian bytes and supports little-endian hosts only");

pub mod accuracy;
mod dtype;
mod error;
pub mod golden;
mod op;
pub mod random;
pub mod shape;
mod tensor;

pub use dtype::DType;
pub use error::{Error, Result};
pub use half::bf16;
pub use op::{Cost, Op};
pub use shape::{Dims, MAX_STREAMS, PostForwardInputs, PreBackwardInputs, PreForwardInputs, PreParams, SinkhornParams};
pub use tensor::{HostData, HostTensor, TensorMeta, checked_numel};
