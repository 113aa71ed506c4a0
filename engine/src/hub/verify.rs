//! sha256 of large files, with a progress bar, and the verified-digest
//! sidecar (`<file>.sha256.json`) keyed by size + mtime so a verified model
//! is not rehashed on every start.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::HubError;
use super::progress::Progress;

/// What the sidecar remembers: the digest of the file as it was when hashed.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Sidecar {
    size: u64,
    mtime_secs: u64,
    mtime_nanos: u32,
    sha256: String,
}

/// `<file>.sha256.json` beside `file`.
pub(crate) fn sidecar_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256.json");
    file.with_file_name(name)
}

/// The sidecar key of the file as it is now: (size, mtime).
fn key_of(file: &Path) -> Result<(u64, u64, u32), HubError> {
    let meta = fs::metadata(file).map_err(HubError::io("stat", file, 0))?;
    let mtime = meta.modified().map_err(HubError::io("read the mtime of", file, 0))?;
    let since = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    Ok((meta.len(), since.as_secs(), since.subsec_nanos()))
}

/// Lower-case hex sha256 of `path`, advancing `progress` by bytes read.
pub(crate) fn sha256_file(path: &Path, progress: &Progress) -> Result<String, HubError> {
    let mut file = File::open(path).map_err(HubError::io("open", path, 0))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(HubError::io("read", path, 0))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress.inc(n as u64);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The digest of `file`: from its sidecar when size and mtime still match,
/// else by hashing (under a progress bar) and recording a fresh sidecar.
pub(crate) fn digest(file: &Path, label: &str, show: bool) -> Result<String, HubError> {
    let (size, secs, nanos) = key_of(file)?;
    let side = sidecar_path(file);
    if let Ok(text) = fs::read_to_string(&side)
        && let Ok(s) = serde_json::from_str::<Sidecar>(&text)
        && (s.size, s.mtime_secs, s.mtime_nanos) == (size, secs, nanos)
    {
        return Ok(s.sha256);
    }
    let progress = Progress::bytes(show, size, &format!("verifying {label}"));
    let sha256 = sha256_file(file, &progress)?;
    progress.finish();
    let record = Sidecar {
        size,
        mtime_secs: secs,
        mtime_nanos: nanos,
        sha256: sha256.clone(),
    };
    // The sidecar is only a cache: failing to write it costs a rehash next time.
    let tmp = side.with_extension("json.tmp");
    let text = serde_json::to_string(&record).unwrap_or_default();
    if fs::write(&tmp, text).is_ok() && fs::rename(&tmp, &side).is_err() {
        let _ = fs::remove_file(&tmp);
    }
    Ok(sha256)
}

/// Removes `file` and its sidecar, ignoring "not found".
pub(crate) fn remove_with_sidecar(file: &Path) {
    let _ = fs::remove_file(file);
    let _ = fs::remove_file(sidecar_path(file));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn set_mtime(path: &Path, t: SystemTime) {
        File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn sha256_of_known_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        fs::write(&p, b"abc").unwrap();
        let got = sha256_file(&p, &Progress::hidden()).unwrap();
        assert_eq!(got, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn sidecar_is_trusted_only_while_size_and_mtime_match() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        fs::write(&p, b"first").unwrap();
        set_mtime(&p, t0);
        let first = digest(&p, "m", false).unwrap();
        assert!(sidecar_path(&p).exists());

        // Same size, same mtime: the sidecar answers (no rehash), by design.
        fs::write(&p, b"FIRST").unwrap();
        set_mtime(&p, t0);
        assert_eq!(digest(&p, "m", false).unwrap(), first);

        // Same size, new mtime: rehashed.
        set_mtime(&p, t0 + Duration::from_secs(1));
        let upper = digest(&p, "m", false).unwrap();
        assert_ne!(upper, first);
        assert_eq!(upper, sha256_file(&p, &Progress::hidden()).unwrap());

        // New size, mtime put back: rehashed too.
        fs::write(&p, b"longer content").unwrap();
        set_mtime(&p, t0 + Duration::from_secs(1));
        assert_eq!(
            digest(&p, "m", false).unwrap(),
            sha256_file(&p, &Progress::hidden()).unwrap()
        );
    }

    #[test]
    fn corrupt_sidecar_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        fs::write(&p, b"abc").unwrap();
        fs::write(sidecar_path(&p), "{not json").unwrap();
        assert_eq!(
            digest(&p, "m", false).unwrap(),
            sha256_file(&p, &Progress::hidden()).unwrap()
        );
    }
}
