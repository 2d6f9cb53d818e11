//! Shared by the GPU tests: contexts on the default adapter, upload and comparison helpers.
#![allow(dead_code)]

use std::sync::OnceLock;

use mhc::core::accuracy::{Comparison, Tolerance, compare, compare_sum};
use mhc::core::golden::{PreForwardF64, PreGradsF64, pre_forward_f64, sinkhorn_forward_f64};
use mhc::core::random::{PreInputs, TensorRng, seed_from_env};
use mhc::core::{DType, Dims, Error, HostTensor, PreForwardInputs, PreParams, SinkhornParams, TensorMeta};
use mhc::runtime::layer::MhcPre;
use mhc::runtime::{Context, ContextOptions, GpuTensor, ops};

/// The default adapter, shared by all tests of a binary (lavapipe in CI).
pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| Context::new().expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)"))
}

/// The default adapter made once with `opts` and kept in `cell` for the test binary.
fn cached(cell: &'static OnceLock<Context>, opts: ContextOptions) -> &'static Context {
    cell.get_or_init(|| Context::with_options(opts).expect("a wgpu adapter"))
}

/// The same adapter with subgroups off: the shared-memory reduction path.
pub fn ctx_portable() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    cached(&CTX, ContextOptions { use_subgroups: false, ..Default::default() })
}

/// Tiny binding and grid limits, so moderate inputs take the token-chunk and 2D-grid paths.
pub fn ctx_small_limits() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    let opts = ContextOptions {
        max_binding_size: Some(64 << 10),
        max_workgroups_per_dimension: Some(7),
        ..Default::default()
    };
    cached(&CTX, opts)
}

/// The default adapter with `block_reduce`'s clusters of `lanes` (1, 2 or 4) lanes, fewer
/// than its subgroups hold (lavapipe's 8): the layout of adapters with a range of subgroup
/// sizes.
pub fn ctx_reduce_lanes(lanes: u32) -> &'static Context {
    static CTX: [OnceLock<Context>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    cached(
        &CTX[lanes.trailing_zeros() as usize],
        ContextOptions { max_reduce_lanes: Some(lanes), ..Default::default() },
    )
}

/// The default adapter with kernels held to 16 KB of workgroup memory, WebGPU's minimum: the
/// layouts of adapters with little of it.
pub fn ctx_small_workgroup_memory() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    cached(&CTX, ContextOptions { max_workgroup_storage: Some(16 << 10), ..Default::default() })
}

/// The default adapter with mhc_post forward's vector path taking `columns` (4 or 8) columns
/// an invocation, whatever the shape would choose.
pub fn ctx_post_columns(columns: u32) -> &'static Context {
    static CTX: [OnceLock<Context>; 2] = [OnceLock::new(), OnceLock::new()];
    cached(
        &CTX[usize::from(columns == 8)],
        ContextOptions { post_forward_columns: Some(columns), ..Default::default() },
    )
}

/// Asserts that a context made with `opts` is refused with an error naming `option`.
pub fn assert_option_refused(opts: ContextOptions, option: &str) {
    let err = Context::with_options(opts).err().unwrap_or_else(|| panic!("{option}: the value was accepted"));
    assert!(matches!(&err, Error::Param { name, .. } if name == option), "{err}");
}

pub fn up(ctx: &Context, name: &str, t: &HostTensor) -> GpuTensor {
    GpuTensor::upload(ctx, name, t).unwrap_or_else(|e| panic!("upload {name}: {e}"))
}

/// An MhcPre layer over `host`'s parameters, uploaded.
pub fn layer(ctx: &Context, host: &PreInputs, p: PreParams, sinkhorn: Option<SinkhornParams>) -> MhcPre {
    let gamma = host.gamma.as_ref().map(|g| up(ctx, "gamma", g));
    let (phi, alpha, bias) = (up(ctx, "phi", &host.phi), up(ctx, "alpha", &host.alpha), up(ctx, "bias", &host.bias));
    MhcPre::new(phi, alpha, bias, gamma, p, sinkhorn).unwrap()
}

