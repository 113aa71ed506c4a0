//! `mllm`: the serving engine's command line (see [`mllm_engine::cli`]).

use std::process::ExitCode;

use clap::Parser;
use mllm_engine::cli::{exit_code, run, Cli};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mllm: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
