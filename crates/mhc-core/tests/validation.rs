//! Shape, dtype and parameter validation (mhc_core::shape): every valid shape is accepted with
//! the right Dims, and every wrong tensor is rejected with a message that names it and states
//! the expected shape or dtype.

use mhc_core::shape::{post_backward_dims, sinkhorn_dims};
use mhc_core::{
    DType, Dims, Error, PostForwardInputs, PreBackwardInputs, PreForwardInputs, PreParams, SinkhornParams, TensorMeta,
};
use proptest::prelude::*;

/// Shape and dtype only: validation never looks at the data.
#[derive(Debug, Clone)]
struct Meta {
    shape: Vec<usize>,
    dtype: DType,
}

impl TensorMeta for Meta {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

fn bf(shape: Vec<usize>) -> Meta {
    Meta { shape, dtype: DType::BF16 }
}
fn f32m(shape: Vec<usize>) -> Meta {
    Meta { shape, dtype: DType::F32 }
}
fn other(dtype: DType) -> DType {
    match dtype {
        DType::BF16 => DType::F32,
        DType::F32 => DType::BF16,
    }
}
fn cat(lead: &[usize], tail: &[usize]) -> Vec<usize> {
    [lead, tail].concat()
}

/// The error must be a shape error of `tensor` whose message contains `expected` and the actual
/// shape.
fn assert_shape_err(r: Result<Dims, Error>, tensor: &str, expected: &str, actual: &[usize]) {
    let e = r.expect_err("invalid shape accepted");
    let msg = e.to_string();
    assert!(
        matches!(&e, Error::Shape { tensor: t, .. } if t == tensor),
        "expected a shape error of {tensor}, got {e:?}"
    );
    assert!(msg.starts_with(&format!("{tensor}: ")), "{msg}");
    assert!(msg.contains(&format!("expected shape {expected}")), "{msg} (want {expected})");
    assert!(msg.ends_with(&format!("got {actual:?}")), "{msg} (actual {actual:?})");
}

fn assert_dtype_err(r: Result<Dims, Error>, tensor: &str, expected: DType) {
    let e = r.expect_err("wrong dtype accepted");
    assert_eq!(e.to_string(), format!("{tensor}: expected dtype {expected}, got {}", other(expected)));
}

fn per_token(t: usize, tail: &[usize]) -> String {
    let tail: String = tail.iter().map(|v| format!(", {v}")).collect();
    format!("[...{tail}] with {t} tokens")
}

fn lead_dims() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=4, 0..=3)
}

/// Owned tensors of mhc_pre forward and backward.
#[derive(Clone)]
struct Pre {
    x: Meta,
    phi: Meta,
    alpha: Meta,
    bias: Meta,
    gamma: Option<Meta>,
    inv_rms: Meta,
    h_mix: Meta,
    h_pre: Meta,
    h_post: Meta,
    dh_in: Meta,
    dh_post: Meta,
    dh_res: Meta,
}

impl Pre {
    fn valid(lead: &[usize], n: usize, d: usize, with_gamma: bool) -> Self {
        let (m, k) = (n * n + 2 * n, n * d);
        Self {
            x: bf(cat(lead, &[n, d])),
            phi: f32m(vec![m, k]),
            alpha: f32m(vec![3]),
            bias: f32m(vec![m]),
            gamma: with_gamma.then(|| f32m(vec![n, d])),
            inv_rms: f32m(lead.to_vec()),
            h_mix: f32m(cat(lead, &[m])),
            h_pre: f32m(cat(lead, &[n])),
            h_post: f32m(cat(lead, &[n])),
            dh_in: bf(cat(lead, &[d])),
            dh_post: f32m(cat(lead, &[n])),
            dh_res: f32m(cat(lead, &[n, n])),
        }
    }
    fn fwd(&self) -> PreForwardInputs<'_, Meta> {
        PreForwardInputs {
            x: &self.x,
            phi: &self.phi,
            alpha: &self.alpha,
            bias: &self.bias,
            gamma: self.gamma.as_ref(),
        }
    }
    fn bwd(&self) -> PreBackwardInputs<'_, Meta> {
        PreBackwardInputs {
            fwd: self.fwd(),
            inv_rms: &self.inv_rms,
            h_mix: &self.h_mix,
            h_pre: &self.h_pre,
            h_post: &self.h_post,
            dh_in: &self.dh_in,
            dh_post: &self.dh_post,
            dh_res: &self.dh_res,
        }
    }
    fn per_token_mut(&mut self, name: &str) -> &mut Meta {
        match name {
            "inv_rms" => &mut self.inv_rms,
            "h_mix" => &mut self.h_mix,
            "h_pre" => &mut self.h_pre,
            "h_post" => &mut self.h_post,
            "dh_in" => &mut self.dh_in,
            "dh_post" => &mut self.dh_post,
            "dh_res" => &mut self.dh_res,
            _ => unreachable!(),
        }
    }
}