/// Fills every output with 0xFF bytes (NaN in f32 and bf16) so an element a kernel skips
/// cannot pass as correct.
pub fn poison(ctx: &Context, outs: &[&GpuTensor]) {
    for o in outs {
        o.fill_bytes(ctx, 0xFF).unwrap_or_else(|e| panic!("poisoning an output: {e}"));
    }
}

/// Asserts SPEC.md section 5's tolerance for `out` (read back) against the f64 reference.
pub fn check(ctx: &Context, name: &str, out: &GpuTensor, reference: &[f64], tol: Option<Tolerance>, seed: u64) {
    let host = out.read(ctx).unwrap_or_else(|e| panic!("reading {name}: {e}"));
    check_host(name, &host, reference, tol, seed);
}

/// [`check`] token by token, for an output whose scale follows its token's x (h_in, h_mix,
/// inv_rms, dx) when tokens differ in scale: against the whole tensor, every error is measured
/// against the largest token's values, and an error in a token 2^100 times smaller would pass.
/// Stricter than SPEC.md there, so one bound is looser: WGSL lets an adapter flush f32 values
/// under 2^-126 to zero (NVIDIA's does), so an element is allowed 2^-126 for each of the
/// `flushes` values on its way that may flush (products, partial sums, the result); that also
/// covers a bf16 subnormal's rounding (a third of a value near 2^-132).
pub fn check_per_token(ctx: &Context, name: &str, out: &GpuTensor, reference: &[f64], flushes: usize, seed: u64) {
    let allowed = flushes as f64 * 2f64.powi(-126);
    let host = out.read(ctx).unwrap_or_else(|e| panic!("reading {name}: {e}"));
    let got = host.to_f64();
    assert_eq!(got.len(), reference.len(), "{name}: elements against the reference's");
    let per = got.len() / host.shape()[0];
    let tol = Tolerance::for_dtype(host.dtype());
    for (tok, (g, r)) in got.chunks(per).zip(reference.chunks(per)).enumerate() {
        let g: Vec<f64> = g.iter().zip(r).map(|(&g, &r)| if (g - r).abs() <= allowed { r } else { g }).collect();
        // f32 holds the replaced references closely enough for either dtype's bounds.
        let token = HostTensor::from_f64(vec![per], DType::F32, &g).unwrap();
        check_host(&format!("{name} token {tok}"), &token, r, Some(tol), seed);
    }
}

/// mhc_pre backward's weight gradients against `r`: sums over tokens, each checked with
/// `compare_sum` (SPEC.md's f32 tolerance plus the rounding of its terms).
pub fn check_weight_grads(ctx: &Context, what: &str, out: &ops::PreBackwardOutputs, r: &PreGradsF64, seed: u64) {
    let s = &r.term_rss;
    for (name, t, reference, rss) in [
        ("dphi", &out.dphi, &r.dphi, &s.dphi),
        ("dalpha", &out.dalpha, &r.dalpha, &s.dalpha),
        ("dbias", &out.dbias, &r.dbias, &s.dbias),
        ("dgamma", &out.dgamma, &r.dgamma, &s.dgamma),
    ] {
        let name = format!("{what} {name}");
        let host = t.read(ctx).unwrap_or_else(|e| panic!("reading {name}: {e}"));
        assert_passed(&name, &host, compare_sum(&name, &host, reference, rss, Tolerance::for_dtype(DType::F32)), seed);
    }
}

pub fn check_host(name: &str, host: &HostTensor, reference: &[f64], tol: Option<Tolerance>, seed: u64) {
    let tol = tol.unwrap_or_else(|| Tolerance::for_dtype(host.dtype()));
    assert_passed(name, host, compare(name, host, reference, tol), seed);
}

fn assert_passed(name: &str, host: &HostTensor, c: Comparison, seed: u64) {
    assert!(
        c.passed(),
        "{name} {:?}: {} (max err {:.3e}, norm err {:.3e}); replay with MHC_SEED={seed}",
        host.shape(),
        c.failure.unwrap_or_default(),
        c.max_abs_err,
        c.norm_err
    );
}

