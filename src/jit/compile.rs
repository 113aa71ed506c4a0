//! Running the compilers: NVRTC in-process → cubin, nvcc → shared object.
//! Both build inside a private temp dir and write `build.log` there.

use std::ffi::{CStr, CString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::arch::Arch;
use super::spec::{Compiler, KernelSpec, ThirdParty};
use crate::env::KernelEnv;
use crate::{Error, Result};

/// Flags that enter the cache key (no paths).
pub fn key_flags(spec: &KernelSpec, arch: Arch) -> Vec<String> {
    let mut flags: Vec<String> = match spec.compiler {
        Compiler::Nvrtc => vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "-lineinfo".into(),
        ],
        Compiler::Nvcc => {
            let mut f: Vec<String> = [
                "-shared",
                "-Xcompiler=-fPIC,-fvisibility=hidden",
                "-O3",
                "-std=c++17",
                "-cudart=static",
                "-lineinfo",
            ]
            .map(String::from)
            .into();
            f.extend(arch.nvcc_gencode());
            // CUTLASS and FlashInfer call constexpr std:: functions from device code.
            if spec.third_party.contains(&ThirdParty::Cutlass) || spec.third_party.contains(&ThirdParty::FlashInfer) {
                f.push("--expt-relaxed-constexpr".into());
            }
            f
        }
    };
    // SM90 CUTLASS serializes wgmma without NDEBUG; asserts cost everywhere.
    flags.push("-DNDEBUG".into());
    flags.extend(spec.extra_flags.iter().cloned());
    flags
}

/// Include directories for the third-party headers `spec` needs.
pub fn third_party_includes(env: &KernelEnv, spec: &KernelSpec) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for tp in &spec.third_party {
        match tp {
            ThirdParty::Cutlass => {
                let home = env.resolved_cutlass_home();
                dirs.push(home.join("include"));
                dirs.push(home.join("tools/util/include"));
            }
            ThirdParty::FlashInfer => {
                // FlashInfer needs the newer CCCL it bundles (cuda::fast_mod_div),
                // ahead of the toolkit's own.
                let home = env.resolved_flashinfer_home();
                dirs.push(home.join("include"));
                dirs.push(home.join("cccl/libcudacxx/include"));
                dirs.push(home.join("cccl/cub"));
            }
        }
    }
    dirs
}

/// What one compiler run produced.
pub struct CompileOutcome {
    pub success: bool,
    pub command: Vec<String>,
    pub seconds: f64,
}

/// Writes the spec's sources under `dir/src` and compiles them into
/// `dir/<artifact>`, writing `dir/build.log`.
pub fn compile(env: &KernelEnv, spec: &KernelSpec, arch: Arch, flags: &[String], dir: &Path) -> Result<CompileOutcome> {
    let src_root = dir.join("src");
    for (path, body) in spec.included_sources() {
        let file = src_root.join(path);
        fs::create_dir_all(file.parent().expect("source has a parent")).map_err(Error::io(&file))?;
        fs::write(&file, body).map_err(Error::io(&file))?;
    }
    let entry = src_root.join(&spec.entry);
    let mut includes = vec![src_root.join("include")];
    includes.extend(entry.parent().map(Path::to_path_buf));
    includes.extend(third_party_includes(env, spec));
    let artifact = dir.join(spec.compiler.artifact_name());
    let start = Instant::now();
    let (success, command, output) = match spec.compiler {
        Compiler::Nvrtc => nvrtc_cubin(env, &entry, flags, &includes, &artifact)?,
        Compiler::Nvcc => nvcc_shared(env, &entry, flags, &includes, &artifact)?,
    };
    let seconds = start.elapsed().as_secs_f64();
    let log = format!(
        "kernel: {}\narch: {arch}\ncommand: {}\nstatus: {}\nseconds: {seconds:.2}\n\n{output}",
        spec.name,
        command.join(" "),
        if success { "ok" } else { "FAILED" }
    );
    fs::write(dir.join("build.log"), &log).map_err(Error::io(dir.join("build.log")))?;
    Ok(CompileOutcome {
        success,
        command,
        seconds,
    })
}

