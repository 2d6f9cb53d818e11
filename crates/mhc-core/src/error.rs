use crate::DType;

/// Every failure mhc reports. Messages name the tensor (or parameter) and what was expected,
/// so a caller can act on them without reading the source.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A tensor's shape does not fit the operator (`expected` describes what would).
    #[error("{tensor}: expected shape {expected}, got {actual:?}")]
    Shape {
        /// The tensor's name, as the operator (or file) calls it.
        tensor: String,
        /// The shapes that would fit, in words (say `[..., n, D] with 1 <= n <= 8`).
        expected: String,
        /// The shape it has.
        actual: Vec<usize>,
    },
    /// A tensor has the wrong element type.
    #[error("{tensor}: expected dtype {expected}, got {actual}")]
    DType {
        /// The tensor's name.
        tensor: String,
        /// The dtype the operator takes.
        expected: DType,
        /// The dtype it has.
        actual: DType,
    },
    /// A required tensor was not given (by name, in files and `mhc::exec`).
    #[error("{tensor}: required tensor is missing")]
    Missing {
        /// The missing tensor's name, at times with why it is needed.
        tensor: String,
    },
    /// A tensor's bytes or name are unusable: wrong length, not an input of the operator.
    #[error("{tensor}: {detail}")]
    Data {
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A scalar option is out of range (say a negative epsilon or zero Sinkhorn iterations).
    #[error("parameter {name}: {detail}")]
    Param {
        /// The option or environment variable (say `sinkhorn_iters`, `lr`, `MHC_COOP`).
        name: String,
        /// The range it must be in and the value it had.
        detail: String,
    },
    /// An input exceeds what the device (or a u32 index) can address, even split over tokens.
    #[error("{what} is too large: {detail}")]
    TooLarge {
        /// The tensor (by name) or the dispatch that is too large.
        what: String,
        /// Its size and the limit it exceeds.
        detail: String,
    },
    /// The GPU failed: no adapter, a missing feature, a validation or out-of-memory error
    /// caught by an error scope, a lost device. `context` says what mhc was doing.
    #[error("GPU {context}: {detail}")]
    Gpu {
        /// What mhc was doing (say `device request`, `readback`, `allocating x`).
        context: String,
        /// What went wrong: wgpu's message, or mhc's own.
        detail: String,
    },
}

/// mhc's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::Shape`] for `tensor`.
    pub fn shape(tensor: impl Into<String>, expected: impl Into<String>, actual: &[usize]) -> Self {
        Error::Shape { tensor: tensor.into(), expected: expected.into(), actual: actual.to_vec() }
    }

    /// A [`Error::Param`] for option `name`.
    pub fn param(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Param { name: name.into(), detail: detail.into() }
    }

    /// A [`Error::Gpu`] while doing `context`.
    pub fn gpu(context: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Gpu { context: context.into(), detail: detail.to_string() }
    }
}