/// Bitwise equality of two reads of the same output.
pub fn same_bits(ctx: &Context, name: &str, a: &GpuTensor, b: &GpuTensor) {
    let (x, y) = (a.read(ctx).unwrap(), b.read(ctx).unwrap());
    assert_eq!(x.as_le_bytes(), y.as_le_bytes(), "{name}: two runs differ");
}

pub fn f32_of(t: &HostTensor) -> Vec<f64> {
    assert_eq!(t.dtype(), DType::F32);
    t.to_f64()
}

/// `x` with token t's values scaled by 2^exps[t % exps.len()] (exact in bf16, so the golden
/// math sees the same values), and every 16th value zero: zeros and subnormals share a path
/// where x is summed again from its bits.
pub fn scale_tokens(x: &HostTensor, exps: &[i32]) -> HostTensor {
    let per_token: usize = x.shape()[1..].iter().product();
    let scaled = |(e, &v): (usize, &f64)| {
        if e % 16 == 0 { 0.0 } else { (v * 2f64.powi(exps[e / per_token % exps.len()])) as f32 }
    };
    let v: Vec<f32> = x.to_f64().iter().enumerate().map(scaled).collect();
    HostTensor::bf16_from_f32(x.shape_vec(), &v).unwrap()
}

/// The options the mhc_pre forward tests run with: the defaults but for a post multiplier
/// other than 2.
pub const PRE_PARAMS: PreParams = PreParams { norm_eps: 1e-6, hc_eps: 1e-6, post_mult: 1.7 };

/// mhc_pre forward under `p` on fresh random inputs whose tokens are scaled by 2^exps (see
/// [`scale_tokens`]).
pub fn run_pre_forward_scaled(ctx: &Context, t: usize, n: usize, d: usize, gamma: bool, exps: &[i32], p: &PreParams) {
    let seed = seed_from_env();
    let dims = Dims::new(t, n, d).unwrap();
    let mut host = PreInputs::random(&mut TensorRng::new(seed), &dims, gamma);
    host.x = scale_tokens(&host.x, exps);
    check_pre_forward(ctx, &dims, &host, p, None, true, seed);
}

/// The golden f64 outputs of mhc_pre forward on `host`.
pub fn pre_forward_reference(dims: &Dims, host: &PreInputs, p: &PreParams) -> PreForwardF64 {
    let gf = host.gamma.as_ref().map(HostTensor::to_f64);
    let (x, phi, alpha, bias) = (host.x.to_f64(), host.phi.to_f64(), host.alpha.to_f64(), host.bias.to_f64());
    pre_forward_f64(dims, &x, &phi, &alpha, &bias, gf.as_deref(), p)
}

/// mhc_pre forward's inputs uploaded from `host`, and its outputs, poisoned so that an
/// element a kernel skips fails [`PreForwardCase::check`].
pub struct PreForwardCase {
    x: GpuTensor,
    phi: GpuTensor,
    alpha: GpuTensor,
    bias: GpuTensor,
    gamma: Option<GpuTensor>,
    pub out: ops::PreForwardOutputs,
}

impl PreForwardCase {
    /// `fused_sinkhorn`: outputs with room for the raw logits of a fused Sinkhorn.
    pub fn new(ctx: &Context, dims: &Dims, host: &PreInputs, fused_sinkhorn: bool) -> Self {
        let out = ops::PreForwardOutputs::zeros(ctx, dims, fused_sinkhorn).unwrap();
        let mut all = vec![&out.h_in, &out.h_post, &out.h_res, &out.inv_rms, &out.h_mix, &out.h_pre];
        all.extend(out.h_res_logits.as_ref());
        poison(ctx, &all);
        Self {
            x: up(ctx, "x", &host.x),
            phi: up(ctx, "phi", &host.phi),
            alpha: up(ctx, "alpha", &host.alpha),
            bias: up(ctx, "bias", &host.bias),
            gamma: host.gamma.as_ref().map(|g| up(ctx, "gamma", g)),
            out,
        }
    }

