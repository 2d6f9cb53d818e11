mod bench;
mod check;
mod info;
mod run;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mhc::core::{Op, PreParams, SinkhornParams};
use mhc::exec::Options;
use mhc::runtime::Context;

#[derive(Parser)]
#[command(name = "mhc", version, about = "DeepSeek mHC operators on any GPU through wgpu")]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every adapter wgpu sees, the one mhc picks, its features and limits.
    Info,
    /// Every operator, forward and backward, on random inputs against the golden math.
    Check(check::CheckArgs),
    /// Apply one operator to the tensors of a safetensors file.
    Run(run::RunArgs),
    /// GPU time of each operator against the copy and FMA ceilings of the device.
    Bench(bench::BenchArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The default wgpu adapter (WGPU_ADAPTER_NAME / WGPU_BACKEND honoured).
    Gpu,
    /// The golden f64 reference on the CPU.
    Cpu,
}

/// The scalar options of SPEC.md section 6.
#[derive(Args, Clone, Copy)]
pub struct OpOptions {
    #[arg(long, default_value_t = PreParams::default().norm_eps)]
    norm_eps: f32,
    #[arg(long, default_value_t = PreParams::default().hc_eps)]
    hc_eps: f32,
    #[arg(long, default_value_t = PreParams::default().post_mult)]
    post_mult: f32,
    #[arg(long, default_value_t = SinkhornParams::default().iters)]
    sinkhorn_iters: u32,
    /// At least 1e-30 (see the README)
    #[arg(long, default_value_t = SinkhornParams::default().eps)]
    sinkhorn_eps: f32,
}

impl OpOptions {
    fn options(self) -> Options {
        Options {
            pre: PreParams { norm_eps: self.norm_eps, hc_eps: self.hc_eps, post_mult: self.post_mult },
            sinkhorn: SinkhornParams { iters: self.sinkhorn_iters, eps: self.sinkhorn_eps },
        }
    }
}

pub fn parse_op(s: &str) -> Result<Op, String> {
    Op::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        format!("unknown operator {s:?}; one of {}", names.join(", "))
    })
}

pub type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

fn context() -> CliResult<Context> {
    Ok(Context::new()?)
}

pub fn run(cli: Cli) -> CliResult<ExitCode> {
    match cli.cmd {
        Cmd::Info => info::info(),
        Cmd::Check(a) => check::check(a),
        Cmd::Run(a) => run::run(a),
        Cmd::Bench(a) => bench::bench(a),
    }
}
