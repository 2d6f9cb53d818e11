//! `Context::batch`: calls collected into one submission give the same results as calls
//! submitted one by one, in call order, with reads and fills inside the batch seeing the
//! calls before them done, and a failed, refused or panicking call leaving the others to run.
//! (That the calls wait in the batch, and that it ends, is the unit test in batch.rs.)

mod common;

use common::*;
use mhc::core::random::{PostInputs, PreInputs, TensorRng, seed_from_env};
use mhc::core::{Dims, Error, HostTensor, PreParams, SinkhornParams};
use mhc::runtime::layer::{MhcPost, MhcPre};
use mhc::runtime::{Context, GpuTensor, ops};

/// A block's forward and backward (pre, post, their backwards): each call takes the outputs
/// of the calls before it.
fn block_step(ctx: &Context, pre: &MhcPre, x: &GpuTensor, d_out: &GpuTensor) -> mhc::core::Result<Vec<GpuTensor>> {
    let (h, saved_pre) = pre.forward(ctx, x)?;
    let (out, saved_post) = MhcPost.forward(ctx, &h.h_in, x, &h.h_post, &h.h_res)?;
    let g_post = MhcPost.backward(ctx, &saved_post, d_out)?;
    let g_pre = pre.backward(ctx, &saved_pre, &g_post.dx, &g_post.dpost_layer_mix, &g_post.dcomb_res_mix)?;
    Ok(vec![out, g_post.dresidual, g_pre.dx, g_pre.dphi, g_pre.dalpha, g_pre.dbias, g_pre.dgamma])
}

#[test]
fn a_batched_block_step_equals_the_same_calls_unbatched() {
    let ctx = ctx();
    let seed = seed_from_env();
    let mut rng = TensorRng::new(seed);
    for (t, n, d) in [(1, 4, 64), (13, 3, 40), (2, 1, 3)] {
        let dims = Dims::new(t, n, d).unwrap();
        let host = PreInputs::random(&mut rng, &dims, true);
        let pre =
            layer(ctx, &host, PreParams { post_mult: 1.5, ..Default::default() }, Some(SinkhornParams::default()));
        let x = up(ctx, "x", &host.x);
        let d_out = up(ctx, "d_out", &rng.bf16(&[t, n, d], -1.0, 1.0));
        let alone = block_step(ctx, &pre, &x, &d_out).unwrap();
        let batched = ctx.batch(|| block_step(ctx, &pre, &x, &d_out)).unwrap();
        for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
            same_bits(ctx, &format!("T={t} n={n} D={d} output {i}"), b, a);
        }
    }
}

/// Two mhc_pre forwards in one batch share the context's scratch buffers (partial sums): the
/// second must not overwrite them before the first has read them.
#[test]
fn calls_in_a_batch_sharing_scratch_each_match_golden() {
    let ctx = ctx();
    let seed = seed_from_env();
    let mut rng = TensorRng::new(seed);
    let dims = Dims::new(37, 4, 96).unwrap();
    let p = PreParams::default();
    let hosts = [PreInputs::random(&mut rng, &dims, true), PreInputs::random(&mut rng, &dims, false)];
    let cases: Vec<_> = hosts.iter().map(|h| PreForwardCase::new(ctx, &dims, h, false)).collect();
    ctx.batch(|| cases.iter().try_for_each(|c| ops::pre_forward_into(ctx, &c.inputs(), &c.out, &p, None))).unwrap();
    for (i, (h, c)) in hosts.iter().zip(&cases).enumerate() {
        c.check(ctx, &format!("batched call {i}"), &dims, h, &p, None, false, seed);
    }
}

/// Post forward inputs on the GPU and a poisoned output.
fn post_call(ctx: &Context, rng: &mut TensorRng) -> (Vec<GpuTensor>, GpuTensor, Vec<f64>) {
    let dims = Dims::new(5, 2, 24).unwrap();
    let h = PostInputs::random(rng, &dims);
    let r = mhc::core::golden::post_forward_f64(
        &dims,
        &h.x.to_f64(),
        &h.residual.to_f64(),
        &h.post_layer_mix.to_f64(),
        &h.comb_res_mix.to_f64(),
    );
    let inputs = vec![
        up(ctx, "x", &h.x),
        up(ctx, "residual", &h.residual),
        up(ctx, "post_layer_mix", &h.post_layer_mix),
        up(ctx, "comb_res_mix", &h.comb_res_mix),
    ];
    let out = GpuTensor::zeros(ctx, "out", &[5, 2, 24], mhc::core::DType::BF16).unwrap();
    poison(ctx, &[&out]);
    (inputs, out, r)
}

fn post_into(ctx: &Context, i: &[GpuTensor], out: &GpuTensor) -> mhc::core::Result<()> {
    let inputs = mhc::core::PostForwardInputs { x: &i[0], residual: &i[1], post_layer_mix: &i[2], comb_res_mix: &i[3] };
    ops::post_forward_into(ctx, &inputs, out)
}

#[test]
fn reads_and_fills_inside_a_batch_come_after_the_calls_before_them() {
    let ctx = ctx();
    let seed = seed_from_env();
    let (inputs, out, r) = post_call(ctx, &mut TensorRng::new(seed));
    ctx.batch(|| {
        post_into(ctx, &inputs, &out)?;
        // Read inside the batch: the call above must have run (out was poisoned).
        check(ctx, "read inside a batch", &out, &r, None, seed);
        post_into(ctx, &inputs, &out)?;
        // A fill after a call: the call must not land after it.
        out.fill_bytes(ctx, 0xFF)?;
        let poisoned = out.read(ctx)?.to_f64();
        assert!(poisoned.iter().all(|v| v.is_nan()), "a fill inside a batch was overwritten by the call before it");
        post_into(ctx, &inputs, &out)?;
        ctx.wait()
    })
    .unwrap();
    check(ctx, "after the batch", &out, &r, None, seed);
}

