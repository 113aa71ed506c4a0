//! End-to-end tests of the `mllm-kernel` binary: every subcommand, run as a
//! child process against a private cache root (`MLLM_KERNEL_CACHE_DIR` in a
//! fresh temp dir, no `MLLM_KERNEL_LOCK_DIR`).
//!
//! The unit of the cache is a *build*: a kernel, or one of its variants
//! (`rms_norm[f32]`), each its own entry `<kernel>/<arch>[-<variant>]-<hash>`.
//!
//! Real compiles are expensive (NVRTC ~1 s, nvcc several seconds), so every
//! build is compiled for sm_80 once (`prebuilt_root`) and each test that needs
//! entries copies that root with `cp -r`. Tests that need no GPU only: this
//! suite must pass on a machine without one.

use std::fmt;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_mllm-kernel");
const ARCH: &str = "sm_80";
/// The registered kernels: the dirs directly under the root.
const KERNELS: [&str; 2] = ["rms_norm", "per_token_quant_int8"];
/// The variants `csrc/kernels.list` declares for rms_norm, in its order.
const RMS_VARIANTS: [&str; 3] = ["f32", "f16", "bf16"];
/// The builds these tests compile for one arch (`check --kernel rms_norm
/// --kernel per_token_quant_int8`), as `cache list` names them. The CUTLASS
/// GEMM is left out: it takes minutes on a CI machine, and CI's own
/// `mllm-kernel check` step compiles it.
const BUILDS: [&str; 4] = [
    "rms_norm[f32]",
    "rms_norm[f16]",
    "rms_norm[bf16]",
    "per_token_quant_int8",
];
/// The build tests use for "one kernel": one rms_norm variant, a fast NVRTC compile.
const RMS: &str = "rms_norm[f32]";
/// The kernel without variants (an nvcc compile).
const QUANT: &str = "per_token_quant_int8";
/// `check --use-cache` of every build in [`BUILDS`] for [`ARCH`].
const CHECK_BUILDS: [&str; 8] = [
    "check",
    "--use-cache",
    "--arch",
    ARCH,
    "--kernel",
    "rms_norm",
    "--kernel",
    QUANT,
];
/// The `nobody` user, used to get a genuinely read-only root when we are root.
const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// What one run of the binary produced.
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`mllm-kernel {}` exited with {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

impl Run {
    #[track_caller]
    fn code(&self, want: i32) -> &Self {
        assert_eq!(self.code, Some(want), "unexpected exit status\n{self}");
        self
    }

    #[track_caller]
    fn ok(&self) -> &Self {
        self.code(0)
    }

    #[track_caller]
    fn stdout_has(&self, needle: &str) -> &Self {
        assert!(self.stdout.contains(needle), "stdout lacks {needle:?}\n{self}");
        self
    }

    #[track_caller]
    fn stderr_has(&self, needle: &str) -> &Self {
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}\n{self}");
        self
    }

    /// stdout and stderr together (check prints errors on stdout, others on stderr).
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    #[track_caller]
    fn output_has(&self, needle: &str) -> &Self {
        assert!(self.all().contains(needle), "output lacks {needle:?}\n{self}");
        self
    }

    /// The table row of `cache list` for `build` (`rms_norm[f32]`), split on whitespace.
    #[track_caller]
    fn row(&self, build: &str) -> Vec<&str> {
        let rows: Vec<Vec<&str>> = self
            .stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|c| c.first() == Some(&build))
            .collect();
        assert_eq!(rows.len(), 1, "expected one row for {build}\n{self}");
        rows.into_iter().next().unwrap()
    }

    /// The result line of `check` for `build` (`ok     rms_norm[f32]  sm_80 ...`).
    #[track_caller]
    fn check_line(&self, build: &str) -> &str {
        let lines: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                c.len() >= 2 && matches!(c[0], "ok" | "FAILED") && c[1] == build
            })
            .collect();
        assert_eq!(lines.len(), 1, "expected one check line for {build}\n{self}");
        lines[0]
    }

    /// Asserts that `check` reported every build of [`BUILDS`] ok for [`ARCH`],
    /// each `compiled` or `cached` as `how` says.
    #[track_caller]
    fn all_builds_ok(&self, how: impl Fn(&str) -> &'static str) -> &Self {
        self.stdout_has(&format!("{n} of {n} kernel builds ok", n = BUILDS.len()));
        for b in BUILDS {
            let line = self.check_line(b);
            assert!(
                line.starts_with("ok ") && line.contains(ARCH) && line.ends_with(how(b)),
                "{b} not {}\n{self}",
                how(b)
            );
        }
        let results = self
            .stdout
            .lines()
            .filter(|l| l.starts_with("ok ") || l.starts_with("FAILED "))
            .count();
        assert_eq!(
            results,
            BUILDS.len(),
            "check built other builds than {BUILDS:?}\n{self}"
        );
        self
    }
}

/// Whether setup installed the pinned toolchain into this checkout; when
/// it reused an existing CUDA 13 instead, that one is named by CUDA_HOME.
fn own_toolchain() -> bool {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.toolchain/cuda/nvidia/cu13")).is_dir()
}

/// A command for the binary with a hermetic environment: the given cache
/// root, no lock dir, no arch list, JIT on, the default toolchain (the
/// checkout's own, or the CUDA_HOME setup chose where it reused one).
fn cmd(root: &Path) -> Command {
    let mut c = Command::new(BIN);
    let toolchain_vars: &[&str] = if own_toolchain() {
        &["CUDA_HOME", "CUDA_PATH", "NVCC"]
    } else {
        &[]
    };
    for var in [
        "MLLM_KERNEL_LOCK_DIR",
        "MLLM_CUDA_ARCHS",
        "MLLM_KERNEL_JIT",
        "MLLM_KERNEL_LOCK_TIMEOUT",
        "CUTLASS_HOME",
        "FLASHINFER_HOME",
        "RUST_BACKTRACE",
    ]
    .iter()
    .chain(toolchain_vars)
    {
        c.env_remove(var);
    }
    c.env("MLLM_KERNEL_CACHE_DIR", root);
    c
}

