//! Small cases whose expected values are worked out here by hand (closed forms and fractions),
//! independently of the golden code.

mod common;

use common::bf16_rne;
use mhc_core::golden::{self, PreSaved};
use mhc_core::{DType, Dims, HostTensor, PostForwardInputs, PreForwardInputs, PreParams, SinkhornParams};

fn sig(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-14 * (1.0 + w.abs()), "{what}[{i}]: got {g:.17e}, want {w:.17e}");
    }
}

const EXACT: PreParams = PreParams { norm_eps: 0.0, hc_eps: 0.0, post_mult: 2.0 };

#[test]
fn pre_forward_n1_d2() {
    // v = [1, 7]: mean(v^2) = 25, inv_rms = 1/5. gamma = [2, 0.5] gives v*gamma = [2, 3.5].
    // phi rows [1, 0], [0, 1], [1, -1] give h_mix = [2, 3.5, -1.5], t = [0.4, 0.7, -0.3].
    let dims = Dims::new(1, 1, 2).unwrap();
    let (x, phi, alpha, bias, gamma) =
        ([1.0, 7.0], [1.0, 0.0, 0.0, 1.0, 1.0, -1.0], [1.0, 2.0, 3.0], [0.1, -0.4, 0.5], [2.0, 0.5]);
    let o = golden::pre_forward_f64(&dims, &x, &phi, &alpha, &bias, Some(&gamma), &EXACT);
    close("inv_rms", &o.inv_rms, &[0.2]);
    close("h_mix", &o.h_mix, &[2.0, 3.5, -1.5]);
    let h_pre = sig(1.0 * 0.4 + 0.1); // sig(0.5)
    close("h_pre", &o.h_pre, &[h_pre]);
    close("h_post", &o.h_post, &[2.0 * sig(2.0 * 0.7 - 0.4)]); // 2 sig(1)
    close("h_res", &o.h_res, &[3.0 * -0.3 + 0.5]);
    close("h_in", &o.h_in, &[h_pre, 7.0 * h_pre]);
    // sig(0.5) and sig(1) to 16 digits, from tables.
    assert!((h_pre - 0.622_459_331_201_854_6).abs() < 1e-15);
    assert!((o.h_post[0] - 2.0 * 0.731_058_578_630_004_9).abs() < 1e-15);

    // The defaults: norm_eps inside the root, hc_eps added to h_pre only, post_mult 2.
    let p = PreParams::default();
    let (ne, he) = (1e-6f32 as f64, 1e-6f32 as f64);
    let o = golden::pre_forward_f64(&dims, &x, &phi, &alpha, &bias, Some(&gamma), &p);
    let inv = 1.0 / (25.0 + ne).sqrt();
    close("inv_rms", &o.inv_rms, &[inv]);
    close("h_mix", &o.h_mix, &[2.0, 3.5, -1.5]);
    close("h_pre", &o.h_pre, &[sig(2.0 * inv + 0.1) + he]);
    close("h_post", &o.h_post, &[2.0 * sig(2.0 * 3.5 * inv - 0.4)]);
    close("h_res", &o.h_res, &[3.0 * -1.5 * inv + 0.5]);
    close("h_in", &o.h_in, &[sig(2.0 * inv + 0.1) + he, 7.0 * (sig(2.0 * inv + 0.1) + he)]);

    // Without gamma (all ones) h_mix = [1, 7, -6]; post_mult 1 halves the gate's scale.
    let p = PreParams { post_mult: 1.0, hc_eps: 0.25, ..EXACT };
    let o = golden::pre_forward_f64(&dims, &x, &phi, &alpha, &bias, None, &p);
    close("h_mix", &o.h_mix, &[1.0, 7.0, -6.0]);
    close("h_pre", &o.h_pre, &[sig(0.2 + 0.1) + 0.25]);
    close("h_post", &o.h_post, &[sig(2.0 * 1.4 - 0.4)]);
    close("h_res", &o.h_res, &[3.0 * -1.2 + 0.5]);
    close("h_in", &o.h_in, &[sig(0.3) + 0.25, 7.0 * (sig(0.3) + 0.25)]);
}

