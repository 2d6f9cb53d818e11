//! One training step of an mHC block on the GPU, checked against the golden f64 reference.
//!
//! The block: `MhcPre` (Sinkhorn fused) turns the streams `x [T, n, D]` into the sublayer input
//! `h_in` and the mixes `h_post`, `h_res`; the sublayer is the identity; `MhcPost` mixes its
//! output back into the streams with `x` as the residual. The loss is `L = sum(w * out)` for
//! fixed random `w`, so `d_out = w`. Backward runs through post, then pre; each gradient is
//! compared with the golden math fed the same bf16/f32 intermediates the GPU produced, so every
//! comparison measures one operator. Then one SGD step updates phi, alpha, bias and gamma on
//! the GPU and the loss is recomputed.
//!
//! Run: `cargo run --example train_step` (replay a run with `MHC_SEED=<seed>`).

use std::process::ExitCode;

use mhc::core::accuracy::{Tolerance, compare};
use mhc::core::golden::{self, PreSaved};
use mhc::core::random::{PreInputs, TensorRng, seed_from_env};
use mhc::core::{Dims, Error, HostTensor, PreParams, Result, SinkhornParams, TensorMeta};
use mhc::runtime::layer::{MhcPost, MhcPre, PostCtx, PreCtx, PreOutput};
use mhc::runtime::{Context, GpuTensor};