fn run(c: &mut Command, args: &[&str]) -> Run {
    let out = c
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary with the cache root `root`.
fn mk(root: &Path, args: &[&str]) -> Run {
    run(&mut cmd(root), args)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

// ---------------------------------------------------------------------------
// Cache roots
// ---------------------------------------------------------------------------

/// A temp dir with the cache root at `<dir>/root` (not created unless asked).
struct Sandbox {
    tmp: TempDir,
    root: PathBuf,
}

impl Sandbox {
    fn empty() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        Self { tmp, root }
    }

    /// A copy of the prebuilt root (every build for sm_80, all `ok`).
    fn prebuilt() -> Self {
        let sb = Self::empty();
        copy_tree(prebuilt_root(), &sb.root);
        sb
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn run(&self, args: &[&str]) -> Run {
        mk(&self.root, args)
    }

    /// The single entry dir of `build` for sm_80: `<kernel>/sm_80-<variant>-<hash>`
    /// for `kernel[variant]`, `<kernel>/sm_80-<hash>` for a kernel without variants.
    #[track_caller]
    fn entry(&self, build: &str) -> PathBuf {
        let (kernel, variant) = split_build(build);
        let prefix = match variant {
            Some(v) => format!("{ARCH}-{v}-"),
            None => format!("{ARCH}-"),
        };
        let dirs: Vec<PathBuf> = fs::read_dir(self.root.join(kernel))
            .unwrap_or_else(|e| panic!("no dir for {kernel}: {e}"))
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.strip_prefix(&prefix).is_some_and(is_hash) && fs::symlink_metadata(p).unwrap().is_dir()
            })
            .collect();
        assert_eq!(dirs.len(), 1, "expected one {prefix}<hash> entry for {build}: {dirs:?}");
        dirs.into_iter().next().unwrap()
    }

    /// Names of the entry dirs (and anything else) under `<root>/<kernel>`, sorted.
    fn kernel_dir_names(&self, kernel: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root.join(kernel))
            .unwrap_or_else(|e| panic!("no dir for {kernel}: {e}"))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// `cache list --json`, parsed.
    #[track_caller]
    fn list_json(&self) -> Vec<Value> {
        let r = self.run(&["cache", "list", "--json"]);
        r.ok();
        let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e})\n{r}"));
        v.as_array().unwrap_or_else(|| panic!("not a JSON array\n{r}")).clone()
    }

    /// `(build, arch, status)` of every entry, as `cache list --json` says,
    /// sorted; the build is `kernel[variant]`, or `kernel` when the variant is "".
    #[track_caller]
    fn statuses(&self) -> Vec<Status> {
        let mut v: Vec<Status> = self
            .list_json()
            .iter()
            .map(|e| {
                let s = |k: &str| {
                    e[k].as_str()
                        .unwrap_or_else(|| panic!("no string {k} in {e}"))
                        .to_string()
                };
                let build = match s("variant").as_str() {
                    "" => s("kernel"),
                    v => format!("{}[{v}]", s("kernel")),
                };
                (build, s("arch"), s("status"))
            })
            .collect();
        v.sort();
        v
    }

    /// Names directly under the root.
    fn root_names(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// `(build, arch, status)` of one cache entry.
type Status = (String, String, String);

/// `rms_norm[bf16]` -> `("rms_norm", Some("bf16"))`; `per_token_quant_int8` -> `(.., None)`.
fn split_build(build: &str) -> (&str, Option<&str>) {
    match build.strip_suffix(']').and_then(|b| b.split_once('[')) {
        Some((kernel, variant)) => (kernel, Some(variant)),
        None => (build, None),
    }
}

/// The 16 lower-case hex digits that end an entry dir name.
fn is_hash(s: &str) -> bool {
    s.len() == 16 && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

fn st(build: &str, status: &str) -> Status {
    st_at(build, ARCH, status)
}

fn st_at(build: &str, arch: &str, status: &str) -> Status {
    (build.to_string(), arch.to_string(), status.to_string())
}

/// What `statuses()` says of an untouched copy of the prebuilt root.
fn all_ok() -> Vec<Status> {
    let mut v: Vec<Status> = BUILDS.iter().map(|b| st(b, "ok")).collect();
    v.sort();
    v
}

/// [`all_ok`] with the entry of `build` in `status`, or gone where `None`.
#[track_caller]
fn all_ok_but(build: &str, status: Option<&str>) -> Vec<Status> {
    assert!(BUILDS.contains(&build), "{build} is not one of {BUILDS:?}");
    let mut v: Vec<Status> = BUILDS
        .iter()
        .filter_map(|b| match (*b == build, status) {
            (false, _) => Some(st(b, "ok")),
            (true, Some(s)) => Some(st(b, s)),
            (true, None) => None,
        })
        .collect();
    v.sort();
    v
}

static PREBUILT: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_prebuilt() {
    if let Some(root) = PREBUILT.get() {
        let _ = fs::remove_dir_all(root.parent().unwrap());
    }
}

/// A cache root with every build compiled for sm_80, private to this test
/// process and removed at exit.
///
/// Compiling it takes ~20 s of nvcc, and nextest runs every test in a process
/// of its own, so the compiled root is kept under the target dir and shared:
/// each process takes a file lock, revalidates the shared root with
/// `check --use-cache` (which this also tests) and copies it. If that check
/// had to compile anything (a kernel source changed since), the shared root is
/// rebuilt from empty, so no entry of the old sources stays in it.
fn prebuilt_root() -> &'static Path {
    PREBUILT.get_or_init(|| {
        let shared_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(shared_dir).unwrap();
        let lock = fs::File::create(shared_dir.join("mllm-kernel-cli-prebuilt.lock")).unwrap();
        lock.lock().unwrap();
        let shared = shared_dir.join("mllm-kernel-cli-prebuilt");
        if !check_builds(&shared).all_builds_are("cached") {
            let _ = fs::remove_dir_all(&shared);
            let r = check_builds(&shared);
            if !r.all_builds_are("compiled") {
                let _ = fs::remove_dir_all(&shared);
                panic!("building the shared cache failed\n{r}");
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("mllm-kernel-cli-prebuilt-")
            .tempdir()
            .unwrap()
            .keep();
        let root = dir.join("root");
        copy_tree(&shared, &root);
        drop(lock);
        // SAFETY: registers a plain function; it only removes our temp dir.
        unsafe { libc::atexit(remove_prebuilt) };
        root
    })
}

/// `cp -r from to`: a cache root's copy, with fresh mtimes.
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-r").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -r {} {} failed", from.display(), to.display());
}

/// [`CHECK_BUILDS`] into `root`.
fn check_builds(root: &Path) -> Run {
    mk(root, &CHECK_BUILDS)
}

impl Run {
    /// Whether `check` succeeded with every build of [`BUILDS`] reported `how`
    /// (`compiled` or `cached`).
    fn all_builds_are(&self, how: &str) -> bool {
        let n = BUILDS.len();
        self.code == Some(0)
            && self.stdout.contains(&format!("{n} of {n} kernel builds ok"))
            && self.stdout.matches(&format!(" {how}")).count() == n
    }
}

/// Sets the last-used time of an entry (its manifest's mtime) `ago` in the past.
fn age_entry(entry: &Path, ago: Duration) {
    let f = fs::File::options()
        .append(true)
        .open(entry.join("manifest.json"))
        .unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

/// Sets the mode of every dir and file under `path` (not following symlinks).
fn chmod_tree(path: &Path, dir_mode: u32, file_mode: u32) {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.file_type().is_symlink() {
        return;
    }
    if meta.is_dir() {
        // Make it traversable first so its children can be reached.
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
        for e in fs::read_dir(path).unwrap().flatten() {
            chmod_tree(&e.path(), dir_mode, file_mode);
        }
        fs::set_permissions(path, fs::Permissions::from_mode(dir_mode)).unwrap();
    } else {
        fs::set_permissions(path, fs::Permissions::from_mode(file_mode)).unwrap();
    }
}

/// Restores owner write permission on drop, so the temp dir can be removed.
struct RestoreWritable(PathBuf);

impl Drop for RestoreWritable {
    fn drop(&mut self) {
        if self.0.exists() {
            chmod_tree(&self.0, 0o700, 0o600);
        }
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o777
}

/// A directory outside the root holding `precious.txt`; returns its path.
fn outside_dir(sb: &Sandbox) -> PathBuf {
    let out = sb.dir().join("outside");
    fs::create_dir_all(out.join("sub")).unwrap();
    fs::write(out.join("precious.txt"), "keep me").unwrap();
    fs::write(out.join("sub/nested.txt"), "keep me too").unwrap();
    out
}

#[track_caller]
fn assert_outside_intact(out: &Path) {
    assert_eq!(fs::read_to_string(out.join("precious.txt")).unwrap(), "keep me");
    assert_eq!(fs::read_to_string(out.join("sub/nested.txt")).unwrap(), "keep me too");
}

// ---------------------------------------------------------------------------
// help / env
// ---------------------------------------------------------------------------

#[test]
fn help_lists_the_subcommands() {
    let sb = Sandbox::empty();
    let r = sb.run(&["--help"]);
    r.ok().stdout_has("Usage: mllm-kernel <COMMAND>");
    for sub in ["env", "cache", "check", "bench", "sass"] {
        assert!(
            r.stdout.lines().any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "--help does not list `{sub}`\n{r}"
        );
    }
    let r = sb.run(&["cache", "--help"]);
    r.ok();
    for sub in ["path", "list", "clear", "rebuild", "prune"] {
        assert!(
            r.stdout.lines().any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "cache --help does not list `{sub}`\n{r}"
        );
    }
    sb.run(&["--version"])
        .ok()
        .stdout_has(&format!("mllm-kernel {}", env!("CARGO_PKG_VERSION")));
    // No subcommand: usage on stderr, clap's exit code.
    sb.run(&[]).code(2).stderr_has("Usage: mllm-kernel <COMMAND>");
    sb.run(&["frobnicate"])
        .code(2)
        .stderr_has("unrecognized subcommand 'frobnicate'");
    assert!(!sb.root.exists(), "--help must not create the cache root");
}

#[test]
fn env_reports_toolchain_headers_cache_root_and_no_gpu() {
    let sb = Sandbox::empty();
    let r = sb.run(&["env"]);
    r.ok();
    let line = |prefix: &str| -> String {
        r.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line\n{r}"))
            .to_string()
    };
    if own_toolchain() {
        assert!(line("CUDA home:").contains(".toolchain/cuda/nvidia/cu13"), "{r}");
    }
    let nvcc = line("nvcc:");
    assert!(nvcc.contains("release 13.0") && nvcc.contains("bin/nvcc"), "{r}");
    assert!(line("NVRTC:").contains("nvrtc 13."), "{r}");
    let cutlass = line("Cutlass:");
    assert!(
        cutlass.contains("third_party/cutlass") && cutlass.contains("version"),
        "{r}"
    );
    assert!(!cutlass.contains("not found"), "{r}");
    let flashinfer = line("FlashInfer:");
    assert!(
        flashinfer.contains("third_party/flashinfer") && !flashinfer.contains("not found"),
        "{r}"
    );
    let cache = line("cache root:");
    assert!(
        cache.contains(&sb.root.display().to_string()) && cache.contains("from environment") && cache.contains("ok"),
        "{r}"
    );
    assert!(line("JIT:").contains("enabled"), "{r}");
    assert!(line("GPU").contains("no GPU"), "{r}");
    assert!(!r.stdout.contains("lock dir:"), "no lock dir was set\n{r}");
}

#[test]
fn env_reports_jit_and_lock_settings_and_rejects_bad_variables() {
    let sb = Sandbox::empty();
    let locks = sb.dir().join("locks");
    let r = run(
        cmd(&sb.root)
            .env("MLLM_KERNEL_JIT", "0")
            .env("MLLM_KERNEL_LOCK_DIR", &locks),
        &["env"],
    );
    r.ok()
        .stdout_has("disabled (MLLM_KERNEL_JIT=0)")
        .stdout_has(&format!("lock dir:       {}", locks.display()));

    for (var, value) in [
        ("MLLM_KERNEL_JIT", "maybe"),
        ("MLLM_CUDA_ARCHS", "80;hopper"),
        ("MLLM_KERNEL_LOCK_TIMEOUT", "-3"),
    ] {
        let r = run(cmd(&sb.root).env(var, value), &["env"]);
        r.code(2).stderr_has(var).stderr_has(value);
        // Every command reads the environment first.
        let r = run(cmd(&sb.root).env(var, value), &["cache", "list"]);
        r.code(2).stderr_has(var);
    }
}

// ---------------------------------------------------------------------------
// cache path / list
// ---------------------------------------------------------------------------

#[test]
fn cache_path_prints_exactly_the_root() {
    let sb = Sandbox::empty();
    let r = sb.run(&["cache", "path"]);
    r.ok();
    assert_eq!(r.stdout, format!("{}\n", sb.root.display()), "{r}");
    assert!(r.stderr.is_empty(), "{r}");
    assert!(!sb.root.exists(), "`cache path` must not create the root");
}

#[test]
fn cache_list_is_empty_then_shows_a_rebuilt_entry() {
    let sb = Sandbox::empty();
    let r = sb.run(&["cache", "list"]);
    r.ok()
        .stdout_has(&format!("cache root: {}", sb.root.display()))
        .stdout_has("(empty)");
    assert_eq!(mode(&sb.root), 0o700, "a new root is private");
    assert!(sb.list_json().is_empty());

    let r = sb.run(&["cache", "rebuild", RMS, "--arch", ARCH]);
    r.ok().stdout_has(&format!("built rms_norm/{ARCH}-f32-"));
    assert_eq!(r.stdout.lines().count(), 1, "rebuilt more than {RMS}\n{r}");
    let entry = sb.entry(RMS);
    assert!(
        r.stdout.contains(&entry.join("kernel.cubin").display().to_string()),
        "{r}"
    );
    assert!(entry.join("kernel.cubin").is_file() && entry.join("manifest.json").is_file());
    assert!(!sb.root.join(QUANT).exists(), "rebuilding one kernel built another");
    assert_eq!(
        sb.kernel_dir_names("rms_norm"),
        vec![entry.file_name().unwrap().to_string_lossy().into_owned()],
        "rebuilding one variant built others"
    );

    let r = sb.run(&["cache", "list"]);
    r.ok();
    assert!(!r.stdout.contains("(empty)"), "{r}");
    let row = r.row(RMS);
    assert_eq!(row[1], ARCH, "{r}");
    assert_eq!(
        row[2],
        entry
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_prefix("sm_80-f32-")
            .unwrap()
    );
    assert!(row.contains(&"ok"), "{r}");
    assert!(row.contains(&"nvrtc"), "detail names the compiler\n{r}");

    let list = sb.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    let e = &list[0];
    assert_eq!(e["kernel"], "rms_norm");
    assert_eq!(e["variant"], "f32");
    assert_eq!(e["arch"], ARCH);
    assert_eq!(e["status"], "ok");
    let hash = e["hash"].as_str().unwrap();
    assert!(hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()), "{e}");
    assert_eq!(e["path"].as_str().unwrap(), entry.display().to_string());
    let cubin = fs::metadata(entry.join("kernel.cubin")).unwrap().len();
    assert!(e["size_bytes"].as_u64().unwrap() >= cubin && cubin > 0, "{e}");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let created = e["created_unix"].as_u64().unwrap();
    assert!(created <= now && now - created < 600, "{e}");
    assert!(e["detail"].as_str().unwrap().starts_with("nvrtc"), "{e}");

    // Rebuild is forced: the entry is compiled again and replaced.
    // (A marker, not the inode: the freed inode is often reused by the new dir.)
    let marker = entry.join("marker");
    fs::write(&marker, "from before the rebuild").unwrap();
    sb.run(&["cache", "rebuild", RMS, "--arch", ARCH])
        .ok()
        .stdout_has("built rms_norm/sm_80-f32-");
    assert_eq!(sb.entry(RMS), entry, "same key, same entry dir");
    assert!(!marker.exists(), "entry was not replaced by the rebuild");
    assert!(entry.join("kernel.cubin").is_file());
    assert_eq!(sb.statuses(), vec![st(RMS, "ok")]);
}

#[test]
fn rebuild_of_a_kernel_builds_each_of_its_variants() {
    let sb = Sandbox::empty();
    let r = sb.run(&["cache", "rebuild", "rms_norm", "--arch", ARCH]);
    r.ok();
    assert_eq!(r.stdout.lines().count(), RMS_VARIANTS.len(), "{r}");
    for v in RMS_VARIANTS {
        r.stdout_has(&format!("built rms_norm/{ARCH}-{v}-"));
    }
    // Exactly one entry per variant, `sm_80-<variant>-<hash>`, and nothing else.
    let names = sb.kernel_dir_names("rms_norm");
    assert_eq!(names.len(), RMS_VARIANTS.len(), "{names:?}");
    let entries: Vec<PathBuf> = RMS_VARIANTS
        .iter()
        .map(|v| sb.entry(&format!("rms_norm[{v}]")))
        .collect();
    for e in &entries {
        assert!(e.join("kernel.cubin").is_file(), "{}", e.display());
    }
    // Different sources (flags), so different keys: no two variants share a hash.
    let mut hashes: Vec<&str> = names.iter().map(|n| n.rsplit_once('-').unwrap().1).collect();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), RMS_VARIANTS.len(), "{names:?}");
    assert!(!sb.root.join(QUANT).exists(), "rebuilding rms_norm built {QUANT}");
    assert_eq!(
        sb.statuses(),
        vec![
            st("rms_norm[bf16]", "ok"),
            st("rms_norm[f16]", "ok"),
            st("rms_norm[f32]", "ok")
        ]
    );

    // Rebuilding one variant replaces its entry only.
    let markers: Vec<PathBuf> = entries.iter().map(|e| e.join("marker")).collect();
    for m in &markers {
        fs::write(m, "from before the rebuild").unwrap();
    }
    let r = sb.run(&["cache", "rebuild", "rms_norm[f16]", "--arch", ARCH]);
    r.ok().stdout_has(&format!("built rms_norm/{ARCH}-f16-"));
    assert_eq!(r.stdout.lines().count(), 1, "{r}");
    for (v, m) in RMS_VARIANTS.iter().zip(&markers) {
        assert_eq!(
            m.exists(),
            *v != "f16",
            "rms_norm[{v}] entry (marker {})\n{r}",
            m.display()
        );
    }
    assert_eq!(sb.kernel_dir_names("rms_norm"), names);
}

