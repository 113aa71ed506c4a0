//! `mllm-kernel cache ...`.

use std::time::Duration;

use super::{display, human_bytes, target_archs, CacheAction};
use crate::env::KernelEnv;
use crate::jit::{manage, CacheRoot, JitCache, KernelSpec};
use crate::registry::KernelBuild;

pub fn run(env: &KernelEnv, action: CacheAction) -> anyhow::Result<i32> {
    match action {
        CacheAction::Path => {
            println!("{}", env.resolved_cache_root().display());
            Ok(0)
        }
        CacheAction::List { json } => list(env, json),
        CacheAction::Clear { kernel } => {
            let root = CacheRoot::open(&env.resolved_cache_root())?;
            let n = manage::clear(&root, kernel.as_deref())?;
            println!("removed {n} item(s) from {}", display(&root.path));
            Ok(0)
        }
        CacheAction::Rebuild { kernel, archs } => rebuild(env, kernel, archs),
        CacheAction::Prune { max_size, older_than } => {
            if older_than.is_some_and(|d| !(d.is_finite() && d >= 0.0)) {
                anyhow::bail!("--older-than must be a non-negative number of days");
            }
            let root = CacheRoot::open(&env.resolved_cache_root())?;
            // An age too large for a Duration means nothing is that old.
            let age = older_than
                .map(|d| Duration::try_from_secs_f64(d * 86400.0).unwrap_or(Duration::from_secs(u64::MAX / 4)));
            let report = manage::prune(&root, max_size, age)?;
            for p in &report.removed {
                println!("removed {}", p.display());
            }
            println!(
                "pruned {} item(s), freed {}, {} kept",
                report.removed.len(),
                human_bytes(report.freed_bytes),
                human_bytes(report.kept_bytes)
            );
            Ok(0)
        }
    }
}

fn list(env: &KernelEnv, json: bool) -> anyhow::Result<i32> {
    let root = CacheRoot::open(&env.resolved_cache_root())?;
    let entries = manage::list_entries(&root)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(0);
    }
    println!("cache root: {}", display(&root.path));
    if entries.is_empty() {
        println!("(empty)");
        return Ok(0);
    }
    println!(
        "{:<24} {:<8} {:<16} {:>10}  {:<20} {:<8} detail",
        "kernel", "arch", "hash", "size", "created (UTC)", "status"
    );
    for e in entries {
        println!(
            "{:<24} {:<8} {:<16} {:>10}  {:<20} {:<8} {}",
            if e.variant.is_empty() {
                e.kernel.clone()
            } else {
                format!("{}[{}]", e.kernel, e.variant)
            },
            e.arch,
            e.hash,
            human_bytes(e.size_bytes),
            format_time(e.created_unix),
            e.status,
            e.detail
        );
    }
    Ok(0)
}

fn rebuild(env: &KernelEnv, kernel: Option<String>, archs: Vec<crate::jit::Arch>) -> anyhow::Result<i32> {
    let builds = match kernel {
        Some(name) => KernelBuild::parse(&name)?,
        None => KernelBuild::all(),
    };
    let archs = target_archs(env, archs)?;
    let jit = JitCache::new(env.clone())?;
    let mut failures = 0;
    for arch in &archs {
        for build in &builds {
            if !build.targets(*arch) {
                println!("skip  {build}: no code for {arch}");
                continue;
            }
            let spec = KernelSpec::for_build(*build);
            let start = std::time::Instant::now();
            match jit.rebuild(&spec, *arch) {
                Ok(a) => println!(
                    "built {}/{} in {:.1}s -> {}",
                    a.manifest.key.kernel,
                    a.manifest.key.dir_name(),
                    start.elapsed().as_secs_f64(),
                    a.path.display()
                ),
                Err(e) => {
                    failures += 1;
                    eprintln!("error: {e}");
                }
            }
        }
    }
    Ok(if failures == 0 { 0 } else { 1 })
}

/// `2026-11-25 12:00:00` from a unix time (UTC), without a date crate.
fn format_time(unix: u64) -> String {
    if unix == 0 {
        return "-".into();
    }
    let (days, secs) = (unix / 86400, unix % 86400);
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::format_time(0), "-");
        assert_eq!(super::format_time(1_764_072_000), "2025-11-25 12:00:00");
    }
}
