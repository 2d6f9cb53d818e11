//! Probe (forty-eighth session, not part of the build): the time a call of mhc_pre forward
//! and mhc_post forward takes at decode sizes, host encoding and submission included, which
//! `mhc bench` (GPU time from timestamps) does not see. Copy it to `examples/` and run
//! `cargo run --release --example decode_wall` (`D=8` for a small width; the sizes are T = 1,
//! 16 and 256 at n = 4). Per size and operator: 200 calls to warm up, then
//! - host: 1000 calls back to back, timed before the wait at their end (where the device keeps
//!   up, the host's time a call), and the calling thread's CPU time a call
//!   (/proc/thread-self/schedstat, Linux);
//! - back to back: the same 1000 calls up to the end of the wait (the larger of host and GPU);
//! - one call + wait: the median of 200 calls each followed by a wait (submit to done; `mhc
//!   bench --wall` times the same, with the floors and a same-bytes copy beside it);
//! - batched: the 1000 calls again in `Context::batch`es of 10 (one submission each, as a
//!   decoding step of several layers would be), host time and thread CPU a call.
use std::time::Instant;

use mhc::core::random::{PostInputs, PreInputs, TensorRng};
use mhc::core::{DType, Dims, PostForwardInputs, PreForwardInputs, PreParams, Result};
use mhc::runtime::{Context, GpuTensor, ops};

fn thread_cpu_us() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN) / 1e3
}

fn main() -> Result<()> {
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.adapter_info().name);
    let d: usize = std::env::var("D").ok().and_then(|v| v.parse().ok()).unwrap_or(2560);
    for t in [1usize, 16, 256] {
        let dims = Dims::new(t, 4, d)?;
        let mut rng = TensorRng::new(7);
        let up = |name, h| GpuTensor::upload(&ctx, name, h);
        let pre_host = PreInputs::random(&mut rng, &dims, true);
        let (x, phi, alpha, bias) =
            (up("x", &pre_host.x)?, up("phi", &pre_host.phi)?, up("alpha", &pre_host.alpha)?, up("bias", &pre_host.bias)?);
        let gamma = up("gamma", pre_host.gamma.as_ref().expect("made with gamma"))?;
        let pre_in = PreForwardInputs { x: &x, phi: &phi, alpha: &alpha, bias: &bias, gamma: Some(&gamma) };
        let pre_out = ops::PreForwardOutputs::zeros(&ctx, &dims, false)?;
        let params = PreParams::default();
        let post_host = PostInputs::random(&mut rng, &dims);
        let (y, res, plm, comb) = (
            up("x", &post_host.x)?,
            up("residual", &post_host.residual)?,
            up("post_layer_mix", &post_host.post_layer_mix)?,
            up("comb_res_mix", &post_host.comb_res_mix)?,
        );
        let post_in = PostForwardInputs { x: &y, residual: &res, post_layer_mix: &plm, comb_res_mix: &comb };
        let post_out = GpuTensor::zeros(&ctx, "out", &[t, 4, d], DType::BF16)?;
        let pre = || ops::pre_forward_into(&ctx, &pre_in, &pre_out, &params, None);
        let post = || ops::post_forward_into(&ctx, &post_in, &post_out);
        for (name, call) in [("pre_fwd", &pre as &dyn Fn() -> Result<()>), ("post_fwd", &post)] {
            for _ in 0..200 {
                call()?;
            }
            ctx.wait()?;
            let (start, cpu) = (Instant::now(), thread_cpu_us());
            for _ in 0..1000 {
                call()?;
            }
            let host_us = start.elapsed().as_secs_f64() * 1e3;
            let cpu_us = (thread_cpu_us() - cpu) / 1000.0;
            ctx.wait()?;
            let all_us = start.elapsed().as_secs_f64() * 1e3;
            let (start, cpu) = (Instant::now(), thread_cpu_us());
            for _ in 0..100 {
                ctx.batch(|| (0..10).try_for_each(|_| call()))?;
            }
            let batch_us = start.elapsed().as_secs_f64() * 1e3;
            let batch_cpu_us = (thread_cpu_us() - cpu) / 1000.0;
            ctx.wait()?;
            let mut one = Vec::new();
            for _ in 0..200 {
                let s = Instant::now();
                call()?;
                ctx.wait()?;
                one.push(s.elapsed().as_secs_f64() * 1e6);
            }
            one.sort_by(f64::total_cmp);
            println!(
                "T={t} D={d} {name}: host {host_us:.1} us a call (thread CPU {cpu_us:.1}), back to back {all_us:.1}, one call + wait {:.1}; batched by 10: host {batch_us:.1} (thread CPU {batch_cpu_us:.1})",
                one[100]
            );
        }
    }
    Ok(())
}