#[test]
fn cache_list_shows_corrupt_entries_and_prune_drops_them() {
    let sb = Sandbox::prebuilt();
    assert_eq!(sb.statuses(), all_ok());

    // Truncated artifact.
    let rms = sb.entry(RMS);
    fs::File::options()
        .write(true)
        .open(rms.join("kernel.cubin"))
        .unwrap()
        .set_len(10)
        .unwrap();
    // Same size, different bytes.
    let quant = sb.entry(QUANT);
    let so = quant.join("kernel.so");
    let len = fs::metadata(&so).unwrap().len() as usize;
    fs::write(&so, vec![0x5a; len]).unwrap();
    // An entry dir without a manifest (named like a variant entry), and one
    // with an unreadable manifest (named like an entry without a variant).
    let bare = sb.root.join("rms_norm/sm_86-f32-0123456789abcdef");
    fs::create_dir(&bare).unwrap();
    fs::write(bare.join("kernel.cubin"), "x").unwrap();
    let garbled = sb.root.join("rms_norm/sm_89-fedcba9876543210");
    fs::create_dir(&garbled).unwrap();
    fs::write(garbled.join("manifest.json"), "{ not json").unwrap();

    let r = sb.run(&["cache", "list"]);
    r.ok();
    let corrupt = r.stdout.lines().filter(|l| l.contains("corrupt")).count();
    assert_eq!(corrupt, 4, "{r}");
    // The other variants of the kernel are untouched and still usable.
    for b in ["rms_norm[f16]", "rms_norm[bf16]"] {
        let row = r.row(b);
        assert!(row[1] == ARCH && row.contains(&"ok"), "{b}\n{r}");
    }
    r.stdout_has("artifact is 10 bytes, manifest says")
        .stdout_has("artifact checksum does not match its manifest")
        .stdout_has("manifest.json is missing")
        .stdout_has("manifest.json is unreadable");
    let mut want = vec![
        st(QUANT, "corrupt"),
        st(RMS, "corrupt"),
        st_at("rms_norm[f32]", "sm_86", "corrupt"),
        st_at("rms_norm", "sm_89", "corrupt"),
        st("rms_norm[f16]", "ok"),
        st("rms_norm[bf16]", "ok"),
    ];
    want.sort();
    assert_eq!(sb.statuses(), want);

    // Prune with no limits drops exactly the unusable entries.
    let r = sb.run(&["cache", "prune"]);
    r.ok().stdout_has("pruned 4 item(s)");
    for d in [&rms, &quant, &bare, &garbled] {
        assert!(!d.exists(), "{} survived prune\n{r}", d.display());
    }
    assert_eq!(
        sb.statuses(),
        vec![st("rms_norm[bf16]", "ok"), st("rms_norm[f16]", "ok")]
    );
}