fn expected_dims(lead: &[usize], n: usize, d: usize) -> Dims {
    Dims { lead: lead.to_vec(), t: lead.iter().product(), n, d }
}

/// The ways `x` (or any `[..., n, D]` streams tensor) can be wrong: (shape, dtype, expected).
fn bad_streams(lead: &[usize], n: usize, d: usize, which: usize) -> (Vec<usize>, DType, &'static str) {
    match which {
        0 => (cat(lead, &[n, d]), DType::F32, ""),
        1 => (vec![d], DType::BF16, "[..., n, D] (at least 2 dims)"),
        2 => (vec![], DType::BF16, "[..., n, D] (at least 2 dims)"),
        3 => (cat(lead, &[0, d]), DType::BF16, "[..., n, D] with 1 <= n <= 8"),
        4 => (cat(lead, &[9, d]), DType::BF16, "[..., n, D] with 1 <= n <= 8"),
        5 => (cat(lead, &[n, 0]), DType::BF16, "[..., n, D] with D >= 1"),
        _ => (cat(&[0], &cat(lead, &[n, d])), DType::BF16, "[..., n, D] with at least one token"),
    }
}

fn check_bad_streams(r: Result<Dims, Error>, name: &str, shape: &[usize], dtype: DType, expected: &str) {
    if dtype == DType::BF16 {
        assert_shape_err(r, name, expected, shape);
    } else {
        assert_dtype_err(r, name, DType::BF16);
    }
}

