use half::bf16;

use crate::{DType, Error, Result};

/// Shape and dtype of a tensor, host or GPU: what validation looks at.
pub trait TensorMeta {
    /// Dimensions, outermost first.
    fn shape(&self) -> &[usize];
    /// Element type.
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn numel(&self) -> usize {
        self.shape().iter().product()
    }
}

#[derive(Debug, Clone, PartialEq)]
/// The elements of a [`HostTensor`], by dtype.
pub enum HostData {
    /// bfloat16 elements, row-major.
    BF16(Vec<bf16>),
    /// f32 elements, row-major.
    F32(Vec<f32>),
}

/// An owned, dense, row-major tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    shape: Vec<usize>,
    data: HostData,
}

impl TensorMeta for HostTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn dtype(&self) -> DType {
        match self.data {
            HostData::BF16(_) => DType::BF16,
            HostData::F32(_) => DType::F32,
        }
    }
}

/// The elements of `shape`, or an error naming `tensor` where their count (or, with
/// `elem_bytes`, their bytes) passes what `usize` counts: a wrapped product could otherwise
/// match a short buffer.
pub fn checked_numel(tensor: &str, shape: &[usize], elem_bytes: usize) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|n| n.checked_mul(elem_bytes.max(1)).is_some())
        .ok_or_else(|| Error::TooLarge {
            what: tensor.into(),
            detail: format!("shape {shape:?} has too many elements"),
        })
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let numel = checked_numel("tensor", shape, 1)?;
    if numel != len {
        return Err(Error::Data {
            tensor: "tensor".into(),
            detail: format!("shape {shape:?} holds {numel} elements but {len} were given"),
        });
    }
    Ok(())
}

/// Rounds `v` once to the nearest bf16, ties to even. `bf16::from_f64` (half 2.7) drops the low
/// 32 mantissa bits before rounding, so a value just above a tie rounds down; rounding to f32
/// with round-to-odd first keeps that information and makes the second rounding exact.
fn bf16_from_f64(v: f64) -> bf16 {
    let mut f = v as f32;
    if f.is_finite() && f as f64 != v {
        let bits = f.to_bits();
        let toward_zero = if (f as f64).abs() > v.abs() { bits - 1 } else { bits };
        f = f32::from_bits(toward_zero | 1);
    }
    bf16::from_f32(f)
}

impl HostTensor {
    /// A tensor of `shape` holding `data` (an error if the sizes differ).
    pub fn from_bf16(shape: impl Into<Vec<usize>>, data: Vec<bf16>) -> Result<Self> {
        let shape = shape.into();
        check_len(&shape, data.len())?;
        Ok(Self { shape, data: HostData::BF16(data) })
    }

    /// A tensor of `shape` holding `data` (an error if the sizes differ).
    pub fn from_f32(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<Self> {
        let shape = shape.into();
        check_len(&shape, data.len())?;
        Ok(Self { shape, data: HostData::F32(data) })
    }

    /// Rounds each value to bf16 (nearest-even).
    pub fn bf16_from_f32(shape: impl Into<Vec<usize>>, data: &[f32]) -> Result<Self> {
        Self::from_bf16(shape, data.iter().map(|&v| bf16::from_f32(v)).collect())
    }

    /// Rounds f64 values once to the given dtype.
    pub fn from_f64(shape: impl Into<Vec<usize>>, dtype: DType, data: &[f64]) -> Result<Self> {
        match dtype {
            DType::BF16 => Self::from_bf16(shape, data.iter().map(|&v| bf16_from_f64(v)).collect()),
            DType::F32 => Self::from_f32(shape, data.iter().map(|&v| v as f32).collect()),
        }
    }

    /// Reinterprets little-endian bytes (as stored in safetensors files or GPU buffers).
    pub fn from_le_bytes(shape: impl Into<Vec<usize>>, dtype: DType, bytes: &[u8]) -> Result<Self> {
        let shape = shape.into();
        let numel = checked_numel("tensor", &shape, dtype.size_bytes())?;
        if bytes.len() != numel * dtype.size_bytes() {
            return Err(Error::Data {
                tensor: "tensor".into(),
                detail: format!("{dtype} {shape:?} needs {} bytes, got {}", numel * dtype.size_bytes(), bytes.len()),
            });
        }
        let data = match dtype {
            DType::BF16 => HostData::BF16(bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]])).collect()),
            DType::F32 => {
                HostData::F32(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
        };
        Ok(Self { shape, data })
    }

    /// The shape as an owned vector.
    pub fn shape_vec(&self) -> Vec<usize> {
        self.shape.clone()
    }

    /// The elements.
    pub fn data(&self) -> &HostData {
        &self.data
    }

    /// The elements if the tensor is bf16.
    pub fn as_bf16(&self) -> Option<&[bf16]> {
        match &self.data {
            HostData::BF16(v) => Some(v),
            HostData::F32(_) => None,
        }
    }

    /// The elements if the tensor is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            HostData::F32(v) => Some(v),
            HostData::BF16(_) => None,
        }
    }

    /// Little-endian bytes of the elements, the layout of GPU buffers and safetensors.
    pub fn as_le_bytes(&self) -> &[u8] {
        match &self.data {
            HostData::BF16(v) => bytemuck::cast_slice(v),
            HostData::F32(v) => bytemuck::cast_slice(v),
        }
    }

    /// The elements widened to f64 (exact for both dtypes).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            HostData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            HostData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// The same elements under another shape of equal size.
    pub fn reshaped(mut self, shape: impl Into<Vec<usize>>) -> Result<Self> {
        let shape = shape.into();
        check_len(&shape, self.numel())?;
        self.shape = shape;
        Ok(self)
    }
}
