//! accuracy::compare, the acceptance test of SPEC.md section 5, and compare_sum, its form for
//! sums over tokens: exact copies pass, non-finite values never pass against a finite
//! reference, and the element and norm bounds sit exactly where the spec puts them, for both
//! dtypes.

use mhc_core::accuracy::{SUM_ROUNDINGS, Tolerance, compare, compare_sum};
use mhc_core::{DType, HostTensor, bf16};

const N: usize = 10_000;

/// A reference of `N` exactly representable values (max |ref| = 4) and the output tensor holding
/// exactly the same values in `dtype`.
fn exact(dtype: DType) -> (Vec<f64>, HostTensor) {
    let mut r: Vec<f64> = (0..N).map(|i| [1.0, -1.5, 0.75, -2.0, 1.25][i % 5]).collect();
    r[17] = 4.0;
    let t = HostTensor::from_f64([100, 100], dtype, &r).unwrap();
    assert_eq!(t.to_f64(), r, "reference values are exact in {dtype}");
    (r, t)
}

#[test]
fn tolerances_are_the_spec_values() {
    let f = Tolerance::for_dtype(DType::F32);
    assert_eq!((f.norm, f.rel, f.abs_of_max), (1e-5, 0.0, 1e-4));
    let b = Tolerance::for_dtype(DType::BF16);
    assert_eq!((b.norm, b.rel, b.abs_of_max), (4e-3, 1.0 / 128.0, 1e-4));
    let s = Tolerance::sinkhorn_backward();
    assert_eq!((s.norm, s.rel, s.abs_of_max), (1e-4, 0.0, 1e-4));
}

#[test]
fn exact_copy_passes() {
    for dtype in [DType::F32, DType::BF16] {
        let (r, t) = exact(dtype);
        let c = compare("out", &t, &r, Tolerance::for_dtype(dtype));
        assert!(c.passed(), "{c:?}");
        assert_eq!((c.max_abs_err, c.max_err_of_max, c.norm_err), (0.0, 0.0, 0.0));
        assert_eq!(c.tensor, "out");
    }
    // An all-zero reference matched exactly passes too.
    let t = HostTensor::from_f32([4], vec![0.0; 4]).unwrap();
    assert!(compare("z", &t, &[0.0; 4], Tolerance::for_dtype(DType::F32)).passed());
}

#[test]
fn non_finite_never_passes_against_finite_reference() {
    for (i, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY].into_iter().enumerate() {
        let (r, t) = exact(DType::F32);
        let mut v = t.as_f32().unwrap().to_vec();
        v[123 + i] = bad;
        let c = compare("out", &HostTensor::from_f32([100, 100], v).unwrap(), &r, Tolerance::for_dtype(DType::F32));
        assert!(!c.passed(), "f32 {bad} passed: {c:?}");
        assert!(c.failure.as_ref().unwrap().contains(&format!("element {}", 123 + i)), "{c:?}");

        let (r, t) = exact(DType::BF16);
        let mut v = t.as_bf16().unwrap().to_vec();
        v[N - 1] = bf16::from_f32(bad);
        let c = compare("out", &HostTensor::from_bf16([100, 100], v).unwrap(), &r, Tolerance::for_dtype(DType::BF16));
        assert!(!c.passed(), "bf16 {bad} passed: {c:?}");
        // Even with bounds that would accept any finite error.
        let loose = Tolerance { norm: 1e30, rel: 1e30, abs_of_max: 1e30 };
        let c = compare("out", &HostTensor::from_bf16([100, 100], t.as_bf16().unwrap().to_vec()).unwrap(), &r, loose);
        assert!(c.passed());
        let mut v = t.as_bf16().unwrap().to_vec();
        v[0] = bf16::from_f32(bad);
        let c = compare("out", &HostTensor::from_bf16([100, 100], v).unwrap(), &r, loose);
        assert!(!c.passed(), "bf16 {bad} passed loose bounds: {c:?}");
    }
}

/// A reference with no finite value at an element (the golden math overflowed, or its inputs
/// held one) cannot vouch for any output there, even an equal one.
#[test]
fn non_finite_reference_never_passes() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let (mut r, _) = exact(DType::F32);
        r[42] = bad;
        let t = HostTensor::from_f64([100, 100], DType::F32, &r).unwrap();
        let loose = Tolerance { norm: 1e30, rel: 1e30, abs_of_max: 1e30 };
        for c in [compare("out", &t, &r, loose), compare_sum("out", &t, &r, &vec![1.0; N], loose)] {
            assert!(!c.passed(), "reference {bad} passed: {c:?}");
            assert!(c.failure.as_ref().unwrap().contains("element 42"), "{c:?}");
        }
    }
}

