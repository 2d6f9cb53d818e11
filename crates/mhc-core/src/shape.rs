//! Validated shapes of each operator. Every constructor checks all tensors an operator takes
//! and returns an error naming the first one that does not fit.

use crate::{DType, Error, Result, TensorMeta};

/// Streams per token supported by the kernels (hc_mult in the paper).
pub const MAX_STREAMS: usize = 8;

/// Tokens (leading dims flattened), streams `n` and stream width `d` of an mHC layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dims {
    /// The leading dims of `x`, restored on outputs; their product is `t`.
    pub lead: Vec<usize>,
    /// Tokens.
    pub t: usize,
    /// Streams a token (hc_mult).
    pub n: usize,
    /// Width of a stream (the model's hidden size).
    pub d: usize,
}

impl Dims {
    /// Validates `t >= 1`, `1 <= n <= 8`, `d >= 1`; `lead` becomes `[t]`.
    pub fn new(t: usize, n: usize, d: usize) -> Result<Self> {
        Self::with_lead(vec![t], n, d)
    }

    /// Like [`Dims::new`] with the tokens given as leading dims (say `[batch, seq]`).
    pub fn with_lead(lead: Vec<usize>, n: usize, d: usize) -> Result<Self> {
        let mut shape = lead.clone();
        shape.extend([n, d]);
        let t = crate::checked_numel("x", &lead, 1)?;
        // Every per-token tensor's f32 bytes (at most max(K, M) values a token) must be
        // countable, so that no size computed from these dims wraps.
        let widest = n.saturating_mul(d).max(n.saturating_mul(n + 2));
        if t.checked_mul(widest).and_then(|e| e.checked_mul(DType::F32.size_bytes())).is_none() {
            return Err(Error::TooLarge { what: "x".into(), detail: format!("shape {shape:?} has too many elements") });
        }
        if t == 0 {
            return Err(Error::shape("x", "[..., n, D] with at least one token", &shape));
        }
        if !(1..=MAX_STREAMS).contains(&n) {
            return Err(Error::shape("x", format!("[..., n, D] with 1 <= n <= {MAX_STREAMS}"), &shape));
        }
        if d == 0 {
            return Err(Error::shape("x", "[..., n, D] with D >= 1", &shape));
        }
        Ok(Self { lead, t, n, d })
    }

    /// `K = n * D`, the length of one token's flattened streams.
    pub fn k(&self) -> usize {
        self.n * self.d
    }

    /// `M = n * n + 2n`, the outputs of the projection.
    pub fn m(&self) -> usize {
        self.n * self.n + 2 * self.n
    }

    /// The leading dims followed by `trailing`: the shape of a per-token output.
    pub fn out_shape(&self, trailing: &[usize]) -> Vec<usize> {
        let mut s = self.lead.clone();
        s.extend_from_slice(trailing);
        s
    }

    /// Reads `[..., n, D]` from a bf16 activation tensor.
    fn from_streams(name: &str, x: &dyn TensorMeta) -> Result<Self> {
        expect_dtype(name, x, DType::BF16)?;
        let s = x.shape();
        if s.len() < 2 {
            return Err(Error::shape(name, "[..., n, D] (at least 2 dims)", s));
        }
        Self::with_lead(s[..s.len() - 2].to_vec(), s[s.len() - 2], s[s.len() - 1]).map_err(|e| rename(e, name))
    }
}

fn rename(e: Error, name: &str) -> Error {
    match e {
        Error::Shape { expected, actual, .. } => Error::Shape { tensor: name.into(), expected, actual },
        other => other,
    }
}

fn fmt_dims(d: &[usize]) -> String {
    let parts: Vec<String> = d.iter().map(|v| v.to_string()).collect();
    parts.join(", ")
}

/// Checks that tensor `name` has element type `dtype`.
pub fn expect_dtype(name: &str, t: &dyn TensorMeta, dtype: DType) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::DType { tensor: name.into(), expected: dtype, actual: t.dtype() });
    }
    Ok(())
}

/// A tensor of exactly `shape`.
pub fn expect_exact(name: &str, t: &dyn TensorMeta, dtype: DType, shape: &[usize]) -> Result<()> {
    expect_dtype(name, t, dtype)?;
    if t.shape() != shape {
        return Err(Error::shape(name, format!("[{}]", fmt_dims(shape)), t.shape()));
    }
    Ok(())
}

/// A per-token tensor `[..., trailing]` holding `tokens` tokens. Any leading dims whose
/// product is `tokens` are accepted, so flattened and unflattened callers both work.
pub fn expect_per_token(name: &str, t: &dyn TensorMeta, dtype: DType, tokens: usize, trailing: &[usize]) -> Result<()> {
    expect_dtype(name, t, dtype)?;
    let s = t.shape();
    let ok = s.len() >= trailing.len()
        && s[s.len() - trailing.len()..] == *trailing
        && s[..s.len() - trailing.len()].iter().product::<usize>() == tokens;
    if !ok {
        let tail = if trailing.is_empty() { String::new() } else { format!(", {}", fmt_dims(trailing)) };
        return Err(Error::shape(name, format!("[...{tail}] with {tokens} tokens"), s));
    }
    Ok(())
}

