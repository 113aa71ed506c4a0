//! `mllm-kernel check`: compile every kernel for every target arch.

use std::time::Instant;

use super::target_archs;
use crate::env::KernelEnv;
use crate::jit::{cache::create_private_dir, Arch, JitCache, KernelSpec};
use crate::registry::KernelBuild;

pub fn run(env: &KernelEnv, archs: Vec<Arch>, use_cache: bool) -> anyhow::Result<i32> {
    let archs = target_archs(env, archs)?;
    let mut env = env.clone();
    // A fresh root so every kernel is really compiled, not found cached;
    // with --use-cache the user's MLLM_KERNEL_JIT setting stands.
    let tmp = std::env::temp_dir().join(format!("mllm-kernel-check-{}", std::process::id()));
    if !use_cache {
        create_private_dir(&tmp)?;
        env.cache_dir = Some(tmp.clone());
        env.lock_dir = None;
        env.jit_disabled = false;
    }
    let jit = JitCache::new(env)?;
    let builds = KernelBuild::all();
    let mut failed = 0;
    let total = Instant::now();
    for arch in &archs {
        for build in &builds {
            let start = Instant::now();
            let result = jit.get(&KernelSpec::for_build(*build), *arch);
            let secs = start.elapsed().as_secs_f64();
            match result {
                Ok(a) => println!(
                    "ok     {:<26} {arch:<8} {secs:>6.1}s {}",
                    build.to_string(),
                    if a.compiled { "compiled" } else { "cached" }
                ),
                Err(e) => {
                    failed += 1;
                    println!("FAILED {:<26} {arch:<8} {secs:>6.1}s\n{e}", build.to_string());
                }
            }
        }
    }
    if !use_cache && failed == 0 {
        let _ = std::fs::remove_dir_all(&tmp);
    } else if !use_cache {
        println!("build logs kept under {}", tmp.display());
    }
    let n = archs.len() * builds.len();
    println!(
        "{} of {n} kernel builds ok in {:.1}s",
        n - failed,
        total.elapsed().as_secs_f64()
    );
    Ok(if failed == 0 { 0 } else { 1 })
}
