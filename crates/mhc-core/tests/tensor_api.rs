//! The rounding tensor API of the golden reference: validated inputs, output shapes that keep the
//! leading dims of the inputs, and values equal to the f64 functions rounded once (SPEC.md 1-4).

mod common;

use common::{Vals, bf16_rne};
use mhc_core::golden;
use mhc_core::random::{PostInputs, PreBackwardData, PreInputs, TensorRng, seed_from_env};
use mhc_core::{DType, Dims, Error, HostTensor, PostForwardInputs, PreParams, SinkhornParams, TensorMeta, bf16};

/// `out` must be `reference` rounded once to the output's dtype (bf16: nearest, ties to even).
fn assert_rounded(what: &str, seed: u64, out: &HostTensor, reference: &[f64]) {
    assert_eq!(out.numel(), reference.len(), "{what}: element count (seed {seed})");
    match out.dtype() {
        DType::F32 => {
            let got = out.as_f32().unwrap();
            for (i, (&g, &r)) in got.iter().zip(reference).enumerate() {
                assert_eq!(g.to_bits(), (r as f32).to_bits(), "{what}[{i}]: {g} vs f32({r}); MHC_SEED={seed}");
            }
        }
        DType::BF16 => {
            let got = out.as_bf16().unwrap();
            for (i, (&g, &r)) in got.iter().zip(reference).enumerate() {
                assert_eq!(g.to_bits(), bf16_rne(r).to_bits(), "{what}[{i}]: {g} vs bf16({r}); MHC_SEED={seed}");
            }
        }
    }
}

fn assert_shape(what: &str, t: &HostTensor, shape: &[usize], dtype: DType) {
    assert_eq!(t.shape(), shape, "{what}: shape");
    assert_eq!(t.dtype(), dtype, "{what}: dtype");
}

fn param_set() -> PreParams {
    PreParams { norm_eps: 1e-5, hc_eps: 0.01, post_mult: 1.7 }
}

#[test]
fn from_f64_rounds_bf16_to_nearest_even() {
    // Just above a tie: 1 + 2^-8 is halfway between 1 and 1 + 2^-7; the extra 2^-40 lies in the
    // low 32 mantissa bits and must still make it round up.
    let cases = [
        (1.0 + 2f64.powi(-8) + 2f64.powi(-40), 1.0 + 2f64.powi(-7)),
        (-(1.0 + 2f64.powi(-8) + 2f64.powi(-40)), -(1.0 + 2f64.powi(-7))),
        (1.0 + 2f64.powi(-8), 1.0),                                  // tie, to even
        (1.0 + 3.0 * 2f64.powi(-8), 1.0 + 2f64.powi(-6)),            // tie, to even (up)
        (1.0 + 2f64.powi(-8) - 2f64.powi(-45), 1.0),                 // just below a tie
        (3.0 + 2f64.powi(-7) + 2f64.powi(-45), 3.0 + 2f64.powi(-6)), // ulp 2^-6 in [2, 4)
    ];
    let input: Vec<f64> = cases.iter().map(|c| c.0).collect();
    let t = HostTensor::from_f64([cases.len()], DType::BF16, &input).unwrap();
    for (i, (&got, &(v, want))) in t.as_bf16().unwrap().iter().zip(&cases).enumerate() {
        assert_eq!(got.to_f64(), want, "case {i}: bf16({v:e})");
    }
}

#[test]
fn from_f64_matches_reference_rounding_on_random_values() {
    let mut v = Vals::new();
    let mut vals = v.signed(20_000, 1e-3, 1e3);
    // Values whose top 32 bits are a bf16 tie but whose low bits are not zero.
    for x in vals.iter_mut().take(2000) {
        let tie = f32::from_bits(((*x as f32).to_bits() & 0xFFFF_0000) | 0x8000) as f64;
        *x = tie + tie.abs() * 1e-12;
    }
    let t = HostTensor::from_f64([vals.len()], DType::BF16, &vals).unwrap();
    assert_rounded("from_f64", v.seed, &t, &vals);
    let t = HostTensor::from_f64([vals.len()], DType::F32, &vals).unwrap();
    assert_rounded("from_f64", v.seed, &t, &vals);
}

