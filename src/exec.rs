//! Runs any operator by name on named host tensors, on the GPU or with the golden CPU code:
//! what `mhc run` and `mhc check` do with a file's or a generator's tensors.

use std::collections::BTreeMap;

use crate::core::accuracy::{Comparison, Tolerance, compare, compare_sum};
use crate::core::golden::{self, PreSaved};
use crate::core::{
    DType, Dims, Error, HostTensor, Op, PostForwardInputs, PreBackwardInputs, PreForwardInputs, PreParams, Result,
    SinkhornParams, TensorMeta,
};
use crate::runtime::{Context, GpuTensor, ops};

/// Tensors by name.
pub type Named = BTreeMap<String, HostTensor>;

/// Where an operator runs.
#[derive(Clone, Copy)]
pub enum Device<'a> {
    /// The golden f64 reference, rounded like the GPU's outputs.
    Cpu,
    /// The WGSL kernels on this context's device.
    Gpu(&'a Context),
}

/// The scalar options of every operator (SPEC.md section 6).
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Options of mhc_pre forward and backward.
    pub pre: PreParams,
    /// Options of Sinkhorn forward and backward.
    pub sinkhorn: SinkhornParams,
}

fn get<'a, T>(inputs: &'a BTreeMap<String, T>, name: &str) -> Result<&'a T> {
    inputs.get(name).ok_or_else(|| Error::Missing { tensor: name.into() })
}

/// Rejects names the operator does not take: a misspelt optional tensor (say `gama`) would
/// otherwise be silently ignored.
fn check_names(op: Op, inputs: &Named) -> Result<()> {
    for name in inputs.keys() {
        if !op.inputs().contains(&name.as_str()) {
            return Err(Error::Data {
                tensor: name.clone(),
                detail: format!("not an input of {} (it takes {})", op.name(), op.inputs().join(", ")),
            });
        }
    }
    Ok(())
}

/// Runs `op` on `inputs`; returns the outputs in SPEC.md's order, leading dims kept.
pub fn execute(op: Op, device: Device<'_>, inputs: &Named, opts: &Options) -> Result<Vec<(&'static str, HostTensor)>> {
    check_names(op, inputs)?;
    match device {
        Device::Cpu => cpu(op, inputs, opts),
        Device::Gpu(ctx) => gpu(ctx, op, inputs, opts),
    }
}

fn cpu(op: Op, inputs: &Named, opts: &Options) -> Result<Vec<(&'static str, HostTensor)>> {
    let g = |name| get(inputs, name);
    let outs = match op {
        Op::PreForward => {
            let o = golden::pre_forward(&pre_inputs(inputs)?, &opts.pre)?;
            vec![o.h_in, o.h_post, o.h_res, o.inv_rms, o.h_mix, o.h_pre]
        }
        Op::PreBackward => {
            let o = golden::pre_backward(&pre_backward_inputs(inputs)?, &opts.pre)?;
            vec![o.dx, o.dphi, o.dalpha, o.dbias, o.dgamma]
        }
        Op::SinkhornForward => vec![golden::sinkhorn_forward(g("logits")?, &opts.sinkhorn)?],
        Op::SinkhornBackward => vec![golden::sinkhorn_backward(g("logits")?, g("d_out")?, &opts.sinkhorn)?],
        Op::PostForward => vec![golden::post_forward(&post_inputs(inputs)?)?],
        Op::PostBackward => {
            let o = golden::post_backward(&post_inputs(inputs)?, g("d_out")?)?;
            vec![o.dx, o.dresidual, o.dpost_layer_mix, o.dcomb_res_mix]
        }
    };
    Ok(named(op, outs))
}

/// Pairs `values`, given in SPEC.md's order, with the names of `op`'s outputs.
fn named<T>(op: Op, values: Vec<T>) -> Vec<(&'static str, T)> {
    debug_assert_eq!(values.len(), op.outputs().len(), "outputs of {}", op.name());
    op.outputs().iter().copied().zip(values).collect()
}