fn nvcc_shared(
    env: &KernelEnv,
    entry: &Path,
    flags: &[String],
    includes: &[PathBuf],
    out: &Path,
) -> Result<(bool, Vec<String>, String)> {
    let nvcc = super::toolchain::find_nvcc(env)?;
    let mut args: Vec<String> = flags.to_vec();
    args.extend(includes.iter().map(|d| format!("-I{}", d.display())));
    // The PyPI toolkit has lib/ only; system installs have lib64/.
    if let Some(home) = nvcc.parent().and_then(Path::parent) {
        args.extend(
            ["lib64", "lib"]
                .iter()
                .map(|d| home.join(d))
                .filter(|d| d.is_dir())
                .map(|d| format!("-L{}", d.display())),
        );
    }
    args.push("-o".into());
    args.push(out.display().to_string());
    args.push(entry.display().to_string());
    let result = Command::new(&nvcc).args(&args).output().map_err(Error::io(&nvcc))?;
    let mut text = String::from_utf8_lossy(&result.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&result.stderr));
    let ok = result.status.success() && out.is_file();
    if !result.status.success() {
        text.push_str(&format!("\nnvcc exited with {}\n", result.status));
    }
    let mut command = vec![nvcc.display().to_string()];
    command.extend(args);
    Ok((ok, command, text))
}

fn nvrtc_cubin(
    env: &KernelEnv,
    entry: &Path,
    flags: &[String],
    includes: &[PathBuf],
    out: &Path,
) -> Result<(bool, Vec<String>, String)> {
    use cudarc::nvrtc::sys;
    super::toolchain::nvrtc_version(env)?;
    let source = fs::read_to_string(entry).map_err(Error::io(entry))?;
    let mut options: Vec<String> = flags.to_vec();
    options.extend(includes.iter().map(|d| format!("--include-path={}", d.display())));
    let mut command = vec!["nvrtc".to_string()];
    command.extend(options.iter().cloned());
    command.push(entry.display().to_string());

    let c_src = CString::new(source).map_err(|_| nul_error(entry))?;
    let c_name = CString::new(entry.display().to_string()).map_err(|_| nul_error(entry))?;
    let c_opts: Vec<CString> = options
        .iter()
        .map(|o| CString::new(o.as_str()).expect("flags have no NUL"))
        .collect();
    let opt_ptrs: Vec<*const std::ffi::c_char> = c_opts.iter().map(|c| c.as_ptr()).collect();

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: all pointers are valid C strings that outlive the calls; the
    // program is destroyed on every path below.
    unsafe {
        let rc = sys::nvrtcCreateProgram(
            &mut prog,
            c_src.as_ptr(),
            c_name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        );
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            return Ok((false, command, format!("nvrtcCreateProgram failed: {rc:?}")));
        }
        let rc = sys::nvrtcCompileProgram(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr());
        let mut log = program_log(prog);
        let mut ok = rc == sys::nvrtcResult::NVRTC_SUCCESS;
        if !ok {
            log.push_str(&format!("\nerror: nvrtcCompileProgram returned {rc:?}\n"));
        } else {
            let mut size = 0usize;
            let mut cubin = Vec::new();
            if sys::nvrtcGetCUBINSize(prog, &mut size) == sys::nvrtcResult::NVRTC_SUCCESS && size > 0 {
                cubin.resize(size, 0u8);
                if sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) != sys::nvrtcResult::NVRTC_SUCCESS {
                    cubin.clear();
                }
            }
            if cubin.is_empty() {
                ok = false;
                log.push_str("\nerror: NVRTC produced no cubin (is the arch a real sm_XY?)\n");
            } else {
                fs::write(out, &cubin).map_err(Error::io(out))?;
            }
        }
        sys::nvrtcDestroyProgram(&mut prog);
        Ok((ok, command, log))
    }
}

/// # Safety
/// `prog` must be a live NVRTC program.
unsafe fn program_log(prog: cudarc::nvrtc::sys::nvrtcProgram) -> String {
    unsafe {
        use cudarc::nvrtc::sys;
        let mut size = 0usize;
        if sys::nvrtcGetProgramLogSize(prog, &mut size) != sys::nvrtcResult::NVRTC_SUCCESS || size <= 1 {
            return String::new();
        }
        let mut buf = vec![0u8; size];
        if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr().cast()) != sys::nvrtcResult::NVRTC_SUCCESS {
            return String::new();
        }
        CStr::from_bytes_until_nul(&buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn nul_error(path: &Path) -> Error {
    Error::InvalidArgument {
        op: "jit",
        arg: "source",
        reason: format!("{} contains a NUL byte", path.display()),
    }
}

/// The first lines of a log that mention an error (or its head).
pub fn first_errors(log: &str) -> String {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("error"))
        .take(8)
        .collect();
    let lines = if errors.is_empty() {
        log.lines().take(8).collect()
    } else {
        errors
    };
    lines.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}
