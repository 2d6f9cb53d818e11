//! The layer API (MhcPre, MhcPost) against the operators it wraps and the golden reference, and
//! the GPU SGD step against the same update computed on the host.

mod common;

use common::*;
use mhc::core::golden::{PreSaved, pre_backward_f64, sinkhorn_backward_f64};
use mhc::core::random::{PostInputs, PreInputs, TensorRng, seed_from_env};
use mhc::core::{DType, Dims, Error, HostTensor, PostForwardInputs, PreParams, SinkhornParams};
use mhc::runtime::layer::{MhcPost, MhcPre};
use mhc::runtime::{Context, GpuTensor, ops};

fn read(ctx: &Context, t: &GpuTensor) -> HostTensor {
    t.read(ctx).unwrap()
}

#[test]
fn pre_forward_equals_the_operator() {
    let ctx = ctx();
    let p = PreParams { post_mult: 1.5, ..Default::default() };
    for (n, d, gamma, sinkhorn) in [(4, 64, true, Some(SinkhornParams::default())), (2, 3, false, None)] {
        let dims = Dims::new(9, n, d).unwrap();
        let host = PreInputs::random(&mut TensorRng::new(seed_from_env()), &dims, gamma);
        let pre = layer(ctx, &host, p, sinkhorn);
        let x = up(ctx, "x", &host.x);
        let (out, saved) = pre.forward(ctx, &x).unwrap();
        let inputs = mhc::core::PreForwardInputs {
            x: &x,
            phi: pre.phi(),
            alpha: pre.alpha(),
            bias: pre.bias(),
            gamma: pre.gamma(),
        };
        let r = ops::pre_forward(ctx, &inputs, &p, sinkhorn.as_ref()).unwrap();
        for (name, a, b) in [
            ("h_in", &out.h_in, &r.h_in),
            ("h_post", &out.h_post, &r.h_post),
            ("h_res", &out.h_res, &r.h_res),
            ("inv_rms", &saved.inv_rms, &r.inv_rms),
            ("h_mix", &saved.h_mix, &r.h_mix),
            ("h_pre", &saved.h_pre, &r.h_pre),
            ("saved h_post", &saved.h_post, &r.h_post),
        ] {
            same_bits(ctx, name, a, b);
        }
        assert_eq!(saved.h_res_logits.is_some(), sinkhorn.is_some());
        if let (Some(a), Some(b)) = (&saved.h_res_logits, &r.h_res_logits) {
            same_bits(ctx, "h_res_logits", a, b);
        }
    }
}

/// Layer backward against Sinkhorn backward then mhc_pre backward in f64, each fed the
/// intermediates the GPU forward produced.
fn run_pre_backward(t: usize, n: usize, d: usize, gamma: bool, sinkhorn: Option<SinkhornParams>) {
    let ctx = ctx();
    let seed = seed_from_env();
    let mut rng = TensorRng::new(seed);
    let dims = Dims::new(t, n, d).unwrap();
    let p = PreParams { post_mult: 1.5, hc_eps: 1e-3, ..Default::default() };
    let host = PreInputs::random(&mut rng, &dims, gamma);
    let pre = layer(ctx, &host, p, sinkhorn);
    let x = up(ctx, "x", &host.x);
    let (_, saved) = pre.forward(ctx, &x).unwrap();
    let dh_in = rng.bf16(&[t, d], -1.0, 1.0);
    let dh_post = rng.f32(&[t, n], -1.0, 1.0);
    let dh_res = rng.f32(&[t, n, n], -1.0, 1.0);
    let grads = pre
        .backward(ctx, &saved, &up(ctx, "dh_in", &dh_in), &up(ctx, "dh_post", &dh_post), &up(ctx, "dh_res", &dh_res))
        .unwrap();

    let f64_of = |g: &GpuTensor| read(ctx, g).to_f64();
    let d_logits = match (&sinkhorn, &saved.h_res_logits) {
        (Some(sp), Some(l)) => sinkhorn_backward_f64(n, &f64_of(l), &dh_res.to_f64(), sp),
        _ => dh_res.to_f64(),
    };
    let (inv_rms, h_mix, h_pre, h_post) =
        (f64_of(&saved.inv_rms), f64_of(&saved.h_mix), f64_of(&saved.h_pre), f64_of(&saved.h_post));
    let gf = host.gamma.as_ref().map(HostTensor::to_f64);
    let r = pre_backward_f64(
        &dims,
        &host.x.to_f64(),
        &host.phi.to_f64(),
        &host.alpha.to_f64(),
        gf.as_deref(),
        PreSaved { inv_rms: &inv_rms, h_mix: &h_mix, h_pre: &h_pre, h_post: &h_post },
        &dh_in.to_f64(),
        &dh_post.to_f64(),
        &d_logits,
        &p,
    );
    let what = format!("MhcPre backward T={t} n={n} D={d} gamma={gamma} sinkhorn={}", sinkhorn.is_some());
    check(ctx, &format!("{what} dx"), &grads.dx, &r.dx, None, seed);
    check_weight_grads(ctx, &what, &grads, &r, seed);
}