#[test]
fn corrupt_entry_is_rebuilt_by_check_use_cache() {
    let sb = Sandbox::prebuilt();
    fs::write(sb.entry(RMS).join("kernel.cubin"), "garbage").unwrap();
    assert_eq!(sb.statuses(), all_ok_but(RMS, Some("corrupt")));

    let r = sb.run(&CHECK_BUILDS);
    r.ok()
        .all_builds_ok(|b| if b == RMS { "compiled" } else { "cached" })
        .stderr_has("is corrupt")
        .stderr_has("rebuilding");
    assert_eq!(sb.statuses(), all_ok());
}

#[test]
fn cache_list_shows_failed_entries_and_prune_drops_them() {
    let sb = Sandbox::prebuilt();
    let rms = sb.entry(RMS);
    let path = rms.join("manifest.json");
    let mut manifest: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    // The shape `JitCache` writes for a failed build.
    manifest["status"] = "failed".into();
    manifest["artifact_sha256"] = "".into();
    manifest["artifact_size"] = 0.into();
    fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    fs::remove_file(rms.join("kernel.cubin")).unwrap();

    let r = sb.run(&["cache", "list"]);
    r.ok();
    let row = r.row(RMS);
    assert!(row.contains(&"failed"), "{r}");
    r.stdout_has(&format!("log: {}", rms.join("build.log").display()));
    for b in BUILDS.iter().filter(|b| **b != RMS) {
        assert!(r.row(b).contains(&"ok"), "{b}\n{r}");
    }
    assert_eq!(sb.statuses(), all_ok_but(RMS, Some("failed")));

    let r = sb.run(&["cache", "prune"]);
    r.ok()
        .stdout_has(&format!("removed {}", rms.display()))
        .stdout_has("pruned 1 item(s)");
    assert!(!rms.exists());
    assert_eq!(sb.statuses(), all_ok_but(RMS, None));
}

/// A stand-in nvcc that reports a version but fails every compile.
fn fake_nvcc(sb: &Sandbox) -> PathBuf {
    let bin = sb.dir().join("fake-cuda/bin");
    fs::create_dir_all(&bin).unwrap();
    let nvcc = bin.join("nvcc");
    fs::write(
        &nvcc,
        "#!/bin/sh\n\
         if [ \"$1\" = \"--version\" ]; then\n\
         echo 'Cuda compilation tools, release 13.0, V13.0.0-fake'; echo 'Build fake'; exit 0\n\
         fi\n\
         echo 'fake.cu(1): error: deliberately broken compiler' >&2\n\
         exit 1\n",
    )
    .unwrap();
    fs::set_permissions(&nvcc, fs::Permissions::from_mode(0o755)).unwrap();
    nvcc
}

#[test]
fn real_compile_failures_are_recorded_as_failed_not_as_success() {
    let sb = Sandbox::empty();
    let nvcc = fake_nvcc(&sb);
    let own = concat!(env!("CARGO_MANIFEST_DIR"), "/.toolchain/cuda/nvidia/cu13");
    let cuda_home = match std::env::var("CUDA_HOME") {
        Ok(reused) if !own_toolchain() => reused,
        _ => own.to_string(),
    };
    let with_fake = |c: &mut Command| {
        c.env("NVCC", &nvcc).env("CUDA_HOME", &cuda_home);
    };

    let mut c = cmd(&sb.root);
    with_fake(&mut c);
    let r = run(&mut c, &["cache", "rebuild", QUANT, "--arch", ARCH]);
    r.code(1)
        .stderr_has("kernel `per_token_quant_int8` for sm_80 failed to compile")
        .stderr_has("deliberately broken compiler")
        .stderr_has("build.log");
    let entry = sb.entry(QUANT);
    assert!(!entry.join("kernel.so").exists(), "a failed build left an artifact");
    let log = fs::read_to_string(entry.join("build.log")).unwrap();
    assert!(
        log.contains("status: FAILED") && log.contains("deliberately broken"),
        "{log}"
    );
    let r = sb.run(&["cache", "list"]);
    r.ok();
    assert!(r.row(QUANT).contains(&"failed"), "{r}");
    assert_eq!(sb.statuses(), vec![st(QUANT, "failed")]);

    // `check` reports the failure, keeps the logs, and still builds the rest.
    let tmpdir = sb.dir().join("tmp");
    fs::create_dir(&tmpdir).unwrap();
    let mut c = cmd(&sb.root);
    with_fake(&mut c);
    let r = run(
        c.env("TMPDIR", &tmpdir),
        &["check", "--arch", ARCH, "--kernel", "rms_norm", "--kernel", QUANT],
    );
    r.code(1)
        .stdout_has("deliberately broken compiler")
        .stdout_has("3 of 4 kernel builds ok")
        .stdout_has(&format!("build logs kept under {}", tmpdir.display()));
    assert!(r.check_line(QUANT).starts_with("FAILED "), "{r}");
    for v in RMS_VARIANTS {
        let line = r.check_line(&format!("rms_norm[{v}]"));
        assert!(line.starts_with("ok ") && line.ends_with("compiled"), "{r}");
    }
    // The configured root was not touched by check.
    assert_eq!(sb.statuses(), vec![st(QUANT, "failed")]);
}