#[test]
fn length_mismatch_fails() {
    let (r, t) = exact(DType::F32);
    let c = compare("out", &t, &r[..N - 1], Tolerance::for_dtype(DType::F32));
    assert!(!c.passed());
}

/// The output keeps `out[k] = r[k]`; the reference is moved by `delta` at `k`, so the element
/// error is exactly `delta` (up to f64 rounding, far below the 1e-6 margins used here).
fn with_element_error(dtype: DType, k: usize, delta: f64) -> (Vec<f64>, HostTensor) {
    let (mut r, t) = exact(dtype);
    r[k] -= delta;
    (r, t)
}

#[test]
fn f32_element_bound() {
    // Element bound: |out - ref| <= 1e-4 * max|ref| = 4e-4 (the moved element is not the max).
    // One element at 4e-4 is far inside the norm bound 1e-5 * ||ref|| (about 1.3e-3 here).
    let tol = Tolerance::for_dtype(DType::F32);
    let bound = 1e-4 * 4.0;
    for k in [0, 5000, N - 1] {
        for sign in [1.0, -1.0] {
            let (r, t) = with_element_error(DType::F32, k, sign * bound * (1.0 - 1e-6));
            let c = compare("out", &t, &r, tol);
            assert!(c.passed(), "just below: {c:?}");
            let (r, t) = with_element_error(DType::F32, k, sign * bound * (1.0 + 1e-6));
            let c = compare("out", &t, &r, tol);
            assert!(!c.passed(), "just above: {c:?}");
            assert!(c.failure.as_ref().unwrap().contains(&format!("element {k}")), "{c:?}");
        }
    }
}

#[test]
fn bf16_element_bound() {
    // Element bound: |out - ref| <= 2^-7 |ref| + 1e-4 * max|ref|, with ref[k] = out[k] - delta
    // and out[k] = 1 (k = 0 holds 1.0): delta = 2^-7 (1 - delta) + 4e-4 at the bound, i.e.
    // delta = (2^-7 + 4e-4) / (1 + 2^-7). A single such error is inside the norm bound
    // 4e-3 * ||ref|| (about 0.5).
    let tol = Tolerance::for_dtype(DType::BF16);
    let b = 2f64.powi(-7);
    let at = (b + 4e-4) / (1.0 + b);
    let (r, t) = with_element_error(DType::BF16, 0, at * (1.0 - 1e-6));
    assert!(compare("out", &t, &r, tol).passed());
    let (r, t) = with_element_error(DType::BF16, 0, at * (1.0 + 1e-6));
    let c = compare("out", &t, &r, tol);
    assert!(!c.passed(), "{c:?}");
    assert!(c.failure.as_ref().unwrap().contains("element 0"), "{c:?}");
    // The other side: ref[k] = 1 + delta, delta = (2^-7 + 4e-4) / (1 - 2^-7).
    let at = (b + 4e-4) / (1.0 - b);
    let (r, t) = with_element_error(DType::BF16, 0, -at * (1.0 - 1e-6));
    assert!(compare("out", &t, &r, tol).passed());
    let (r, t) = with_element_error(DType::BF16, 0, -at * (1.0 + 1e-6));
    assert!(!compare("out", &t, &r, tol).passed());
    // The relative part scales with |ref|: element 3 holds -2.0, its bound is 2^-6 (1 - ...)
    // larger than element 0's.
    let at3 = (2.0 * b + 4e-4) / (1.0 + b);
    let (r, t) = with_element_error(DType::BF16, 3, -at3 * (1.0 - 1e-6));
    assert!(compare("out", &t, &r, tol).passed(), "ref[3] = {}", r[3]);
    let (r, t) = with_element_error(DType::BF16, 3, -at3 * (1.0 + 1e-6));
    assert!(!compare("out", &t, &r, tol).passed());
}

/// Every element of the reference moved by `rel_err * |ref|`: each element error is inside
/// the element bound but the relative L2 error is `rel_err`.
fn uniform_error(dtype: DType, rel_err: f64) -> (Vec<f64>, HostTensor) {
    let (r, t) = exact(dtype);
    (r.iter().map(|v| v * (1.0 + rel_err)).collect(), t)
}

