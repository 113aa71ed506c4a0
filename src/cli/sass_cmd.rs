//! `mllm-kernel sass KERNEL --arch sm_XY [--function TEXT]`: the SASS of a kernel build,
//! compiled through the cache (or found there), disassembled by the toolkit's `cuobjdump`.
//! For reading what ptxas made of a kernel without a GPU: register use, what a barrier
//! waits on, whether a loop's loads are in flight across it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::target_archs;
use crate::env::KernelEnv;
use crate::jit::{Arch, JitCache, KernelSpec};
use crate::registry::KernelBuild;

pub fn run(env: &KernelEnv, kernel: &str, archs: Vec<Arch>, function: Option<&str>) -> anyhow::Result<i32> {
    let builds = KernelBuild::parse(kernel)?;
    let archs = target_archs(env, archs)?;
    let cuobjdump = tool(env, "cuobjdump")?;
    let jit = JitCache::new(env.clone())?;
    for arch in &archs {
        for build in builds.iter().filter(|b| b.targets(*arch)) {
            let artifact = jit.get(&KernelSpec::for_build(*build), *arch)?;
            println!("// {build} {arch}: {}", artifact.path.display());
            let sass = disassemble(&cuobjdump, &artifact.path)?;
            print!("{}", functions_matching(&sass, function));
        }
    }
    Ok(0)
}

/// `name` in the toolkit's bin directory (`scripts/setup.sh` installs cuobjdump and the
/// nvdisasm it runs).
fn tool(env: &KernelEnv, name: &str) -> anyhow::Result<PathBuf> {
    let home = env
        .resolved_cuda_home()
        .ok_or_else(|| anyhow::anyhow!("no CUDA toolkit found: run scripts/setup.sh or set CUDA_HOME"))?;
    let path = home.join("bin").join(name);
    if !path.is_file() {
        anyhow::bail!(
            "{} not found: run scripts/setup.sh (it installs cuobjdump and nvdisasm)",
            path.display()
        );
    }
    Ok(path)
}

fn disassemble(cuobjdump: &Path, artifact: &Path) -> anyhow::Result<String> {
    // cuobjdump runs nvdisasm from PATH: the same bin directory.
    let bin = cuobjdump.parent().unwrap_or(Path::new("."));
    let path = std::env::join_paths(
        std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )?;
    let out = Command::new(cuobjdump)
        .arg("-sass")
        .arg(artifact)
        .env("PATH", path)
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{} -sass {} failed: {}",
            cuobjdump.display(),
            artifact.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `Function : NAME` blocks of cuobjdump's output whose name contains `filter` (all
/// of them without one).
///
/// ```ignore
/// let sass = "\t\tFunction : a_kernel\nX\n\t\tFunction : b_kernel\nY\n";
/// assert_eq!(functions_matching(sass, Some("b_")), "\t\tFunction : b_kernel\nY\n");
/// ```
fn functions_matching(sass: &str, filter: Option<&str>) -> String {
    let Some(filter) = filter else {
        return sass.to_string();
    };
    let mut out = String::new();
    let mut keep = false;
    for line in sass.split_inclusive('\n') {
        if let Some(name) = line.trim_start().strip_prefix("Function : ") {
            keep = name.contains(filter);
        }
        if keep {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_filter_keeps_whole_blocks() {
        let sass = "header\n\t\tFunction : a_kernel\n  /*0000*/ MOV ;\n\t\tFunction : b_kernel\n  /*0000*/ EXIT ;\n";
        assert_eq!(functions_matching(sass, None), sass);
        assert_eq!(
            functions_matching(sass, Some("b_")),
            "\t\tFunction : b_kernel\n  /*0000*/ EXIT ;\n"
        );
        assert_eq!(functions_matching(sass, Some("zzz")), "");
    }
}