// ---------------------------------------------------------------------------
// cache rebuild: argument errors
// ---------------------------------------------------------------------------

#[test]
fn rebuild_and_check_without_arch_or_gpu_ask_for_arch() {
    let sb = Sandbox::empty();
    for args in [
        &["cache", "rebuild"][..],
        &["cache", "rebuild", "rms_norm"],
        &["cache", "rebuild", RMS],
        &["check"],
        &["check", "--use-cache"],
    ] {
        let r = sb.run(args);
        r.code(2).stderr_has("--arch").stderr_has("no CUDA device");
    }
    // Nothing was built anywhere under the root.
    for k in KERNELS {
        assert!(!sb.root.join(k).exists(), "{k} dir created without an arch");
    }
}

#[test]
fn rebuild_unknown_kernel_lists_the_known_ones() {
    let sb = Sandbox::empty();
    let r = sb.run(&["cache", "rebuild", "nosuchkernel", "--arch", ARCH]);
    r.code(2)
        .stderr_has("unknown kernel `nosuchkernel`")
        .stderr_has("known kernels: rms_norm, per_token_quant_int8");
    assert!(!sb.root.join("nosuchkernel").exists());
    // A variant of an unknown kernel: the kernel is what is unknown.
    sb.run(&["cache", "rebuild", "nosuchkernel[f32]", "--arch", ARCH])
        .code(2)
        .stderr_has("unknown kernel `nosuchkernel`")
        .stderr_has("known kernels: rms_norm, per_token_quant_int8");
}

#[test]
fn rebuild_unknown_variant_lists_the_known_builds() {
    let sb = Sandbox::empty();
    // An undeclared variant, and a variant of a kernel that declares none.
    for (arg, name) in [
        ("rms_norm[bogus]", "rms_norm[bogus]"),
        ("rms_norm[]", "rms_norm[]"),
        ("per_token_quant_int8[f32]", "per_token_quant_int8[f32]"),
    ] {
        let r = sb.run(&["cache", "rebuild", arg, "--arch", ARCH]);
        r.code(2)
            .stderr_has(&format!("unknown kernel `{name}`"))
            .stderr_has("known kernels: rms_norm[f32], rms_norm[f16], rms_norm[bf16], per_token_quant_int8");
        assert!(r.stdout.is_empty(), "built something for {arg}\n{r}");
    }
    for k in KERNELS {
        assert!(!sb.root.join(k).exists(), "{k} dir created for an unknown variant");
    }
}

#[test]
fn bad_arch_is_a_usage_error_naming_the_value() {
    let sb = Sandbox::empty();
    for args in [
        &["cache", "rebuild", "--arch", "sm_9x"][..],
        &["cache", "rebuild", "rms_norm", "--arch", "sm_9x"],
        &["check", "--arch", "sm_9x"],
    ] {
        let r = sb.run(args);
        r.code(2)
            .stderr_has("invalid value 'sm_9x' for '--arch <sm_XY>'")
            .stderr_has("expected sm_XY or sm_XYa");
    }
    let r = run(cmd(&sb.root).env("MLLM_CUDA_ARCHS", "sm_9x"), &["cache", "rebuild"]);
    r.code(2).stderr_has("MLLM_CUDA_ARCHS").stderr_has("sm_9x");
    assert!(!sb.root.exists(), "a usage error must not touch the root");
}

// ---------------------------------------------------------------------------
// cache clear
// ---------------------------------------------------------------------------

#[test]
fn clear_one_kernel_removes_only_its_dir() {
    let sb = Sandbox::prebuilt();
    let quant = sb.entry(QUANT);
    // The kernel dir holds one entry per variant; clearing the kernel removes
    // that one dir, so all of them.
    assert_eq!(sb.kernel_dir_names("rms_norm").len(), RMS_VARIANTS.len());
    let r = sb.run(&["cache", "clear", "rms_norm"]);
    r.ok()
        .stdout_has(&format!("removed 1 item(s) from {}", sb.root.display()));
    assert!(!sb.root.join("rms_norm").exists());
    assert!(quant.join("kernel.so").is_file());
    assert!(
        sb.root.join(".compilers.json").is_file(),
        "clearing a kernel keeps the compiler memo"
    );
    assert_eq!(sb.statuses(), vec![st(QUANT, "ok")]);

    // A kernel with nothing cached: nothing to do, not an error.
    sb.run(&["cache", "clear", "rms_norm"])
        .ok()
        .stdout_has("removed 0 item(s)");
    assert_eq!(sb.statuses(), vec![st(QUANT, "ok")]);
}

#[test]
fn clear_one_variant_removes_only_its_entries() {
    let sb = Sandbox::prebuilt();
    let r = sb.run(&["cache", "clear", "rms_norm[bf16]"]);
    r.ok().stdout_has("removed 1 item(s)");
    let mut want: Vec<_> = BUILDS
        .iter()
        .filter(|b| **b != "rms_norm[bf16]")
        .map(|b| st(b, "ok"))
        .collect();
    want.sort();
    assert_eq!(sb.statuses(), want);
    // Nothing cached for it any more: nothing to do, not an error.
    sb.run(&["cache", "clear", "rms_norm[bf16]"])
        .ok()
        .stdout_has("removed 0 item(s)");
    for bad in ["rms_norm[../x]", "rms_norm[]", "[f32]", "rms_norm[a/b]"] {
        sb.run(&["cache", "clear", bad])
            .code(2)
            .stderr_has("is not a kernel name");
    }
    assert_eq!(sb.statuses(), want);
}

#[test]
fn clear_all_empties_the_root_but_keeps_it() {
    let sb = Sandbox::prebuilt();
    let before = sb.root_names();
    assert!(before.len() >= 3, "{before:?}");
    let r = sb.run(&["cache", "clear"]);
    r.ok()
        .stdout_has(&format!("removed {} item(s) from {}", before.len(), sb.root.display()));
    assert!(sb.root.is_dir(), "the root itself was removed");
    assert_eq!(mode(&sb.root), 0o700);
    assert!(sb.root_names().is_empty(), "left behind: {:?}", sb.root_names());
    sb.run(&["cache", "list"]).ok().stdout_has("(empty)");
    // Clearing an empty root is fine.
    sb.run(&["cache", "clear"]).ok().stdout_has("removed 0 item(s)");
}