#[test]
fn norm_bound() {
    // f32: elements may be 1e-4 * max|ref| off, the L2 norm only 1e-5 relative.
    let tol = Tolerance::for_dtype(DType::F32);
    let (r, t) = uniform_error(DType::F32, 0.99e-5);
    let c = compare("out", &t, &r, tol);
    assert!(c.passed(), "{c:?}");
    let (r, t) = uniform_error(DType::F32, 1.01e-5);
    let c = compare("out", &t, &r, tol);
    assert!(!c.passed(), "{c:?}");
    assert!(c.failure.as_ref().unwrap().contains("L2"), "{c:?}");
    assert!((c.norm_err - 1.01e-5 / (1.0 + 1.01e-5)).abs() < 1e-12, "{c:?}");
    // Sinkhorn backward's norm bound is 1e-4.
    let (r, t) = uniform_error(DType::F32, 5e-5);
    assert!(compare("d_logits", &t, &r, Tolerance::sinkhorn_backward()).passed());
    assert!(!compare("d_logits", &t, &r, tol).passed());

    // bf16: 2^-7 relative per element but 4e-3 in norm.
    let tol = Tolerance::for_dtype(DType::BF16);
    let (r, t) = uniform_error(DType::BF16, 3.9e-3);
    assert!(compare("out", &t, &r, tol).passed());
    let (r, t) = uniform_error(DType::BF16, 4.1e-3);
    let c = compare("out", &t, &r, tol);
    assert!(!c.passed(), "{c:?}");
    assert!(c.failure.as_ref().unwrap().contains("L2"), "{c:?}");
}

#[test]
fn reported_errors() {
    let (r, t) = with_element_error(DType::F32, 42, 2e-4);
    let c = compare("h_post", &t, &r, Tolerance::for_dtype(DType::F32));
    assert!(c.passed());
    assert!((c.max_abs_err - 2e-4).abs() < 1e-12, "{c:?}");
    assert!((c.max_err_of_max - 0.5e-4).abs() < 1e-12, "{c:?}");
}

/// A sum that cancelled: out = [2^-10, -2^-9, 0.5] exactly in f32, the first element's terms
/// with a root-sum-square of 64, and the reference moved from out by `delta` there.
fn cancelled(delta: f64) -> (HostTensor, Vec<f64>, Vec<f64>) {
    let out = vec![2f64.powi(-10), -(2f64.powi(-9)), 0.5];
    let t = HostTensor::from_f64([3], DType::F32, &out).unwrap();
    assert_eq!(t.to_f64(), out);
    let mut r = out;
    r[0] -= delta;
    (t, r, vec![64.0, 1.0, 1.0])
}

#[test]
fn sum_bound_adds_the_rounding_of_its_terms() {
    let tol = Tolerance::for_dtype(DType::F32);
    // The norm binds: 1e-5 * ||ref|| plus SUM_ROUNDINGS * 2^-24 * ||rss||.
    let (_, r, rss) = cancelled(0.0);
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let bound = 1e-5 * norm(&r) + SUM_ROUNDINGS * 2f64.powi(-24) * norm(&rss);
    let (t, r, rss) = cancelled(bound * 0.99);
    assert!(!compare("dgamma", &t, &r, tol).passed(), "SPEC's bound alone fails it");
    let c = compare_sum("dgamma", &t, &r, &rss, tol);
    assert!(c.passed(), "{c:?}");
    let (t, r, rss) = cancelled(bound * 1.01);
    let c = compare_sum("dgamma", &t, &r, &rss, tol);
    assert!(!c.passed(), "{c:?}");
    assert!(c.failure.as_ref().unwrap().contains("roundings of its terms"), "{c:?}");
    // An error of a term's size (the terms are about 64 / sqrt(count)) is far outside it.
    let (t, r, rss) = cancelled(1.0);
    assert!(!compare_sum("dgamma", &t, &r, &rss, tol).passed());
    // With terms of no size it is SPEC's bound.
    for delta in [bound * 0.99, 1e-5 * norm(&r) * 0.99] {
        let (t, r, _) = cancelled(delta);
        let (a, b) = (compare_sum("dgamma", &t, &r, &[0.0; 3], tol), compare("dgamma", &t, &r, tol));
        assert_eq!((a.passed(), a.max_abs_err, a.norm_err), (b.passed(), b.max_abs_err, b.norm_err), "{a:?}");
    }
}

#[test]
fn sum_bound_keeps_the_other_failures() {
    let tol = Tolerance::for_dtype(DType::F32);
    let (_, r, rss) = cancelled(0.0);
    let t = HostTensor::from_f32([3], vec![f32::NAN, -(2f32.powi(-9)), 0.5]).unwrap();
    assert!(!compare_sum("dgamma", &t, &r, &rss, tol).passed(), "NaN passed");
    let (t, r, rss) = cancelled(0.0);
    assert!(compare_sum("dgamma", &t, &r, &rss, tol).passed());
    let c = compare_sum("dgamma", &t, &r, &rss[..2], tol);
    assert!(!c.passed());
    assert!(c.failure.as_ref().unwrap().contains("term scales 2"), "{c:?}");
}
