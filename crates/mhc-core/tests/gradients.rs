//! Every backward of the golden reference against central finite differences of its forward, in
//! f64 on the unrounded `*_f64` functions (SPEC.md sections 2-4).
//!
//! The loss is `L = sum(w * out)` over every forward output with random weights `w`, which are
//! then the backward's output gradients.

mod common;

use common::{Vals, check_fd, dot};
use mhc_core::golden::{self, PreSaved};
use mhc_core::{Dims, PreParams, SinkhornParams};

/// Elements perturbed per input tensor (all of them when there are fewer).
const SUBSET: usize = 30;

struct PreCase {
    dims: Dims,
    x: Vec<f64>,
    phi: Vec<f64>,
    alpha: Vec<f64>,
    bias: Vec<f64>,
    gamma: Option<Vec<f64>>,
    dh_in: Vec<f64>,
    dh_post: Vec<f64>,
    dh_res: Vec<f64>,
    p: PreParams,
}

impl PreCase {
    fn random(v: &mut Vals, t: usize, n: usize, d: usize, with_gamma: bool, p: PreParams) -> Self {
        let dims = Dims::new(t, n, d).unwrap();
        let (m, k) = (dims.m(), dims.k());
        let s = (3.0 / k as f64).sqrt();
        Self {
            x: v.signed(t * k, 0.1, 2.0),
            phi: v.vec(m * k, -s, s),
            alpha: v.vec(3, 0.5, 1.5),
            bias: v.vec(m, -0.5, 0.5),
            gamma: with_gamma.then(|| v.vec(k, 0.5, 1.5)),
            dh_in: v.vec(t * d, -1.0, 1.0),
            dh_post: v.vec(t * n, -1.0, 1.0),
            dh_res: v.vec(t * n * n, -1.0, 1.0),
            dims,
            p,
        }
    }

    fn loss(&self, x: &[f64], phi: &[f64], alpha: &[f64], bias: &[f64], gamma: Option<&[f64]>) -> f64 {
        let o = golden::pre_forward_f64(&self.dims, x, phi, alpha, bias, gamma, &self.p);
        dot(&self.dh_in, &o.h_in) + dot(&self.dh_post, &o.h_post) + dot(&self.dh_res, &o.h_res)
    }

    fn check(&self, v: &mut Vals) {
        let seed = v.seed;
        let dims = &self.dims;
        let gamma = self.gamma.as_deref();
        let f = golden::pre_forward_f64(dims, &self.x, &self.phi, &self.alpha, &self.bias, gamma, &self.p);
        let g = golden::pre_backward_f64(
            dims,
            &self.x,
            &self.phi,
            &self.alpha,
            gamma,
            PreSaved { inv_rms: &f.inv_rms, h_mix: &f.h_mix, h_pre: &f.h_pre, h_post: &f.h_post },
            &self.dh_in,
            &self.dh_post,
            &self.dh_res,
            &self.p,
        );
        let what = |name: &str| {
            format!("pre {name} (t={} n={} D={} gamma={} {:?})", dims.t, dims.n, dims.d, self.gamma.is_some(), self.p)
        };
        let (x, phi, alpha, bias) = (&self.x, &self.phi, &self.alpha, &self.bias);
        let idx = v.subset(x.len(), SUBSET);
        check_fd(&what("dx"), seed, x, &g.dx, &idx, |xp| self.loss(xp, phi, alpha, bias, gamma));
        let idx = v.subset(phi.len(), SUBSET);
        check_fd(&what("dphi"), seed, phi, &g.dphi, &idx, |pp| self.loss(x, pp, alpha, bias, gamma));
        check_fd(&what("dalpha"), seed, alpha, &g.dalpha, &[0, 1, 2], |ap| self.loss(x, phi, ap, bias, gamma));
        let idx = v.subset(bias.len(), SUBSET);
        check_fd(&what("dbias"), seed, bias, &g.dbias, &idx, |bp| self.loss(x, phi, alpha, bp, gamma));
        // With gamma absent the gradient is the one of a gamma of all ones.
        let ones = vec![1.0; dims.k()];
        let gamma0 = self.gamma.as_deref().unwrap_or(&ones);
        let idx = v.subset(gamma0.len(), SUBSET);
        check_fd(&what("dgamma"), seed, gamma0, &g.dgamma, &idx, |gp| self.loss(x, phi, alpha, bias, Some(gp)));
    }
}

/// (t, n, D) covering n = 1 and 8, D = 1 and 3, T = 1.
const PRE_SHAPES: [(usize, usize, usize); 7] =
    [(1, 1, 1), (2, 1, 3), (1, 8, 3), (3, 4, 5), (2, 8, 1), (1, 2, 2), (4, 3, 7)];