#[test]
fn pre_forward_keeps_leading_dims_and_rounds_once() {
    let seed = seed_from_env();
    let mut rng = TensorRng::new(seed);
    let p = param_set();
    for (lead, n, d, with_gamma) in [
        (vec![2, 3], 4, 5, true),
        (vec![2, 3], 1, 1, false),
        (vec![1], 8, 3, true),
        (vec![], 2, 7, false),
        (vec![3, 1, 2], 3, 2, true),
    ] {
        let dims = Dims::with_lead(lead.clone(), n, d).unwrap();
        let inp = PreInputs::random(&mut rng, &dims, with_gamma);
        let out = golden::pre_forward(&inp.inputs(), &p).unwrap();
        let m = n * n + 2 * n;
        let sh = |tail: &[usize]| [lead.as_slice(), tail].concat();
        assert_shape("h_in", &out.h_in, &sh(&[d]), DType::BF16);
        assert_shape("h_post", &out.h_post, &sh(&[n]), DType::F32);
        assert_shape("h_res", &out.h_res, &sh(&[n, n]), DType::F32);
        assert_shape("inv_rms", &out.inv_rms, &sh(&[]), DType::F32);
        assert_shape("h_mix", &out.h_mix, &sh(&[m]), DType::F32);
        assert_shape("h_pre", &out.h_pre, &sh(&[n]), DType::F32);

        let gamma = inp.gamma.as_ref().map(HostTensor::to_f64);
        let f = golden::pre_forward_f64(
            &dims,
            &inp.x.to_f64(),
            &inp.phi.to_f64(),
            &inp.alpha.to_f64(),
            &inp.bias.to_f64(),
            gamma.as_deref(),
            &p,
        );
        assert_rounded("h_in", seed, &out.h_in, &f.h_in);
        assert_rounded("h_post", seed, &out.h_post, &f.h_post);
        assert_rounded("h_res", seed, &out.h_res, &f.h_res);
        assert_rounded("inv_rms", seed, &out.inv_rms, &f.inv_rms);
        assert_rounded("h_mix", seed, &out.h_mix, &f.h_mix);
        assert_rounded("h_pre", seed, &out.h_pre, &f.h_pre);
    }
}

#[test]
fn pre_backward_shapes_and_rounding() {
    let seed = seed_from_env();
    let mut rng = TensorRng::new(seed);
    let p = param_set();
    for (lead, n, d, with_gamma) in [(vec![2, 3], 4, 5, true), (vec![2, 3], 2, 1, false), (vec![1], 8, 3, false)] {
        let dims = Dims::with_lead(lead.clone(), n, d).unwrap();
        let data = PreBackwardData::random(&mut rng, &dims, with_gamma, &p);
        let g = golden::pre_backward(&data.inputs(), &p).unwrap();
        let (m, k) = (dims.m(), dims.k());
        assert_shape("dx", &g.dx, &[lead.as_slice(), &[n, d]].concat(), DType::BF16);
        assert_shape("dphi", &g.dphi, &[m, k], DType::F32);
        assert_shape("dalpha", &g.dalpha, &[3], DType::F32);
        assert_shape("dbias", &g.dbias, &[m], DType::F32);
        assert_shape("dgamma", &g.dgamma, &[n, d], DType::F32);

        let f = &data.fwd;
        let gamma = f.gamma.as_ref().map(HostTensor::to_f64);
        let s = &data.saved;
        let (inv_rms, h_mix, h_pre, h_post) =
            (s.inv_rms.to_f64(), s.h_mix.to_f64(), s.h_pre.to_f64(), s.h_post.to_f64());
        let r = golden::pre_backward_f64(
            &dims,
            &f.x.to_f64(),
            &f.phi.to_f64(),
            &f.alpha.to_f64(),
            gamma.as_deref(),
            golden::PreSaved { inv_rms: &inv_rms, h_mix: &h_mix, h_pre: &h_pre, h_post: &h_post },
            &data.dh_in.to_f64(),
            &data.dh_post.to_f64(),
            &data.dh_res.to_f64(),
            &p,
        );
        assert_rounded("dx", seed, &g.dx, &r.dx);
        assert_rounded("dphi", seed, &g.dphi, &r.dphi);
        assert_rounded("dalpha", seed, &g.dalpha, &r.dalpha);
        assert_rounded("dbias", seed, &g.dbias, &r.dbias);
        assert_rounded("dgamma", seed, &g.dgamma, &r.dgamma);
    }
}

#[test]
fn sinkhorn_keeps_shape_and_rounds_once() {
    let seed = seed_from_env();
    let mut rng = TensorRng::new(seed);
    let p = SinkhornParams { iters: 5, eps: 1e-4 };
    for shape in [vec![2, 3, 4, 4], vec![1, 1], vec![3, 8, 8], vec![2, 2]] {
        let n = shape[shape.len() - 1];
        let logits = rng.f32(&shape, -3.0, 3.0);
        let d_out = rng.f32(&shape, -1.0, 1.0);
        let out = golden::sinkhorn_forward(&logits, &p).unwrap();
        assert_shape("out", &out, &shape, DType::F32);
        assert_rounded("out", seed, &out, &golden::sinkhorn_forward_f64(n, &logits.to_f64(), &p));
        let g = golden::sinkhorn_backward(&logits, &d_out, &p).unwrap();
        assert_shape("d_logits", &g, &shape, DType::F32);
        assert_rounded("d_logits", seed, &g, &golden::sinkhorn_backward_f64(n, &logits.to_f64(), &d_out.to_f64(), &p));
    }
}

