//! Buffers an operator needs only inside its own submission (gamma-folded weights, partial
//! sums, kernel parameters), kept between calls so that a model's steady state allocates
//! nothing but outputs. Reuse is safe because one queue runs calls in order, also the calls of
//! one batch's submission (wgpu puts barriers between their command buffers): a later call's
//! kernels start after an earlier call's have finished with the buffer. Every user
//! writes a scratch buffer before reading it; none relies on its contents. Parameter buffers
//! are never written after they are made, so calls in flight may share them.

use std::collections::HashMap;
use std::sync::Mutex;

use mhc_core::{DType, Result};
use wgpu::util::DeviceExt;

use crate::{Context, GpuTensor};

/// Parameter buffers kept at most; past that the pool starts again. A model's calls repeat a
/// few shapes, so this bounds only callers whose parameters never repeat (an SGD learning rate
/// changed every step). A buffer that is dropped here lives on in any bind group still in flight.
const UNIFORMS_KEPT: usize = 1024;

#[derive(Default)]
pub(crate) struct ScratchPool {
    slots: Mutex<HashMap<&'static str, wgpu::Buffer>>,
    uniforms: Mutex<HashMap<Vec<u8>, wgpu::Buffer>>,
}

impl Context {
    /// The scratch tensor `name` with `shape`: the buffer kept from an earlier call when it is
    /// large enough, else a new one that replaces it.
    pub(crate) fn scratch(&self, name: &'static str, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let bytes = (shape.iter().product::<usize>() * dtype.size_bytes()).div_ceil(4).max(1) * 4;
        let mut slots = self.scratch.slots.lock().unwrap_or_else(|p| p.into_inner());
        let buffer = match slots.get(name) {
            Some(b) if b.size() >= bytes as u64 => b.clone(),
            _ => {
                let fresh = GpuTensor::zeros(self, name, &[bytes / 4], DType::F32)?.buffer().clone();
                slots.insert(name, fresh.clone());
                fresh
            }
        };
        GpuTensor::from_buffer(name, buffer, shape, dtype)
    }

    /// A uniform buffer holding `value`: the one made for the same bytes before, if kept.
    pub(crate) fn uniform<T: bytemuck::Pod>(&self, value: &T) -> wgpu::Buffer {
        let bytes = bytemuck::bytes_of(value);
        let mut kept = self.scratch.uniforms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = kept.get(bytes) {
            return b.clone();
        }
        if kept.len() >= UNIFORMS_KEPT {
            kept.clear();
        }
        let b = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("mhc params"),
            contents: bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        kept.insert(bytes.to_vec(), b.clone());
        b
    }

    /// Frees the scratch buffers kept between calls (they are made again when next needed).
    /// Each is as large as the largest call that used it: mhc_pre backward's dphi partials
    /// take up to 64 MiB, mhc_pre forward's gamma-folded phi M x K floats.
    pub fn release_scratch(&self) {
        self.scratch.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.scratch.uniforms.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
