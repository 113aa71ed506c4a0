//! Performance records (JSON lines, DESIGN.md "Conventions"): the environment part.

use std::process::Command;

use serde::Serialize;

pub(crate) use crate::executor::device::DeviceInfo;

/// The source revision: `git rev-parse HEAD` and whether tracked files differ from it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Revision {
    /// The commit hash, or `unknown` outside a git checkout.
    pub commit: String,
    /// Tracked files modified (`None` if unknown).
    pub dirty: Option<bool>,
}

impl Revision {
    /// Asks git in the current directory (read-only commands).
    pub fn current() -> Self {
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        match git(&["rev-parse", "HEAD"]) {
            Some(commit) if !commit.is_empty() => Self {
                commit,
                dirty: git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
            },
            _ => Self {
                commit: "unknown".into(),
                dirty: None,
            },
        }
    }
}

/// The command line as typed (arguments with spaces quoted).
pub(crate) fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("{a:?}")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