/// `post_layer_mix` or its gradient: f32 `[..., n]` or `[..., n, 1]` over `tokens` tokens.
pub fn expect_post_layer_mix(name: &str, t: &dyn TensorMeta, tokens: usize, n: usize) -> Result<()> {
    expect_dtype(name, t, DType::F32)?;
    if expect_per_token(name, t, DType::F32, tokens, &[n, 1]).is_err() {
        expect_per_token(name, t, DType::F32, tokens, &[n])
            .map_err(|_| Error::shape(name, format!("[..., {n}] or [..., {n}, 1] with {tokens} tokens"), t.shape()))?;
    }
    Ok(())
}

/// The tensors of mhc_pre forward (SPEC.md section 1).
/// Generic over the tensor type so host (golden) and GPU calls share one validation.
#[derive(Clone, Copy)]
pub struct PreForwardInputs<'a, T> {
    /// The n streams of each token, bf16 `[..., n, D]`.
    pub x: &'a T,
    /// Projection weights, f32 `[M, K]`.
    pub phi: &'a T,
    /// Scales of the pre, post and residual gates, f32 `[3]`.
    pub alpha: &'a T,
    /// Gate biases, f32 `[M]`.
    pub bias: &'a T,
    /// The RMSNorm weight folded into the projection; `None` means all ones.
    pub gamma: Option<&'a T>,
}

impl<T: TensorMeta> PreForwardInputs<'_, T> {
    /// The layer's dims, or an error naming the first tensor whose shape or dtype does not fit.
    pub fn validate(&self) -> Result<Dims> {
        let dims = Dims::from_streams("x", self.x)?;
        let (m, k) = (dims.m(), dims.k());
        expect_exact("phi", self.phi, DType::F32, &[m, k])?;
        expect_exact("alpha", self.alpha, DType::F32, &[3])?;
        expect_exact("bias", self.bias, DType::F32, &[m])?;
        if let Some(g) = self.gamma {
            expect_exact("gamma", g, DType::F32, &[dims.n, dims.d])?;
        }
        Ok(dims)
    }
}

/// The tensors of mhc_pre backward (SPEC.md section 2): the forward's inputs, what it saved,
/// and the gradients of its outputs.
#[derive(Clone, Copy)]
pub struct PreBackwardInputs<'a, T> {
    /// The forward's inputs.
    pub fwd: PreForwardInputs<'a, T>,
    /// Saved by the forward, f32 `[...]`.
    pub inv_rms: &'a T,
    /// Saved by the forward (not normalised), f32 `[..., M]`.
    pub h_mix: &'a T,
    /// Saved by the forward (`+ hc_eps` included), f32 `[..., n]`.
    pub h_pre: &'a T,
    /// The forward's h_post output, f32 `[..., n]`.
    pub h_post: &'a T,
    /// Gradient of h_in, bf16 `[..., D]`.
    pub dh_in: &'a T,
    /// Gradient of h_post, f32 `[..., n]`.
    pub dh_post: &'a T,
    /// Gradient of h_res (the raw logits), f32 `[..., n, n]`.
    pub dh_res: &'a T,
}

impl<T: TensorMeta> PreBackwardInputs<'_, T> {
    /// The layer's dims, or an error naming the first tensor whose shape or dtype does not fit.
    pub fn validate(&self) -> Result<Dims> {
        let dims = self.fwd.validate()?;
        let (t, n) = (dims.t, dims.n);
        expect_per_token("inv_rms", self.inv_rms, DType::F32, t, &[])?;
        expect_per_token("h_mix", self.h_mix, DType::F32, t, &[dims.m()])?;
        expect_per_token("h_pre", self.h_pre, DType::F32, t, &[n])?;
        expect_per_token("h_post", self.h_post, DType::F32, t, &[n])?;
        expect_per_token("dh_in", self.dh_in, DType::BF16, t, &[dims.d])?;
        expect_per_token("dh_post", self.dh_post, DType::F32, t, &[n])?;
        expect_per_token("dh_res", self.dh_res, DType::F32, t, &[n, n])?;
        Ok(dims)
    }
}

/// Sinkhorn's input: `[..., n, n]` f32 logits; `d` of the returned dims equals `n`.
pub fn sinkhorn_dims(name: &str, logits: &dyn TensorMeta) -> Result<Dims> {
    expect_dtype(name, logits, DType::F32)?;
    let s = logits.shape();
    if s.len() < 2 || s[s.len() - 1] != s[s.len() - 2] {
        return Err(Error::shape(name, "[..., n, n]", s));
    }
    Dims::with_lead(s[..s.len() - 2].to_vec(), s[s.len() - 1], s[s.len() - 1]).map_err(|e| rename(e, name))
}