// Input structs from tensors by name, host or GPU alike.
fn pre_inputs<T>(inputs: &BTreeMap<String, T>) -> Result<PreForwardInputs<'_, T>> {
    Ok(PreForwardInputs {
        x: get(inputs, "x")?,
        phi: get(inputs, "phi")?,
        alpha: get(inputs, "alpha")?,
        bias: get(inputs, "bias")?,
        gamma: inputs.get("gamma"),
    })
}

fn pre_backward_inputs<T>(inputs: &BTreeMap<String, T>) -> Result<PreBackwardInputs<'_, T>> {
    let g = |name| get(inputs, name);
    Ok(PreBackwardInputs {
        fwd: pre_inputs(inputs)?,
        inv_rms: g("inv_rms")?,
        h_mix: g("h_mix")?,
        h_pre: g("h_pre")?,
        h_post: g("h_post")?,
        dh_in: g("dh_in")?,
        dh_post: g("dh_post")?,
        dh_res: g("dh_res")?,
    })
}

fn post_inputs<T>(inputs: &BTreeMap<String, T>) -> Result<PostForwardInputs<'_, T>> {
    Ok(PostForwardInputs {
        x: get(inputs, "x")?,
        residual: get(inputs, "residual")?,
        post_layer_mix: get(inputs, "post_layer_mix")?,
        comb_res_mix: get(inputs, "comb_res_mix")?,
    })
}

fn gpu(ctx: &Context, op: Op, inputs: &Named, opts: &Options) -> Result<Vec<(&'static str, HostTensor)>> {
    // Validate on the host first, so a bad file fails before anything is uploaded.
    match op {
        Op::PreForward => drop(pre_inputs(inputs)?.validate()?),
        Op::PreBackward => drop(pre_backward_inputs(inputs)?.validate()?),
        Op::SinkhornForward | Op::SinkhornBackward => {
            let dims = crate::core::shape::sinkhorn_dims("logits", get(inputs, "logits")?)?;
            if op == Op::SinkhornBackward {
                crate::core::shape::expect_per_token(
                    "d_out",
                    get(inputs, "d_out")?,
                    DType::F32,
                    dims.t,
                    &[dims.n, dims.n],
                )?;
            }
        }
        Op::PostForward => drop(post_inputs(inputs)?.validate()?),
        Op::PostBackward => drop(crate::core::shape::post_backward_dims(&post_inputs(inputs)?, get(inputs, "d_out")?)?),
    }
    let mut up = BTreeMap::new();
    for (name, t) in inputs {
        up.insert(name.clone(), GpuTensor::upload(ctx, name, t)?);
    }
    let g = |name| get(&up, name);
    // Every output is filled with NaN (0xFF bytes) before the kernels run, so that an element
    // they skip reads back as NaN and fails `mhc check`, not as a zero that may pass.
    let poison = |outs: &[&GpuTensor]| outs.iter().try_for_each(|t| t.fill_bytes(ctx, 0xFF));
    let outs: Vec<GpuTensor> = match op {
        Op::PreForward => {
            let inp = pre_inputs(&up)?;
            let o = ops::PreForwardOutputs::zeros(ctx, &inp.validate()?, false)?;
            poison(&[&o.h_in, &o.h_post, &o.h_res, &o.inv_rms, &o.h_mix, &o.h_pre])?;
            ops::pre_forward_into(ctx, &inp, &o, &opts.pre, None)?;
            vec![o.h_in, o.h_post, o.h_res, o.inv_rms, o.h_mix, o.h_pre]
        }
        Op::PreBackward => {
            let inp = pre_backward_inputs(&up)?;
            let o = ops::PreBackwardOutputs::zeros(ctx, &inp.validate()?)?;
            poison(&[&o.dx, &o.dphi, &o.dalpha, &o.dbias, &o.dgamma])?;
            ops::pre_backward_into(ctx, &inp, &o, &opts.pre)?;
            vec![o.dx, o.dphi, o.dalpha, o.dbias, o.dgamma]
        }
        Op::SinkhornForward | Op::SinkhornBackward => {
            let logits = g("logits")?;
            let out = GpuTensor::zeros(ctx, op.outputs()[0], logits.shape(), DType::F32)?;
            poison(&[&out])?;
            if op == Op::SinkhornForward {
                ops::sinkhorn_forward_into(ctx, logits, &out, &opts.sinkhorn)?;
            } else {
                ops::sinkhorn_backward_into(ctx, logits, g("d_out")?, &out, &opts.sinkhorn)?;
            }
            vec![out]
        }
        Op::PostForward => {
            let inp = post_inputs(&up)?;
            let dims = inp.validate()?;
            let out = GpuTensor::zeros(ctx, "out", &dims.out_shape(&[dims.n, dims.d]), DType::BF16)?;
            poison(&[&out])?;
            ops::post_forward_into(ctx, &inp, &out)?;
            vec![out]
        }
        Op::PostBackward => {
            let (inp, d_out) = (post_inputs(&up)?, g("d_out")?);
            let dims = crate::core::shape::post_backward_dims(&inp, d_out)?;
            let o = ops::PostBackwardOutputs::zeros(ctx, &dims, inp.post_layer_mix.shape())?;
            poison(&[&o.dx, &o.dresidual, &o.dpost_layer_mix, &o.dcomb_res_mix])?;
            ops::post_backward_into(ctx, &inp, d_out, &o)?;
            vec![o.dx, o.dresidual, o.dpost_layer_mix, o.dcomb_res_mix]
        }
    };
    named(op, outs).into_iter().map(|(name, t)| Ok((name, t.read(ctx)?))).collect()
}

