//! Batches: operator calls whose command buffers reach the queue in one submission. A
//! submission costs the host more than recording a call does (wgpu's tracking and the driver's
//! queue call), which dominates at decoding sizes, where a call's GPU work takes microseconds.

use std::sync::Mutex;

use mhc_core::Result;

use crate::Context;

/// The command buffers of the open batch, in call order; `None` while no batch is open.
#[derive(Default)]
pub(crate) struct PendingSlot(Mutex<Option<Vec<wgpu::CommandBuffer>>>);

impl PendingSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<wgpu::CommandBuffer>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Closes the batch when `Context::batch` leaves, also by a panic, so that a later call is
/// never left waiting in a batch that no one closes.
struct Open<'a>(&'a Context);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if let Some(buffers) = self.0.pending.lock().take() {
            // Reached with buffers left only by a panic in the batch; there is no caller to
            // give an error to.
            let _ = self.0.submit_buffers(buffers);
        }
    }
}

impl Context {
    /// Runs `f` with every operator call on this context collected, and submitted to the queue
    /// in one submission when `f` returns, instead of one submission a call. The results are
    /// the same as without the batch: the calls run in the order they were made, and each
    /// call's errors (shapes, the device's validation) are still its own `Err`.
    ///
    /// Whatever else waits for or writes to the GPU through mhc submits the calls collected so
    /// far first, so it sees them done: [`GpuTensor::read`](crate::GpuTensor::read),
    /// [`fill_bytes`](crate::GpuTensor::fill_bytes), [`Context::wait`] and the timing calls.
    /// Commands a program submits to the queue itself (see [`Context::from_device`]) are not
    /// ordered after calls still in the batch. Calls from other threads on this context join
    /// an open batch; a batch inside a batch joins the outer one.
    ///
    /// The calls collected reach the GPU when `f` returns, also when it returns an error (the
    /// calls that succeeded before it still run), and when it panics.
    ///
    /// ```no_run
    /// # use mhc_core::random::{PostInputs, PreInputs, TensorRng};
    /// # use mhc_core::{Dims, PreParams};
    /// use mhc_runtime::layer::{MhcPost, MhcPre};
    /// use mhc_runtime::{Context, GpuTensor};
    /// let ctx = Context::new()?;
    /// # let dims = Dims::new(1, 4, 256)?;
    /// # let host = PreInputs::random(&mut TensorRng::new(7), &dims, false);
    /// # let up = |name, t| GpuTensor::upload(&ctx, name, t);
    /// # let pre = MhcPre::new(up("phi", &host.phi)?, up("alpha", &host.alpha)?, up("bias", &host.bias)?, None,
    /// #     PreParams::default(), None)?;
    /// # let x = up("x", &host.x)?;
    /// // One decoding step of a block (the sublayer left out): one submission, not two.
    /// let out = ctx.batch(|| {
    ///     let (h, _) = pre.forward(&ctx, &x)?;
    ///     let (out, _) = MhcPost.forward(&ctx, &h.h_in, &x, &h.h_post, &h.h_res)?;
    ///     Ok(out)
    /// })?;
    /// let out = out.read(&ctx)?;
    /// # Ok::<(), mhc_core::Error>(())
    /// ```
    pub fn batch<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        {
            let mut pending = self.pending.lock();
            if pending.is_some() {
                drop(pending);
                return f();
            }
            *pending = Some(Vec::new());
        }
        let open = Open(self);
        let out = f();
        let buffers = self.pending.lock().take().unwrap_or_default();
        drop(open);
        let submitted = self.submit_buffers(buffers);
        // `f`'s own error first: it names the call that failed.
        let value = out?;
        submitted.map(|()| value)
    }

    /// Submits `buffer`, the recording of `what`, now, or adds it to the open batch.
    pub(crate) fn enqueue(&self, what: &str, buffer: wgpu::CommandBuffer) -> Result<()> {
        // The lock is released before the queue call.
        let buffer = match self.pending.lock().as_mut() {
            Some(buffers) => {
                buffers.push(buffer);
                return Ok(());
            }
            None => buffer,
        };
        self.scoped(what, || {
            self.queue.submit([buffer]);
            Ok(())
        })
    }

    /// Submits the open batch's calls so far, keeping it open: for whatever must come after
    /// them on the queue (queue writes, readbacks, waits).
    pub(crate) fn flush(&self) -> Result<()> {
        let buffers = self.pending.lock().as_mut().map(std::mem::take).unwrap_or_default();
        self.submit_buffers(buffers)
    }

    fn submit_buffers(&self, buffers: Vec<wgpu::CommandBuffer>) -> Result<()> {
        if buffers.is_empty() {
            return Ok(());
        }
        let what = format!("submitting a batch of {} calls", buffers.len());
        self.scoped(&what, || {
            self.queue.submit(buffers);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use mhc_core::HostTensor;

    use crate::{Context, GpuTensor, ops};

    /// The calls of a batch wait in it until it ends: one submission, not one each; a panic
    /// ends it too. (That they give the same results is tests/batch.rs.)
    #[test]
    fn a_batch_holds_its_calls_until_it_ends() {
        let ctx = Context::new().expect("a wgpu adapter");
        let p = GpuTensor::upload(&ctx, "p", &HostTensor::from_f32(vec![3], vec![1.0, 2.0, 3.0]).unwrap()).unwrap();
        let g = GpuTensor::upload(&ctx, "g", &HostTensor::from_f32(vec![3], vec![0.5, 0.25, -1.0]).unwrap()).unwrap();
        let held = |ctx: &Context| ctx.pending.lock().as_ref().map(Vec::len);
        ctx.batch(|| {
            for _ in 0..3 {
                ops::sgd_step(&ctx, &p, &g, 2.0)?;
            }
            assert_eq!(held(&ctx), Some(3));
            Ok(())
        })
        .unwrap();
        assert_eq!(held(&ctx), None);
        assert_eq!(p.read(&ctx).unwrap().as_f32(), Some(&[-2.0, 0.5, 9.0][..]));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.batch(|| -> mhc_core::Result<()> {
                ops::sgd_step(&ctx, &p, &g, 2.0)?;
                panic!("inside the batch")
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(held(&ctx), None);
    }
}