#[test]
fn clear_list_and_prune_never_follow_symlinks_out_of_the_root() {
    let sb = Sandbox::prebuilt();
    let out = outside_dir(&sb);
    let link = |target: &Path, at: PathBuf| std::os::unix::fs::symlink(target, at).unwrap();
    link(&out, sb.root.join("evil"));
    link(&out, sb.root.join("rms_norm/sm_80-link"));
    link(&out, sb.root.join("rms_norm/sm_80-f32-link"));
    link(
        &out,
        sb.root.join("rms_norm/.tmp-sm_80-f32-0000000000000000-999999999-1"),
    );
    link(&out, sb.entry(QUANT).join("escape"));
    link(&out, sb.entry(RMS).join("escape"));
    link(&out.join("precious.txt"), sb.root.join("file-link"));

    // Symlinks are neither listed as entries nor followed.
    let r = sb.run(&["cache", "list"]);
    r.ok();
    assert!(!r.stdout.contains("link") && !r.stdout.contains("evil"), "{r}");
    assert_eq!(sb.statuses(), all_ok());
    sb.run(&["cache", "prune", "--older-than", "9999"]).ok();
    assert_outside_intact(&out);

    sb.run(&["cache", "clear", "rms_norm"])
        .ok()
        .stdout_has("removed 1 item(s)");
    assert_outside_intact(&out);
    assert!(!sb.root.join("rms_norm").exists());

    // Clearing a "kernel" that is a symlink removes the link only.
    sb.run(&["cache", "clear", "evil"]).ok().stdout_has("removed 1 item(s)");
    assert!(fs::symlink_metadata(sb.root.join("evil")).is_err());
    assert_outside_intact(&out);

    link(&out, sb.root.join("evil2"));
    let r = sb.run(&["cache", "clear"]);
    r.ok();
    assert!(sb.root_names().is_empty(), "left behind: {:?}", sb.root_names());
    assert_outside_intact(&out);
    assert_eq!(fs::read_dir(&out).unwrap().count(), 2, "outside dir changed");
}

#[test]
fn clear_refuses_names_that_are_not_kernel_names() {
    let sb = Sandbox::prebuilt();
    let sibling = sb.dir().join("x");
    fs::create_dir(&sibling).unwrap();
    fs::write(sibling.join("f"), "keep").unwrap();
    for bad in ["../x", "..", ".", "rms_norm/sm_80", "/tmp", ""] {
        let r = sb.run(&["cache", "clear", bad]);
        r.code(2).stderr_has("is not a kernel name");
    }
    assert_eq!(fs::read_to_string(sibling.join("f")).unwrap(), "keep");
    assert_eq!(sb.statuses(), all_ok());
}

// ---------------------------------------------------------------------------
// cache prune
// ---------------------------------------------------------------------------

#[test]
fn prune_max_size_zero_removes_every_entry() {
    let sb = Sandbox::prebuilt();
    let entries: Vec<PathBuf> = BUILDS.iter().map(|b| sb.entry(b)).collect();
    let r = sb.run(&["cache", "prune", "--max-size", "0"]);
    r.ok().stdout_has("pruned 4 item(s)").stdout_has("0 B kept");
    for e in &entries {
        r.stdout_has(&format!("removed {}", e.display()));
        assert!(!e.exists());
    }
    sb.run(&["cache", "list"]).ok().stdout_has("(empty)");
}

#[test]
fn prune_max_size_drops_least_recently_used_first() {
    let sb = Sandbox::prebuilt();
    // Last used, oldest first: rms_norm[f32], per_token_quant_int8 (the
    // largest by far), rms_norm[f16], rms_norm[bf16].
    let order = [RMS, QUANT, "rms_norm[f16]", "rms_norm[bf16]"];
    let entries: Vec<PathBuf> = order.iter().map(|b| sb.entry(b)).collect();
    for (e, mins) in entries.iter().zip([60, 30, 10, 1]) {
        age_entry(e, Duration::from_secs(mins * 60));
    }
    let size_of = |e: &Path| -> u64 {
        let list = sb.list_json();
        let item = list
            .iter()
            .find(|i| i["path"].as_str() == Some(&*e.display().to_string()))
            .unwrap_or_else(|| panic!("{} not listed: {list:?}", e.display()));
        item["size_bytes"].as_u64().unwrap()
    };
    let sizes: Vec<u64> = entries.iter().map(|e| size_of(e)).collect();
    let total: u64 = sizes.iter().sum();
    assert_eq!(
        total,
        sb.list_json()
            .iter()
            .map(|e| e["size_bytes"].as_u64().unwrap())
            .sum::<u64>()
    );
    // A limit just under the total: dropping the oldest (rms_norm[f32]) suffices.
    let limit = (total - 1).to_string();
    let r = sb.run(&["cache", "prune", "--max-size", &limit]);
    r.ok()
        .stdout_has("pruned 1 item(s)")
        .stdout_has(&format!("removed {}", entries[0].display()));
    assert!(!entries[0].exists() && entries[1..].iter().all(|e| e.exists()), "{r}");
    assert_eq!(sb.statuses(), all_ok_but(RMS, None));

    // Just under what is left: the next oldest goes, although dropping a
    // smaller, more recently used entry would also have sufficed.
    let limit = (total - sizes[0] - 1).to_string();
    let r = sb.run(&["cache", "prune", "--max-size", &limit]);
    r.ok()
        .stdout_has("pruned 1 item(s)")
        .stdout_has(&format!("removed {}", entries[1].display()));
    assert!(!entries[1].exists() && entries[2..].iter().all(|e| e.exists()), "{r}");

    // Sizes with units are accepted.
    sb.run(&["cache", "prune", "--max-size", "1GiB"])
        .ok()
        .stdout_has("pruned 0 item(s)");
    assert_eq!(
        sb.statuses(),
        vec![st("rms_norm[bf16]", "ok"), st("rms_norm[f16]", "ok")]
    );
}

#[test]
fn prune_older_than_zero_removes_entries_not_used_this_second() {
    let sb = Sandbox::prebuilt();
    for b in BUILDS {
        age_entry(&sb.entry(b), Duration::from_secs(10));
    }
    let r = sb.run(&["cache", "prune", "--older-than", "0"]);
    r.ok().stdout_has("pruned 4 item(s)");
    sb.run(&["cache", "list"]).ok().stdout_has("(empty)");
}

#[test]
fn prune_older_than_zero_removes_just_used_entries() {
    let sb = Sandbox::prebuilt();
    // The copy has fresh manifest mtimes: last used "now".
    let r = sb.run(&["cache", "prune", "--older-than", "0"]);
    r.ok().stdout_has("pruned 4 item(s)");
    sb.run(&["cache", "list"]).ok().stdout_has("(empty)");
}

#[test]
fn prune_older_than_keeps_fresh_entries_and_drops_stale_ones() {
    let sb = Sandbox::prebuilt();
    let (rms, quant) = (sb.entry(RMS), sb.entry(QUANT));
    sb.run(&["cache", "prune", "--older-than", "9999"])
        .ok()
        .stdout_has("pruned 0 item(s)");
    assert!(rms.exists() && quant.exists());

    age_entry(&rms, Duration::from_secs(3 * 86400));
    sb.run(&["cache", "prune", "--older-than", "9999"])
        .ok()
        .stdout_has("pruned 0 item(s)");
    let r = sb.run(&["cache", "prune", "--older-than", "1.5"]);
    r.ok()
        .stdout_has(&format!("removed {}", rms.display()))
        .stdout_has("pruned 1 item(s)");
    assert!(!rms.exists() && quant.exists());
    assert_eq!(sb.statuses(), all_ok_but(RMS, None));
}

#[test]
fn prune_rejects_bad_sizes_and_ages() {
    let sb = Sandbox::prebuilt();
    let r = sb.run(&["cache", "prune", "--max-size", "10Q"]);
    r.code(2).stderr_has("10Q").stderr_has("--max-size");
    sb.run(&["cache", "prune", "--max-size", "lots"])
        .code(2)
        .stderr_has("bad size");
    for bad in ["--older-than=-1", "--older-than=nan", "--older-than=inf"] {
        sb.run(&["cache", "prune", bad])
            .code(2)
            .stderr_has("--older-than must be a non-negative number of days");
    }
    sb.run(&["cache", "prune", "--older-than", "soon"])
        .code(2)
        .stderr_has("soon");
    assert_eq!(sb.statuses(), all_ok());
}

#[test]
fn prune_huge_older_than_does_not_panic() {
    let sb = Sandbox::prebuilt();
    let r = sb.run(&["cache", "prune", "--older-than", "1e300"]);
    assert!(!r.stderr.contains("panicked"), "{r}");
    r.ok().stdout_has("pruned 0 item(s)");
    assert_eq!(sb.statuses(), all_ok());
}

