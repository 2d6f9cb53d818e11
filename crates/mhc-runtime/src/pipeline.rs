//! Compiled pipelines, cached by kernel family, entry point and specialisation.

use std::collections::HashMap;
use std::sync::Mutex;

use mhc_core::{Error, Result};
use mhc_wgsl::{Family, Spec};

type Key = (Family, &'static str, Spec);

#[derive(Default)]
pub(crate) struct PipelineCache {
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

    fn module(&self, family: Family, spec: &Spec) -> Result<wgpu::ShaderModule> {
        let key = (family, spec.clone());
        if let Some(m) = self.pipelines.modules.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        let src = family.source(spec).map_err(|e| Error::gpu("shader specialisation", e))?;
        let module = self.scoped(&format!("compiling {}.wgsl", family.name()), || {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(family.name()),
                source: wgpu::ShaderSource::Wgsl(src.into()),
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
