//! Batches: operator calls whose command buffers reach the queue in one submission. A
//! submission costs the host more than recording a call does (wgpu's tracking and the driver's
//! queue call), which dominates at decoding sizes, where a call's GPU work takes microseconds.

use std::sync::{Mutex, MutexGuard};

use mhc_core::Result;

use crate::Context;

/// The command buffers of a queue's open batch, in call order; `None` while no batch is open.
/// Shared by every context on the device (`DeviceState`), and locked until they are submitted,
/// so that nothing reaches the queue between a batch's calls and the submission of them.
#[derive(Default)]
pub(crate) struct PendingSlot(Mutex<Option<Vec<wgpu::CommandBuffer>>>);

type Pending<'a> = MutexGuard<'a, Option<Vec<wgpu::CommandBuffer>>>;

/// The batch a `Context::batch` opened. Dropped without [`Open::close`] only by a panic in
/// the batch, it closes the batch then too, so that later calls are never left waiting in a
/// batch that no one closes.
struct Open<'a>(&'a Context);

impl Open<'_> {
    /// Ends the batch and submits its calls. Only this batch's: once it has ended, another
    /// may open, which the guard's drop must not then end.
    fn close(self) -> Result<()> {
        let closed = self.end();
        std::mem::forget(self);
        closed
    }

    fn end(&self) -> Result<()> {
        let mut pending = self.0.pending();
        let buffers = pending.take().unwrap_or_default();
        self.0.submit_buffers(&mut pending, buffers)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        // A panic is unwinding through the batch: there is no caller to give an error to.
        let _ = self.end();
    }
}

impl Context {
    fn pending(&self) -> Pending<'_> {
        self.shared.pending.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with every operator call on this device collected, and submitted to the queue
    /// in one submission when `f` returns, instead of one submission a call. The results are
    /// the same as without the batch: the calls run in the order they were made, and a call
    /// whose checks fail, or which the device refuses, returns its own `Err` and is left out,
    /// while the others run.
    ///
    /// Whatever else waits for or writes to the GPU through mhc submits the calls collected so
    /// far first, so it sees them done: [`GpuTensor::read`](crate::GpuTensor::read),
    /// [`fill_bytes`](crate::GpuTensor::fill_bytes), [`Context::wait`] and the timing calls.
    /// Commands a program submits to the queue itself (see [`Context::from_device`]) are not
    /// ordered after calls still in the batch.
    ///
    /// A batch belongs to the device's queue, not to this context: calls made meanwhile
    /// through other contexts on the device, or from other threads, join it, and so does a
    /// batch inside it. An error of the submission itself (a buffer destroyed before it, a
    /// lost device) is returned by the `batch` that opened it, unless `f` returned an error,
    /// which comes first.
    ///
    /// The calls collected reach the GPU when `f` returns, also when it returns an error, and
    /// when it panics.
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
            let mut pending = self.pending();
            if pending.is_some() {
                drop(pending);
                return f();
            }
            *pending = Some(Vec::new());
        }
        let open = Open(self);
        let out = f();
        let submitted = open.close();
        let value = out?;
        submitted.map(|()| value)
    }

    /// Submits `buffer`, the recording of `what`, now, or adds it to the open batch.
    pub(crate) fn enqueue(&self, what: &str, buffer: wgpu::CommandBuffer) -> Result<()> {
        let mut pending = self.pending();
        match pending.as_mut() {
            Some(buffers) => {
                buffers.push(buffer);
                Ok(())
            }
            None => self.scoped(what, || {
                self.queue.submit([buffer]);
                Ok(())
            }),
        }
    }

    /// Submits the open batch's calls so far, keeping it open: for whatever must come after
    /// them on the queue (queue writes, readbacks, waits).
    pub(crate) fn flush(&self) -> Result<()> {
        let mut pending = self.pending();
        let buffers = pending.as_mut().map(std::mem::take).unwrap_or_default();
        self.submit_buffers(&mut pending, buffers)
    }

    /// Submits `buffers` while `_pending` is held, so no other call reaches the queue between
    /// their recording and their submission.
    fn submit_buffers(&self, _pending: &mut Pending<'_>, buffers: Vec<wgpu::CommandBuffer>) -> Result<()> {
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
    use mhc_core::{Error, HostTensor, Result};

    use crate::context::private_context;
    use crate::{Context, GpuTensor, ops};

    fn held(ctx: &Context) -> Option<usize> {
        ctx.pending().as_ref().map(Vec::len)
    }

    fn tensor(ctx: &Context, name: &str, v: [f32; 3]) -> GpuTensor {
        GpuTensor::upload(ctx, name, &HostTensor::from_f32(vec![3], v.to_vec()).unwrap()).unwrap()
    }

    /// The calls of a batch wait in it until it ends, then go in one submission; a wait
    /// inside it submits them; an error or a panic in it ends it too. (That batched calls give
    /// the same results as unbatched ones is tests/batch.rs.)
    #[test]
    fn a_batch_holds_its_calls_until_it_ends() {
        let ctx = private_context();
        let (p, g) = (tensor(&ctx, "p", [1.0, 2.0, 3.0]), tensor(&ctx, "g", [0.5, 0.25, -1.0]));
        let step = || ops::sgd_step(&ctx, &p, &g, 2.0);
        ctx.batch(|| {
            for _ in 0..3 {
                step()?;
            }
            assert_eq!(held(&ctx), Some(3));
            ctx.wait()?;
            assert_eq!(held(&ctx), Some(0), "a wait submits the batch so far");
            step()
        })
        .unwrap();
        assert_eq!(held(&ctx), None);
        assert_eq!(p.read(&ctx).unwrap().as_f32(), Some(&[-3.0, 0.0, 11.0][..]));

        let failed = ctx.batch(|| {
            step()?;
            Err::<(), _>(Error::param("test", "an error in the batch"))
        });
        assert!(failed.is_err());
        assert_eq!(held(&ctx), None, "an error ends the batch");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.batch(|| -> Result<()> {
                step()?;
                panic!("inside the batch")
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(held(&ctx), None, "a panic ends the batch");
        assert_eq!(p.read(&ctx).unwrap().as_f32(), Some(&[-5.0, -1.0, 15.0][..]), "both calls ran");
    }

    /// A batch inside a batch, and calls through another context on the same device, join
    /// the open batch rather than closing it or going around it.
    #[test]
    fn nested_batches_and_other_contexts_join_the_open_batch() {
        let a = private_context();
        let b = Context::from_device(a.adapter_info().clone(), a.device().clone(), a.queue.clone(), Default::default())
            .unwrap();
        let (p, g) = (tensor(&a, "p", [1.0, 2.0, 3.0]), tensor(&a, "g", [0.5, 0.25, -1.0]));
        a.batch(|| {
            ops::sgd_step(&a, &p, &g, 2.0)?;
            b.batch(|| ops::sgd_step(&b, &p, &g, 2.0))?;
            assert_eq!(held(&a), Some(2), "the inner batch closed the outer one");
            // A read through the other context still sees the calls before it done.
            assert_eq!(p.read(&b)?.as_f32(), Some(&[-1.0, 1.0, 7.0][..]));
            Ok(())
        })
        .unwrap();
        assert_eq!(held(&a), None);
    }
}
