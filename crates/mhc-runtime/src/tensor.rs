//! Tensors in GPU memory: a storage buffer with a shape and a dtype.

use mhc_core::{DType, Error, HostTensor, Result, TensorMeta, checked_numel};

use crate::Context;

/// A dense row-major tensor in a wgpu storage buffer. bf16 elements are packed two to a u32
/// word; the buffer is padded to a multiple of 4 bytes.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    buffer: wgpu::Buffer,
    shape: Vec<usize>,
    dtype: DType,
}

impl TensorMeta for GpuTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

fn padded_bytes(shape: &[usize], dtype: DType) -> u64 {
    let bytes = shape.iter().product::<usize>() as u64 * dtype.size_bytes() as u64;
    bytes.div_ceil(4).max(1) * 4
}

const USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

impl GpuTensor {
    /// A new tensor; its contents are zero (wgpu clears new buffers).
    pub fn zeros(ctx: &Context, name: &str, shape: &[usize], dtype: DType) -> Result<Self> {
        checked_numel(name, shape, dtype.size_bytes())?;
        let size = padded_bytes(shape, dtype);
        let max = ctx.device.limits().max_buffer_size;
        if size > max {
            return Err(Error::TooLarge {
                what: name.into(),
                detail: format!("{dtype} {shape:?} needs {size} bytes, the device allows {max} in one buffer"),
            });
        }
        let buffer = ctx.scoped(&format!("allocating {name}"), || {
            Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(name),
                size,
                usage: USAGE,
                mapped_at_creation: false,
            }))
        })?;
        Ok(Self { buffer, shape: shape.to_vec(), dtype })
    }

    /// Copies a host tensor to the GPU.
    pub fn upload(ctx: &Context, name: &str, host: &HostTensor) -> Result<Self> {
        let t = Self::zeros(ctx, name, host.shape(), host.dtype())?;
        let bytes = host.as_le_bytes();
        let whole = bytes.len() / 4 * 4;
        // Inside error scopes: a failed write (its staging memory, say) is an `Err`, where
        // wgpu's default handler would panic. No call in an open batch can use the new
        // buffer yet, so the write needs no flush of it.
        ctx.scoped(&format!("uploading {name}"), || {
            ctx.queue.write_buffer(&t.buffer, 0, &bytes[..whole]);
            if whole < bytes.len() {
                let mut tail = [0u8; 4];
                tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
                ctx.queue.write_buffer(&t.buffer, whole as u64, &tail);
            }
            Ok(())
        })?;
        Ok(t)
    }

    /// Wraps a buffer the caller owns, without a copy. It must have `STORAGE` usage (and
    /// `COPY_SRC` to be read back) and hold at least the tensor's bytes from offset 0.
    pub fn from_buffer(name: &str, buffer: wgpu::Buffer, shape: &[usize], dtype: DType) -> Result<Self> {
        let need = (checked_numel(name, shape, dtype.size_bytes())? * dtype.size_bytes()) as u64;
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::Data { tensor: name.into(), detail: "buffer lacks STORAGE usage".into() });
        }
        if buffer.size() < need || !buffer.size().is_multiple_of(4) {
            return Err(Error::Data {
                tensor: name.into(),
                detail: format!(
                    "buffer of {} bytes cannot hold {dtype} {shape:?} ({need} bytes, padded to a multiple of 4)",
                    buffer.size()
                ),
            });
        }
        Ok(Self { buffer, shape: shape.to_vec(), dtype })
    }

    /// The storage buffer holding the elements (bf16 packed two to a u32, little-endian).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The bytes a binding of the whole tensor spans: its elements', padded to a word.
    pub(crate) fn bound_bytes(&self) -> u64 {
        padded_bytes(&self.shape, self.dtype)
    }

    /// The same buffer under another shape with as many elements (e.g. to flatten leading dims).
    pub fn reshaped(&self, shape: &[usize]) -> Result<Self> {
        if checked_numel("tensor", shape, 1)? != self.numel() {
            return Err(Error::shape("tensor", format!("{} elements", self.numel()), shape));
        }
        Ok(Self { buffer: self.buffer.clone(), shape: shape.to_vec(), dtype: self.dtype })
    }

    /// Fills every byte with `byte`: `mhc check` and the tests poison outputs with 0xFF (NaN
    /// in f32 and bf16) before a kernel runs, so that an element it skips cannot pass.
    pub fn fill_bytes(&self, ctx: &Context, byte: u8) -> Result<()> {
        // The tensor's bytes only: a caller's buffer may hold more than this tensor.
        let data = vec![byte; self.bound_bytes() as usize];
        // A queue write runs before everything in the next submission: calls still in a
        // batch, which may use this tensor, go first.
        ctx.flush()?;
        ctx.scoped("filling a tensor", || {
            ctx.queue.write_buffer(&self.buffer, 0, &data);
            Ok(())
        })
    }

    /// Copies the tensor back to the host (waits for the GPU).
    pub fn read(&self, ctx: &Context) -> Result<HostTensor> {
        // The tensor's bytes only, not the rest of a caller's larger buffer.
        let bytes = read_buffer(ctx, &self.buffer, self.bound_bytes())?;
        HostTensor::from_le_bytes(self.shape.clone(), self.dtype, &bytes[..self.numel() * self.dtype.size_bytes()])
    }
}

/// The first `size` bytes (a multiple of 4) of a `COPY_SRC` buffer, through a mapped staging
/// buffer (waits for the GPU).
pub(crate) fn read_buffer(ctx: &Context, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
    ctx.flush()?;
    let staging = ctx.scoped("readback", || {
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("mhc readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        ctx.queue.submit([enc.finish()]);
        Ok(staging)
    })?;
    let (tx, rx) = std::sync::mpsc::channel();
    staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait()?;
    rx.recv().map_err(|e| Error::gpu("readback", e))?.map_err(|e| Error::gpu("readback", e))?;
    let bytes = staging.slice(..).get_mapped_range().map_err(|e| Error::gpu("readback", e))?.to_vec();
    staging.unmap();
    Ok(bytes)
}
