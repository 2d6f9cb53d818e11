//! The WGSL sources of mhc and their specialisation.
//!
//! Each kernel family lives in one file under `shaders/`. A kernel is specialised by prepending
//! `const` declarations (stream count, widths, block sizes) and by resolving `#if FLAG` /
//! `#else` / `#endif` lines, so the driver compiles loops with constant trip counts and only the
//! code path (vector width, subgroup or shared-memory reductions) the adapter can run.

mod kernels;
mod preprocess;
mod spec;

pub use kernels::{Target, Tile, bench, optim, post, pre_backward, pre_forward, sinkhorn};
pub use preprocess::preprocess;
pub use spec::Spec;

/// The shared helpers and the kernel files, embedded at build time.
const COMMON: &str = include_str!("../../../shaders/common.wgsl");
const REDUCE: &str = include_str!("../../../shaders/reduce.wgsl");
const SINKHORN_MATH: &str = include_str!("../../../shaders/sinkhorn_math.wgsl");

/// A kernel family: one WGSL file, possibly several entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    PreForward,
    PreBackward,
    Sinkhorn,
    Post,
    Bench,
    Optim,
}

impl Family {
    pub const ALL: [Family; 6] =
        [Family::PreForward, Family::PreBackward, Family::Sinkhorn, Family::Post, Family::Bench, Family::Optim];

    pub fn name(self) -> &'static str {
        match self {
            Family::PreForward => "pre_forward",
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
            Family::PreForward => &["fold_gamma", "main"],
            Family::PreBackward => &["rows", "cols", "finish", "finish_small"],
            Family::Sinkhorn => &["forward", "backward"],
            Family::Post => &["forward", "backward"],
            Family::Bench => &["copy", "fma_rate"],
            Family::Optim => &["sgd"],
        }
    }

    /// The specialised source: constants, shared helpers, then the family's file, with every
    /// `#if` resolved against `spec`'s flags.
    pub fn source(self, spec: &Spec) -> Result<String, String> {
        let mut src = spec.const_decls();
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
}