#[test]
fn pre_backward_with_fused_sinkhorn_matches_golden() {
    for n in [1, 4] {
        for d in [3, 64] {
            run_pre_backward(7, n, d, d == 64, Some(SinkhornParams::default()));
        }
    }
    run_pre_backward(5, 4, 64, true, Some(SinkhornParams { iters: 5, eps: 1e-3 }));
}

#[test]
fn pre_backward_without_sinkhorn_matches_golden() {
    run_pre_backward(6, 2, 3, true, None);
}

#[test]
fn post_equals_the_operators() {
    let ctx = ctx();
    let dims = Dims::new(11, 4, 24).unwrap();
    let h = PostInputs::random(&mut TensorRng::new(seed_from_env()), &dims);
    let (x, res, plm, comb, d_out) = (
        up(ctx, "x", &h.x),
        up(ctx, "residual", &h.residual),
        up(ctx, "post_layer_mix", &h.post_layer_mix),
        up(ctx, "comb_res_mix", &h.comb_res_mix),
        up(ctx, "d_out", &h.d_out),
    );
    let (out, saved) = MhcPost.forward(ctx, &x, &res, &plm, &comb).unwrap();
    let g = MhcPost.backward(ctx, &saved, &d_out).unwrap();
    let inputs = PostForwardInputs { x: &x, residual: &res, post_layer_mix: &plm, comb_res_mix: &comb };
    same_bits(ctx, "out", &out, &ops::post_forward(ctx, &inputs).unwrap());
    let r = ops::post_backward(ctx, &inputs, &d_out).unwrap();
    same_bits(ctx, "dx", &g.dx, &r.dx);
    same_bits(ctx, "dresidual", &g.dresidual, &r.dresidual);
    same_bits(ctx, "dpost_layer_mix", &g.dpost_layer_mix, &r.dpost_layer_mix);
    same_bits(ctx, "dcomb_res_mix", &g.dcomb_res_mix, &r.dcomb_res_mix);
}

/// The GPU may contract `p - lr * g` into one fused multiply-add (WGSL allows it), so each
/// element must equal one of the two correctly rounded results, bit for bit.
fn assert_sgd(name: &str, before: &[f32], grad: &[f32], lr: f32, after: &[f32]) {
    assert_eq!(before.len(), after.len(), "{name}: length");
    for (i, ((&p, &g), &a)) in before.iter().zip(grad).zip(after).enumerate() {
        let (unfused, fused) = (p - lr * g, (-lr).mul_add(g, p));
        assert!(
            a.to_bits() == unfused.to_bits() || a.to_bits() == fused.to_bits(),
            "{name}[{i}]: {a} from {p} - {lr} * {g}, expected {unfused} (or fused {fused})"
        );
    }
}

fn run_sgd(ctx: &Context, len: usize, lr: f32) {
    let mut rng = TensorRng::new(seed_from_env());
    let (p, g) = (rng.f32(&[len], -2.0, 2.0), rng.f32(&[len], -3.0, 3.0));
    let (param, grad) = (up(ctx, "param", &p), up(ctx, "grad", &g));
    ops::sgd_step(ctx, &param, &grad, lr).unwrap();
    let after = read(ctx, &param);
    assert_sgd(&format!("sgd len={len}"), p.as_f32().unwrap(), g.as_f32().unwrap(), lr, after.as_f32().unwrap());
    assert_eq!(read(ctx, &grad), g, "the gradient is left as it was");
}

#[test]
fn sgd_step_is_the_f32_update() {
    for len in [1, 255, 1000, 4099] {
        run_sgd(ctx(), len, 0.0123);
    }
    run_sgd(ctx(), 77, -1.5);
}

/// 64 KiB bindings hold 16384 f32 and grids are capped at 7 groups a dimension, so 40,000
/// elements take three chunks, each on a 2D grid.
#[test]
fn sgd_step_over_chunks_and_2d_grids() {
    run_sgd(ctx_small_limits(), 40_000, 0.37);
}

#[test]
fn sgd_step_errors_name_the_tensor() {
    let ctx = ctx();
    let mut rng = TensorRng::new(seed_from_env());
    let param = up(ctx, "param", &rng.f32(&[4, 5], -1.0, 1.0));
    let wrong = up(ctx, "grad", &rng.f32(&[5, 4], -1.0, 1.0));
    match ops::sgd_step(ctx, &param, &wrong, 0.1) {
        Err(Error::Shape { tensor, .. }) => assert_eq!(tensor, "grad"),
        other => panic!("expected a shape error naming grad, got {other:?}"),
    }
    let bf = up(ctx, "param", &rng.bf16(&[4, 5], -1.0, 1.0));
    match ops::sgd_step(ctx, &bf, &wrong, 0.1) {
        Err(Error::DType { tensor, .. }) => assert_eq!(tensor, "param"),
        other => panic!("expected a dtype error naming param, got {other:?}"),
    }
    let grad = up(ctx, "grad", &rng.f32(&[4, 5], -1.0, 1.0));
    assert!(matches!(ops::sgd_step(ctx, &param, &grad, f32::NAN), Err(Error::Param { .. })));
}