/// One output's unrounded f64 reference and how close a device's output must come to it.
#[derive(Debug, Clone)]
pub struct Reference {
    /// The output's name (SPEC.md section 6).
    pub name: &'static str,
    /// Its exact value.
    pub values: Vec<f64>,
    /// Its SPEC.md tolerance.
    pub tol: Tolerance,
    /// For a sum over tokens (mhc_pre's weight gradients), the root-sum-square of each
    /// element's terms, which scales the rounding any f32 sum of them carries.
    pub term_rss: Option<Vec<f64>>,
}

impl Reference {
    /// How `out` compares: [`compare`], or [`compare_sum`] for a sum over tokens.
    pub fn compare(&self, out: &HostTensor) -> Comparison {
        match &self.term_rss {
            Some(rss) => compare_sum(self.name, out, &self.values, rss, self.tol),
            None => compare(self.name, out, &self.values, self.tol),
        }
    }
}

/// Each output's [`Reference`]: what `mhc check` compares a device's outputs against.
pub fn reference(op: Op, inputs: &Named, opts: &Options) -> Result<Vec<Reference>> {
    let f = |name| get(inputs, name).map(HostTensor::to_f64);
    let gamma = inputs.get("gamma").map(HostTensor::to_f64);
    let (bf16, f32) = (Tolerance::for_dtype(DType::BF16), Tolerance::for_dtype(DType::F32));
    let refs: Vec<(Vec<f64>, Tolerance, Option<Vec<f64>>)> = match op {
        Op::PreForward => {
            let dims = pre_inputs(inputs)?.validate()?;
            let r = golden::pre_forward_f64(
                &dims,
                &f("x")?,
                &f("phi")?,
                &f("alpha")?,
                &f("bias")?,
                gamma.as_deref(),
                &opts.pre,
            );
            [(r.h_in, bf16), (r.h_post, f32), (r.h_res, f32), (r.inv_rms, f32), (r.h_mix, f32), (r.h_pre, f32)]
                .map(|(v, tol)| (v, tol, None))
                .into()
        }
        Op::PreBackward => {
            let dims = pre_backward_inputs(inputs)?.validate()?;
            let (inv_rms, h_mix, h_pre, h_post) = (f("inv_rms")?, f("h_mix")?, f("h_pre")?, f("h_post")?);
            let r = golden::pre_backward_f64(
                &dims,
                &f("x")?,
                &f("phi")?,
                &f("alpha")?,
                gamma.as_deref(),
                PreSaved { inv_rms: &inv_rms, h_mix: &h_mix, h_pre: &h_pre, h_post: &h_post },
                &f("dh_in")?,
                &f("dh_post")?,
                &f("dh_res")?,
                &opts.pre,
            );
            let s = r.term_rss;
            vec![
                (r.dx, bf16, None),
                (r.dphi, f32, Some(s.dphi)),
                (r.dalpha, f32, Some(s.dalpha)),
                (r.dbias, f32, Some(s.dbias)),
                (r.dgamma, f32, Some(s.dgamma)),
            ]
        }
        Op::SinkhornForward | Op::SinkhornBackward => {
            let n = crate::core::shape::sinkhorn_dims("logits", get(inputs, "logits")?)?.n;
            if op == Op::SinkhornForward {
                vec![(golden::sinkhorn_forward_f64(n, &f("logits")?, &opts.sinkhorn), f32, None)]
            } else {
                let r = golden::sinkhorn_backward_f64(n, &f("logits")?, &f("d_out")?, &opts.sinkhorn);
                vec![(r, Tolerance::sinkhorn_backward(), None)]
            }
        }
        Op::PostForward | Op::PostBackward => {
            let dims: Dims = post_inputs(inputs)?.validate()?;
            let (x, res, plm, comb) = (f("x")?, f("residual")?, f("post_layer_mix")?, f("comb_res_mix")?);
            if op == Op::PostForward {
                vec![(golden::post_forward_f64(&dims, &x, &res, &plm, &comb), bf16, None)]
            } else {
                let r = golden::post_backward_f64(&dims, &x, &res, &plm, &comb, &f("d_out")?);
                [(r.dx, bf16), (r.dresidual, bf16), (r.dpost_layer_mix, f32), (r.dcomb_res_mix, f32)]
                    .map(|(v, tol)| (v, tol, None))
                    .into()
            }
        }
    };
    Ok(named(op, refs)
        .into_iter()
        .map(|(name, (values, tol, term_rss))| Reference { name, values, tol, term_rss })
        .collect())
}

