//! Recording kernels: bind groups, workgroup grids wider than 65535, and the split of large
//! tensors into token chunks that each fit one storage binding.

use std::ops::Range;

use mhc_core::{Error, Result, TensorMeta};

use crate::pipeline::Kernel;
use crate::{Context, GpuTensor};

/// How a launch splits its `tokens` into ranges that each fit one binding.
pub(crate) struct Chunks {
    pub ranges: Vec<Range<usize>>,
    tokens: usize,
}

impl Chunks {
    /// One dispatch over all `tokens`, for kernels that bind no per-token tensor.
    pub(crate) fn whole(tokens: usize) -> Self {
        Self { ranges: std::iter::once(0..tokens).collect(), tokens }
    }
}

/// Bytes of one token's row of a per-token tensor.
pub(crate) fn row_bytes(t: &GpuTensor, tokens: usize) -> u64 {
    (t.numel() / tokens.max(1) * t.dtype().size_bytes()) as u64
}

/// A buffer as a kernel binds it.
enum Bind<'a> {
    /// The whole tensor.
    All(&'a GpuTensor),
    /// Tokens `range` of a per-token tensor of `bytes_per_token`.
    Tokens(&'a GpuTensor, u64, &'a Range<usize>),
    Uniform(&'a wgpu::Buffer),
}

/// Workgroup counts for `groups` groups: 1D while it fits, else a 2D grid the kernels flatten
/// with `group_index`.
pub(crate) fn grid(groups: u32, max_dim: u32) -> (u32, u32) {
    if groups <= max_dim {
        (groups.max(1), 1)
    } else {
        let y = groups.div_ceil(max_dim);
        (groups.div_ceil(y), y)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Context {
    /// Splits `t` tokens into chunks whose bindings, for tensors of `bytes_per_token` (name,
    /// bytes), each fit the binding limit and start at an aligned offset.
    pub(crate) fn token_chunks(&self, t: usize, bytes_per_token: &[(&str, u64)]) -> Result<Vec<Range<usize>>> {
        let align = u64::from(self.device.limits().min_storage_buffer_offset_alignment);
        // Chunk starts must be multiples of `step` tokens for every offset to be aligned.
        let step = bytes_per_token.iter().fold(1u64, |acc, &(_, b)| {
            let s = align / gcd(b.max(1), align);
            acc / gcd(acc, s) * s
        });
        let (name, widest) = bytes_per_token.iter().copied().max_by_key(|&(_, b)| b).unwrap_or(("", 1));
        let fit = self.max_binding_size() / widest.max(1);
        if (t as u64) <= fit {
            return Ok(std::iter::once(0..t).collect());
        }
        let per = fit / step * step;
        if per == 0 {
            return Err(Error::TooLarge {
                what: name.into(),
                detail: format!(
                    "one token needs {widest} bytes and chunks of {step} tokens; the device binds at most {} bytes",
                    self.max_binding_size()
                ),
            });
        }
        let per = per as usize;
        Ok((0..t).step_by(per).map(|s| s..(s + per).min(t)).collect())
    }

    fn bind_group(&self, pipeline: &wgpu::ComputePipeline, binds: &[(u32, Bind<'_>)]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = binds
            .iter()
            .map(|(binding, b)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: match b {
                    // The tensor's bytes, not its buffer's: a kept scratch buffer or a
                    // caller's (`GpuTensor::from_buffer`) may be larger than the binding limit.
                    Bind::All(t) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: t.buffer(),
                        offset: 0,
                        size: wgpu::BufferSize::new(t.bound_bytes()),
                    }),
                    Bind::Uniform(u) => u.as_entire_binding(),
                    Bind::Tokens(t, per, range) => {
                        let offset = range.start as u64 * per;
                        let bytes = (range.end - range.start) as u64 * per;
                        // The last chunk may end inside the final padded word.
                        let size = bytes.div_ceil(4).max(1) * 4;
                        let size = size.min(t.buffer().size() - offset);
                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: t.buffer(),
                            offset,
                            size: wgpu::BufferSize::new(size),
                        })
                    }
                },
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Records one dispatch of `groups` workgroups (laid out by [`grid`]).
    fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, kernel: &Kernel, bind_group: &wgpu::BindGroup, groups: u32) {
        let (x, y) = grid(groups, self.max_workgroups_per_dimension());
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }

    /// Token chunks for `rows`, the per-token tensors of `t` tokens some kernels bind:
    /// (binding, tensor, name). Every kernel recorded with these chunks may bind any subset.
    pub(crate) fn chunks_for(&self, t: usize, rows: &[(u32, &GpuTensor, &str)]) -> Result<Chunks> {
        let named: Vec<(&str, u64)> = rows.iter().map(|&(_, g, name)| (name, row_bytes(g, t))).collect();
        Ok(Chunks { ranges: self.token_chunks(t, &named)?, tokens: t })
    }

    /// Records one dispatch of `kernel` per chunk, binding each chunk's rows of the per-token
    /// tensors, the tensors of `whole` entire, and the uniform `params(chunk)` at binding 0.
    /// The chunks together are one stage of a per-stage timing.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_chunks(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        kernel: &Kernel,
        chunks: &Chunks,
        rows: &[(u32, &GpuTensor, &str)],
        whole: &[(u32, &GpuTensor)],
        params: impl Fn(usize, &Range<usize>) -> Result<wgpu::Buffer>,
        groups: impl Fn(&Range<usize>) -> usize,
    ) -> Result<()> {
        for (i, range) in chunks.ranges.iter().enumerate() {
            let uniform = params(i, range)?;
            let mut binds = vec![(0, Bind::Uniform(&uniform))];
            binds.extend(whole.iter().map(|&(slot, t)| (slot, Bind::All(t))));
            for &(slot, tensor, _) in rows {
                binds.push((slot, Bind::Tokens(tensor, row_bytes(tensor, chunks.tokens), range)));
            }
            let bg = self.bind_group(&kernel.pipeline, &binds);
            let n = u32::try_from(groups(range)).map_err(|_| Error::TooLarge {
                what: "dispatch".into(),
                detail: "more workgroups than u32 counts".into(),
            })?;
            self.dispatch(pass, kernel, &bg, n);
        }
        self.timer.stage_done(pass, kernel.entry);
        Ok(())
    }

    /// Records `record` into one compute pass and submits it (or adds it to the open batch),
    /// inside error scopes. A recording the device refused is never queued: in a batch, it
    /// would fail the whole submission, the calls before it too.
    pub(crate) fn submit(
        &self,
        what: &str,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>) -> Result<()>,
    ) -> Result<()> {
        let buffer = self.scoped(what, || {
            let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
            {
                let timing = self.timer.next_pass();
                let timestamp_writes = timing.as_ref().map(|(set, first)| wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(*first),
                    end_of_pass_write_index: Some(first + 1),
                });
                let mut pass =
                    enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(what), timestamp_writes });
                record(&mut pass)?;
            }
            Ok(enc.finish())
        })?;
        self.enqueue(what, buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn grid_covers_every_group_within_the_limit() {
        for groups in [1, 65535, 65536, 200_000, 4_000_000] {
            let (x, y) = grid(groups, 65535);
            assert!(x <= 65535 && y <= 65535);
            assert!(x as u64 * y as u64 >= groups as u64);
            assert!((x as u64 * (y as u64 - 1)) < groups as u64);
        }
    }
}