#[test]
fn pre_forward_n2_d1_stream_and_row_major_order() {
    // x = [[1], [7]]: v = [1, 7], inv_rms = 1/5, gamma absent. M = 8 rows of phi.
    let dims = Dims::new(1, 2, 1).unwrap();
    let x = [1.0, 7.0];
    #[rustfmt::skip]
    let phi = [
        1.0, 0.0,   // h_mix 1    -> t 0.2   (pre 0)
        0.0, 1.0,   // 7          -> 1.4     (pre 1)
        0.5, 0.0,   // 0.5        -> 0.1     (post 0)
        0.0, -0.5,  // -3.5       -> -0.7    (post 1)
        1.0, 1.0,   // 8          -> 1.6     (res [0, 0])
        1.0, -1.0,  // -6         -> -1.2    (res [0, 1])
        -1.0, 0.0,  // -1         -> -0.2    (res [1, 0])
        0.0, 0.5,   // 3.5        -> 0.7     (res [1, 1])
    ];
    let alpha = [2.0, 1.0, 0.5];
    let bias = [0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4];
    let o = golden::pre_forward_f64(&dims, &x, &phi, &alpha, &bias, None, &EXACT);
    close("inv_rms", &o.inv_rms, &[0.2]);
    close("h_mix", &o.h_mix, &[1.0, 7.0, 0.5, -3.5, 8.0, -6.0, -1.0, 3.5]);
    close("h_pre", &o.h_pre, &[sig(0.4), sig(2.8)]);
    close("h_post", &o.h_post, &[2.0 * sig(0.1), 2.0 * sig(-0.7)]);
    close("h_res", &o.h_res, &[0.8 + 0.1, -0.6 + 0.2, -0.1 + 0.3, 0.35 + 0.4]);
    close("h_in", &o.h_in, &[sig(0.4) * 1.0 + sig(2.8) * 7.0]);

    // The same case through the tensor API, with lead dims [1, 1] and rounding.
    let xt = HostTensor::from_f64([1, 1, 2, 1], DType::BF16, &x).unwrap();
    let f32t = |shape: &[usize], v: &[f64]| HostTensor::from_f64(shape, DType::F32, v).unwrap();
    let (phit, alphat, biast) = (f32t(&[8, 2], &phi), f32t(&[3], &alpha), f32t(&[8], &bias));
    let inp = PreForwardInputs { x: &xt, phi: &phit, alpha: &alphat, bias: &biast, gamma: None };
    let out = golden::pre_forward(&inp, &EXACT).unwrap();
    assert_eq!(out.h_in.shape_vec(), vec![1, 1, 1]);
    let h_in = sig(0.4) + 7.0 * sig(2.8);
    assert_eq!(out.h_in.as_bf16().unwrap(), &[bf16_rne(h_in)]);
    assert_eq!(out.h_res.shape_vec(), vec![1, 1, 2, 2]);
    // bias is rounded to f32 on the way in, so compare h_res loosely.
    let h_res = out.h_res.to_f64();
    for (g, w) in h_res.iter().zip([0.9, -0.4, 0.2, 0.75]) {
        assert!((g - w).abs() < 1e-6, "h_res {h_res:?}");
    }
}

