//! Buffers an operator needs only inside its own submission (gamma-folded weights, partial
//! sums), kept between calls so that a model's steady state allocates nothing but outputs.
//! Reuse is safe because one queue runs submissions in order: a later call's kernels start
//! after an earlier call's have finished with the buffer. Every user writes a scratch buffer
//! before reading it; none relies on its contents.

use std::collections::HashMap;
use std::sync::Mutex;

use mhc_core::{DType, Result};

use crate::{Context, GpuTensor};

#[derive(Default)]
pub(crate) struct ScratchPool {
    slots: Mutex<HashMap<&'static str, wgpu::Buffer>>,
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

    /// Frees the scratch buffers kept between calls (they are made again when next needed).
    /// Each is as large as the largest call that used it: mhc_pre backward's dphi partials
    /// take up to 64 MiB, mhc_pre forward's gamma-folded phi M x K floats.
    pub fn release_scratch(&self) {
        self.scratch.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
