//! `mllm-kernel check`: compile every kernel for every target arch.

use std::time::Instant;

use super::target_archs;
use crate::env::KernelEnv;
use crate::jit::{cache::create_private_dir, Arch, Compiler, JitCache, KernelSpec, ThirdParty};
use crate::registry::KernelBuild;

const CONCURRENT_BUILDS: usize = 2;

pub fn run(env: &KernelEnv, archs: Vec<Arch>, use_cache: bool, kernels: &[String]) -> anyhow::Result<i32> {
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
    let jit = JitCache::new(env)?.quiet();
    // (build, named explicitly with its variant)
    let builds: Vec<(KernelBuild, bool)> = if kernels.is_empty() {
        KernelBuild::all().into_iter().map(|b| (b, false)).collect()
    } else {
        let mut b = Vec::new();
        for k in kernels {
            let explicit = k.contains('[');
            b.extend(KernelBuild::parse(k)?.into_iter().map(|x| (x, explicit)));
        }
        b
    };
    // Every (arch, build) pair that has code; CUTLASS 3.x builds only for
    // sm_90a; one representative attention variant per arch unless named.
    let mut jobs: Vec<(Arch, KernelBuild)> = archs
        .iter()
        .flat_map(|a| builds.iter().map(move |(b, explicit)| (*a, *b, *explicit)))
        .filter(|(a, b, explicit)| if *explicit { b.targets(*a) } else { b.checked_on(*a) })
        .map(|(a, b, _)| (a, b))
        .collect();
    // Longest first, so the slowest build does not start last: on a 2-core CI
    // machine the CUTLASS 3.x GEMM alone takes ~450 s of the check's ~940.
    jobs.sort_by_key(|(arch, build)| (expected_cost_rank(build), std::cmp::Reverse(*arch)));
    let total = Instant::now();
    // Two nvcc at once: a CUTLASS 3.x translation unit peaks near 3 GB and
    // CI machines have 2 cores, so more only thrashes.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..CONCURRENT_BUILDS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((arch, build)) = jobs.get(i) else { break };
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
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        println!("FAILED {:<26} {arch:<8} {secs:>6.1}s\n{e}", build.to_string());
                    }
                }
            });
        }
    });
    let failed = failed.into_inner();
    if !use_cache && failed == 0 {
        let _ = std::fs::remove_dir_all(&tmp);
    } else if !use_cache {
        println!("build logs kept under {}", tmp.display());
    }
    let n = jobs.len();
    println!(
        "{} of {n} kernel builds ok in {:.1}s",
        n - failed,
        total.elapsed().as_secs_f64()
    );
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Builds in the order of their usual compile time: CUTLASS (minutes), then
/// FlashInfer (~35 s), other nvcc builds, and NVRTC ones (about a second).
/// Newer archs sort first within a rank, since their CUTLASS kernels are the
/// heavier ones (`Reverse(arch)` at the call site).
fn expected_cost_rank(build: &KernelBuild) -> u8 {
    let third_party = build.id.third_party();
    if third_party.contains(&ThirdParty::Cutlass) {
        0
    } else if third_party.contains(&ThirdParty::FlashInfer) {
        1
    } else if build.id.compiler() == Compiler::Nvcc {
        2
    } else {
        3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutlass_builds_rank_before_flashinfer_nvcc_and_nvrtc() {
        let rank = |name: &str| expected_cost_rank(&KernelBuild::parse(name).unwrap()[0]);
        assert_eq!(rank("int8_scaled_mm[sm90]"), 0);
        assert_eq!(rank("attention[d128_bf16]"), 1);
        assert_eq!(rank("per_token_quant_int8"), 2);
        assert_eq!(rank("rms_norm[f32]"), 3);
    }
}
