//! `mhc`: the command-line tool. `mhc check` runs every operator on the GPU against the golden
//! math; `mhc run` applies one to a safetensors file; `mhc bench` times them against the
//! device's copy and FMA ceilings; `mhc info` shows the adapters.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

fn main() -> ExitCode {
    // lavapipe prints this when no session runtime dir exists; it is harmless.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: set before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        // --help, --version and a bare `mhc` print the help or version as clap does.
        Err(e) if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        // A usage error is one line like every other error: clap's own rendering adds a blank
        // line, the usage and a hint after the message.
        Err(e) => {
            let text = e.render().to_string();
            let msg: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
            let msg = msg.join(" ");
            eprintln!("mhc: {}", msg.strip_prefix("error: ").unwrap_or(&msg));
            return ExitCode::from(2);
        }
    };
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mhc: {e}");
            ExitCode::FAILURE
        }
    }
}