#[test]
fn a_failed_call_in_a_batch_is_its_own_error_and_the_calls_before_it_run() {
    let ctx = ctx();
    let seed = seed_from_env();
    let (inputs, out, r) = post_call(ctx, &mut TensorRng::new(seed));
    let wrong = GpuTensor::zeros(ctx, "out", &[5, 2, 23], mhc::core::DType::BF16).unwrap();
    let err = ctx
        .batch(|| {
            post_into(ctx, &inputs, &out)?;
            post_into(ctx, &inputs, &wrong)
        })
        .unwrap_err();
    assert!(matches!(&err, Error::Shape { tensor, .. } if tensor == "out"), "{err}");
    check(ctx, "the call before the failed one", &out, &r, None, seed);
    // The context still works (that the batch is closed is the unit test in batch.rs).
    poison(ctx, &[&out]);
    post_into(ctx, &inputs, &out).unwrap();
    check(ctx, "a call after the failed batch", &out, &r, None, seed);
}

/// A call the device refuses (here, for a destroyed input) must not take the batch's other
/// calls down with it: wgpu fails a whole submission that holds an invalid command buffer.
#[test]
fn a_call_the_device_refuses_leaves_the_rest_of_the_batch_to_run() {
    let ctx = ctx();
    let seed = seed_from_env();
    let (inputs, out, r) = post_call(ctx, &mut TensorRng::new(seed));
    let (inputs2, out2, r2) = post_call(ctx, &mut TensorRng::new(seed + 1));
    let (doomed, out3, _) = post_call(ctx, &mut TensorRng::new(seed + 2));
    let err = ctx
        .batch(|| {
            post_into(ctx, &inputs, &out)?;
            doomed[1].buffer().destroy();
            let refused = post_into(ctx, &doomed, &out3);
            assert!(matches!(&refused, Err(Error::Gpu { .. })), "{refused:?}");
            post_into(ctx, &inputs2, &out2)?;
            refused
        })
        .unwrap_err();
    assert!(matches!(&err, Error::Gpu { .. }), "{err}");
    check(ctx, "the call before the refused one", &out, &r, None, seed);
    check(ctx, "the call after the refused one", &out2, &r2, None, seed);
}

#[test]
fn a_panic_in_a_batch_leaves_the_calls_before_it_run() {
    let ctx = ctx();
    let seed = seed_from_env();
    let (inputs, out, r) = post_call(ctx, &mut TensorRng::new(seed));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ctx.batch(|| {
            post_into(ctx, &inputs, &out)?;
            panic!("inside the batch");
            #[allow(unreachable_code)]
            Ok(())
        })
    }));
    assert!(caught.is_err());
    check(ctx, "the call before the panic", &out, &r, None, seed);
    poison(ctx, &[&out]);
    post_into(ctx, &inputs, &out).unwrap();
    check(ctx, "a call after the panic", &out, &r, None, seed);
}

/// A batch inside a batch, and calls through another context on the same device: each call
/// runs once, in order with the reads after it.
#[test]
fn batches_inside_batches_and_other_contexts_keep_every_call() {
    let (a, b) = (ctx(), ctx_portable());
    assert!(a.device() == b.device(), "contexts on one adapter share its device");
    let seed = seed_from_env();
    let calls: Vec<_> = (0..3).map(|i| post_call(a, &mut TensorRng::new(seed + i))).collect();
    a.batch(|| {
        post_into(a, &calls[0].0, &calls[0].1)?;
        b.batch(|| post_into(b, &calls[1].0, &calls[1].1))?;
        check(b, "the inner batch's call, read through the other context", &calls[1].1, &calls[1].2, None, seed);
        post_into(a, &calls[2].0, &calls[2].1)
    })
    .unwrap();
    for (i, (_, out, r)) in calls.iter().enumerate() {
        check(a, &format!("call {i}"), out, r, None, seed);
    }
}

/// Threads sharing a context, one calling in batches and one without: every read sees the
/// thread's own calls before it done, whichever batch they joined, and nothing deadlocks.
#[test]
fn threads_calling_in_and_out_of_batches_see_their_own_calls() {
    let ctx = ctx();
    let tensor = |name: &str, v: [f32; 3]| up(ctx, name, &HostTensor::from_f32(vec![3], v.to_vec()).unwrap());
    std::thread::scope(|s| {
        for batched in [true, false] {
            s.spawn(move || {
                let (p, g) = (tensor("p", [1.0, 2.0, 3.0]), tensor("g", [0.5, 0.25, -1.0]));
                let mut want = [1.0f32, 2.0, 3.0];
                for i in 0..200 {
                    let steps = 1 + i % 3;
                    let call = || (0..steps).try_for_each(|_| ops::sgd_step(ctx, &p, &g, 1.0));
                    if batched { ctx.batch(call) } else { call() }.unwrap();
                    for (w, d) in want.iter_mut().zip([0.5, 0.25, -1.0]) {
                        *w -= steps as f32 * d;
                    }
                    let got = p.read(ctx).unwrap();
                    assert_eq!(got.as_f32(), Some(&want[..]), "batched {batched}, iteration {i}");
                }
            });
        }
    });
}
