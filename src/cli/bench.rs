use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mhc::core::random::{TensorRng, seed_from_env};
use mhc::core::{DType, Dims, Op, PostForwardInputs, PreBackwardInputs, PreForwardInputs, SinkhornParams};
use mhc::exec::Options;
use mhc::runtime::{Context, GpuTensor, PassTime, ceilings, ops};
use serde_json::json;

use super::{CliResult, OpOptions, context, parse_op};

#[derive(Args)]
pub struct BenchArgs {
    /// Operators to time (repeatable; all by default).
    #[arg(long = "op", value_parser = parse_op)]
    ops: Vec<Op>,
    /// T,n,D (repeatable). Defaults: 4096,4,2560 8192,4,2560 16384,4,4096 8192,4,7168.
    #[arg(long = "shape", value_parser = parse_shape)]
    shapes: Vec<Dims>,
    /// Timed runs of each operator; the median is reported. A set of runs whose first quarter
    /// ran slow (median over 1.25x the last quarter's) is timed again, up to three sets.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Untimed runs of each operator before its timed runs: one, which compiles the kernels,
    /// then batches of 8, at least one, for at least this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// Also time each stage (entry point) of an operator, with timestamps between its
    /// dispatches; the stage medians are printed under the table and written to the JSON.
    #[arg(long)]
    stages: bool,
    /// Time each call from the host instead, submitted and then waited for: encoding,
    /// submission and the wait included, as a caller at decode sizes (a few tokens a call)
    /// sees it. The same-bytes copy is timed the same way; the ceilings stay on timestamps.
    #[arg(long, conflicts_with = "stages")]
    wall: bool,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    opts: OpOptions,
}

fn parse_shape(s: &str) -> Result<Dims, String> {
    let v: Vec<usize> =
        s.split(',').map(|p| p.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|e| format!("{s:?}: {e}"))?;
    match v[..] {
        [t, n, d] => Dims::new(t, n, d).map_err(|e| e.to_string()),
        _ => Err(format!("{s:?}: expected T,n,D")),
    }
}

const DEFAULT_SHAPES: [(usize, usize, usize); 4] =
    [(4096, 4, 2560), (8192, 4, 2560), (16384, 4, 4096), (8192, 4, 7168)];
/// Warm-up runs go in batches of this many between waits, so that the GPU stays busy.
const WARMUP_BATCH: usize = 8;
/// Inputs are rotated over copies holding at least this many bytes, so that no timed run
/// finds its inputs in the GPU's cache from the run before.
const ROTATE_BYTES: u64 = 256 << 20;
const MAX_COPIES: usize = 16;

/// How a run is timed.
#[derive(Clone, Copy, PartialEq)]
enum Clock {
    /// The GPU's time, from timestamp queries around each call's pass.
    Timestamps,
    /// The host's time from before a call to the end of a wait after it.
    Wall,
}

impl Clock {
    fn describe(self) -> &'static str {
        match self {
            Clock::Timestamps => "timestamp queries",
            Clock::Wall => "host wall clock, each call submitted and waited for",
        }
    }
}

/// How many timed runs, after how long a warm-up, on which clock.
#[derive(Clone, Copy)]
struct Runs {
    iters: usize,
    warmup: Duration,
    stages: bool,
    clock: Clock,
}

/// Sets of timed runs `time` takes at most: a set with a slow start is timed again.
const TIMED_SETS: usize = 3;
/// A set starts slow where its first quarter's median is over this times its last quarter's.
const SLOW_START: f64 = 1.25;

/// The timed runs `time` reports: the last set taken.
struct Timed {
    runs: Vec<PassTime>,
    /// How many sets were taken (more than one where the earlier ones started slow).
    sets: usize,
    /// Whether the set reported started slow too (its median may then be too high).
    slow_start: bool,
}

