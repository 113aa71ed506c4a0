//! Build locks: OS file locks, released by the kernel when the holder dies
//! (even by SIGKILL), with a bounded, reported wait.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// A held build lock; released on drop.
#[derive(Debug)]
pub struct BuildLock {
    file: File,
    path: PathBuf,
}

impl BuildLock {
    /// Takes the exclusive lock at `path` for building `what`, waiting at most
    /// `timeout` for another holder and saying who that holder is.
    pub fn acquire(path: &Path, what: &str, timeout: Duration) -> Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(Error::io(path))?;
        let start = Instant::now();
        let mut next_report = Duration::from_secs(2);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(Error::io(path)(e)),
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::LockTimeout {
                    key: what.to_string(),
                    lock: path.to_path_buf(),
                    holder: read_holder(&mut file),
                    waited_s: waited.as_secs_f64(),
                });
            }
            if waited >= next_report {
                eprintln!(
                    "mllm-kernel: waiting {:.0}s for {} to finish building {what} (lock {})",
                    waited.as_secs_f64(),
                    read_holder(&mut file),
                    path.display()
                );
                next_report *= 2;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Record who holds it, for waiters' messages. Best effort.
        let _ = file.set_len(0).and_then(|_| {
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "pid {} building {what}", std::process::id())
        });
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Where the lock file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_string(&mut text));
    match text.trim() {
        "" => "another process".to_string(),
        t => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_times_out_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = BuildLock::acquire(&path, "k/sm_80-1", Duration::from_secs(1)).unwrap();
        let err = BuildLock::acquire(&path, "k/sm_80-1", Duration::from_millis(200)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        drop(held);
        BuildLock::acquire(&path, "k/sm_80-1", Duration::from_millis(200)).unwrap();
    }
}
