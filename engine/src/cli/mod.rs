//! The `mllm` command line: argument types (clap derive) and one `run` per subcommand.
//!
//! ```
//! use clap::Parser;
//! use mllm_engine::cli::{Cli, Command};
//! let cli = Cli::try_parse_from(["mllm", "generate", "--prompt", "Hi", "--temperature", "0.7"]).unwrap();
//! let Command::Generate(args) = cli.command else { unreachable!() };
//! assert_eq!((args.prompt.as_str(), args.sampling.temperature, args.max_tokens), ("Hi", 0.7, 128));
//! ```

mod bench;
mod bench_serve;
mod generate;
mod model_args;
mod quantize;
mod record;
mod serve;

use std::sync::OnceLock;

use clap::{Parser, Subcommand};

pub use bench::BenchArgs;
pub use bench_serve::{BenchServeArgs, RequestRate};
pub use generate::{GenerateArgs, SamplingArgs};
pub use model_args::{ModelArgs, WeightDtype};
pub use serve::ServeArgs;

/// `mllm`: the mllm-rs serving engine.
#[derive(Debug, Parser)]
#[command(name = "mllm", version = version_string(), about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text for one prompt, streaming it to stdout (stats on stderr).
    Generate(GenerateArgs),
    /// Time prefill and decode of one static batch of random prompts (CPU backend).
    BenchOneBatch(BenchArgs),
    /// The OpenAI-compatible HTTP server.
    Serve(ServeArgs),
    /// Load-test a running server (throughput, TTFT, TPOT).
    BenchServe(BenchServeArgs),
    /// Write a quantized (compressed-tensors W8A8) copy of a float HF checkpoint.
    Quantize(quantize::QuantizeArgs),
}

/// A command that exists in the interface but not yet in the engine (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("`mllm {command}` is not implemented yet (it comes with a later engine issue); use `mllm generate` or `mllm bench-one-batch`")]
pub struct NotImplemented {
    /// The subcommand.
    pub command: &'static str,
}

/// `mllm <version> (mllm-kernel <version>)`, as `mllm --version` prints it (after `mllm `).
pub fn version_string() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| format!("{} (mllm-kernel {})", crate::version(), mllm_kernel::VERSION))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(&args),
        Command::BenchOneBatch(args) => bench::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::BenchServe(args) => bench_serve::run(&args),
        Command::Quantize(args) => quantize::run(&args),
    }
}

/// The process exit code for an error of [`run`]: 2 for [`NotImplemented`] (like a usage
/// error), else 1.
///
/// ```
/// use mllm_engine::cli::{exit_code, NotImplemented};
/// assert_eq!(exit_code(&NotImplemented { command: "serve" }.into()), 2);
/// assert_eq!(exit_code(&anyhow::anyhow!("boom")), 1);
/// ```
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<NotImplemented>().is_some() {
        2
    } else {
        1
    }
}