#[test]
fn pre_backward_n1_d1() {
    // K = 1: v * inv_rms = sign(v) (norm_eps 0), so t does not depend on x and the two rms terms
    // of dx cancel: dx = h_pre * dh_in.
    // x = 2, inv_rms = 1/2, phi = [1, -1, 0.5] -> h_mix = [2, -2, 1], t = [1, -1, 0.5].
    let dims = Dims::new(1, 1, 1).unwrap();
    let (x, phi, alpha, bias) = ([2.0], [1.0, -1.0, 0.5], [1.0, 1.0, 2.0], [0.0, 0.0, 0.0]);
    let f = golden::pre_forward_f64(&dims, &x, &phi, &alpha, &bias, None, &EXACT);
    close("inv_rms", &f.inv_rms, &[0.5]);
    close("h_pre", &f.h_pre, &[sig(1.0)]);
    close("h_post", &f.h_post, &[2.0 * sig(-1.0)]);
    close("h_res", &f.h_res, &[2.0 * 0.5]);
    let saved = PreSaved { inv_rms: &f.inv_rms, h_mix: &f.h_mix, h_pre: &f.h_pre, h_post: &f.h_post };
    let (dh_in, dh_post, dh_res) = ([1.0], [1.0], [1.0]);
    let g = golden::pre_backward_f64(&dims, &x, &phi, &alpha, None, saved, &dh_in, &dh_post, &dh_res, &EXACT);
    // dh_pre = dh_in * x = 2; the gates' derivatives s(1 - s) and 2 s(1 - s).
    let g0 = 2.0 * sig(1.0) * (1.0 - sig(1.0));
    let g1 = 2.0 * sig(-1.0) * (1.0 - sig(-1.0));
    let g2 = 2.0; // alpha2 * dh_res
    // dphi = g * inv_rms * v = g.
    close("dphi", &g.dphi, &[g0, g1, g2]);
    // dalpha = [dh_pre2 * t0, dh_post2 * t1, dh_res * t2] (alpha0 = alpha1 = 1).
    close("dalpha", &g.dalpha, &[g0, -g1, 0.5]);
    close("dbias", &g.dbias, &[g0, g1, 1.0]);
    close("dx", &g.dx, &[sig(1.0)]);
    // dgamma = v * dv_mm = 2 * inv_rms * (g0 * 1 + g1 * -1 + g2 * 0.5).
    close("dgamma", &g.dgamma, &[g0 - g1 + 1.0]);
    // One token, one term a sum: each root-sum-square is the term's size.
    let s = &g.term_rss;
    close("term_rss dphi", &s.dphi, &[g0, g1, g2]);
    close("term_rss dalpha", &s.dalpha, &[g0, g1, 0.5]);
    close("term_rss dbias", &s.dbias, &[g0, g1, 1.0]);
    close("term_rss dgamma", &s.dgamma, &[g0 - g1 + 1.0]);

    // The same token again with the output gradients negated: every gradient is linear in
    // them, so the weight gradients cancel to 0 while their terms' root-sum-squares grow by
    // sqrt(2), and dx is the first token's negated.
    let dims2 = Dims::new(2, 1, 1).unwrap();
    let two = |v: &[f64]| [v, v].concat();
    let (inv, mix, pre, post) = (two(&f.inv_rms), two(&f.h_mix), two(&f.h_pre), two(&f.h_post));
    let saved2 = PreSaved { inv_rms: &inv, h_mix: &mix, h_pre: &pre, h_post: &post };
    let neg = [1.0, -1.0];
    let g2t = golden::pre_backward_f64(&dims2, &two(&x), &phi, &alpha, None, saved2, &neg, &neg, &neg, &EXACT);
    close("dx", &g2t.dx, &[sig(1.0), -sig(1.0)]);
    let r2 = std::f64::consts::SQRT_2;
    for (name, sum, rss, one) in [
        ("dphi", &g2t.dphi, &g2t.term_rss.dphi, &s.dphi),
        ("dalpha", &g2t.dalpha, &g2t.term_rss.dalpha, &s.dalpha),
        ("dbias", &g2t.dbias, &g2t.term_rss.dbias, &s.dbias),
        ("dgamma", &g2t.dgamma, &g2t.term_rss.dgamma, &s.dgamma),
    ] {
        close(name, sum, &vec![0.0; sum.len()]);
        close(&format!("term_rss {name}"), rss, &one.iter().map(|v| v * r2).collect::<Vec<_>>());
    }
}

fn sk(n: usize, logits: &[f64], iters: u32, eps: f32) -> Vec<f64> {
    golden::sinkhorn_forward_f64(n, logits, &SinkhornParams { iters, eps })
}

