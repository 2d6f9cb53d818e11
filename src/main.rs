//! `mhc`: the command-line tool. `mhc check` runs every operator on the GPU against the golden
//! math; `mhc run` applies one to a safetensors file; `mhc bench` times them against the
//! device's copy and FMA ceilings; `mhc info` shows the adapters.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // lavapipe prints this when no session runtime dir exists; it is harmless.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: set before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mhc: {e}");
            ExitCode::FAILURE
        }
    }
}