/// Random inputs of `op` at `dims` (n x n logits for Sinkhorn), from `seed`.
pub fn random_inputs(op: Op, dims: &Dims, seed: u64, opts: &Options) -> Named {
    use crate::core::random::{PostInputs, PreBackwardData, PreInputs, TensorRng};
    let mut rng = TensorRng::new(seed);
    let mut m = Named::new();
    let mut put = |name: &str, t: HostTensor| {
        m.insert(name.to_string(), t);
    };
    match op {
        Op::PreForward => {
            let p = PreInputs::random(&mut rng, dims, true);
            put("x", p.x);
            put("phi", p.phi);
            put("alpha", p.alpha);
            put("bias", p.bias);
            put("gamma", p.gamma.expect("random gamma"));
        }
        Op::PreBackward => {
            let b = PreBackwardData::random(&mut rng, dims, true, &opts.pre);
            put("x", b.fwd.x);
            put("phi", b.fwd.phi);
            put("alpha", b.fwd.alpha);
            put("bias", b.fwd.bias);
            put("gamma", b.fwd.gamma.expect("random gamma"));
            put("inv_rms", b.saved.inv_rms);
            put("h_mix", b.saved.h_mix);
            put("h_pre", b.saved.h_pre);
            put("h_post", b.saved.h_post);
            put("dh_in", b.dh_in);
            put("dh_post", b.dh_post);
            put("dh_res", b.dh_res);
        }
        Op::SinkhornForward | Op::SinkhornBackward => {
            let nn = dims.out_shape(&[dims.n, dims.n]);
            put("logits", rng.f32(&nn, -1.0, 1.0));
            if op == Op::SinkhornBackward {
                put("d_out", rng.f32(&nn, -1.0, 1.0));
            }
        }
        Op::PostForward | Op::PostBackward => {
            let p = PostInputs::random(&mut rng, dims);
            put("x", p.x);
            put("residual", p.residual);
            put("post_layer_mix", p.post_layer_mix);
            put("comb_res_mix", p.comb_res_mix);
            if op == Op::PostBackward {
                put("d_out", p.d_out);
            }
        }
    }
    m
}
