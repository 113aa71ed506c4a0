//! `mllm-kernel`: inspect, clear and rebuild the kernel cache; check and
//! benchmark the kernels.

use clap::Parser;

fn main() {
    // Die quietly on a closed pipe (`mllm-kernel cache list | head`) like
    // other Unix tools, instead of panicking inside println!.
    // SAFETY: restores the default disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = mllm_kernel::cli::Cli::parse();
    match mllm_kernel::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