#[test]
fn sinkhorn_n1() {
    // softmax of one value is 1; P = 1 + e; every later step is p / (p + e).
    let e = 1e-6f32 as f64;
    close("iters 1", &sk(1, &[3.7], 1, 1e-6), &[(1.0 + e) / (1.0 + 2.0 * e)]);
    close("iters 1, eps 0.5", &sk(1, &[-2.0], 1, 0.5), &[1.5 / 2.0]);
    // rows: 0.75 / 1.25 = 0.6; columns: 0.6 / 1.1 = 6/11.
    close("iters 2, eps 0.5", &sk(1, &[0.3], 2, 0.5), &[6.0 / 11.0]);
    close("iters 20, eps 0", &sk(1, &[5.0], 20, 0.0), &[1.0]);
    close("3 tokens", &sk(1, &[1.0, -1.0, 0.0], 1, 0.5), &[0.75, 0.75, 0.75]);
}

#[test]
fn sinkhorn_n2() {
    // Equal logits: softmax 1/2; with eps 0.5: (1/2 + 1/2) / (2 + 1/2) = 0.4; then rows
    // 0.4 / 1.3 = 4/13, columns (4/13) / (8/13 + 1/2) = 8/29.
    close("equal, iters 1", &sk(2, &[0.7; 4], 1, 0.5), &[0.4; 4]);
    close("equal, iters 2", &sk(2, &[-1.3; 4], 2, 0.5), &[8.0 / 29.0; 4]);
    close("equal, eps 0", &sk(2, &[2.0; 4], 20, 0.0), &[0.5; 4]);
    let e = 1e-6f32 as f64;
    close("equal, iters 1, eps 1e-6", &sk(2, &[0.0; 4], 1, 1e-6), &[(0.5 + e) / (1.0 + 3.0 * e); 4]);
    // Rows softmax to [1/4, 3/4], [3/4, 1/4]: already doubly stochastic.
    let l3 = 3f64.ln();
    close("doubly stochastic", &sk(2, &[0.0, l3, l3, 0.0], 20, 0.0), &[0.25, 0.75, 0.75, 0.25]);
    // Rows [1/4, 3/4], [1/2, 1/2]; column sums 3/4 and 5/4 -> [1/3, 3/5], [2/3, 2/5].
    let l = [0.0, l3, 0.0, 0.0];
    close("iters 1", &sk(2, &l, 1, 0.0), &[1.0 / 3.0, 0.6, 2.0 / 3.0, 0.4]);
    // Rows: sums 14/15, 16/15 -> [5/14, 9/14], [5/8, 3/8]; columns: sums 55/56, 57/56
    // -> [4/11, 12/19], [7/11, 7/19].
    close("iters 2", &sk(2, &l, 2, 0.0), &[4.0 / 11.0, 12.0 / 19.0, 7.0 / 11.0, 7.0 / 19.0]);
    // Two tokens are independent.
    let both = [l.as_slice(), &[0.7; 4]].concat();
    close("2 tokens", &sk(2, &both, 1, 0.0), &[1.0 / 3.0, 0.6, 2.0 / 3.0, 0.4, 0.5, 0.5, 0.5, 0.5]);
}

#[test]
fn sinkhorn_backward_hand() {
    // n = 1: the output does not depend on the logit.
    let g = golden::sinkhorn_backward_f64(1, &[0.4, -2.0], &[1.0, -3.0], &SinkhornParams::default());
    close("n1", &g, &[0.0, 0.0]);
    // With eps 0 the last step leaves every column summing to 1, so sum(P) = n whatever the
    // logits: a constant d_out has a zero gradient.
    let l3 = 3f64.ln();
    let g = golden::sinkhorn_backward_f64(2, &[0.0, l3, 0.5, -0.2], &[0.7; 4], &SinkhornParams { iters: 3, eps: 0.0 });
    close("constant d_out", &g, &[0.0; 4]);
    // Adding a constant to a row of logits changes nothing: each row of the gradient sums to 0.
    let g = golden::sinkhorn_backward_f64(2, &[0.0, l3, 0.5, -0.2], &[1.0, -2.0, 0.5, 3.0], &SinkhornParams::default());
    assert!((g[0] + g[1]).abs() < 1e-15 && (g[2] + g[3]).abs() < 1e-15, "{g:?}");
    // iters 1, eps 0, logits all 0: s = row softmax = 1/2 everywhere, P[j][i] = s[j][i] / (s[0][i] + s[1][i]).
    // ds[j][i]/dl[j][i] = 1/4, ds[j][1-i]/dl[j][i] = -1/4 (row j only).
    // dP00 = (ds00 * s10 - s00 * ds10) / (s00 + s10)^2 = (ds00 - ds10) / 2, so with
    // d_out = [[1, 0], [0, 0]]: dl00 -> 1/8, dl01 -> -1/8, dl10 -> -1/8, dl11 -> +1/8.
    let g = golden::sinkhorn_backward_f64(2, &[0.0; 4], &[1.0, 0.0, 0.0, 0.0], &SinkhornParams { iters: 1, eps: 0.0 });
    close("equal logits", &g, &[0.125, -0.125, -0.125, 0.125]);
}

