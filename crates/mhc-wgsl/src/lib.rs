//! The WGSL sources of mhc and their specialisation.
//!
//! Each kernel family lives in one file under `shaders/`. A kernel is specialised by prepending
//! `const` declarations (stream count, widths, block sizes) and by resolving `#if FLAG` /
//! `#else` / `#endif` lines, so the driver compiles loops with constant trip counts and only the
//! code path (vector width, subgroup or shared-memory reductions) the adapter can run.

#![warn(missing_docs)]

use std::collections::BTreeMap;

mod kernels;
mod preprocess;
mod spec;

pub use kernels::{
    CoopTile, POST_NARROW_ELEMENTS, Projection, SplitTile, Target, Tile, bench, gamma_in_project, optim, post_backward,
    post_forward, post_forward_columns, pre_backward, pre_forward, pre_forward_coop, sinkhorn,
};
pub use preprocess::preprocess;
pub use spec::Spec;

/// The most storage buffers one entry point binds: mhc_pre forward's `main` with the fused
/// Sinkhorn and a projection's partials. A device must allow this many a shader stage;
/// `tests/naga.rs` counts every entry point's.
pub const MAX_STORAGE_BUFFERS: u32 = 13;

/// The shared helpers and the kernel files, embedded at build time.
const COMMON: &str = include_str!("../../../shaders/common.wgsl");
const REDUCE: &str = include_str!("../../../shaders/reduce.wgsl");
const SINKHORN_MATH: &str = include_str!("../../../shaders/sinkhorn_math.wgsl");

/// A kernel family: one WGSL file, possibly several entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// mhc_pre forward: `fold_gamma`, `main` and its f32 projection over splits of K, `project`.
    PreForward,
    /// mhc_pre forward's projection on f16 cooperative matrices (Vulkan; opt-in).
    PreForwardCoop,
    /// mhc_pre backward: `rows`, `cols` and `finish`.
    PreBackward,
    /// Sinkhorn-Knopp forward and backward, one token an invocation.
    Sinkhorn,
    /// mhc_post forward and backward.
    Post,
    /// The copy and FMA ceilings of `mhc bench`.
    Bench,
    /// Optimiser steps on f32 parameters (plain SGD).
    Optim,
}

impl Family {
    /// Every family, in declaration order.
    pub const ALL: [Family; 7] = [
        Family::PreForward,
        Family::PreForwardCoop,
        Family::PreBackward,
        Family::Sinkhorn,
        Family::Post,
        Family::Bench,
        Family::Optim,
    ];

    /// The family's file under `shaders/`, without `.wgsl`.
    pub fn name(self) -> &'static str {
        match self {
            Family::PreForward => "pre_forward",
            Family::PreForwardCoop => "pre_forward_coop",
            Family::PreBackward => "pre_backward",
            Family::Sinkhorn => "sinkhorn",
            Family::Post => "post",
            Family::Bench => "bench",
            Family::Optim => "optim",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Family::PreForward => include_str!("../../../shaders/pre_forward.wgsl"),
            Family::PreForwardCoop => include_str!("../../../shaders/pre_forward_coop.wgsl"),
            Family::PreBackward => include_str!("../../../shaders/pre_backward.wgsl"),
            Family::Sinkhorn => include_str!("../../../shaders/sinkhorn.wgsl"),
            Family::Post => include_str!("../../../shaders/post.wgsl"),
            Family::Bench => include_str!("../../../shaders/bench.wgsl"),
            Family::Optim => include_str!("../../../shaders/optim.wgsl"),
        }
    }

    /// Whether the family uses the block reduction of `reduce.wgsl` (which needs `NV`, `WG`
    /// and the `SUBGROUP` flag in its specialisation).
    fn uses_reduce(self) -> bool {
        matches!(self, Family::PreForward | Family::PreBackward | Family::Post)
    }

    /// Whether the family runs the Sinkhorn iterations of `sinkhorn_math.wgsl` (needs `NN`).
    fn uses_sinkhorn(self) -> bool {
        matches!(self, Family::PreForward | Family::Sinkhorn)
    }

    /// The entry points of the family's file.
    pub fn entry_points(self) -> &'static [&'static str] {
        match self {
            Family::PreForward => &["fold_gamma", "main", "project"],
            Family::PreForwardCoop => &["phi_top", "split_phi", "project"],
            Family::PreBackward => &["rows", "cols", "finish"],
            Family::Sinkhorn => &["forward", "backward"],
            Family::Post => &["forward", "backward"],
            Family::Bench => &["copy", "fma_rate"],
            Family::Optim => &["sgd"],
        }
    }

    /// The WGSL extensions the family enables (they must precede every declaration).
    pub fn extensions(self) -> &'static str {
        match self {
            Family::PreForwardCoop => "enable f16;\nenable wgpu_cooperative_matrix;\n",
            _ => "",
        }
    }

    /// The specialised source: extensions, constants, shared helpers, then the family's file,
    /// with every `#if` resolved against `spec`'s flags.
    pub fn source(self, spec: &Spec) -> Result<String, String> {
        let mut src = self.extensions().to_string();
        src.push_str(&spec.const_decls());
        src.push_str(COMMON);
        if self.uses_reduce() {
            src.push_str(REDUCE);
        }
        if self.uses_sinkhorn() {
            src.push_str(SINKHORN_MATH);
        }
        src.push_str(self.body());
        preprocess(&src, spec).map_err(|e| format!("{}.wgsl: {e}", self.name()))
    }

    /// The specialised source parsed and validated by naga, once: the module the runtime hands
    /// to wgpu (so wgpu does not parse it again) and each entry point's workgroup memory.
    pub fn parse(self, spec: &Spec) -> Result<Parsed, String> {
        let src = self.source(spec)?;
        let module = naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string(&src))?;
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::empty(), naga::valid::Capabilities::all())
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all())
            .validate(&module)
            .map_err(|e| e.emit_to_string(&src))?;
        let gctx = module.to_ctx();
        let entry_bytes = |index: usize| {
            let uses = info.get_entry_point(index);
            module
                .global_variables
                .iter()
                .filter(|(handle, var)| var.space == naga::AddressSpace::WorkGroup && !uses[*handle].is_empty())
                .map(|(_, var)| module.types[var.ty].inner.size(gctx).next_multiple_of(16))
                .sum()
        };
        let workgroup_bytes =
            module.entry_points.iter().enumerate().map(|(i, e)| (e.name.clone(), entry_bytes(i))).collect();
        Ok(Parsed { module, workgroup_bytes })
    }
}

/// A specialised kernel family as naga parsed it ([`Family::parse`]).
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The naga module, for `wgpu::ShaderSource::Naga` or a naga backend.
    pub module: naga::Module,
    /// Bytes of workgroup memory each entry point uses, by name, counted as WebGPU's
    /// `maxComputeWorkgroupStorageSize` rule does: each workgroup variable the entry point
    /// uses, its size rounded up to 16. wgpu 30 does not check this against the device's limit
    /// (gfx-rs/wgpu#8946), and a kernel past it is undefined behaviour (on an H200 one hung),
    /// so the runtime checks it before it compiles a pipeline.
    pub workgroup_bytes: BTreeMap<String, u32>,
}
