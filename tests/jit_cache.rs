//! The JIT cache on a CPU-only machine with the pinned compilers: keys,
//! reuse, concurrency, crash safety, corruption, failures and root checks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use mllm_kernel::jit::{key_flags, Arch, CacheKey, CacheRoot, Compiler, CompilerId, JitCache, KernelSpec};
use mllm_kernel::registry::KernelBuild;
use mllm_kernel::{Error, KernelEnv};

const GOOD: &str =
    "#include \"helper.cuh\"\nextern \"C\" __global__ void k(float* x) { x[threadIdx.x] = twice(x[threadIdx.x]); }";

fn spec(entry: &str, helper: &str) -> KernelSpec {
    let mut s = KernelSpec::from_source("k", Compiler::Nvrtc, entry);
    let files = Arc::make_mut(&mut s.files);
    files.insert("include/helper.cuh".into(), helper.to_string().into());
    files.insert("include/unrelated.cuh".into(), "int unrelated;".into());
    s
}

fn good_spec() -> KernelSpec {
    spec(GOOD, "__device__ float twice(float v) { return 2.f * v; }")
}

fn sm80() -> Arch {
    "sm_80".parse().unwrap()
}

/// The default toolchain: the checkout's own `.toolchain/`, or the
/// CUDA_HOME that setup reused instead of installing one.
fn env_at(root: &Path) -> KernelEnv {
    let own = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.toolchain/cuda/nvidia/cu13")).is_dir();
    KernelEnv {
        cache_dir: Some(root.to_path_buf()),
        lock_timeout: Some(Duration::from_secs(120)),
        cuda_home: std::env::var_os("CUDA_HOME").filter(|_| !own).map(Into::into),
        ..KernelEnv::default()
    }
}

fn fresh() -> (tempfile::TempDir, JitCache) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let jit = JitCache::new(env_at(&root)).unwrap();
    (dir, jit)
}

fn key(spec: &KernelSpec, arch: Arch, version: &str) -> CacheKey {
    let compiler = CompilerId {
        compiler: spec.compiler,
        version: version.into(),
    };
    CacheKey::new(spec, arch, compiler, key_flags(spec, arch), vec![])
}

#[test]
fn key_changes_exactly_with_what_changes_the_artifact() {
    let base = good_spec();
    let k = key(&base, sm80(), "nvrtc 13.0");
    assert_eq!(k, key(&good_spec(), sm80(), "nvrtc 13.0"), "same inputs, same key");

    let mut unrelated = good_spec();
    Arc::make_mut(&mut unrelated.files).insert("include/unrelated.cuh".into(), "int changed;".into());
    assert_eq!(
        k.dir_name(),
        key(&unrelated, sm80(), "nvrtc 13.0").dir_name(),
        "a header nobody includes"
    );

    let changed_source = spec(
        &format!("{GOOD}\n// edit"),
        "__device__ float twice(float v) { return 2.f * v; }",
    );
    let changed_header = spec(GOOD, "__device__ float twice(float v) { return v + v; }");
    let mut flagged = good_spec();
    flagged.extra_flags.push("-DFOO=1".into());
    for (what, other) in [
        ("source", key(&changed_source, sm80(), "nvrtc 13.0")),
        ("included header", key(&changed_header, sm80(), "nvrtc 13.0")),
        ("flag", key(&flagged, sm80(), "nvrtc 13.0")),
        ("arch", key(&base, "sm_90a".parse().unwrap(), "nvrtc 13.0")),
        ("compiler version", key(&base, sm80(), "nvrtc 13.1")),
    ] {
        assert_ne!(k.dir_name(), other.dir_name(), "{what} must change the key");
    }
}

#[test]
fn second_call_reuses_the_entry() {
    let (_d, jit) = fresh();
    let first = jit.get(&good_spec(), sm80()).unwrap();
    assert!(first.compiled);
    let log = first.path.with_file_name("build.log");
    let mtime = std::fs::metadata(&log).unwrap().modified().unwrap();
    let second = jit.get(&good_spec(), sm80()).unwrap();
    assert!(!second.compiled, "an unchanged call must not compile");
    assert_eq!(first.path, second.path);
    assert_eq!(std::fs::metadata(&log).unwrap().modified().unwrap(), mtime);
    let dir_mode = std::fs::metadata(first.path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
}

#[test]
fn concurrent_threads_compile_once() {
    let (_d, jit) = fresh();
    let n = 6;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (jit, barrier) = (jit.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                jit.get(&good_spec(), sm80()).unwrap()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|a| a.compiled).count(), 1, "exactly one compile");
    for a in &results {
        assert!(std::fs::read(&a.path).unwrap().len() as u64 == a.manifest.artifact_size);
    }
}

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mllm-kernel"))
}