const T: usize = 64;
const N: usize = 4;
const D: usize = 128;
const LR: f32 = 1e-5;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("train_step: a check failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("train_step: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The block's forward: pre's state, post's state and the output.
struct Forward {
    pre_out: PreOutput,
    pre_ctx: PreCtx,
    post_ctx: PostCtx,
    out: GpuTensor,
}

fn forward(ctx: &Context, pre: &MhcPre, x: &GpuTensor) -> Result<Forward> {
    let (pre_out, pre_ctx) = pre.forward(ctx, x)?;
    // The identity sublayer: post's x is h_in itself.
    let (out, post_ctx) = MhcPost.forward(ctx, &pre_out.h_in, x, &pre_out.h_post, &pre_out.h_res)?;
    Ok(Forward { pre_out, pre_ctx, post_ctx, out })
}

fn loss(ctx: &Context, out: &GpuTensor, w: &HostTensor) -> Result<f64> {
    Ok(out.read(ctx)?.to_f64().iter().zip(w.to_f64()).map(|(o, w)| o * w).sum())
}

/// Prints one comparison a line and remembers whether all passed.
struct Report {
    passed: bool,
}

impl Report {
    fn gpu(&mut self, ctx: &Context, name: &str, out: &GpuTensor, reference: &[f64]) -> Result<()> {
        let c = compare(name, &out.read(ctx)?, reference, Tolerance::for_dtype(out.dtype()));
        let verdict = c.failure.as_deref().map_or("ok".to_string(), |f| format!("FAIL: {f}"));
        println!("  {name:<16} max err/max {:.2e}  rel L2 {:.2e}  {verdict}", c.max_err_of_max, c.norm_err);
        self.passed &= c.passed();
        Ok(())
    }
}

fn run() -> Result<bool> {
    let seed = seed_from_env();
    let ctx = Context::new()?;
    println!("mhc train_step: T={T} n={N} D={D}, seed {seed}, adapter {}", ctx.adapter_info().name);
    let dims = Dims::new(T, N, D)?;
    let mut rng = TensorRng::new(seed);
    let host = PreInputs::random(&mut rng, &dims, true);
    let w = rng.bf16(&[T, N, D], -1.0, 1.0);
    let (p, sp) = (PreParams::default(), SinkhornParams::default());

    let up = |name, t| GpuTensor::upload(&ctx, name, t);
    let gamma = host.gamma.as_ref().map(|g| up("gamma", g)).transpose()?;
    let mut pre =
        MhcPre::new(up("phi", &host.phi)?, up("alpha", &host.alpha)?, up("bias", &host.bias)?, gamma, p, Some(sp))?;
    let x = up("x", &host.x)?;

    let fwd = forward(&ctx, &pre, &x)?;
    let loss_before = loss(&ctx, &fwd.out, &w)?;

    // The block's backward in one queue submission (`Context::batch`).
    let d_out = up("d_out", &w)?;
    let (post_g, grads) = ctx.batch(|| {
        let post_g = MhcPost.backward(&ctx, &fwd.post_ctx, &d_out)?;
        let grads = pre.backward(&ctx, &fwd.pre_ctx, &post_g.dx, &post_g.dpost_layer_mix, &post_g.dcomb_res_mix)?;
        Ok((post_g, grads))
    })?;

    // The golden math, fed what the GPU produced upstream of each operator.
    let f64_of = |t: &GpuTensor| t.read(&ctx).map(|h| h.to_f64());
    let (h_in, h_post, h_res) = (f64_of(&fwd.pre_out.h_in)?, f64_of(&fwd.pre_out.h_post)?, f64_of(&fwd.pre_out.h_res)?);
    let xs = host.x.to_f64();
    let mut report = Report { passed: true };
    println!("against the golden f64 reference (SPEC.md tolerances):");
    report.gpu(&ctx, "out", &fwd.out, &golden::post_forward_f64(&dims, &h_in, &xs, &h_post, &h_res))?;
    let pg = golden::post_backward_f64(&dims, &h_in, &xs, &h_post, &h_res, &w.to_f64());
    report.gpu(&ctx, "dh_in", &post_g.dx, &pg.dx)?;
    report.gpu(&ctx, "dh_post", &post_g.dpost_layer_mix, &pg.dpost_layer_mix)?;
    report.gpu(&ctx, "dh_res", &post_g.dcomb_res_mix, &pg.dcomb_res_mix)?;
    // x reaches the loss twice: as the residual and through mhc_pre; its gradient is the sum.
    report.gpu(&ctx, "dx (residual)", &post_g.dresidual, &pg.dresidual)?;

    let logits = fwd.pre_ctx.h_res_logits.as_ref().ok_or(Error::Missing { tensor: "h_res_logits".into() })?;
    let logits = f64_of(logits)?;
    let d_logits = golden::sinkhorn_backward_f64(N, &logits, &f64_of(&post_g.dcomb_res_mix)?, &sp);
    let s = &fwd.pre_ctx;
    let (inv_rms, h_mix, h_pre) = (f64_of(&s.inv_rms)?, f64_of(&s.h_mix)?, f64_of(&s.h_pre)?);
    let gamma = host.gamma.as_ref().map(HostTensor::to_f64);
    let r = golden::pre_backward_f64(
        &dims,
        &xs,
        &host.phi.to_f64(),
        &host.alpha.to_f64(),
        gamma.as_deref(),
        PreSaved { inv_rms: &inv_rms, h_mix: &h_mix, h_pre: &h_pre, h_post: &h_post },
        &f64_of(&post_g.dx)?,
        &f64_of(&post_g.dpost_layer_mix)?,
        &d_logits,
        &p,
    );
    report.gpu(&ctx, "dx (pre)", &grads.dx, &r.dx)?;
    report.gpu(&ctx, "dphi", &grads.dphi, &r.dphi)?;
    report.gpu(&ctx, "dalpha", &grads.dalpha, &r.dalpha)?;
    report.gpu(&ctx, "dbias", &grads.dbias, &r.dbias)?;
    report.gpu(&ctx, "dgamma", &grads.dgamma, &r.dgamma)?;

    // To first order the step changes the loss by -lr * |grad|^2 over the parameters.
    let mut grad_sq = 0.0;
    for g in [&grads.dphi, &grads.dalpha, &grads.dbias, &grads.dgamma] {
        grad_sq += f64_of(g)?.iter().map(|v| v * v).sum::<f64>();
    }
    pre.sgd_step(&ctx, &grads, LR)?;
    let loss_after = loss(&ctx, &forward(&ctx, &pre, &x)?.out, &w)?;
    let decreased = loss_after < loss_before;
    println!("one SGD step, lr {LR}:");
    println!("  loss before {loss_before:.4}, after {loss_after:.4} (change {:.4})", loss_after - loss_before);
    println!("  first-order prediction {:.4}", -f64::from(LR) * grad_sq);
    println!("  loss decreased: {}", if decreased { "yes" } else { "NO" });
    Ok(report.passed && decreased)
}