proptest! {
    #[test]
    fn dims_accept_valid(lead in lead_dims(), n in 1usize..=8, d in 1usize..=300) {
        let dims = Dims::with_lead(lead.clone(), n, d).unwrap();
        prop_assert_eq!(&dims, &expected_dims(&lead, n, d));
        prop_assert_eq!(dims.k(), n * d);
        prop_assert_eq!(dims.m(), n * n + 2 * n);
        prop_assert_eq!(dims.out_shape(&[7]), cat(&lead, &[7]));
        let flat = Dims::new(dims.t, n, d).unwrap();
        prop_assert_eq!(flat.lead, vec![dims.t]);
    }

    #[test]
    fn pre_forward_accepts_valid(lead in lead_dims(), n in 1usize..=8, d in 1usize..=64, g in any::<bool>()) {
        let pre = Pre::valid(&lead, n, d, g);
        prop_assert_eq!(pre.fwd().validate().unwrap(), expected_dims(&lead, n, d));
    }

    #[test]
    fn pre_forward_rejects_bad_x(lead in lead_dims(), n in 1usize..=8, d in 1usize..=64, which in 0usize..7) {
        let mut pre = Pre::valid(&lead, n, d, true);
        let (shape, dtype, expected) = bad_streams(&lead, n, d, which);
        pre.x = Meta { shape: shape.clone(), dtype };
        check_bad_streams(pre.fwd().validate(), "x", &shape, dtype, expected);
    }

    #[test]
    fn pre_forward_rejects_bad_params_tensors(
        lead in lead_dims(), n in 1usize..=8, d in 1usize..=64, which in 0usize..12,
    ) {
        let (m, k) = (n * n + 2 * n, n * d);
        let mut pre = Pre::valid(&lead, n, d, true);
        let (name, expected, target): (&str, Vec<usize>, &mut Meta) = match which {
            0..=3 => ("phi", vec![m, k], &mut pre.phi),
            4..=6 => ("alpha", vec![3], &mut pre.alpha),
            7..=8 => ("bias", vec![m], &mut pre.bias),
            _ => ("gamma", vec![n, d], pre.gamma.as_mut().unwrap()),
        };
        let bad_shape = match which {
            0 => Some(vec![m, k + 1]),
            1 => Some(vec![m + 1, k]),
            2 => Some(vec![1, m, k]),
            4 => Some(vec![4]),
            5 => Some(vec![3, 1]),
            7 => Some(vec![m - 1]),
            9 => Some(vec![n, d + 1]),
            10 => Some(vec![k]),
            _ => None, // 3, 6, 8, 11: wrong dtype
        };
        let expected_str = format!("[{}]", expected.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "));
        match bad_shape {
            Some(s) => {
                target.shape = s.clone();
                assert_shape_err(pre.fwd().validate(), name, &expected_str, &s);
                // The backward validates the forward's tensors first.
                assert_shape_err(pre.bwd().validate(), name, &expected_str, &s);
            }
            None => {
                target.dtype = DType::BF16;
                assert_dtype_err(pre.fwd().validate(), name, DType::F32);
            }
        }
    }

    #[test]
    fn pre_backward_accepts_valid(lead in lead_dims(), n in 1usize..=8, d in 1usize..=64, g in any::<bool>(), flat in any::<bool>()) {
        let mut pre = Pre::valid(&lead, n, d, g);
        let t: usize = lead.iter().product();
        if flat {
            // Per-token tensors may use any leading dims holding t tokens.
            for name in ["inv_rms", "h_mix", "h_pre", "h_post", "dh_in", "dh_post", "dh_res"] {
                let m = pre.per_token_mut(name);
                let tail = m.shape[lead.len()..].to_vec();
                m.shape = cat(&[t], &tail);
            }
        }
        prop_assert_eq!(pre.bwd().validate().unwrap(), expected_dims(&lead, n, d));
    }

    #[test]
    fn pre_backward_rejects_bad_per_token(
        lead in lead_dims(), n in 1usize..=8, d in 1usize..=64, which in 0usize..7, how in 0usize..3,
    ) {
        let (m, t) = (n * n + 2 * n, lead.iter().product::<usize>());
        let (name, tail, dtype): (&str, Vec<usize>, DType) = match which {
            0 => ("inv_rms", vec![], DType::F32),
            1 => ("h_mix", vec![m], DType::F32),
            2 => ("h_pre", vec![n], DType::F32),
            3 => ("h_post", vec![n], DType::F32),
            4 => ("dh_in", vec![d], DType::BF16),
            5 => ("dh_post", vec![n], DType::F32),
            _ => ("dh_res", vec![n, n], DType::F32),
        };
        let mut pre = Pre::valid(&lead, n, d, false);
        let target = pre.per_token_mut(name);
        match how {
            0 => {
                // Wrong trailing dim (inv_rms: an extra dim of 2 doubles the element count).
                let mut bad = tail.clone();
                match bad.last_mut() { Some(v) => *v += 1, None => bad.push(2) }
                target.shape = cat(&lead, &bad);
                let s = target.shape.clone();
                assert_shape_err(pre.bwd().validate(), name, &per_token(t, &tail), &s);
            }
            1 => {
                // Wrong token count.
                target.shape = cat(&[t + 1], &tail);
                let s = target.shape.clone();
                assert_shape_err(pre.bwd().validate(), name, &per_token(t, &tail), &s);
            }
            _ => {
                target.dtype = other(dtype);
                assert_dtype_err(pre.bwd().validate(), name, dtype);
            }
        }
    }

    #[test]
    fn post_accepts_valid(lead in lead_dims(), n in 1usize..=8, d in 1usize..=64, plm_one in any::<bool>()) {
        let plm_tail: &[usize] = if plm_one { &[n, 1] } else { &[n] };
        let (x, res, plm, comb, d_out) = (
            bf(cat(&lead, &[d])),
            bf(cat(&lead, &[n, d])),
            f32m(cat(&lead, plm_tail)),
            f32m(cat(&lead, &[n, n])),
            bf(cat(&lead, &[n, d])),
        );
        let inp = PostForwardInputs { x: &x, residual: &res, post_layer_mix: &plm, comb_res_mix: &comb };
        prop_assert_eq!(inp.validate().unwrap(), expected_dims(&lead, n, d));
        prop_assert_eq!(post_backward_dims(&inp, &d_out).unwrap(), expected_dims(&lead, n, d));
    }

    #[test]
    fn post_rejects_bad_residual(lead in lead_dims(), n in 1usize..=8, d in 1usize..=64, which in 0usize..7) {
        let (shape, dtype, expected) = bad_streams(&lead, n, d, which);
        let res = Meta { shape: shape.clone(), dtype };
        let (x, plm, comb) = (bf(cat(&lead, &[d])), f32m(cat(&lead, &[n])), f32m(cat(&lead, &[n, n])));
        let inp = PostForwardInputs { x: &x, residual: &res, post_layer_mix: &plm, comb_res_mix: &comb };
        check_bad_streams(inp.validate(), "residual", &shape, dtype, expected);
    }

    #[test]
    fn post_rejects_bad_per_token(
        lead in lead_dims(), n in 1usize..=8, d in 1usize..=64, which in 0usize..4, how in 0usize..4,
    ) {
        let t: usize = lead.iter().product();
        let mut x = bf(cat(&lead, &[d]));
        let res = bf(cat(&lead, &[n, d]));
        let mut plm = f32m(cat(&lead, &[n]));
        let mut comb = f32m(cat(&lead, &[n, n]));
        let mut d_out = bf(cat(&lead, &[n, d]));
        let (name, tail, dtype, target) = match which {
            0 => ("x", vec![d], DType::BF16, &mut x),
            1 => ("post_layer_mix", vec![n], DType::F32, &mut plm),
            2 => ("comb_res_mix", vec![n, n], DType::F32, &mut comb),
            _ => ("d_out", vec![n, d], DType::BF16, &mut d_out),
        };
        let mut bad = tail.clone();
        *bad.last_mut().unwrap() += 1;
        match how {
            0 => target.shape = cat(&lead, &bad),
            1 => target.shape = cat(&[t + 1], &tail),
            2 => target.shape = cat(&[t], &[tail.as_slice(), &[2]].concat()),
            _ => target.dtype = other(dtype),
        }
        let actual = target.shape.clone();
        let inp = PostForwardInputs { x: &x, residual: &res, post_layer_mix: &plm, comb_res_mix: &comb };
        let r = if name == "d_out" {
            prop_assert!(inp.validate().is_ok());
            post_backward_dims(&inp, &d_out)
        } else {
            inp.validate()
        };
        if how == 3 {
            assert_dtype_err(r, name, dtype);
        } else if name == "post_layer_mix" {
            assert_shape_err(r, name, &format!("[..., {n}] or [..., {n}, 1] with {t} tokens"), &actual);
        } else {
            assert_shape_err(r, name, &per_token(t, &tail), &actual);
        }
    }

    #[test]
    fn sinkhorn_accepts_valid(lead in lead_dims(), n in 1usize..=8) {
        let logits = f32m(cat(&lead, &[n, n]));
        let dims = sinkhorn_dims("logits", &logits).unwrap();
        prop_assert_eq!(dims, expected_dims(&lead, n, n));
    }

    #[test]
    fn sinkhorn_rejects_bad(lead in lead_dims(), n in 1usize..=8, which in 0usize..7) {
        let (shape, expected) = match which {
            0 => (cat(&lead, &[n, n + 1]), "[..., n, n]"),
            1 => (cat(&lead, &[n + 1, n]), "[..., n, n]"),
            2 => (vec![n], "[..., n, n]"),
            3 => (cat(&lead, &[9, 9]), "1 <= n <= 8"),
            4 => (cat(&lead, &[0, 0]), "1 <= n <= 8"),
            5 => (cat(&[0], &cat(&lead, &[n, n])), "at least one token"),
            _ => (cat(&lead, &[n, n]), ""),
        };
        // The name given by the caller is the one reported.
        let name = if which % 2 == 0 { "logits" } else { "h_res" };
        if which == 6 {
            let r = sinkhorn_dims(name, &bf(shape));
            assert_dtype_err(r, name, DType::F32);
        } else {
            let r = sinkhorn_dims(name, &f32m(shape.clone()));
            let e = r.clone().expect_err("accepted");
            prop_assert!(matches!(&e, Error::Shape { tensor, actual, .. } if tensor == name && *actual == shape), "{e:?}");
            let msg = e.to_string();
            prop_assert!(msg.starts_with(&format!("{name}: expected shape [")), "{}", msg);
            prop_assert!(msg.contains(expected), "{}", msg);
        }
    }

    #[test]
    fn params_accept_valid(
        norm_eps in 0f32..1.0, hc_eps in 0f32..0.999, post_mult in 0.01f32..10.0,
        iters in 1u32..1000, eps in 0f32..1.0,
    ) {
        let pre = PreParams { norm_eps, hc_eps, post_mult };
        prop_assert!(pre.validate().is_ok(), "{:?}", pre);
        let sk = SinkhornParams { iters, eps };
        prop_assert!(sk.validate().is_ok(), "{:?}", sk);
    }
}

fn assert_param_err(r: Result<(), Error>, name: &str) {
    let e = r.expect_err("invalid parameter accepted");
    assert!(matches!(&e, Error::Param { name: n, .. } if n == name), "{e:?}");
    assert!(e.to_string().starts_with(&format!("parameter {name}: ")), "{e}");
}

#[test]
fn params_reject_invalid() {
    assert!(PreParams::default().validate().is_ok());
    assert!(SinkhornParams::default().validate().is_ok());
    assert!(PreParams { norm_eps: 0.0, hc_eps: 0.0, post_mult: 1.0 }.validate().is_ok());
    let d = PreParams::default();
    for v in [-1e-6, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert_param_err(PreParams { norm_eps: v, ..d }.validate(), "norm_eps");
    }
    for v in [-1e-6, 1.0, 2.0, f32::NAN, f32::INFINITY] {
        assert_param_err(PreParams { hc_eps: v, ..d }.validate(), "hc_eps");
    }
    for v in [0.0, -0.0, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert_param_err(PreParams { post_mult: v, ..d }.validate(), "post_mult");
    }
    assert_param_err(SinkhornParams { iters: 0, eps: 1e-6 }.validate(), "sinkhorn_iters");
    for v in [0.0, 1e-31, -1e-6, -1.0, f32::NAN, f32::INFINITY] {
        assert_param_err(SinkhornParams { iters: 20, eps: v }.validate(), "sinkhorn_eps");
    }
    assert!(SinkhornParams { iters: 20, eps: SinkhornParams::MIN_EPS }.validate().is_ok());
    // The value is named in the message.
    let e = PreParams { hc_eps: 1.5, ..d }.validate().unwrap_err();
    assert!(e.to_string().contains("1.5"), "{e}");
}

#[test]
fn post_layer_mix_both_forms_for_n1() {
    // n = 1: [T, 1] and [T, 1, 1] are both valid; [T, 2] is not.
    let (x, res, comb) = (bf(vec![3, 5]), bf(vec![3, 1, 5]), f32m(vec![3, 1, 1]));
    for plm in [f32m(vec![3, 1]), f32m(vec![3, 1, 1])] {
        let inp = PostForwardInputs { x: &x, residual: &res, post_layer_mix: &plm, comb_res_mix: &comb };
        assert_eq!(inp.validate().unwrap(), expected_dims(&[3], 1, 5));
    }
    let plm = f32m(vec![3, 2]);
    let inp = PostForwardInputs { x: &x, residual: &res, post_layer_mix: &plm, comb_res_mix: &comb };
    assert_shape_err(inp.validate(), "post_layer_mix", "[..., 1] or [..., 1, 1] with 3 tokens", &[3, 2]);
}

#[test]
fn error_messages_read_in_full() {
    let pre = Pre::valid(&[2, 3], 4, 5, false);
    let phi = f32m(vec![24, 21]);
    let e = PreForwardInputs { phi: &phi, ..pre.fwd() }.validate().unwrap_err();
    assert_eq!(e.to_string(), "phi: expected shape [24, 20], got [24, 21]");
    let h_mix = f32m(vec![6, 25]);
    let e = PreBackwardInputs { h_mix: &h_mix, ..pre.bwd() }.validate().unwrap_err();
    assert_eq!(e.to_string(), "h_mix: expected shape [..., 24] with 6 tokens, got [6, 25]");
    let x = bf(vec![2, 9, 5]);
    let e = PreForwardInputs { x: &x, ..pre.fwd() }.validate().unwrap_err();
    assert_eq!(e.to_string(), "x: expected shape [..., n, D] with 1 <= n <= 8, got [2, 9, 5]");
    let dh_in = f32m(vec![2, 3, 5]);
    let e = PreBackwardInputs { dh_in: &dh_in, ..pre.bwd() }.validate().unwrap_err();
    assert_eq!(e.to_string(), "dh_in: expected dtype bf16, got f32");
}
