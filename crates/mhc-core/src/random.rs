//! Random operator inputs for tests, `mhc check` and `mhc bench`: fresh values (never zeros,
//! never only ones) at the magnitudes real layers see, from a seed the caller reports.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::shape::{Dims, PostForwardInputs, PreBackwardInputs, PreForwardInputs};
use crate::{HostTensor, golden};

/// A seed from `MHC_SEED` when set (to replay a failure), otherwise from the clock.
pub fn seed_from_env() -> u64 {
    if let Some(s) = std::env::var("MHC_SEED").ok().and_then(|s| s.parse().ok()) {
        return s;
    }
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0x5eed, |d| d.as_nanos() as u64)
}

/// A seeded generator of tensors.
pub struct TensorRng(StdRng);

impl TensorRng {
    /// A generator that replays the same tensors for the same seed.
    pub fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    fn values(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.0.random_range(lo..hi)).collect()
    }

    /// f32 values uniform in `[lo, hi)`.
    pub fn f32(&mut self, shape: &[usize], lo: f32, hi: f32) -> HostTensor {
        let len = shape.iter().product();
        HostTensor::from_f32(shape, self.values(len, lo, hi)).expect("length matches shape")
    }

    /// bf16 values uniform in `[lo, hi)`, rounded to bf16.
    pub fn bf16(&mut self, shape: &[usize], lo: f32, hi: f32) -> HostTensor {
        let len = shape.iter().product();
        HostTensor::bf16_from_f32(shape, &self.values(len, lo, hi)).expect("length matches shape")
    }
}

/// Owned inputs of mhc_pre forward.
pub struct PreInputs {
    /// The n streams of each token, bf16 `[..., n, D]`.
    pub x: HostTensor,
    /// Projection weights, f32 `[M, K]`.
    pub phi: HostTensor,
    /// Gate scales, f32 `[3]`.
    pub alpha: HostTensor,
    /// Gate biases, f32 `[M]`.
    pub bias: HostTensor,
    /// RMSNorm weight, f32 `[n, D]`, when asked for.
    pub gamma: Option<HostTensor>,
}

impl PreInputs {
    /// Random inputs at `dims`, scaled like a trained layer's.
    pub fn random(rng: &mut TensorRng, dims: &Dims, with_gamma: bool) -> Self {
        let (n, d, m, k) = (dims.n, dims.d, dims.m(), dims.k());
        // phi scaled so that h_mix * inv_rms is O(1), as in a trained layer.
        let s = (3.0 / k as f32).sqrt();
        let alpha = HostTensor::from_f32([3], rng.values(3, 0.5, 1.5)).expect("3 values");
        Self {
            x: rng.bf16(&dims.out_shape(&[n, d]), -2.0, 2.0),
            phi: rng.f32(&[m, k], -s, s),
            alpha,
            bias: rng.f32(&[m], -0.5, 0.5),
            gamma: with_gamma.then(|| rng.f32(&[n, d], 0.5, 1.5)),
        }
    }

    /// The inputs by reference, as the operators take them.
    pub fn inputs(&self) -> PreForwardInputs<'_, HostTensor> {
        PreForwardInputs {
            x: &self.x,
            phi: &self.phi,
            alpha: &self.alpha,
            bias: &self.bias,
            gamma: self.gamma.as_ref(),
        }
    }
}

/// Owned inputs of mhc_pre backward: the forward's inputs, its saved tensors (from the golden
/// forward) and random output gradients.
pub struct PreBackwardData {
    /// The forward's inputs.
    pub fwd: PreInputs,
    /// The golden forward's outputs; backward takes inv_rms, h_mix, h_pre and h_post from them.
    pub saved: golden::PreForward,
    /// Gradient of h_in, bf16 `[..., D]`.
    pub dh_in: HostTensor,
    /// Gradient of h_post, f32 `[..., n]`.
    pub dh_post: HostTensor,
    /// Gradient of h_res, f32 `[..., n, n]`.
    pub dh_res: HostTensor,
}

impl PreBackwardData {
    /// Random forward inputs as [`PreInputs::random`] makes them, the golden forward's outputs
    /// under `p`, and output gradients uniform in `[-1, 1)`.
    pub fn random(rng: &mut TensorRng, dims: &Dims, with_gamma: bool, p: &crate::PreParams) -> Self {
        let fwd = PreInputs::random(rng, dims, with_gamma);
        let saved = golden::pre_forward(&fwd.inputs(), p).expect("random inputs are valid");
        let n = dims.n;
        Self {
            dh_in: rng.bf16(&dims.out_shape(&[dims.d]), -1.0, 1.0),
            dh_post: rng.f32(&dims.out_shape(&[n]), -1.0, 1.0),
            dh_res: rng.f32(&dims.out_shape(&[n, n]), -1.0, 1.0),
            fwd,
            saved,
        }
    }

    /// The inputs by reference, as the operators take them.
    pub fn inputs(&self) -> PreBackwardInputs<'_, HostTensor> {
        PreBackwardInputs {
            fwd: self.fwd.inputs(),
            inv_rms: &self.saved.inv_rms,
            h_mix: &self.saved.h_mix,
            h_pre: &self.saved.h_pre,
            h_post: &self.saved.h_post,
            dh_in: &self.dh_in,
            dh_post: &self.dh_post,
            dh_res: &self.dh_res,
        }
    }
}

/// Owned inputs of mhc_post forward and backward.
pub struct PostInputs {
    /// The sublayer's output, bf16 `[..., D]`.
    pub x: HostTensor,
    /// The n streams entering the block, bf16 `[..., n, D]`.
    pub residual: HostTensor,
    /// Weight of `x` in each output stream, f32 `[..., n]`.
    pub post_layer_mix: HostTensor,
    /// Weights of the residual streams, f32 `[..., n, n]`.
    pub comb_res_mix: HostTensor,
    /// Gradient of `out` for the backward, bf16 `[..., n, D]`.
    pub d_out: HostTensor,
}

impl PostInputs {
    /// Random inputs at `dims`; the mixes are drawn from `[0, 2)` and `[0, 1)`, non-negative
    /// like mhc_pre's h_post and a Sinkhorn-projected h_res.
    pub fn random(rng: &mut TensorRng, dims: &Dims) -> Self {
        let (n, d) = (dims.n, dims.d);
        Self {
            x: rng.bf16(&dims.out_shape(&[d]), -2.0, 2.0),
            residual: rng.bf16(&dims.out_shape(&[n, d]), -2.0, 2.0),
            post_layer_mix: rng.f32(&dims.out_shape(&[n]), 0.0, 2.0),
            comb_res_mix: rng.f32(&dims.out_shape(&[n, n]), 0.0, 1.0),
            d_out: rng.bf16(&dims.out_shape(&[n, d]), -1.0, 1.0),
        }
    }

    /// The inputs by reference, as the operators take them.
    pub fn inputs(&self) -> PostForwardInputs<'_, HostTensor> {
        PostForwardInputs {
            x: &self.x,
            residual: &self.residual,
            post_layer_mix: &self.post_layer_mix,
            comb_res_mix: &self.comb_res_mix,
        }
    }
}
