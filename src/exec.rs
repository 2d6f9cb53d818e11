//! Runs any operator by name on named host tensors, on the GPU or with the golden CPU code:
//! what `mhc run` and `mhc check` do with a file's or a generator's tensors.

use std::collections::BTreeMap;

use crate::core::accuracy::Tolerance;
use crate::core::golden::{self, PreSaved};
use crate::core::{
    DType, Dims, Error, HostTensor, Op, PostForwardInputs, PreBackwardInputs, PreForwardInputs, PreParams, Result,
    SinkhornParams,
};
use crate::runtime::{Context, GpuTensor, ops};

/// Tensors by name.
pub type Named = BTreeMap<String, HostTensor>;

/// Where an operator runs.
#[derive(Clone, Copy)]
pub enum Device<'a> {
    /// The golden f64 reference, rounded like the GPU's outputs.
    Cpu,
    Gpu(&'a Context),
}

/// The scalar options of every operator (SPEC.md section 6).
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub pre: PreParams,
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
    Ok(match op {
        Op::PreForward => {
            let o = golden::pre_forward(&pre_inputs(inputs)?, &opts.pre)?;
            vec![
                ("h_in", o.h_in),
                ("h_post", o.h_post),
                ("h_res", o.h_res),
                ("inv_rms", o.inv_rms),
                ("h_mix", o.h_mix),
                ("h_pre", o.h_pre),
            ]
        }
        Op::PreBackward => {
            let o = golden::pre_backward(&pre_backward_inputs(inputs)?, &opts.pre)?;
            vec![("dx", o.dx), ("dphi", o.dphi), ("dalpha", o.dalpha), ("dbias", o.dbias), ("dgamma", o.dgamma)]
        }
        Op::SinkhornForward => vec![("out", golden::sinkhorn_forward(g("logits")?, &opts.sinkhorn)?)],
        Op::SinkhornBackward => {
            vec![("d_logits", golden::sinkhorn_backward(g("logits")?, g("d_out")?, &opts.sinkhorn)?)]
        }
        Op::PostForward => vec![("out", golden::post_forward(&post_inputs(inputs)?)?)],
        Op::PostBackward => {
            let o = golden::post_backward(&post_inputs(inputs)?, g("d_out")?)?;
            vec![
                ("dx", o.dx),
                ("dresidual", o.dresidual),
                ("dpost_layer_mix", o.dpost_layer_mix),
                ("dcomb_res_mix", o.dcomb_res_mix),
            ]
        }
    })
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
    let outs: Vec<(&'static str, GpuTensor)> = match op {
        Op::PreForward => {
            let o = ops::pre_forward(ctx, &pre_inputs(&up)?, &opts.pre, None)?;
            vec![
                ("h_in", o.h_in),
                ("h_post", o.h_post),
                ("h_res", o.h_res),
                ("inv_rms", o.inv_rms),
                ("h_mix", o.h_mix),
                ("h_pre", o.h_pre),
            ]
        }
        Op::PreBackward => {
            let o = ops::pre_backward(ctx, &pre_backward_inputs(&up)?, &opts.pre)?;
            vec![("dx", o.dx), ("dphi", o.dphi), ("dalpha", o.dalpha), ("dbias", o.dbias), ("dgamma", o.dgamma)]
        }
        Op::SinkhornForward => vec![("out", ops::sinkhorn_forward(ctx, g("logits")?, &opts.sinkhorn)?)],
        Op::SinkhornBackward => {
            vec![("d_logits", ops::sinkhorn_backward(ctx, g("logits")?, g("d_out")?, &opts.sinkhorn)?)]
        }
        Op::PostForward => vec![("out", ops::post_forward(ctx, &post_inputs(&up)?)?)],
        Op::PostBackward => {
            let o = ops::post_backward(ctx, &post_inputs(&up)?, g("d_out")?)?;
            vec![
                ("dx", o.dx),
                ("dresidual", o.dresidual),
                ("dpost_layer_mix", o.dpost_layer_mix),
                ("dcomb_res_mix", o.dcomb_res_mix),
            ]
        }
    };
    outs.into_iter().map(|(name, t)| Ok((name, t.read(ctx)?))).collect()
}

/// The unrounded f64 reference of each output, with its SPEC.md tolerance: what `mhc check`
/// compares a device's outputs against.
pub fn reference(op: Op, inputs: &Named, opts: &Options) -> Result<Vec<(&'static str, Vec<f64>, Tolerance)>> {
    let f = |name| get(inputs, name).map(HostTensor::to_f64);
    let gamma = inputs.get("gamma").map(HostTensor::to_f64);
    let (bf16, f32) = (Tolerance::for_dtype(DType::BF16), Tolerance::for_dtype(DType::F32));
    Ok(match op {
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
            vec![
                ("h_in", r.h_in, bf16),
                ("h_post", r.h_post, f32),
                ("h_res", r.h_res, f32),
                ("inv_rms", r.inv_rms, f32),
                ("h_mix", r.h_mix, f32),
                ("h_pre", r.h_pre, f32),
            ]
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
            vec![
                ("dx", r.dx, bf16),
                ("dphi", r.dphi, f32),
                ("dalpha", r.dalpha, f32),
                ("dbias", r.dbias, f32),
                ("dgamma", r.dgamma, f32),
            ]
        }
        Op::SinkhornForward | Op::SinkhornBackward => {
            let n = crate::core::shape::sinkhorn_dims("logits", get(inputs, "logits")?)?.n;
            if op == Op::SinkhornForward {
                vec![("out", golden::sinkhorn_forward_f64(n, &f("logits")?, &opts.sinkhorn), f32)]
            } else {
                let r = golden::sinkhorn_backward_f64(n, &f("logits")?, &f("d_out")?, &opts.sinkhorn);
                vec![("d_logits", r, Tolerance::sinkhorn_backward())]
            }
        }
        Op::PostForward | Op::PostBackward => {
            let dims: Dims = post_inputs(inputs)?.validate()?;
            let (x, res, plm, comb) = (f("x")?, f("residual")?, f("post_layer_mix")?, f("comb_res_mix")?);
            if op == Op::PostForward {
                vec![("out", golden::post_forward_f64(&dims, &x, &res, &plm, &comb), bf16)]
            } else {
                let r = golden::post_backward_f64(&dims, &x, &res, &plm, &comb, &f("d_out")?);
                vec![
                    ("dx", r.dx, bf16),
                    ("dresidual", r.dresidual, bf16),
                    ("dpost_layer_mix", r.dpost_layer_mix, f32),
                    ("dcomb_res_mix", r.dcomb_res_mix, f32),
                ]
            }
        }
    })
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