#[test]
fn pre_backward_matches_finite_differences_default_params() {
    let mut v = Vals::new();
    for &(t, n, d) in &PRE_SHAPES {
        for with_gamma in [true, false] {
            PreCase::random(&mut v, t, n, d, with_gamma, PreParams::default()).check(&mut v);
        }
    }
}

#[test]
fn pre_backward_matches_finite_differences_other_params() {
    let mut v = Vals::new();
    let params = [
        PreParams { norm_eps: 1e-6, hc_eps: 0.05, post_mult: 1.0 },
        PreParams { norm_eps: 0.3, hc_eps: 0.2, post_mult: 1.7 },
        PreParams { norm_eps: 0.0, hc_eps: 0.0, post_mult: 2.0 },
    ];
    for p in params {
        for &(t, n, d) in &PRE_SHAPES[..5] {
            for with_gamma in [true, false] {
                PreCase::random(&mut v, t, n, d, with_gamma, p).check(&mut v);
            }
        }
    }
}

#[test]
fn pre_backward_matches_finite_differences_large_magnitudes() {
    // Larger alpha and bias push the gates towards saturation and h_res far from zero.
    let mut v = Vals::new();
    let p = PreParams { norm_eps: 1e-6, hc_eps: 0.1, post_mult: 1.7 };
    for &(t, n, d) in &[(2, 4, 3), (1, 8, 2)] {
        let mut c = PreCase::random(&mut v, t, n, d, true, p);
        c.alpha = v.vec(3, 1.5, 3.0);
        c.bias = v.vec(c.dims.m(), -2.0, 2.0);
        c.check(&mut v);
    }
}

#[test]
fn sinkhorn_backward_matches_finite_differences() {
    let mut v = Vals::new();
    let seed = v.seed;
    for iters in [1, 3, 20] {
        for eps in [1e-6f32, 0.05] {
            for &(t, n) in &[(1, 1), (2, 1), (2, 2), (1, 3), (2, 4), (1, 8)] {
                let p = SinkhornParams { iters, eps };
                let logits = v.vec(t * n * n, -3.0, 3.0);
                let w = v.vec(t * n * n, -1.0, 1.0);
                let g = golden::sinkhorn_backward_f64(n, &logits, &w, &p);
                let idx = v.subset(logits.len(), 64);
                check_fd(&format!("sinkhorn d_logits (t={t} n={n} {p:?})"), seed, &logits, &g, &idx, |lp| {
                    dot(&w, &golden::sinkhorn_forward_f64(n, lp, &p))
                });
            }
        }
    }
}

#[test]
fn post_backward_matches_finite_differences() {
    let mut v = Vals::new();
    let seed = v.seed;
    for &(t, n, d) in &[(1, 1, 1), (2, 1, 3), (1, 8, 3), (3, 4, 5), (2, 8, 1), (1, 2, 1)] {
        let dims = Dims::new(t, n, d).unwrap();
        let x = v.signed(t * d, 0.1, 2.0);
        let res = v.signed(t * n * d, 0.1, 2.0);
        let plm = v.vec(t * n, 0.0, 2.0);
        let comb = v.vec(t * n * n, 0.0, 1.0);
        let w = v.vec(t * n * d, -1.0, 1.0);
        let g = golden::post_backward_f64(&dims, &x, &res, &plm, &comb, &w);
        let loss = |x: &[f64], r: &[f64], p: &[f64], c: &[f64]| dot(&w, &golden::post_forward_f64(&dims, x, r, p, c));
        let what = |name: &str| format!("post {name} (t={t} n={n} D={d})");
        let idx = v.subset(x.len(), SUBSET);
        check_fd(&what("dx"), seed, &x, &g.dx, &idx, |xp| loss(xp, &res, &plm, &comb));
        let idx = v.subset(res.len(), SUBSET);
        check_fd(&what("dresidual"), seed, &res, &g.dresidual, &idx, |rp| loss(&x, rp, &plm, &comb));
        let idx = v.subset(plm.len(), SUBSET);
        check_fd(&what("dpost_layer_mix"), seed, &plm, &g.dpost_layer_mix, &idx, |pp| loss(&x, &res, pp, &comb));
        let idx = v.subset(comb.len(), SUBSET);
        check_fd(&what("dcomb_res_mix"), seed, &comb, &g.dcomb_res_mix, &idx, |cp| loss(&x, &res, &plm, cp));
    }
}