#[test]
fn post_forward_n2_d1() {
    // out[i] = plm[i] x + sum_j comb[j][i] res[j]
    //   out0 = 0.5 * 3 + 1 * 1 + 3 * 2 = 8.5;  out1 = 2 * 3 + 2 * 1 + 4 * 2 = 16.
    let dims = Dims::new(1, 2, 1).unwrap();
    let (x, res, plm, comb) = ([3.0], [1.0, 2.0], [0.5, 2.0], [1.0, 2.0, 3.0, 4.0]);
    close("out", &golden::post_forward_f64(&dims, &x, &res, &plm, &comb), &[8.5, 16.0]);

    // d_out = [1, -1]: dx = 0.5 - 2; dresidual[j] = comb[j][0] - comb[j][1];
    // dplm[i] = d_out[i] x; dcomb[j][i] = d_out[i] res[j].
    let g = golden::post_backward_f64(&dims, &x, &res, &plm, &comb, &[1.0, -1.0]);
    close("dx", &g.dx, &[-1.5]);
    close("dresidual", &g.dresidual, &[-1.0, -1.0]);
    close("dpost_layer_mix", &g.dpost_layer_mix, &[3.0, -3.0]);
    close("dcomb_res_mix", &g.dcomb_res_mix, &[1.0, -1.0, 2.0, -2.0]);

    // Through the tensor API (all values exact in bf16/f32), post_layer_mix as [1, 2, 1].
    let bf = |s: &[usize], v: &[f64]| HostTensor::from_f64(s, DType::BF16, v).unwrap();
    let f32t = |s: &[usize], v: &[f64]| HostTensor::from_f64(s, DType::F32, v).unwrap();
    let (xt, rt, pt, ct) = (bf(&[1, 1], &x), bf(&[1, 2, 1], &res), f32t(&[1, 2, 1], &plm), f32t(&[1, 2, 2], &comb));
    let inp = PostForwardInputs { x: &xt, residual: &rt, post_layer_mix: &pt, comb_res_mix: &ct };
    let out = golden::post_forward(&inp).unwrap();
    assert_eq!(out.shape_vec(), vec![1, 2, 1]);
    assert_eq!(out.to_f64(), vec![8.5, 16.0]);
    let g = golden::post_backward(&inp, &bf(&[1, 2, 1], &[1.0, -1.0])).unwrap();
    assert_eq!(g.dx.to_f64(), vec![-1.5]);
    assert_eq!(g.dresidual.to_f64(), vec![-1.0, -1.0]);
    assert_eq!(g.dpost_layer_mix.shape_vec(), vec![1, 2, 1]);
    assert_eq!(g.dpost_layer_mix.to_f64(), vec![3.0, -3.0]);
    assert_eq!(g.dcomb_res_mix.to_f64(), vec![1.0, -1.0, 2.0, -2.0]);
}

#[test]
fn post_forward_t2_d2() {
    // Token 0: plm [1, 0], comb identity -> out = [x + res0, res1].
    // Token 1: plm [0, 0], comb [[0, 1], [1, 0]] (a swap) -> out = [res1, res0].
    let dims = Dims::new(2, 2, 2).unwrap();
    let x = [1.0, 2.0, 10.0, 20.0];
    let res = [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 11.0];
    let plm = [1.0, 0.0, 0.0, 0.0];
    let comb = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0];
    let out = golden::post_forward_f64(&dims, &x, &res, &plm, &comb);
    close("out", &out, &[4.0, 6.0, 5.0, 6.0, 9.0, 11.0, 7.0, 8.0]);
}
