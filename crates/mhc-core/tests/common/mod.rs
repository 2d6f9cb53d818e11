//! Helpers shared by the integration tests: seeded random values, finite differences and an
//! independent round-to-nearest-even bf16 reference.
#![allow(dead_code)]

use mhc_core::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A seeded generator of plain f64 vectors; the seed comes from `MHC_SEED` or the clock and is
/// printed by every failing assertion so the failure can be replayed.
pub struct Vals {
    pub seed: u64,
    rng: StdRng,
}

impl Vals {
    pub fn new() -> Self {
        let seed = mhc_core::random::seed_from_env();
        Self { seed, rng: StdRng::seed_from_u64(seed) }
    }

    pub fn vec(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..len).map(|_| self.rng.random_range(lo..hi)).collect()
    }

    /// Values in `[lo, hi)` with random sign: bounded away from zero.
    pub fn signed(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..len)
            .map(|_| {
                let v = self.rng.random_range(lo..hi);
                if self.rng.random_bool(0.5) { v } else { -v }
            })
            .collect()
    }

    pub fn index(&mut self, len: usize) -> usize {
        self.rng.random_range(0..len)
    }

    /// Every index when `len <= limit`, otherwise `limit` distinct random ones (always with the
    /// first and last).
    pub fn subset(&mut self, len: usize, limit: usize) -> Vec<usize> {
        if len <= limit {
            return (0..len).collect();
        }
        let mut idx = vec![0, len - 1];
        while idx.len() < limit {
            let i = self.index(len);
            if !idx.contains(&i) {
                idx.push(i);
            }
        }
        idx
    }
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Relative step of the central differences.
pub const FD_STEP: f64 = 1e-5;
/// `|fd - analytic| <= FD_TOL * (1 + |analytic|)`.
pub const FD_TOL: f64 = 1e-8;

/// Checks `analytic[i]` against the central difference of `loss` in `input[i]` for each `i` in
/// `indices`.
pub fn check_fd(
    what: &str,
    seed: u64,
    input: &[f64],
    analytic: &[f64],
    indices: &[usize],
    loss: impl Fn(&[f64]) -> f64,
) {
    assert_eq!(input.len(), analytic.len(), "{what}: gradient length (seed {seed})");
    let mut p = input.to_vec();
    for &i in indices {
        let h = FD_STEP * input[i].abs().max(1.0);
        p[i] = input[i] + h;
        let up = p[i];
        let lp = loss(&p);
        p[i] = input[i] - h;
        let down = p[i];
        let lm = loss(&p);
        p[i] = input[i];
        let fd = (lp - lm) / (up - down);
        let a = analytic[i];
        assert!(
            (fd - a).abs() <= FD_TOL * (1.0 + a.abs()),
            "{what}[{i}]: finite difference {fd:.12e} vs analytic {a:.12e} (diff {:.3e}); replay with MHC_SEED={seed}",
            (fd - a).abs()
        );
    }
}

/// The bf16 nearest to `v` (ties to an even mantissa), found by comparing the neighbours of a
/// candidate in exact f64 arithmetic. Finite values inside bf16's normal range only.
pub fn bf16_rne(v: f64) -> bf16 {
    assert!(v.is_finite());
    let c = bf16::from_f32(v as f32).to_bits();
    let mut best: Option<(f64, u16)> = None;
    for bits in [c.wrapping_sub(1), c, c.wrapping_add(1)] {
        let cand = bf16::from_bits(bits);
        if !cand.is_finite() {
            continue;
        }
        let err = (cand.to_f64() - v).abs();
        best = match best {
            None => Some((err, bits)),
            Some((e, b)) if err < e || (err == e && bits & 1 == 0 && b & 1 == 1) => Some((err, bits)),
            keep => keep,
        };
    }
    bf16::from_bits(best.expect("a finite neighbour").1)
}