    pub fn inputs(&self) -> PreForwardInputs<'_, GpuTensor> {
        PreForwardInputs {
            x: &self.x,
            phi: &self.phi,
            alpha: &self.alpha,
            bias: &self.bias,
            gamma: self.gamma.as_ref(),
        }
    }

    /// Checks every output against the golden math of `host` under `p` (and `sinkhorn`, as
    /// the call ran), naming them after `what`; with `per_token` (for tokens of different
    /// scales), the outputs that scale with x one token at a time (see [`check_per_token`]).
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        ctx: &Context,
        what: &str,
        dims: &Dims,
        host: &PreInputs,
        p: &PreParams,
        sinkhorn: Option<SinkhornParams>,
        per_token: bool,
        seed: u64,
    ) {
        let (n, out) = (dims.n, &self.out);
        let r = pre_forward_reference(dims, host, p);
        // h_in's n products and n - 1 sums may each flush, and so may h_mix's K products where
        // norm_eps keeps a tiny token out of the rescue (calls 141-143 on the card: h_in of a
        // 2^-120 token 2.4% off an element, h_mix 20%); inv_rms is the result alone.
        let scaled = [
            ("h_in", &out.h_in, &r.h_in, 2 * n),
            ("inv_rms", &out.inv_rms, &r.inv_rms, 1),
            ("h_mix", &out.h_mix, &r.h_mix, 2 * dims.k()),
        ];
        for (name, o, reference, flushes) in scaled {
            if per_token {
                check_per_token(ctx, &format!("{what} {name}"), o, reference, flushes, seed);
            } else {
                check(ctx, &format!("{what} {name}"), o, reference, None, seed);
            }
        }
        check(ctx, &format!("{what} h_post"), &out.h_post, &r.h_post, None, seed);
        check(ctx, &format!("{what} h_pre"), &out.h_pre, &r.h_pre, None, seed);
        match sinkhorn {
            None => check(ctx, &format!("{what} h_res"), &out.h_res, &r.h_res, None, seed),
            Some(sp) => {
                let logits = out.h_res_logits.as_ref().unwrap();
                check(ctx, &format!("{what} h_res_logits"), logits, &r.h_res, None, seed);
                // The projection of the reference logits.
                let proj = sinkhorn_forward_f64(n, &r.h_res, &sp);
                check(ctx, &format!("{what} fused sinkhorn h_res"), &out.h_res, &proj, None, seed);
            }
        }
    }
}

/// Runs mhc_pre forward under `p` on `host` (outputs poisoned first) and checks every output
/// against the golden math (see [`PreForwardCase::check`]).
pub fn check_pre_forward(
    ctx: &Context,
    dims: &Dims,
    host: &PreInputs,
    p: &PreParams,
    sinkhorn: Option<SinkhornParams>,
    per_token: bool,
    seed: u64,
) {
    let case = PreForwardCase::new(ctx, dims, host, sinkhorn.is_some());
    ops::pre_forward_into(ctx, &case.inputs(), &case.out, p, sinkhorn.as_ref()).unwrap();
    let what = format!("pre_forward T={} n={} D={} gamma={}", dims.t, dims.n, dims.d, host.gamma.is_some());
    case.check(ctx, &what, dims, host, p, sinkhorn, per_token, seed);
}

/// mhc_pre forward on fresh random inputs of `t` tokens against the golden math.
pub fn run_pre_forward(ctx: &Context, t: usize, n: usize, d: usize, gamma: bool, sinkhorn: Option<SinkhornParams>) {
    let seed = seed_from_env();
    let dims = Dims::new(t, n, d).unwrap();
    let host = PreInputs::random(&mut TensorRng::new(seed), &dims, gamma);
    check_pre_forward(ctx, &dims, &host, &PRE_PARAMS, sinkhorn, false, seed);
}