#[test]
fn prune_sweeps_temp_dirs_of_dead_builders_only() {
    let sb = Sandbox::prebuilt();
    let dead = sb.root.join("rms_norm/.tmp-sm_80-f32-0000000000000000-999999999-1");
    fs::create_dir(&dead).unwrap();
    fs::write(dead.join("kernel.cubin"), "half-written").unwrap();
    // A temp dir of a live process (this test) is another builder's work.
    let live = sb.root.join(format!(
        "rms_norm/.tmp-sm_80-f32-0000000000000000-{}-1",
        std::process::id()
    ));
    fs::create_dir(&live).unwrap();

    let r = sb.run(&["cache", "prune"]);
    r.ok()
        .stdout_has(&format!("removed {}", dead.display()))
        .stdout_has("pruned 1 item(s)");
    assert!(!dead.exists());
    assert!(live.exists(), "swept a live builder's temp dir\n{r}");
    assert_eq!(sb.statuses(), all_ok());
}

// ---------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------

#[test]
fn check_compiles_every_kernel_in_a_temp_root() {
    let sb = Sandbox::empty();
    fs::create_dir(&sb.root).unwrap();
    fs::set_permissions(&sb.root, fs::Permissions::from_mode(0o700)).unwrap();
    let tmpdir = sb.dir().join("tmp");
    fs::create_dir(&tmpdir).unwrap();

    let r = run(
        cmd(&sb.root).env("TMPDIR", &tmpdir),
        &["check", "--arch", ARCH, "--kernel", "rms_norm", "--kernel", QUANT],
    );
    r.ok().all_builds_ok(|_| "compiled");
    // check reports each build on stdout; no JIT notice doubles it on stderr.
    assert!(!r.stderr.contains("mllm-kernel: compiling"), "{r}");
    assert!(
        sb.root_names().is_empty(),
        "check wrote into the configured root: {:?}",
        sb.root_names()
    );
    let left: Vec<_> = fs::read_dir(&tmpdir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("mllm-kernel-check-"))
        .collect();
    assert!(left.is_empty(), "check left its temp root behind: {left:?}");
}

#[test]
fn check_use_cache_reports_cached_entries() {
    let sb = Sandbox::prebuilt();
    let r = check_builds(&sb.root);
    r.ok().all_builds_ok(|_| "cached");
    assert!(!r.stdout.contains("compiled"), "{r}");
    assert_eq!(sb.statuses(), all_ok());
}

// ---------------------------------------------------------------------------
// Unsafe and unusual roots
// ---------------------------------------------------------------------------

#[test]
fn root_writable_by_group_or_others_is_refused() {
    for bad_mode in [0o777, 0o720, 0o702] {
        let sb = Sandbox::empty();
        fs::create_dir(&sb.root).unwrap();
        let planted = sb.root.join("planted.txt");
        fs::write(&planted, "x").unwrap();
        fs::set_permissions(&sb.root, fs::Permissions::from_mode(bad_mode)).unwrap();
        for args in [
            &["cache", "list"][..],
            &["cache", "clear"],
            &["cache", "prune", "--max-size", "0"],
            &["cache", "rebuild", "rms_norm", "--arch", ARCH],
            &["cache", "rebuild", RMS, "--arch", ARCH],
            &CHECK_BUILDS,
        ] {
            let r = sb.run(args);
            r.code(2)
                .stderr_has(&sb.root.display().to_string())
                .stderr_has("writable by group or others")
                .stderr_has(&format!("mode {bad_mode:o}"));
        }
        assert!(planted.exists(), "clear deleted from a refused root");
        assert!(!sb.root.join("rms_norm").exists(), "built into a refused root");
        // `env` still reports, naming the problem.
        sb.run(&["env"])
            .ok()
            .stdout_has("unusable")
            .stdout_has("writable by group or others");
    }
    // Readable by others but not writable is fine.
    let sb = Sandbox::empty();
    fs::create_dir(&sb.root).unwrap();
    fs::set_permissions(&sb.root, fs::Permissions::from_mode(0o755)).unwrap();
    sb.run(&["cache", "list"]).ok().stdout_has("(empty)");
}

#[test]
fn root_owned_by_another_user_is_refused() {
    if euid() != 0 {
        eprintln!("skipped: needs root to give the cache root to another user (chown)");
        return;
    }
    let sb = Sandbox::empty();
    fs::create_dir(&sb.root).unwrap();
    fs::set_permissions(&sb.root, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&sb.root, Some(NOBODY), Some(NOBODY)).unwrap();
    for args in [&["cache", "list"][..], &["cache", "clear"]] {
        sb.run(args)
            .code(2)
            .stderr_has(&format!("is owned by uid {NOBODY} (you are uid 0)"));
    }
}

#[test]
fn root_that_is_not_a_directory_is_refused() {
    let sb = Sandbox::empty();
    fs::write(&sb.root, "not a dir").unwrap();
    sb.run(&["cache", "list"]).code(2).stderr_has("is not a directory");
    sb.run(&["cache", "clear"]).code(2).stderr_has("is not a directory");
    assert_eq!(fs::read_to_string(&sb.root).unwrap(), "not a dir");

    let sb2 = Sandbox::empty();
    std::os::unix::fs::symlink(&sb.root, &sb2.root).unwrap();
    sb2.run(&["cache", "list"])
        .code(2)
        .stderr_has("symlink to a non-directory");

    // A root that cannot be created (under a file) is an I/O error naming it.
    let under_file = sb.root.join("cache");
    let r = mk(&under_file, &["cache", "list"]);
    r.code(2)
        .stderr_has(&under_file.display().to_string())
        .stderr_has("Not a directory");
}

#[test]
fn io_errors_name_the_os_error_once() {
    let sb = Sandbox::empty();
    fs::write(&sb.root, "not a dir").unwrap();
    let r = mk(&sb.root.join("cache"), &["cache", "list"]);
    r.code(2);
    assert_eq!(r.stderr.matches("Not a directory").count(), 1, "{r}");
}

/// Makes `sb.root` read-only for the binary: as root (which ignores mode
/// bits) by running the binary as `nobody` over a root-owned 0755 tree,
/// otherwise with `chmod -R a-w`. `Err(reason)` when that is impossible.
/// Runs the CLI with some arguments against a prepared root.
type Runner<'a> = Box<dyn Fn(&[&str]) -> Run + 'a>;

