use crate::DType;

/// Every failure mhc reports. Messages name the tensor (or parameter) and what was expected,
/// so a caller can act on them without reading the source.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{tensor}: expected shape {expected}, got {actual:?}")]
    Shape { tensor: String, expected: String, actual: Vec<usize> },
    #[error("{tensor}: expected dtype {expected}, got {actual}")]
    DType { tensor: String, expected: DType, actual: DType },
    #[error("{tensor}: required tensor is missing")]
    Missing { tensor: String },
    #[error("{tensor}: {detail}")]
    Data { tensor: String, detail: String },
    #[error("parameter {name}: {detail}")]
    Param { name: String, detail: String },
    #[error("{what} is too large: {detail}")]
    TooLarge { what: String, detail: String },
    #[error("GPU {context}: {detail}")]
    Gpu { context: String, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn shape(tensor: impl Into<String>, expected: impl Into<String>, actual: &[usize]) -> Self {
        Error::Shape { tensor: tensor.into(), expected: expected.into(), actual: actual.to_vec() }
    }

    pub fn param(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Param { name: name.into(), detail: detail.into() }
    }

    pub fn gpu(context: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Gpu { context: context.into(), detail: detail.to_string() }
    }
}
