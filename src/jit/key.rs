//! The cache key: everything that changes an artifact, and nothing else.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::arch::Arch;
use super::spec::{KernelSpec, ThirdParty};
use super::toolchain::CompilerId;

/// Identity of one cache entry. Paths are deliberately absent, so a cache
/// built on one machine is valid on another with the same compiler.
///
/// ```
/// use mllm_kernel::jit::{Arch, CacheKey, Compiler, CompilerId, KernelSpec};
/// let spec = KernelSpec::from_source("k", Compiler::Nvrtc, "__global__ void k() {}");
/// let nvrtc = CompilerId { compiler: Compiler::Nvrtc, version: "nvrtc 13.0".into() };
/// let key = CacheKey::new(&spec, "sm_90a".parse().unwrap(), nvrtc, vec![], vec![]);
/// assert!(key.dir_name().starts_with("sm_90a-"));
/// assert_eq!(key.dir_name().len(), "sm_90a-".len() + 16);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub kernel: String,
    /// The build's specialization (`bf16`), part of the directory name.
    #[serde(default)]
    pub variant: Option<String>,
    pub arch: Arch,
    pub compiler: CompilerId,
    pub flags: Vec<String>,
    /// sha256 over (path, bytes) of the entry and every header it includes.
    pub sources_sha256: String,
    pub third_party: Vec<(ThirdParty, String)>,
    pub crate_version: String,
}

impl CacheKey {
    /// Builds the key for `spec` on `arch`. `flags` are the full compiler
    /// flags minus paths; `third_party` the versions of the headers used.
    pub fn new(
        spec: &KernelSpec,
        arch: Arch,
        compiler: CompilerId,
        flags: Vec<String>,
        third_party: Vec<(ThirdParty, String)>,
    ) -> Self {
        let mut h = Sha256::new();
        for (path, body) in spec.included_sources() {
            // Length prefixes keep ("ab","c") and ("a","bc") apart.
            h.update((path.len() as u64).to_le_bytes());
            h.update(path.as_bytes());
            h.update((body.len() as u64).to_le_bytes());
            h.update(body.as_bytes());
        }
        Self {
            kernel: spec.name.clone(),
            variant: spec.variant.clone(),
            arch,
            compiler,
            flags,
            sources_sha256: hex(&h.finalize()),
            third_party,
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// `sm_90a-0123456789abcdef`, or `sm_90a-bf16-0123456789abcdef` for a
    /// variant: the entry's directory under `<root>/<kernel>/`.
    /// The build as the CLI names it: `rms_norm[bf16]`, or just the kernel.
    pub fn build_name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}[{v}]", self.kernel),
            None => self.kernel.clone(),
        }
    }

    pub fn dir_name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}-{v}-{}", self.arch, &self.digest()[..16]),
            None => format!("{}-{}", self.arch, &self.digest()[..16]),
        }
    }

    /// sha256 of the key's canonical JSON.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).expect("cache key serializes");
        hex(&Sha256::digest(&json))
    }

    /// True when the keys differ at most in the compiler: used to find a
    /// prebuilt entry on a machine that has no compiler at all.
    pub fn same_except_compiler(&self, other: &CacheKey) -> bool {
        let mut other = other.clone();
        other.compiler = self.compiler.clone();
        *self == other
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kernel, self.dir_name())
    }
}

/// Lower-case hex (sha2 0.11 digests do not implement `LowerHex`).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a byte slice as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}