fn read_only_runner(sb: &Sandbox) -> Result<(Runner<'_>, RestoreWritable), String> {
    let guard = RestoreWritable(sb.root.clone());
    if euid() != 0 {
        chmod_tree(&sb.root, 0o555, 0o444);
        let root = sb.root.clone();
        return Ok((Box::new(move |args| mk(&root, args)), guard));
    }
    // Root bypasses permission bits; a root-owned, world-readable tree is
    // read-only for `nobody` and passes the ownership check (owner uid 0).
    fs::set_permissions(sb.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    chmod_tree(&sb.root, 0o755, 0o644);
    let root = sb.root.clone();
    let as_nobody = move |args: &[&str]| {
        let mut c = cmd(&root);
        c.uid(NOBODY).gid(NOBODY);
        run(&mut c, args)
    };
    let probe = as_nobody(&["cache", "path"]);
    if probe.code != Some(0) {
        return Err(format!(
            "running as root, which ignores permission bits, and cannot run the binary as uid {NOBODY} \
             to test a read-only root:\n{probe}"
        ));
    }
    Ok((Box::new(as_nobody), guard))
}

#[test]
fn read_only_root_serves_valid_entries_and_reports_misses() {
    let sb = Sandbox::prebuilt();
    let (ro, _guard) = match read_only_runner(&sb) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    ro(&["env"]).ok().stdout_has("read-only");
    let r = ro(&["cache", "list"]);
    r.ok();
    for b in BUILDS {
        assert!(r.row(b).contains(&"ok"), "{b}\n{r}");
    }

    let r = ro(&CHECK_BUILDS);
    r.ok().all_builds_ok(|_| "cached");

    // Cleaning fails instead of half-working, and removes nothing.
    ro(&["cache", "clear"]).code(2);
    ro(&["cache", "prune", "--max-size", "0"]).code(2);
    for b in BUILDS {
        let artifact = if b == QUANT { "kernel.so" } else { "kernel.cubin" };
        assert!(sb.entry(b).join(artifact).is_file(), "{b}");
    }

    // A miss in a read-only root is an error naming the problem, not a crash;
    // the other variants of the kernel are still served.
    drop(_guard);
    let rms = sb.entry(RMS);
    fs::remove_dir_all(&rms).unwrap();
    let (ro, _guard) = read_only_runner(&sb).unwrap();
    let r = ro(&CHECK_BUILDS);
    r.code(1)
        .stdout_has("is read-only and has no valid entry for rms_norm/sm_80-f32-")
        .stdout_has("MLLM_KERNEL_CACHE_DIR")
        .stdout_has("3 of 4 kernel builds ok");
    assert!(r.check_line(RMS).starts_with("FAILED "), "{r}");
    for b in BUILDS.iter().filter(|b| **b != RMS) {
        let line = r.check_line(b);
        assert!(line.starts_with("ok ") && line.ends_with("cached"), "{r}");
    }
    assert!(!rms.exists());
}

// ---------------------------------------------------------------------------
// MLLM_KERNEL_JIT=0
// ---------------------------------------------------------------------------

#[test]
fn jit_disabled_serves_cached_kernels_and_refuses_to_compile() {
    // `bench jit-load-once` is the (hidden) warm-load probe of `bench jit`;
    // without a GPU it resolves the kernel through the cache only.
    let args = ["bench", "jit-load-once", "--kernel", RMS];
    let sb = Sandbox::empty();
    let r = run(
        cmd(&sb.root).env("MLLM_KERNEL_JIT", "0").env("MLLM_CUDA_ARCHS", "80"),
        &args,
    );
    r.code(2)
        .stderr_has("kernel cache miss for rms_norm/sm_80-f32-")
        .stderr_has("MLLM_KERNEL_JIT=0")
        .stderr_has("mllm-kernel cache rebuild 'rms_norm[f32]' --arch sm_80");
    assert!(
        !sb.root.join("rms_norm").exists(),
        "compiled although MLLM_KERNEL_JIT=0"
    );

    let sb = Sandbox::prebuilt();
    let rms = sb.entry(RMS);
    age_entry(&rms, Duration::from_secs(3 * 86400));
    let r = run(
        cmd(&sb.root).env("MLLM_KERNEL_JIT", "0").env("MLLM_CUDA_ARCHS", "80"),
        &args,
    );
    r.ok();
    let ms: f64 = r.stdout.trim().parse().unwrap_or_else(|_| panic!("not a number\n{r}"));
    assert!(ms >= 0.0, "{r}");
    // A hit marks the entry used, so age-based pruning keeps it.
    sb.run(&["cache", "prune", "--older-than", "1"])
        .ok()
        .stdout_has("pruned 0 item(s)");
    assert!(rms.exists());
}

#[test]
fn jit_disabled_check_use_cache_fails_on_a_miss() {
    let sb = Sandbox::empty();
    let r = run(cmd(&sb.root).env("MLLM_KERNEL_JIT", "0"), &CHECK_BUILDS);
    assert_ne!(r.code, Some(0), "{r}");
    r.output_has("MLLM_KERNEL_JIT=0").output_has("cache rebuild");
    for k in KERNELS {
        assert!(!sb.root.join(k).exists(), "compiled {k} although MLLM_KERNEL_JIT=0");
    }
}

#[test]
fn jit_disabled_rebuild_does_not_destroy_a_valid_entry() {
    let sb = Sandbox::prebuilt();
    for build in [RMS, "rms_norm"] {
        let r = run(
            cmd(&sb.root).env("MLLM_KERNEL_JIT", "0"),
            &["cache", "rebuild", build, "--arch", ARCH],
        );
        // Either rebuild it (an explicit request to compile) or refuse up front;
        // never leave the cache worse than it was.
        assert_eq!(sb.statuses(), all_ok(), "an entry was lost rebuilding {build}\n{r}");
    }
}

// ---------------------------------------------------------------------------
// cache list formatting
// ---------------------------------------------------------------------------

#[test]
fn cache_list_columns_line_up() {
    let sb = Sandbox::prebuilt();
    let r = sb.run(&["cache", "list"]);
    r.ok();
    let header = r.stdout.lines().find(|l| l.starts_with("kernel")).unwrap();
    // The kernel column names the build: `rms_norm[bf16]`, plain `per_token_quant_int8`.
    let rows: Vec<&str> = r.stdout.lines().skip_while(|l| *l != header).skip(1).collect();
    assert_eq!(rows.len(), BUILDS.len(), "{r}");
    for b in BUILDS {
        let row = rows
            .iter()
            .find(|l| l.split_whitespace().next() == Some(b))
            .unwrap_or_else(|| panic!("no row for {b}\n{r}"));
        assert!(row.starts_with(&format!("{b} ")), "{r}");
        let detail = if b == QUANT { "Cuda compilation tools" } else { "nvrtc" };
        assert_eq!(
            header.find("arch"),
            row.find(" sm_80 ").map(|i| i + 1),
            "\n{header}\n{row}"
        );
        assert_eq!(header.find("detail"), row.find(detail), "\n{header}\n{row}");
    }
    r.stdout_has("\nrms_norm[bf16] ");
}

// ---------------------------------------------------------------------------
// bench
// ---------------------------------------------------------------------------

#[test]
fn bench_without_a_gpu_fails_cleanly() {
    let sb = Sandbox::empty();
    for args in [
        &["bench", "rms-norm"][..],
        &["bench", "fused-add-rms-norm", "--tokens", "1,16"],
        &["bench", "per-token-quant-int8", "--json"],
    ] {
        let r = sb.run(args);
        r.code(2).stderr_has("no CUDA device");
        assert!(r.stdout.is_empty(), "{r}");
    }
    sb.run(&["bench", "rms-norm", "--hidden", "0"])
        .code(2)
        .stderr_has("--hidden and every --tokens value must be > 0");
    sb.run(&["bench", "rms-norm", "--tokens", "4,0"])
        .code(2)
        .stderr_has("must be > 0");
    let r = sb.run(&["bench", "softmax"]);
    r.code(2).stderr_has("invalid value 'softmax'").stderr_has("rms-norm");
    assert!(!r.stderr.contains("jit-load-once"), "hidden op is listed\n{r}");
}

/// `sass` disassembles a build through the cache with the toolkit's
/// cuobjdump. It also guards two facts of the SM90 code: the streaming
/// linear's stage ring fences its shared-memory reads for the async proxy
/// before each refill (FENCE.VIEW.ASYNC.S once after the barrier init and
/// once in the loop, in each of its 8 instantiations; without the loop's,
/// a bulk copy could overwrite a slot under a lagging read), and prefetch_l2
/// compiles to bulk L2 prefetches.
#[test]
fn sass_shows_the_ring_fence_and_the_bulk_prefetch() {
    let sb = Sandbox::empty();
    let r = sb.run(&[
        "sass",
        "stream_linear",
        "--arch",
        "sm_90a",
        "--function",
        "stream_linear_kernel",
    ]);
    // The empty cache makes this a first use: the build says so on stderr.
    r.ok()
        .stderr_has("mllm-kernel: compiling stream_linear for sm_90a (first use")
        .stderr_has("mllm-kernel: compiled stream_linear in");
    let functions = r.stdout.matches("Function : ").count();
    let fences = r.stdout.matches("FENCE.VIEW.ASYNC.S").count();
    assert!(
        functions == 8 && fences >= 2 * functions,
        "{functions} functions, {fences} async-proxy fences\n{r}"
    );
    sb.run(&["sass", "prefetch_l2", "--arch", "sm_90a"])
        .ok()
        .stdout_has("UBLKPF.L2");
    let r = sb.run(&["sass", "no_such_kernel", "--arch", "sm_90a"]);
    assert!(r.code != Some(0) && r.stderr.contains("no_such_kernel"), "{r}");
}