#[test]
fn post_keeps_leading_dims_and_rounds_once() {
    let seed = seed_from_env();
    let mut rng = TensorRng::new(seed);
    for (lead, n, d, plm_trailing_one) in
        [(vec![2, 3], 4, 5, false), (vec![2, 3], 4, 5, true), (vec![1], 1, 1, true), (vec![], 8, 3, false)]
    {
        let dims = Dims::with_lead(lead.clone(), n, d).unwrap();
        let mut inp = PostInputs::random(&mut rng, &dims);
        let plm_shape = if plm_trailing_one { dims.out_shape(&[n, 1]) } else { dims.out_shape(&[n]) };
        inp.post_layer_mix = inp.post_layer_mix.reshaped(plm_shape.clone()).unwrap();
        let out = golden::post_forward(&inp.inputs()).unwrap();
        assert_shape("out", &out, &dims.out_shape(&[n, d]), DType::BF16);
        let (x, res, plm, comb, dout) = (
            inp.x.to_f64(),
            inp.residual.to_f64(),
            inp.post_layer_mix.to_f64(),
            inp.comb_res_mix.to_f64(),
            inp.d_out.to_f64(),
        );
        assert_rounded("out", seed, &out, &golden::post_forward_f64(&dims, &x, &res, &plm, &comb));

        let g = golden::post_backward(&inp.inputs(), &inp.d_out).unwrap();
        assert_shape("dx", &g.dx, &dims.out_shape(&[d]), DType::BF16);
        assert_shape("dresidual", &g.dresidual, &dims.out_shape(&[n, d]), DType::BF16);
        assert_shape("dpost_layer_mix", &g.dpost_layer_mix, &plm_shape, DType::F32);
        assert_shape("dcomb_res_mix", &g.dcomb_res_mix, &dims.out_shape(&[n, n]), DType::F32);
        let r = golden::post_backward_f64(&dims, &x, &res, &plm, &comb, &dout);
        assert_rounded("dx", seed, &g.dx, &r.dx);
        assert_rounded("dresidual", seed, &g.dresidual, &r.dresidual);
        assert_rounded("dpost_layer_mix", seed, &g.dpost_layer_mix, &r.dpost_layer_mix);
        assert_rounded("dcomb_res_mix", seed, &g.dcomb_res_mix, &r.dcomb_res_mix);
    }
}

#[test]
fn tensor_functions_validate_inputs_and_params() {
    let mut rng = TensorRng::new(7);
    let dims = Dims::new(2, 4, 3).unwrap();
    let inp = PreInputs::random(&mut rng, &dims, false);
    let bad = PreParams { hc_eps: -1.0, ..PreParams::default() };
    let e = golden::pre_forward(&inp.inputs(), &bad).unwrap_err();
    assert!(matches!(&e, Error::Param { name, .. } if name == "hc_eps"), "{e}");

    let wrong_phi = rng.f32(&[dims.m(), dims.k() + 1], -1.0, 1.0);
    let e = golden::pre_forward(&mhc_core::PreForwardInputs { phi: &wrong_phi, ..inp.inputs() }, &PreParams::default())
        .unwrap_err();
    assert!(e.to_string().starts_with("phi:"), "{e}");

    let data = PreBackwardData::random(&mut rng, &dims, true, &PreParams::default());
    let e = golden::pre_backward(&data.inputs(), &PreParams { post_mult: 0.0, ..PreParams::default() }).unwrap_err();
    assert!(e.to_string().contains("post_mult"), "{e}");
    let wrong = rng.f32(&[2, 5], -1.0, 1.0);
    let e =
        golden::pre_backward(&mhc_core::PreBackwardInputs { h_pre: &wrong, ..data.inputs() }, &PreParams::default())
            .unwrap_err();
    assert!(e.to_string().starts_with("h_pre:"), "{e}");

    let logits = rng.f32(&[2, 3, 3], -1.0, 1.0);
    let e = golden::sinkhorn_forward(&logits, &SinkhornParams { iters: 0, eps: 1e-6 }).unwrap_err();
    assert!(e.to_string().contains("sinkhorn_iters"), "{e}");
    let d_out = rng.f32(&[2, 3, 4], -1.0, 1.0);
    let e = golden::sinkhorn_backward(&logits, &d_out, &SinkhornParams::default()).unwrap_err();
    assert!(e.to_string().starts_with("d_out:"), "{e}");

    let post = PostInputs::random(&mut rng, &dims);
    let d_out = rng.bf16(&[2, 4, 4], -1.0, 1.0);
    let e = golden::post_backward(&post.inputs(), &d_out).unwrap_err();
    assert!(e.to_string().starts_with("d_out:"), "{e}");
    let x = rng.f32(&[2, 3], -1.0, 1.0);
    let e = golden::post_forward(&PostForwardInputs { x: &x, ..post.inputs() }).unwrap_err();
    assert_eq!(e.to_string(), "x: expected dtype bf16, got f32");
    let _ = bf16::ONE;
}
