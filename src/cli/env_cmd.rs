//! `mllm-kernel env`.

use crate::env::KernelEnv;
use crate::jit::{self, ThirdParty};

pub fn run(env: &KernelEnv) -> anyhow::Result<i32> {
    let source = |set: bool| if set { "from environment" } else { "default" };
    match env.resolved_cuda_home() {
        Some(h) => println!("CUDA home:      {} ({})", h.display(), source(env.cuda_home.is_some())),
        None => println!("CUDA home:      not found (run scripts/setup.sh or set CUDA_HOME)"),
    }
    match jit::find_nvcc(env).and_then(|p| Ok((jit::nvcc_version(&p)?, p))) {
        Ok((v, p)) => println!("nvcc:           {} [{v}]", p.display()),
        Err(e) => println!("nvcc:           unavailable: {e}"),
    }
    match jit::nvrtc_version(env) {
        Ok(v) => println!("NVRTC:          {v}"),
        Err(e) => println!("NVRTC:          unavailable: {e}"),
    }
    for (tp, home, set) in [
        (
            ThirdParty::Cutlass,
            env.resolved_cutlass_home(),
            env.cutlass_home.is_some(),
        ),
        (
            ThirdParty::FlashInfer,
            env.resolved_flashinfer_home(),
            env.flashinfer_home.is_some(),
        ),
    ] {
        let version = jit::third_party_version(env, tp).unwrap_or_else(|_| "not found".into());
        println!(
            "{:<15} {} ({}) version {version}",
            format!("{tp:?}:"),
            home.display(),
            source(set)
        );
    }
    let root = env.resolved_cache_root();
    let state = match jit::CacheRoot::open(&root) {
        Ok(r) if r.writable => "ok".to_string(),
        Ok(_) => "read-only".to_string(),
        Err(e) => format!("unusable: {e}"),
    };
    println!(
        "cache root:     {} ({}; {state})",
        root.display(),
        source(env.cache_dir.is_some())
    );
    if let Some(l) = &env.lock_dir {
        println!("lock dir:       {}", l.display());
    }
    println!(
        "JIT:            {}",
        if env.jit_disabled {
            "disabled (MLLM_KERNEL_JIT=0)"
        } else {
            "enabled"
        }
    );
    println!("AOT kernels:    {}", aot_summary());
    match crate::device::list_devices() {
        Ok(devs) => {
            for d in devs {
                let (ma, mi) = d.compute_capability;
                println!(
                    "GPU {}:          {} (compute capability {ma}.{mi}, {}, {:.1} GiB, driver CUDA {})",
                    d.ordinal,
                    d.name,
                    jit::Arch::for_device(ma, mi),
                    d.total_memory as f64 / (1u64 << 30) as f64,
                    d.driver_version
                );
            }
        }
        Err(e) => println!("GPU:            no GPU ({e})"),
    }
    Ok(0)
}

#[cfg(feature = "aot")]
fn aot_summary() -> String {
    format!("built for {}", crate::registry::AOT_ARCHS.join(", "))
}

#[cfg(not(feature = "aot"))]
fn aot_summary() -> String {
    "none (build with --features aot)".into()
}