/// The tensors of mhc_post forward (SPEC.md section 4). `post_layer_mix` may be `[..., n]` or
/// `[..., n, 1]`.
#[derive(Clone, Copy)]
pub struct PostForwardInputs<'a, T> {
    /// The sublayer's output, bf16 `[..., D]`.
    pub x: &'a T,
    /// The n streams entering the block, bf16 `[..., n, D]`.
    pub residual: &'a T,
    /// Weight of `x` in each output stream (mhc_pre's h_post), f32 `[..., n]` or `[..., n, 1]`.
    pub post_layer_mix: &'a T,
    /// At `[j, i]` the weight of residual stream j in output stream i (in a model, mhc_pre's
    /// h_res, usually Sinkhorn-projected; any values are accepted), f32 `[..., n, n]`.
    pub comb_res_mix: &'a T,
}

impl<T: TensorMeta> PostForwardInputs<'_, T> {
    /// The layer's dims, or an error naming the first tensor whose shape or dtype does not fit.
    pub fn validate(&self) -> Result<Dims> {
        let dims = Dims::from_streams("residual", self.residual)?;
        let (t, n) = (dims.t, dims.n);
        expect_per_token("x", self.x, DType::BF16, t, &[dims.d])?;
        expect_post_layer_mix("post_layer_mix", self.post_layer_mix, t, n)?;
        expect_per_token("comb_res_mix", self.comb_res_mix, DType::F32, t, &[n, n])?;
        Ok(dims)
    }
}

/// mhc_post backward: the forward's inputs and `d_out` `[..., n, D]` bf16.
pub fn post_backward_dims<T: TensorMeta>(fwd: &PostForwardInputs<'_, T>, d_out: &T) -> Result<Dims> {
    let dims = fwd.validate()?;
    expect_per_token("d_out", d_out, DType::BF16, dims.t, &[dims.n, dims.d])?;
    Ok(dims)
}

/// Scalar options of mhc_pre (SPEC.md section 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreParams {
    /// Added to the mean square before the inverse square root of RMSNorm.
    pub norm_eps: f32,
    /// Added to the sigmoid of h_pre.
    pub hc_eps: f32,
    /// Scale of the h_post gate: 2.0 in the paper, 1.0 in DeepSeek's library.
    pub post_mult: f32,
}

impl Default for PreParams {
    fn default() -> Self {
        Self { norm_eps: 1e-6, hc_eps: 1e-6, post_mult: 2.0 }
    }
}

impl PreParams {
    /// An [`Error::Param`] for the first option out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(Error::param("norm_eps", format!("must be finite and >= 0, got {}", self.norm_eps)));
        }
        if !(self.hc_eps.is_finite() && self.hc_eps >= 0.0 && self.hc_eps < 1.0) {
            return Err(Error::param("hc_eps", format!("must be in [0, 1), got {}", self.hc_eps)));
        }
        if !(self.post_mult.is_finite() && self.post_mult > 0.0) {
            return Err(Error::param("post_mult", format!("must be finite and > 0, got {}", self.post_mult)));
        }
        Ok(())
    }
}

/// Options of the Sinkhorn-Knopp projection (SPEC.md section 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SinkhornParams {
    /// Row-and-column normalisations.
    pub iters: u32,
    /// Added to the softmax, and to each row and column sum before dividing by it.
    pub eps: f32,
}

impl Default for SinkhornParams {
    fn default() -> Self {
        Self { iters: 20, eps: 1e-6 }
    }
}

impl SinkhornParams {
    /// The smallest `eps` accepted. The GPU computes in f32, where softmax values under 2^-126
    /// are lost (flushed to zero on NVIDIA); an eps this large covers them to 1.2e-8 of itself.
    /// With a smaller one a row whose logits span more than about 87 could come out wrong
    /// without any sign of it, or NaN (0 / 0), where the exact answer is finite.
    pub const MIN_EPS: f32 = 1e-30;

    /// An [`Error::Param`] for the first option out of range.
    pub fn validate(&self) -> Result<()> {
        if self.iters == 0 {
            return Err(Error::param("sinkhorn_iters", "must be >= 1, got 0"));
        }
        if !(self.eps.is_finite() && self.eps >= Self::MIN_EPS) {
            return Err(Error::param(
                "sinkhorn_eps",
                format!(
                    "must be finite and >= {:e} (below it f32 cannot hold the softmax values it would cover), got {}",
                    Self::MIN_EPS,
                    self.eps
                ),
            ));
        }
        Ok(())
    }
}
