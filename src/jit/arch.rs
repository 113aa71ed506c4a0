//! CUDA target architectures (`sm_80`, `sm_90a`, ...).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A real GPU architecture a cubin or shared object is built for.
///
/// `arch_specific` is the `a` suffix: features (wgmma, TMA multicast) that
/// exist on exactly that compute capability.
///
/// ```
/// use mllm_kernel::jit::Arch;
/// let a: Arch = "sm_90a".parse().unwrap();
/// assert_eq!((a.major, a.minor, a.arch_specific), (9, 0, true));
/// assert_eq!(a.to_string(), "sm_90a");
/// assert_eq!("80".parse::<Arch>().unwrap().to_string(), "sm_80");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
    pub arch_specific: bool,
}

impl Arch {
    /// The arch the JIT targets for a device of compute capability
    /// `major.minor`. From Hopper on we build the arch-specific variant,
    /// which runs on exactly that device and unlocks its newest instructions.
    pub fn for_device(major: u32, minor: u32) -> Self {
        Self {
            major,
            minor,
            arch_specific: major >= 9,
        }
    }

    /// `compute_90a`: the virtual arch matching this real one.
    pub fn compute_name(&self) -> String {
        format!(
            "compute_{}{}{}",
            self.major,
            self.minor,
            if self.arch_specific { "a" } else { "" }
        )
    }

    /// nvcc flags: SASS for this arch, plus PTX for forward compatibility
    /// where the arch is not arch-specific (PTX of `sm_90a` cannot be JITed
    /// onto other GPUs).
    pub fn nvcc_gencode(&self) -> Vec<String> {
        let mut codes = vec![self.to_string()];
        if !self.arch_specific {
            codes.push(self.compute_name());
        }
        vec![format!(
            "-gencode=arch={},code=[{}]",
            self.compute_name(),
            codes.join(",")
        )]
    }

    /// Parses `80;90a`, `sm_80,sm_90a` or `8.0 9.0a` lists.
    pub fn parse_list(list: &str) -> Result<Vec<Arch>> {
        let mut archs: Vec<Arch> = list
            .split(|c: char| c == ';' || c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_>>()?;
        archs.sort();
        archs.dedup();
        Ok(archs)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write!: tables align on `{:<8}`.
        f.pad(&format!(
            "sm_{}{}{}",
            self.major,
            self.minor,
            if self.arch_specific { "a" } else { "" }
        ))
    }
}

impl FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArch { given: s.to_string() };
        let body = s.trim();
        let body = body
            .strip_prefix("sm_")
            .or_else(|| body.strip_prefix("compute_"))
            .unwrap_or(body)
            .replace('.', "");
        let (digits, arch_specific) = match body.strip_suffix('a') {
            Some(d) => (d.to_string(), true),
            None => (body.clone(), false),
        };
        if digits.len() < 2 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let (major, minor) = digits.split_at(digits.len() - 1);
        let major: u32 = major.parse().map_err(|_| bad())?;
        let minor: u32 = minor.parse().map_err(|_| bad())?;
        if major < 5 {
            return Err(bad());
        }
        Ok(Self {
            major,
            minor,
            arch_specific,
        })
    }
}

impl TryFrom<String> for Arch {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Arch> for String {
    fn from(a: Arch) -> String {
        a.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!("8.9".parse::<Arch>().unwrap().to_string(), "sm_89");
        assert_eq!("sm_100a".parse::<Arch>().unwrap().to_string(), "sm_100a");
        for bad in ["", "sm_", "hopper", "sm_9x", "sm_3", "sm_90b"] {
            assert!(bad.parse::<Arch>().is_err(), "{bad}");
        }
        let list = Arch::parse_list("90a;80,80").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].to_string(), "sm_80");
    }

    #[test]
    fn gencode_adds_ptx_only_when_portable() {
        let a: Arch = "sm_80".parse().unwrap();
        assert_eq!(a.nvcc_gencode(), ["-gencode=arch=compute_80,code=[sm_80,compute_80]"]);
        let h: Arch = "sm_90a".parse().unwrap();
        assert_eq!(h.nvcc_gencode(), ["-gencode=arch=compute_90a,code=[sm_90a]"]);
        assert_eq!(Arch::for_device(9, 0), h);
        assert_eq!(Arch::for_device(8, 6).to_string(), "sm_86");
    }
}
