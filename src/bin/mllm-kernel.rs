//! `mllm-kernel`: inspect, clear and rebuild the kernel cache; check and
//! benchmark the kernels.

use clap::Parser;

fn main() {
    let cli = mllm_kernel::cli::Cli::parse();
    match mllm_kernel::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
