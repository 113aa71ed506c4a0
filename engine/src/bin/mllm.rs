//! `mllm`: the serving engine's command line. Until the engine issues land
//! it only reports its version and says so for any other command.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("--version") | Some("-V") | Some("version") => {
            println!("mllm {} (mllm-kernel {})", mllm_engine::version(), mllm_kernel::VERSION);
        }
        Some(cmd) => {
            eprintln!("mllm {cmd}: not implemented yet; the engine is being built (see the project issues). Use `mllm-kernel` for the kernel library.");
            std::process::exit(2);
        }
    }
}