/// The time of each of `runs.iters` calls of `f(i)` on `runs.clock`. Before timing, `f` runs
/// once, which compiles the pipelines, and then in batches of `WARMUP_BATCH`, at least one,
/// for at least `runs.warmup`: on NVIDIA's Vulkan driver a new pipeline ran 2-5x slower for
/// its first ~200 ms of GPU work (docs/PERFORMANCE.md), which a program that runs its kernels
/// for long never sees. The compilation is left out of that time because it can take all of
/// it (1.7 s for pre backward at n = 6 with a cold driver cache on an H100), and the GPU's
/// clocks drop while it idles. A set of timed runs that still starts slow (`slow_start`) is
/// timed again, up to `TIMED_SETS` sets.
fn time(ctx: &Context, runs: Runs, mut f: impl FnMut(usize) -> mhc::core::Result<()>) -> CliResult<Timed> {
    f(0)?;
    ctx.wait()?;
    let mut i = 1;
    let start = Instant::now();
    loop {
        for _ in 0..WARMUP_BATCH {
            f(i)?;
            i += 1;
        }
        ctx.wait()?;
        if start.elapsed() >= runs.warmup {
            break;
        }
    }
    steady_set(|| {
        if runs.clock == Clock::Timestamps {
            // `bench` holds iters to `max_timed_passes`, far below u32's range.
            ctx.start_timing(runs.iters as u32, runs.stages)?;
            for _ in 0..runs.iters {
                f(i)?;
                i += 1;
            }
            Ok(ctx.finish_timing()?)
        } else {
            let mut set = Vec::with_capacity(runs.iters);
            for _ in 0..runs.iters {
                let s = Instant::now();
                f(i)?;
                i += 1;
                ctx.wait()?;
                set.push(PassTime { seconds: s.elapsed().as_secs_f64(), stages: Vec::new() });
            }
            Ok(set)
        }
    })
}

/// Sets of timed runs from `take` until one does not start slow, or `TIMED_SETS` were taken.
fn steady_set(mut take: impl FnMut() -> CliResult<Vec<PassTime>>) -> CliResult<Timed> {
    let mut sets = 0;
    loop {
        sets += 1;
        let set = take()?;
        let slow = slow_start(&seconds(&set));
        if !slow || sets == TIMED_SETS {
            return Ok(Timed { runs: set, sets, slow_start: slow });
        }
    }
}

