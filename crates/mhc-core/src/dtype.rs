use std::fmt;

/// Element types the mHC operators exchange: activations in bf16, parameters and small
/// per-token outputs in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// bfloat16, two bytes, rounded to nearest-even when produced.
    BF16,
    /// IEEE single precision.
    F32,
}

impl DType {
    /// Bytes an element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::BF16 => 2,
            DType::F32 => 4,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::BF16 => "bf16",
            DType::F32 => "f32",
        })
    }
}
