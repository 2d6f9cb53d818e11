//! GPU timestamps around each operator's compute pass and, on request, after each of its
//! stages (the dispatches of one entry point), for `mhc bench`.

use std::sync::Mutex;

use mhc_core::{Error, Result};

use crate::Context;

/// Stages a pass times at most; later ones count only in the pass's total.
const MAX_STAGES: u32 = 8;

/// The GPU time of one operator call.
#[derive(Debug, Clone, PartialEq)]
pub struct PassTime {
    /// From the pass's first dispatch to the end of its last.
    pub seconds: f64,
    /// Each stage's entry point and seconds, in recording order; empty unless timed by stage.
    pub stages: Vec<(&'static str, f64)>,
}

/// Timestamp queries for up to `capacity` passes: begin and end of each, then one after each
/// stage when `stages` is set.
pub(crate) struct Timer {
    set: wgpu::QuerySet,
    capacity: u32,
    stages: bool,
    // The stage names of each pass recorded so far.
    passes: Vec<Vec<&'static str>>,
    // The pass being recorded is one of the timed ones.
    recording: bool,
}

/// Queries a pass takes: begin and end, and with `stages` one after each stage.
fn queries_per_pass(stages: bool) -> u32 {
    if stages { 2 + MAX_STAGES } else { 2 }
}

/// The most passes one [`Context::start_timing`] can record: a query set holds at most
/// `wgpu::QUERY_SET_MAX_QUERIES` timestamps.
pub fn max_timed_passes(stages: bool) -> u32 {
    wgpu::QUERY_SET_MAX_QUERIES / queries_per_pass(stages)
}

impl Timer {
    fn per_pass(&self) -> u32 {
        queries_per_pass(self.stages)
    }
}

#[derive(Default)]
pub(crate) struct TimerSlot(Mutex<Option<Timer>>);

impl TimerSlot {
    /// The timestamp writes for the next pass, if timing is on and room is left.
    pub(crate) fn next_pass(&self) -> Option<(wgpu::QuerySet, u32)> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let timer = guard.as_mut()?;
        timer.recording = (timer.passes.len() as u32) < timer.capacity;
        if !timer.recording {
            return None;
        }
        let first = timer.passes.len() as u32 * timer.per_pass();
        timer.passes.push(Vec::new());
        Some((timer.set.clone(), first))
    }

    /// Marks the end of stage `entry` in the pass being recorded, when timing by stage.
    pub(crate) fn stage_done(&self, pass: &mut wgpu::ComputePass<'_>, entry: &'static str) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(timer) = guard.as_mut().filter(|t| t.stages && t.recording) else { return };
        let first = (timer.passes.len() as u32 - 1) * timer.per_pass();
        let Some(names) = timer.passes.last_mut().filter(|n| (n.len() as u32) < MAX_STAGES) else { return };
        pass.write_timestamp(&timer.set, first + 2 + names.len() as u32);
        names.push(entry);
    }
}

impl Context {
    /// Starts recording the GPU time of the next `passes` operator calls (each is one compute
    /// pass; at most [`max_timed_passes`]), and with `stages` of each entry point's dispatches
    /// within them (up to 8 a call). Needs the adapter's timestamp queries, for `stages` also
    /// inside passes.
    pub fn start_timing(&self, passes: u32, stages: bool) -> Result<()> {
        if passes > max_timed_passes(stages) {
            return Err(Error::param(
                "passes",
                format!("{passes}: one query set times at most {} passes", max_timed_passes(stages)),
            ));
        }
        if !self.capabilities().timestamps {
            return Err(Error::gpu("timing", "the adapter has no timestamp queries"));
        }
        if stages && !self.capabilities().stage_timestamps {
            return Err(Error::gpu("timing by stage", "the adapter has no timestamp queries inside passes"));
        }
        let set = self.scoped("timestamp queries", || {
            Ok(self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("mhc timing"),
                ty: wgpu::QueryType::Timestamp,
                count: queries_per_pass(stages) * passes.max(1),
            }))
        })?;
        let timer = Timer { set, capacity: passes, stages, passes: Vec::new(), recording: false };
        *self.timer.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(timer);
        Ok(())
    }

    /// Stops timing and returns the GPU time of each recorded pass, in order.
    pub fn finish_timing(&self) -> Result<Vec<PassTime>> {
        let timer = self.timer.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(timer) = timer else { return Err(Error::gpu("timing", "start_timing was not called")) };
        if timer.passes.is_empty() {
            return Ok(Vec::new());
        }
        let count = timer.passes.len() as u32 * timer.per_pass();
        self.flush()?;
        let resolve = self.scoped("resolving timestamps", || {
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("mhc timestamps"),
                size: u64::from(count) * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.resolve_query_set(&timer.set, 0..count, &buf, 0);
            self.queue.submit([enc.finish()]);
            Ok(buf)
        })?;
        let raw = crate::tensor::read_buffer(self, &resolve, resolve.size())?;
        let ticks: Vec<u64> = raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        let period = f64::from(self.queue.get_timestamp_period()) * 1e-9;
        let secs = |from: u64, to: u64| to.saturating_sub(from) as f64 * period;
        Ok(ticks
            .chunks_exact(timer.per_pass() as usize)
            .zip(&timer.passes)
            .map(|(q, names)| {
                let marks: Vec<u64> = std::iter::once(q[0]).chain(q[2..2 + names.len()].iter().copied()).collect();
                PassTime {
                    seconds: secs(q[0], q[1]),
                    stages: names.iter().zip(marks.windows(2)).map(|(&n, w)| (n, secs(w[0], w[1]))).collect(),
                }
            })
            .collect())
    }
}