#[test]
fn concurrent_processes_compile_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let procs: Vec<_> = (0..4)
        .map(|_| {
            cli()
                // The fast kernels: the CUTLASS GEMM would add minutes.
                .args(["check", "--use-cache", "--arch", "sm_80", "--kernel", "rms_norm"])
                .args(["--kernel", "per_token_quant_int8"])
                .env("MLLM_KERNEL_CACHE_DIR", &root)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<String> = procs
        .into_iter()
        .map(|p| {
            let o = p.wait_with_output().unwrap();
            assert!(o.status.success());
            String::from_utf8(o.stdout).unwrap()
        })
        .collect();
    let all = outputs.join("");
    let builds = [
        KernelBuild::parse("rms_norm").unwrap(),
        KernelBuild::parse("per_token_quant_int8").unwrap(),
    ];
    for build in builds.concat() {
        let name = format!("{build} ");
        let compiled = all
            .lines()
            .filter(|l| l.contains(&name) && l.ends_with("compiled"))
            .count();
        let cached = all
            .lines()
            .filter(|l| l.contains(&name) && l.ends_with("cached"))
            .count();
        assert_eq!((compiled, cached), (1, 3), "{build}:\n{all}");
    }
}

#[test]
fn truncated_artifact_is_rebuilt() {
    let (_d, jit) = fresh();
    let a = jit.get(&good_spec(), sm80()).unwrap();
    let bytes = std::fs::read(&a.path).unwrap();
    std::fs::write(&a.path, &bytes[..bytes.len() / 2]).unwrap();
    let b = jit.get(&good_spec(), sm80()).unwrap();
    assert!(b.compiled, "corrupt artifact must be rebuilt");
    // Line info names the temp build dir, so compare validity, not bytes.
    let rebuilt = std::fs::read(&b.path).unwrap();
    assert_eq!(rebuilt.len() as u64, b.manifest.artifact_size);
    assert_eq!(mllm_kernel::jit::sha256_hex(&rebuilt), b.manifest.artifact_sha256);
    assert!(!jit.get(&good_spec(), sm80()).unwrap().compiled);
}

#[test]
fn failed_build_keeps_log_and_retries() {
    let (_d, jit) = fresh();
    let bad = spec("extern \"C\" __global__ void k() { this is not cuda; }", "");
    let err = jit.get(&bad, sm80()).unwrap_err();
    let Error::CompileFailed {
        kernel,
        arch,
        first_errors,
        log,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((kernel.as_str(), arch.as_str()), ("k", "sm_80"));
    assert!(first_errors.contains("error"), "{first_errors}");
    assert!(std::fs::read_to_string(log).unwrap().contains("FAILED"));
    let msg = err.to_string();
    assert!(
        msg.contains(&log.display().to_string()) && msg.contains("retried"),
        "{msg}"
    );
    // Not cached as a failure: the next call compiles again (rewrites the log).
    std::fs::write(log, "stale").unwrap();
    assert!(jit.get(&bad, sm80()).is_err());
    assert_ne!(std::fs::read_to_string(log).unwrap(), "stale");
}

#[test]
fn killed_builder_does_not_block_the_next_build() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let mut child = cli()
        .args(["cache", "rebuild", "per_token_quant_int8", "--arch", "sm_80"])
        .env("MLLM_KERNEL_CACHE_DIR", &root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let kernel_dir = root.join("per_token_quant_int8");
    let start = Instant::now();
    let has_temp = || {
        std::fs::read_dir(&kernel_dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            })
            .unwrap_or(false)
    };
    while !has_temp() {
        assert!(start.elapsed() < Duration::from_secs(60), "builder never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300)); // mid-compile
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let mut env = env_at(&root);
    env.lock_timeout = Some(Duration::from_secs(600));
    let jit = JitCache::new(env).unwrap();
    let spec = KernelSpec::builtin(mllm_kernel::registry::KernelId::PerTokenQuantInt8);
    let t = Instant::now();
    let a = jit.get(&spec, sm80()).unwrap();
    assert!(a.compiled);
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "waited on a dead builder's lock"
    );
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&kernel_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "stale temp dirs: {leftovers:?}");
}

#[test]
fn read_only_root_loads_hits_and_explains_misses() {
    let (_d, jit) = fresh();
    jit.get(&good_spec(), sm80()).unwrap();
    let ro = CacheRoot {
        path: jit.root().path.clone(),
        writable: false,
    };
    let ro_jit = JitCache::with_root(jit.env().clone(), ro);
    assert!(!ro_jit.get(&good_spec(), sm80()).unwrap().compiled);
    let err = ro_jit.get(&good_spec(), "sm_90a".parse().unwrap()).unwrap_err();
    assert!(matches!(err, Error::ReadOnlyMiss { .. }), "{err}");
    assert!(err.to_string().contains("MLLM_KERNEL_CACHE_DIR"), "{err}");
}

#[test]
fn jit_disabled_turns_a_miss_into_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = env_at(&dir.path().join("cache"));
    env.jit_disabled = true;
    let err = JitCache::new(env).unwrap().get(&good_spec(), sm80()).unwrap_err();
    assert!(matches!(err, Error::JitDisabled { .. }), "{err}");
    assert!(err.to_string().contains("k/sm_80-"), "names the key: {err}");
}

#[test]
fn unsafe_roots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = JitCache::new(env_at(&open)).unwrap_err();
    assert!(err.to_string().contains("writable by group or others"), "{err}");

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED foreign-owner case: needs root to chown");
        return;
    }
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&foreign, Some(12345), Some(12345)).unwrap();
    let err = JitCache::new(env_at(&foreign)).unwrap_err();
    assert!(err.to_string().contains("owned by uid 12345"), "{err}");
}
