//! Inspecting and cleaning a cache root: list, clear, prune. Nothing here
//! ever deletes outside the root or follows a symlink out of it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::cache::{inspect_entry, pid_alive, remove_tree, temp_dir_owner, CacheRoot, EntryState, EntryStatus};
use crate::{Error, Result};

/// One entry as `cache list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryInfo {
    pub kernel: String,
    /// The build's specialization, empty when the kernel has none.
    pub variant: String,
    pub arch: String,
    pub hash: String,
    pub size_bytes: u64,
    pub created_unix: u64,
    pub last_used_unix: u64,
    pub status: EntryStatus,
    pub detail: String,
    pub path: PathBuf,
}

/// Every entry under the root, sorted by kernel then name.
pub fn list_entries(root: &CacheRoot) -> Result<Vec<EntryInfo>> {
    let mut out = Vec::new();
    for kernel_dir in sorted_children(&root.path)? {
        let kernel = file_name(&kernel_dir);
        if kernel.starts_with('.') || !is_real_dir(&kernel_dir) {
            continue;
        }
        for dir in sorted_children(&kernel_dir)? {
            let name = file_name(&dir);
            if name.starts_with('.') || !is_real_dir(&dir) {
                continue;
            }
            let (arch, variant, hash) = split_entry_name(&name);
            let (status, created, detail) = match inspect_entry(&dir) {
                EntryState::Valid(m) => (EntryStatus::Ok, m.created_unix, m.key.compiler.version),
                EntryState::Failed(m) => (
                    EntryStatus::Failed,
                    m.created_unix,
                    format!("log: {}", dir.join("build.log").display()),
                ),
                EntryState::Corrupt(why) => (EntryStatus::Corrupt, 0, why),
                EntryState::Missing => continue,
            };
            out.push(EntryInfo {
                kernel: kernel.clone(),
                variant,
                arch,
                hash,
                size_bytes: tree_size(&dir),
                created_unix: created,
                last_used_unix: last_used(&dir),
                status,
                detail,
                path: dir,
            });
        }
    }
    Ok(out)
}

/// `<arch>-<hash>` or `<arch>-<variant>-<hash>` -> (arch, variant or "", hash).
fn split_entry_name(name: &str) -> (String, String, String) {
    let (arch, rest) = name.split_once('-').unwrap_or((name, ""));
    let (variant, hash) = rest.rsplit_once('-').unwrap_or(("", rest));
    (arch.to_string(), variant.to_string(), hash.to_string())
}

/// Removes every entry of `kernel` (or everything, keeping the root itself).
/// `kernel` may name one variant, `rms_norm[bf16]`: then only that variant's
/// entries go. Returns how many items were removed.
pub fn clear(root: &CacheRoot, kernel: Option<&str>) -> Result<usize> {
    let targets = match kernel {
        Some(name) => match name.strip_suffix(']').and_then(|n| n.split_once('[')) {
            Some((kernel, variant)) => {
                check_component(kernel)?;
                check_component(variant)?;
                sorted_children(&root.path.join(kernel))?
                    .into_iter()
                    .filter(|dir| !file_name(dir).starts_with('.') && split_entry_name(&file_name(dir)).1 == variant)
                    .collect()
            }
            None => {
                check_component(name)?;
                let p = root.path.join(name);
                if fs::symlink_metadata(&p).is_ok() {
                    vec![p]
                } else {
                    vec![]
                }
            }
        },
        None => sorted_children(&root.path)?,
    };
    for t in &targets {
        remove_tree(t).map_err(Error::io(t))?;
    }
    Ok(targets.len())
}

/// What `prune` removed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PruneReport {
    pub removed: Vec<PathBuf>,
    pub freed_bytes: u64,
    pub kept_bytes: u64,
}

/// Removes entries unused for longer than `older_than`, then least recently
/// used ones until the total is at most `max_size`; also sweeps temp dirs of
/// builders that are no longer alive, and failed or corrupt entries.
pub fn prune(root: &CacheRoot, max_size: Option<u64>, older_than: Option<Duration>) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let drop_path = |path: &Path, size: u64, report: &mut PruneReport| -> Result<()> {
        remove_tree(path).map_err(Error::io(path))?;
        report.removed.push(path.to_path_buf());
        report.freed_bytes += size;
        Ok(())
    };
    for kernel_dir in sorted_children(&root.path)? {
        if !is_real_dir(&kernel_dir) {
            continue;
        }
        for dir in sorted_children(&kernel_dir)? {
            if let Some(pid) = temp_dir_owner(&file_name(&dir))
                && !pid_alive(pid)
            {
                drop_path(&dir, tree_size(&dir), &mut report)?;
            }
        }
    }
    let mut entries = list_entries(root)?;
    entries.sort_by_key(|e| e.last_used_unix);
    let cutoff = older_than.and_then(|d| SystemTime::now().checked_sub(d));
    let mut total: u64 = entries.iter().map(|e| e.size_bytes).sum();
    for e in entries {
        let stale = e.status != EntryStatus::Ok || cutoff.is_some_and(|c| last_used_time(&e.path) <= c);
        let over = max_size.is_some_and(|m| total > m);
        if stale || over {
            total -= e.size_bytes;
            drop_path(&e.path, e.size_bytes, &mut report)?;
        }
    }
    report.kept_bytes = total;
    Ok(report)
}

/// Parses `500M`, `10G`, `1.5GiB`, `4096`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("bad size `{s}` (e.g. 500M, 10G)"))?;
    let mult: u64 = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("bad size unit in `{s}` (use K, M, G or T)")),
    };
    Ok((value * mult as f64) as u64)
}

fn check_component(name: &str) -> Result<()> {
    let bad = |c: char| c == '/' || c == '\0' || c == '[' || c == ']';
    if name.is_empty() || name == "." || name == ".." || name.contains(bad) {
        return Err(Error::InvalidArgument {
            op: "cache clear",
            arg: "KERNEL",
            reason: format!("`{name}` is not a kernel name"),
        });
    }
    Ok(())
}

fn sorted_children(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    v.sort();
    Ok(v)
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Bytes of regular files under `dir`, not following symlinks.
fn tree_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match fs::symlink_metadata(e.path()) {
            Ok(m) if m.is_dir() => tree_size(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

fn last_used(dir: &Path) -> u64 {
    unix(last_used_time(dir))
}

/// When the entry was last loaded (manifest mtime; see `cache::touch`).
fn last_used_time(dir: &Path) -> SystemTime {
    fs::metadata(dir.join("manifest.json"))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5Q").is_err());
    }
}
