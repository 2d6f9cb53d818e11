//! Compiled pipelines, cached by kernel family, entry point and specialisation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mhc_core::{Error, Result};
use mhc_wgsl::{Family, Parsed, Spec};

type Key = (Family, &'static str, Spec);

#[derive(Default)]
pub(crate) struct PipelineCache {
    // Each specialised family parsed once: its workgroup memory is counted before any of its
    // pipelines compiles, and wgpu compiles the same module.
    parsed: Mutex<HashMap<(Family, Spec), Arc<Parsed>>>,
    modules: Mutex<HashMap<(Family, Spec), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<Key, wgpu::ComputePipeline>>,
}

/// A compiled entry point; its name labels the stage in per-stage timings.
pub(crate) struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) entry: &'static str,
}

impl crate::Context {
    /// The pipeline of `entry` in `family` specialised by `spec`, compiled on first use.
    pub(crate) fn pipeline(&self, family: Family, entry: &'static str, spec: &Spec) -> Result<Kernel> {
        let key = (family, entry, spec.clone());
        if let Some(p) = self.pipelines.pipelines.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(Kernel { pipeline: p.clone(), entry });
        }
        let spec = &self.fit_workgroup_memory(family, entry, spec)?;
        let module = self.module(family, spec)?;
        let pipeline = self.scoped(&format!("compiling {}::{entry}", family.name()), || {
            Ok(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            }))
        })?;
        self.pipelines.pipelines.lock().unwrap_or_else(|p| p.into_inner()).insert(key, pipeline.clone());
        Ok(Kernel { pipeline, entry })
    }

    /// `spec`, or the kernel with its workgroup sums through the shared-memory tree instead of
    /// subgroup clusters where only that fits the device's workgroup memory (the clusters'
    /// partials take NV floats a cluster: at 2-lane clusters, 51 KB for mhc_pre forward at n =
    /// 4, D = 127). A kernel past the limit is undefined behaviour that wgpu 30 does not
    /// catch (on an H200 one hung), so where neither fits this is an error naming the kernel.
    fn fit_workgroup_memory(&self, family: Family, entry: &'static str, spec: &Spec) -> Result<Spec> {
        let limit = self.max_workgroup_storage();
        let bytes = |s: &Spec| self.workgroup_bytes(family, entry, s);
        let need = bytes(spec)?;
        if need <= limit {
            return Ok(spec.clone());
        }
        if spec.flag_value("SUBGROUP") == Some(true) {
            let tree = spec.clone().flag("SUBGROUP", false);
            if bytes(&tree)? <= limit {
                return Ok(tree);
            }
        }
        Err(Error::TooLarge {
            what: format!("kernel {}::{entry}", family.name()),
            detail: format!("it needs {need} bytes of workgroup memory, the device has {limit}"),
        })
    }

    fn workgroup_bytes(&self, family: Family, entry: &str, spec: &Spec) -> Result<u32> {
        self.parsed(family, spec)?.workgroup_bytes.get(entry).copied().ok_or_else(|| {
            Error::gpu("shader specialisation", format!("{}.wgsl has no entry point {entry}", family.name()))
        })
    }

    fn parsed(&self, family: Family, spec: &Spec) -> Result<Arc<Parsed>> {
        let key = (family, spec.clone());
        let mut parsed = self.pipelines.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = parsed.get(&key) {
            return Ok(p.clone());
        }
        let p = Arc::new(family.parse(spec).map_err(|e| Error::gpu("shader specialisation", e))?);
        parsed.insert(key, p.clone());
        Ok(p)
    }

    fn module(&self, family: Family, spec: &Spec) -> Result<wgpu::ShaderModule> {
        let key = (family, spec.clone());
        if let Some(m) = self.pipelines.modules.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        let parsed = self.parsed(family, spec)?;
        let module = self.scoped(&format!("compiling {}.wgsl", family.name()), || {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(family.name()),
                source: wgpu::ShaderSource::Naga(Cow::Owned(parsed.module.clone())),
            };
            if self.shader_checks {
                return Ok(self.device.create_shader_module(desc));
            }
            // SAFETY: the source is mhc's own WGSL (validated by naga here and in the tests):
            // its array indices are in range for every shape the operators accept, its loops
            // are bounded by the token counts and sizes in their parameters, and it divides
            // integers only by nonzero constants. See `ContextOptions::shader_checks`.
            Ok(unsafe { self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) })
        })?;
        self.pipelines.modules.lock().unwrap_or_else(|p| p.into_inner()).insert(key, module.clone());
        Ok(module)
    }
}

#[cfg(test)]
mod tests {
    use mhc_wgsl::{Family, Projection, Spec, Target, Tile};

    use crate::{Context, ContextOptions};

    /// mhc_pre forward's `main` for D not a multiple of 8: its sums go through `block_reduce`.
    fn reducing_main(n: u32, lanes: u32) -> Spec {
        let target = Target { subgroup: true, sg_min: lanes };
        mhc_wgsl::pre_forward(n, 127, false, false, target, Tile::for_tokens(n, 127, 64), Projection::InMain)
    }

    #[test]
    fn kernels_past_the_workgroup_memory_take_the_tree_or_are_refused() {
        let ctx = Context::with_options(ContextOptions { max_workgroup_storage: Some(32 << 10), ..Default::default() })
            .expect("a wgpu adapter");
        let fit = |spec: &Spec| ctx.fit_workgroup_memory(Family::PreForward, "main", spec);
        // Clusters of 2 lanes: 16 KB of partials at n = 1, 51 KB at n = 4.
        let small = reducing_main(1, 2);
        assert_eq!(fit(&small).unwrap(), small);
        let big = reducing_main(4, 2);
        assert_eq!(fit(&big).unwrap(), big.clone().flag("SUBGROUP", false));
        assert!(ctx.fit_workgroup_memory(Family::PreForward, "nope", &small).is_err());

        let tiny = Context::with_options(ContextOptions { max_workgroup_storage: Some(1024), ..Default::default() })
            .expect("a wgpu adapter");
        let err = tiny.fit_workgroup_memory(Family::PreForward, "main", &big).unwrap_err().to_string();
        assert!(err.contains("kernel pre_forward::main") && err.contains("the device has 1024"), "{err}");
    }
}