#[test]
fn mhc_pre_sgd_step_updates_every_parameter() {
    let ctx = ctx();
    let dims = Dims::new(8, 4, 16).unwrap();
    let mut rng = TensorRng::new(seed_from_env());
    let host = PreInputs::random(&mut rng, &dims, true);
    let mut pre = layer(ctx, &host, PreParams::default(), Some(SinkhornParams::default()));
    let (_, saved) = pre.forward(ctx, &up(ctx, "x", &host.x)).unwrap();
    let dh = (rng.bf16(&[8, 16], -1.0, 1.0), rng.f32(&[8, 4], -1.0, 1.0), rng.f32(&[8, 4, 4], -1.0, 1.0));
    let grads =
        pre.backward(ctx, &saved, &up(ctx, "dh_in", &dh.0), &up(ctx, "dh_post", &dh.1), &up(ctx, "dh_res", &dh.2));
    let grads = grads.unwrap();
    let lr = 0.05;
    pre.sgd_step(ctx, &grads, lr).unwrap();
    let gamma = host.gamma.as_ref().unwrap();
    for (name, before, grad, after) in [
        ("phi", &host.phi, &grads.dphi, pre.phi()),
        ("alpha", &host.alpha, &grads.dalpha, pre.alpha()),
        ("bias", &host.bias, &grads.dbias, pre.bias()),
        ("gamma", gamma, &grads.dgamma, pre.gamma().unwrap()),
    ] {
        let (g, a) = (read(ctx, grad), read(ctx, after));
        assert_sgd(name, before.as_f32().unwrap(), g.as_f32().unwrap(), lr, a.as_f32().unwrap());
    }

    // A mismatched gradient is reported by name and nothing is updated.
    let mut bad = grads.clone();
    bad.dbias = up(ctx, "dbias", &rng.f32(&[3], -1.0, 1.0));
    let phi_before = read(ctx, pre.phi());
    match pre.sgd_step(ctx, &bad, lr) {
        Err(Error::Shape { tensor, .. }) => assert_eq!(tensor, "dbias"),
        other => panic!("expected a shape error naming dbias, got {other:?}"),
    }
    assert_eq!(read(ctx, pre.phi()), phi_before);
}

#[test]
fn layer_errors_name_the_tensor() {
    let ctx = ctx();
    let dims = Dims::new(4, 4, 8).unwrap();
    let mut rng = TensorRng::new(seed_from_env());
    let host = PreInputs::random(&mut rng, &dims, true);
    let p = PreParams::default();
    let new = |phi: &HostTensor, bias: &HostTensor, gamma: &HostTensor| {
        let (phi, alpha, bias) = (up(ctx, "phi", phi), up(ctx, "alpha", &host.alpha), up(ctx, "bias", bias));
        MhcPre::new(phi, alpha, bias, Some(up(ctx, "gamma", gamma)), p, None)
    };
    let name_of = |r: Result<MhcPre, Error>| match r {
        Err(Error::Shape { tensor, .. }) => tensor,
        other => panic!("expected a shape error, got {other:?}"),
    };
    let g = host.gamma.as_ref().unwrap();
    assert_eq!(name_of(new(&host.phi, &rng.f32(&[23], 0.0, 1.0), g)), "bias");
    assert_eq!(name_of(new(&rng.f32(&[24, 30], 0.0, 1.0), &host.bias, g)), "phi");
    assert_eq!(name_of(new(&host.phi, &host.bias, &rng.f32(&[4, 9], 0.0, 1.0))), "gamma");

    let pre = new(&host.phi, &host.bias, g).unwrap();
    assert_eq!(pre.streams(), (4, 8));
    let x_wrong = up(ctx, "x", &rng.bf16(&[4, 4, 9], -1.0, 1.0));
    match pre.forward(ctx, &x_wrong) {
        Err(Error::Shape { tensor, .. }) => assert_eq!(tensor, "x"),
        other => panic!("expected a shape error naming x, got {:?}", other.map(|_| ())),
    }

    // A context saved by a layer with fused Sinkhorn does not fit one without it.
    let fused = layer(ctx, &host, p, Some(SinkhornParams::default()));
    let (out, saved) = fused.forward(ctx, &up(ctx, "x", &host.x)).unwrap();
    let err = pre.backward(ctx, &saved, &out.h_in, &out.h_post, &out.h_res).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("h_res_logits"), "{err}");
    let bad_dh_res = GpuTensor::zeros(ctx, "dh_res", &[4, 4, 3], DType::F32).unwrap();
    match fused.backward(ctx, &saved, &out.h_in, &out.h_post, &bad_dh_res) {
        Err(Error::Shape { tensor, .. }) => assert_eq!(tensor, "dh_res"),
        other => panic!("expected a shape error naming dh_res, got {:?}", other.map(|_| ())),
    }
}
