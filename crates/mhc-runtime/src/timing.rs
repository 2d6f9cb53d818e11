//! GPU timestamps around each operator's compute pass, for `mhc bench`.

use std::sync::Mutex;

use mhc_core::{Error, Result};

use crate::Context;

/// Timestamp queries for up to `capacity` passes, two queries each.
pub(crate) struct Timer {
    set: wgpu::QuerySet,
    capacity: u32,
    used: u32,
}

#[derive(Default)]
pub(crate) struct TimerSlot(Mutex<Option<Timer>>);

impl TimerSlot {
    /// The timestamp writes for the next pass, if timing is on and room is left.
    pub(crate) fn next_pass(&self) -> Option<(wgpu::QuerySet, u32)> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let timer = guard.as_mut()?;
        if timer.used >= timer.capacity {
            return None;
        }
        timer.used += 1;
        Some((timer.set.clone(), 2 * (timer.used - 1)))
    }
}

impl Context {
    /// Starts recording the GPU time of the next `passes` operator calls (each is one compute
    /// pass). Needs the adapter's timestamp queries.
    pub fn start_timing(&self, passes: u32) -> Result<()> {
        if !self.capabilities().timestamps {
            return Err(Error::gpu("timing", "the adapter has no timestamp queries"));
        }
        let set = self.scoped("timestamp queries", || {
            Ok(self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("mhc timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * passes.max(1),
            }))
        })?;
        *self.timer.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Timer { set, capacity: passes, used: 0 });
        Ok(())
    }

    /// Stops timing and returns the seconds each recorded pass took on the GPU, in order.
    pub fn finish_timing(&self) -> Result<Vec<f64>> {
        let timer = self.timer.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(timer) = timer else { return Err(Error::gpu("timing", "start_timing was not called")) };
        if timer.used == 0 {
            return Ok(Vec::new());
        }
        let resolve = self.scoped("resolving timestamps", || {
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("mhc timestamps"),
                size: u64::from(2 * timer.used) * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.resolve_query_set(&timer.set, 0..2 * timer.used, &buf, 0);
            self.queue.submit([enc.finish()]);
            Ok(buf)
        })?;
        let raw = crate::tensor::read_buffer(self, &resolve)?;
        let ticks: Vec<u64> = raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        let period = f64::from(self.queue.get_timestamp_period()) * 1e-9;
        Ok(ticks.chunks_exact(2).map(|p| p[1].saturating_sub(p[0]) as f64 * period).collect())
    }
}