/// Whether the first quarter of a set of run times has a median above `SLOW_START` times the
/// last quarter's. On an H100 the first 8-69 timed runs of a process at times ran 2.9-5.1x slower
/// than the rest, over half of 100 runs in some, which made their median that slow time
/// (docs/PERFORMANCE.md, "Slow processes and slow starts"). Leaving the compilation out of
/// the warm-up stopped that in the processes timed since; this catches what it may not.
fn slow_start(secs: &[f64]) -> bool {
    let q = secs.len() / 4;
    q >= 2 && median(secs[..q].to_vec()) > SLOW_START * median(secs[secs.len() - q..].to_vec())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn seconds(runs: &[PassTime]) -> Vec<f64> {
    runs.iter().map(|r| r.seconds).collect()
}

/// Each stage's entry point and median seconds over `runs` (every call records the same stages).
fn stage_medians(runs: &[PassTime]) -> Vec<(&'static str, f64)> {
    let Some(first) = runs.first() else { return Vec::new() };
    first
        .stages
        .iter()
        .enumerate()
        .map(|(i, &(name, _))| (name, median(runs.iter().filter_map(|r| r.stages.get(i).map(|s| s.1)).collect())))
        .collect()
}

struct Ceilings {
    bytes_per_s: f64,
    flops_per_s: f64,
}

/// Timestamps where the adapter has them: a ceiling is the GPU's rate, whatever clock times
/// the operators.
fn ceiling_clock(ctx: &Context) -> Clock {
    if ctx.capabilities().timestamps { Clock::Timestamps } else { Clock::Wall }
}

fn measure_ceilings(ctx: &Context, runs: Runs) -> CliResult<Ceilings> {
    let bytes = ctx.max_binding_size().min(1 << 30) / 16 * 16;
    let cpu = ctx.adapter_info().device_type == mhc::runtime::wgpu::DeviceType::Cpu;
    let bytes = if cpu { bytes.min(64 << 20) } else { bytes };
    let src = GpuTensor::zeros(ctx, "copy src", &[bytes as usize / 4], DType::F32)?;
    let dst = GpuTensor::zeros(ctx, "copy dst", &[bytes as usize / 4], DType::F32)?;
    let runs = Runs { stages: false, clock: ceiling_clock(ctx), ..runs };
    let copy = median(seconds(&time(ctx, runs, |_| ceilings::copy(ctx, &src, &dst))?.runs));
    let (groups, steps) = if cpu { (16, 256) } else { (8192, 4096) };
    let mut flops = 0;
    let fma = time(ctx, Runs { iters: runs.iters.min(20), ..runs }, |_| {
        flops = ceilings::fma(ctx, groups, steps)?;
        Ok(())
    })?;
    let fma = median(seconds(&fma.runs));
    Ok(Ceilings { bytes_per_s: 2.0 * bytes as f64 / copy, flops_per_s: flops as f64 / fma })
}

/// Seconds the copy kernel takes to move `bytes` (read + write, as an operator's bytes are
/// counted): the reference for what a pass of that size can reach, launch and tail included,
/// where the ceiling's 1 GiB copy hides them. Sources rotate like the operators' inputs. None
/// where half the bytes exceed one binding.
fn same_bytes_copy(ctx: &Context, bytes: u64, runs: Runs) -> CliResult<Option<f64>> {
    let half = (bytes / 2).div_ceil(16).max(1) as usize * 16;
    if half as u64 > ctx.max_binding_size() {
        return Ok(None);
    }
    let n = n_copies(half as u64);
    let src =
        (0..n).map(|_| GpuTensor::zeros(ctx, "copy src", &[half / 4], DType::F32)).collect::<Result<Vec<_>, _>>()?;
    let dst = GpuTensor::zeros(ctx, "copy dst", &[half / 4], DType::F32)?;
    // The copy pipeline is already warm from the ceilings.
    let runs = Runs { stages: false, warmup: runs.warmup.min(Duration::from_millis(100)), ..runs };
    Ok(Some(median(seconds(&time(ctx, runs, |i| ceilings::copy(ctx, &src[i % n], &dst))?.runs))))
}

/// `copies` uploads of the same host tensor.
fn copies(ctx: &Context, name: &str, host: &mhc::core::HostTensor, copies: usize) -> CliResult<Vec<GpuTensor>> {
    Ok((0..copies).map(|_| GpuTensor::upload(ctx, name, host)).collect::<Result<_, _>>()?)
}

fn n_copies(bytes_per_copy: u64) -> usize {
    (ROTATE_BYTES.div_ceil(bytes_per_copy.max(1)) as usize).clamp(1, MAX_COPIES)
}

/// Times one operator at one shape; `fused` times mhc_pre forward with its fused Sinkhorn.
fn bench_op(ctx: &Context, op: Op, dims: &Dims, fused: bool, runs: Runs, opts: &Options) -> CliResult<Timed> {
    let mut rng = TensorRng::new(seed_from_env());
    let (t, n, d, m, k) = (dims.t, dims.n, dims.d, dims.m(), dims.k());
    let up = |name: &str, h: &mhc::core::HostTensor| GpuTensor::upload(ctx, name, h);
    let s = (3.0 / k as f32).sqrt();
    let phi = up("phi", &rng.f32(&[m, k], -s, s))?;
    let alpha = up("alpha", &rng.f32(&[3], 0.8, 1.2))?;
    let bias = up("bias", &rng.f32(&[m], -0.5, 0.5))?;
    let gamma = up("gamma", &rng.f32(&[n, d], 0.5, 1.5))?;
    let per_token = |rng: &mut TensorRng, name: &str, tail: &[usize], dtype: DType| -> CliResult<GpuTensor> {
        let shape: Vec<usize> = std::iter::once(t).chain(tail.iter().copied()).collect();
        Ok(up(name, &if dtype == DType::BF16 { rng.bf16(&shape, -2.0, 2.0) } else { rng.f32(&shape, 0.0, 1.0) })?)
    };
    let sk = opts.sinkhorn;
    let times = match op {
        Op::PreForward => {
            let x = copies(ctx, "x", &rng.bf16(&[t, n, d], -2.0, 2.0), n_copies((t * k * 2) as u64))?;
            let out = ops::PreForwardOutputs::zeros(ctx, dims, fused)?;
            let sk = fused.then_some(&sk);
            time(ctx, runs, |i| {
                let inp =
                    PreForwardInputs { x: &x[i % x.len()], phi: &phi, alpha: &alpha, bias: &bias, gamma: Some(&gamma) };
                ops::pre_forward_into(ctx, &inp, &out, &opts.pre, sk)
            })?
        }
        Op::PreBackward => {
            let r = n_copies((t * (2 * k + d) * 2) as u64);
            let x = copies(ctx, "x", &rng.bf16(&[t, n, d], -2.0, 2.0), r)?;
            let dh_in = copies(ctx, "dh_in", &rng.bf16(&[t, d], -1.0, 1.0), r)?;
            let fwd = PreForwardInputs { x: &x[0], phi: &phi, alpha: &alpha, bias: &bias, gamma: Some(&gamma) };
            let saved = ops::pre_forward(ctx, &fwd, &opts.pre, None)?;
            let dh_post = per_token(&mut rng, "dh_post", &[n], DType::F32)?;
            let dh_res = per_token(&mut rng, "dh_res", &[n, n], DType::F32)?;
            let out = ops::PreBackwardOutputs::zeros(ctx, dims)?;
            time(ctx, runs, |i| {
                let inp = PreBackwardInputs {
                    fwd: PreForwardInputs { x: &x[i % r], ..fwd },
                    inv_rms: &saved.inv_rms,
                    h_mix: &saved.h_mix,
                    h_pre: &saved.h_pre,
                    h_post: &saved.h_post,
                    dh_in: &dh_in[i % r],
                    dh_post: &dh_post,
                    dh_res: &dh_res,
                };
                ops::pre_backward_into(ctx, &inp, &out, &opts.pre)
            })?
        }
        Op::SinkhornForward | Op::SinkhornBackward => {
            let r = n_copies((t * n * n * 8) as u64);
            let logits = copies(ctx, "logits", &rng.f32(&[t, n, n], -1.0, 1.0), r)?;
            let d_out = per_token(&mut rng, "d_out", &[n, n], DType::F32)?;
            let out = GpuTensor::zeros(ctx, "out", &[t, n, n], DType::F32)?;
            let sk: SinkhornParams = sk;
            time(ctx, runs, |i| {
                if op == Op::SinkhornForward {
                    ops::sinkhorn_forward_into(ctx, &logits[i % r], &out, &sk)
                } else {
                    ops::sinkhorn_backward_into(ctx, &logits[i % r], &d_out, &out, &sk)
                }
            })?
        }
        Op::PostForward | Op::PostBackward => {
            let r = n_copies((t * (3 * k + 2 * d) * 2) as u64);
            let x = copies(ctx, "x", &rng.bf16(&[t, d], -2.0, 2.0), r)?;
            let residual = copies(ctx, "residual", &rng.bf16(&[t, n, d], -2.0, 2.0), r)?;
            let d_out = copies(ctx, "d_out", &rng.bf16(&[t, n, d], -1.0, 1.0), r)?;
            let plm = per_token(&mut rng, "post_layer_mix", &[n], DType::F32)?;
            let comb = per_token(&mut rng, "comb_res_mix", &[n, n], DType::F32)?;
            let out = GpuTensor::zeros(ctx, "out", &[t, n, d], DType::BF16)?;
            let grads = ops::PostBackwardOutputs::zeros(ctx, dims, &[t, n])?;
            time(ctx, runs, |i| {
                let inp = PostForwardInputs {
                    x: &x[i % r],
                    residual: &residual[i % r],
                    post_layer_mix: &plm,
                    comb_res_mix: &comb,
                };
                if op == Op::PostForward {
                    ops::post_forward_into(ctx, &inp, &out)
                } else {
                    ops::post_backward_into(ctx, &inp, &d_out[i % r], &grads)
                }
            })?
        }
    };
    Ok(times)
}

pub fn bench(a: BenchArgs) -> CliResult<ExitCode> {
    let most = mhc::runtime::max_timed_passes(a.stages);
    if a.iters == 0 || a.iters > most as usize {
        let with = if a.stages { "with" } else { "without" };
        return Err(format!("--iters must be 1 to {most} {with} --stages (the timestamps one query set holds)").into());
    }
    let ctx = context()?;
    let info = ctx.adapter_info().clone();
    let clock = if a.wall { Clock::Wall } else { ceiling_clock(&ctx) };
    let timing = match (clock, a.wall) {
        (Clock::Wall, false) => format!("{} (no timestamp queries on this adapter)", clock.describe()),
        _ => clock.describe().to_string(),
    };
    println!("device: {} ({:?}), driver {} {}", info.name, info.backend, info.driver, info.driver_info);
    println!("timing: {timing}, median of {} runs after a warm-up of {} ms", a.iters, a.warmup_ms);
    let coop = ctx.capabilities().cooperative_matrix;
    if coop {
        println!("mhc_pre forward's projection on f16 cooperative matrices (MHC_COOP=1)");
    }
    if a.stages && !ctx.capabilities().stage_timestamps {
        return Err(format!("--stages: {} has no timestamp queries inside passes", info.name).into());
    }
    let runs = Runs { iters: a.iters, warmup: Duration::from_millis(a.warmup_ms), stages: a.stages, clock };
    let opts = a.opts.options();
    let ops: Vec<Op> = if a.ops.is_empty() { Op::ALL.to_vec() } else { a.ops.clone() };
    let shapes: Vec<Dims> = if a.shapes.is_empty() {
        DEFAULT_SHAPES.iter().map(|&(t, n, d)| Dims::new(t, n, d)).collect::<Result<_, _>>()?
    } else {
        a.shapes.clone()
    };
    // Before any host data is made: a shape past the device's buffers would otherwise first
    // fill the host's memory.
    let max_buffer = ctx.device().limits().max_buffer_size;
    for dims in &shapes {
        let widest = (dims.t * dims.k() * 2).max(dims.t * dims.m() * 4) as u64;
        if widest > max_buffer {
            return Err(format!(
                "--shape {},{},{}: its largest tensor takes {widest} bytes, {} allows {max_buffer} in one buffer",
                dims.t, dims.n, dims.d, info.name
            )
            .into());
        }
    }
    // mhc_pre forward is also timed with its fused Sinkhorn, the path a model takes.
    let mut jobs: Vec<(Op, bool)> = Vec::new();
    for &op in &ops {
        jobs.push((op, false));
        if op == Op::PreForward {
            jobs.push((op, true));
        }
    }
    let bar = ProgressBar::new((jobs.len() * shapes.len() + 1) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("valid template"));
    bar.set_message("copy and FMA ceilings");
    let ceil = measure_ceilings(&ctx, runs)?;
    bar.inc(1);
    let mut rows = Vec::new();
    // Same-bytes copy times by byte count (an operator with and without Sinkhorn can share one).
    let mut copy_us: HashMap<u64, Option<f64>> = HashMap::new();
    for dims in &shapes {
        for &(op, fused) in &jobs {
            let name = if fused { "pre-forward+sinkhorn".to_string() } else { op.name().to_string() };
            bar.set_message(format!("{name} {},{},{}", dims.t, dims.n, dims.d));
            let timed = bench_op(&ctx, op, dims, fused, runs, &opts)?;
            let run_secs = seconds(&timed.runs);
            let secs = median(run_secs.clone());
            let mut cost = op.cost(dims, opts.sinkhorn.iters);
            if fused {
                let sk = Op::SinkhornForward.cost(dims, opts.sinkhorn.iters);
                cost.flops += sk.flops;
                cost.bytes += dims.t as u64 * (dims.n * dims.n) as u64 * 4;
            }
            let mem_floor = cost.bytes as f64 / ceil.bytes_per_s;
            let fma_floor = cost.flops as f64 / ceil.flops_per_s;
            let floor = mem_floor.max(fma_floor);
            let copy = match copy_us.get(&cost.bytes) {
                Some(&c) => c,
                None => {
                    let c = same_bytes_copy(&ctx, cost.bytes, runs)?;
                    copy_us.insert(cost.bytes, c);
                    c
                }
            };
            rows.push(json!({
                "op": name, "T": dims.t, "n": dims.n, "D": dims.d,
                "us": secs * 1e6, "bytes": cost.bytes, "flops": cost.flops,
                "gb_per_s": cost.bytes as f64 / secs / 1e9,
                "memory_floor_us": mem_floor * 1e6, "arith_floor_us": fma_floor * 1e6,
                "floor_us": floor * 1e6, "x_floor": secs / floor,
                "same_bytes_copy_us": copy.map(|c| c * 1e6), "x_copy": copy.map(|c| secs / c),
                "bound": if mem_floor >= fma_floor { "memory" } else { "arithmetic" },
                "runs_us": run_secs.iter().map(|s| (s * 1e7).round() / 10.0).collect::<Vec<_>>(),
                "timed_sets": timed.sets, "slow_start": timed.slow_start,
                "stages": stage_medians(&timed.runs).iter().map(|(e, s)| json!({"entry": e, "us": s * 1e6})).collect::<Vec<_>>(),
            }));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    println!(
        "ceilings: copy {:.1} GB/s (read + write), f32 FMA {:.2} TFLOP/s",
        ceil.bytes_per_s / 1e9,
        ceil.flops_per_s / 1e12
    );
    println!(
        "{:<22} {:>16} {:>10} {:>12} {:>11} {:>9} {:>10} {:>8} {:>8} {:>7}  bound",
        "operator", "T,n,D", "us", "MB moved", "GFLOP", "GB/s", "floor us", "x floor", "copy us", "x copy"
    );
    for r in &rows {
        println!(
            "{:<22} {:>16} {:>10.1} {:>12.2} {:>11.3} {:>9.1} {:>10.1} {:>8.2} {:>8} {:>7}  {}",
            r["op"].as_str().unwrap_or(""),
            format!("{},{},{}", r["T"], r["n"], r["D"]),
            r["us"].as_f64().unwrap_or(0.0),
            r["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            r["flops"].as_f64().unwrap_or(0.0) / 1e9,
            r["gb_per_s"].as_f64().unwrap_or(0.0),
            r["floor_us"].as_f64().unwrap_or(0.0),
            r["x_floor"].as_f64().unwrap_or(0.0),
            r["same_bytes_copy_us"].as_f64().map_or("-".into(), |c| format!("{c:.1}")),
            r["x_copy"].as_f64().map_or("-".into(), |c| format!("{c:.2}")),
            r["bound"].as_str().unwrap_or(""),
        );
    }
    for r in rows.iter().filter(|r| r["timed_sets"].as_u64().is_some_and(|s| s > 1)) {
        println!(
            "{} {},{},{}: timed in {} sets; a set whose first quarter of runs had a median over {SLOW_START}x its last \
             quarter's was timed again{}",
            r["op"].as_str().unwrap_or(""),
            r["T"],
            r["n"],
            r["D"],
            r["timed_sets"],
            if r["slow_start"].as_bool() == Some(true) { ", and the last, reported, started slow too" } else { "" },
        );
    }
    if a.stages {
        println!("stages (median us; each ends at a timestamp after its dispatches):");
        for r in &rows {
            let stages: Vec<String> = r["stages"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| format!("{} {:.1}", s["entry"].as_str().unwrap_or(""), s["us"].as_f64().unwrap_or(0.0)))
                .collect();
            println!(
                "{:<22} {:>16}  {}",
                r["op"].as_str().unwrap_or(""),
                format!("{},{},{}", r["T"], r["n"], r["D"]),
                stages.join(", ")
            );
        }
    }
    if let Some(path) = &a.json {
        let doc = json!({
            "device": info.name, "backend": format!("{:?}", info.backend), "driver": format!("{} {}", info.driver, info.driver_info),
            "timing": timing, "iters": a.iters, "warmup_ms": a.warmup_ms, "cooperative_matrix": coop,
            "copy_bytes_per_s": ceil.bytes_per_s, "fma_flops_per_s": ceil.flops_per_s,
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mhc::runtime::PassTime;

    use super::{Clock, Runs, TIMED_SETS, slow_start, steady_set, time};

    fn runs(slow: usize, fast: usize) -> Vec<f64> {
        level_runs(5.0, slow, fast)
    }

    fn level_runs(level: f64, slow: usize, fast: usize) -> Vec<f64> {
        std::iter::repeat_n(level, slow).chain(std::iter::repeat_n(1.0, fast)).collect()
    }

    #[test]
    fn slow_start_is_a_slow_first_quarter() {
        // Calls 176-178: 44 of 100 runs, and 69 of 400, ran 4.6-4.8x slow at the start.
        assert!(slow_start(&runs(44, 56)));
        assert!(slow_start(&runs(69, 331)));
        assert!(slow_start(&runs(60, 40)));
        // Too few to move the first quarter's median, or none; steady noise; a slow end.
        assert!(!slow_start(&runs(8, 392)));
        assert!(!slow_start(&runs(0, 100)));
        assert!(!slow_start(&(0..100).map(|i| 1.0 + 0.2 * ((i * 7) % 10) as f64 / 10.0).collect::<Vec<_>>()));
        assert!(!slow_start(&runs(0, 75).into_iter().chain(runs(25, 0)).collect::<Vec<_>>()));
        // Under 8 runs a quarter is too few to judge.
        assert!(!slow_start(&runs(4, 3)));
        // The bound is 1.25x.
        assert!(slow_start(&level_runs(1.3, 30, 70)));
        assert!(!slow_start(&level_runs(1.2, 30, 70)));
    }

    #[test]
    fn a_set_that_starts_slow_is_taken_again() {
        let set = |slow: usize| -> Vec<PassTime> {
            runs(slow, 100 - slow).into_iter().map(|seconds| PassTime { seconds, stages: Vec::new() }).collect()
        };
        // Slow, then steady: the second set is reported.
        let mut taken = 0;
        let t = steady_set(|| {
            taken += 1;
            Ok(set(if taken == 1 { 44 } else { 0 }))
        })
        .unwrap();
        assert_eq!((t.sets, t.slow_start, t.runs[0].seconds), (2, false, 1.0));
        // Never steady: the last set is reported, marked.
        let t = steady_set(|| Ok(set(60))).unwrap();
        assert_eq!((t.sets, t.slow_start), (TIMED_SETS, true));
        // Steady at once: one set.
        let t = steady_set(|| Ok(set(3))).unwrap();
        assert_eq!((t.sets, t.slow_start), (1, false));
    }

    #[test]
    fn the_wall_clock_times_the_host_side_of_a_call() {
        // A call that only sleeps on the host: the wall clock counts the sleep, where GPU
        // timestamps would count no work at all.
        let ctx = mhc::runtime::Context::new().unwrap();
        let runs = Runs { iters: 4, warmup: Duration::ZERO, stages: false, clock: Clock::Wall };
        let sleep = Duration::from_millis(3);
        let timed = time(&ctx, runs, |_| {
            std::thread::sleep(sleep);
            Ok(())
        })
        .unwrap();
        assert_eq!(timed.runs.len(), 4);
        assert!(
            timed.runs.iter().all(|r| r.seconds >= sleep.as_secs_f64()),
            "{:?}",
            timed.runs.iter().map(|r| r.seconds).collect::<Vec<_>>()
        );
    }
}
