//! What to compile: a kernel's entry source, the files it may include, its
//! compiler and the third-party headers it needs.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::registry::{KernelBuild, KernelId, CSRC_FILES};

/// Which compiler turns the source into a loadable artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compiler {
    /// In-process NVRTC → cubin, loaded with the driver API.
    Nvrtc,
    /// nvcc → shared object exporting the C ABI of `mllm_kernel.h`.
    Nvcc,
}

impl Compiler {
    /// File name of the artifact in a cache entry.
    pub fn artifact_name(self) -> &'static str {
        match self {
            Compiler::Nvrtc => "kernel.cubin",
            Compiler::Nvcc => "kernel.so",
        }
    }
}

/// Header-only libraries a kernel may need. Their versions enter the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThirdParty {
    Cutlass,
    FlashInfer,
}

/// Source files by path relative to `csrc/`.
pub type SourceTree = BTreeMap<String, Cow<'static, str>>;

/// A kernel to compile. Built-in kernels come from [`KernelSpec::builtin`];
/// tests and tools can build their own.
///
/// ```
/// use mllm_kernel::jit::{Compiler, KernelSpec};
/// let spec = KernelSpec::from_source("add_one", Compiler::Nvrtc,
///     "extern \"C\" __global__ void add_one(float* x) { x[threadIdx.x] += 1.f; }");
/// assert_eq!(spec.included_sources().len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct KernelSpec {
    pub name: String,
    pub compiler: Compiler,
    /// Path of the translation unit inside `files`.
    pub entry: String,
    pub files: Arc<SourceTree>,
    /// Flags beyond the defaults (`-O3`, `-std=c++17`, `-DNDEBUG`, arch).
    pub extra_flags: Vec<String>,
    pub third_party: Vec<ThirdParty>,
    /// The specialization this build is limited to (`bf16`), if any.
    pub variant: Option<String>,
}

impl KernelSpec {
    /// The spec of one build: the kernel limited to its variant with
    /// `-DMLLM_VARIANT -DMLLM_VARIANT_<V>`.
    pub fn for_build(build: KernelBuild) -> Self {
        let mut spec = Self::builtin(build.id);
        if let Some(v) = build.variant {
            spec.extra_flags.push("-DMLLM_VARIANT".into());
            spec.extra_flags
                .push(format!("-DMLLM_VARIANT_{}", v.to_ascii_uppercase()));
            spec.variant = Some(v.to_string());
        }
        spec
    }

    /// The spec of a kernel shipped in `csrc/`.
    pub fn builtin(id: KernelId) -> Self {
        Self {
            name: id.name().to_string(),
            compiler: id.compiler(),
            entry: id.entry().to_string(),
            files: builtin_tree(),
            extra_flags: Vec::new(),
            third_party: id.third_party().to_vec(),
            variant: None,
        }
    }

    /// A one-file kernel.
    pub fn from_source(name: &str, compiler: Compiler, source: impl Into<String>) -> Self {
        let entry = format!("{name}.cu");
        let files = SourceTree::from([(entry.clone(), Cow::Owned(source.into()))]);
        Self {
            name: name.to_string(),
            compiler,
            entry,
            files: Arc::new(files),
            extra_flags: Vec::new(),
            third_party: Vec::new(),
            variant: None,
        }
    }

    /// The entry and every file of `files` it includes (transitively) with
    /// `#include "..."`, in a stable order. Includes not found in the tree
    /// are third-party or system headers, covered by their versions instead.
    pub fn included_sources(&self) -> Vec<(&str, &str)> {
        let mut seen = BTreeMap::new();
        let mut stack = vec![self.entry.clone()];
        while let Some(path) = stack.pop() {
            let Some((key, body)) = self.files.get_key_value(&path) else {
                continue;
            };
            if seen.insert(key.as_str(), body.as_ref()).is_some() {
                continue;
            }
            for inc in quoted_includes(body) {
                if let Some(found) = self.resolve_include(key, inc) {
                    stack.push(found);
                }
            }
        }
        seen.into_iter().collect()
    }

    /// `#include "x"` is looked up next to the including file, then in `include/`.
    fn resolve_include(&self, from: &str, inc: &str) -> Option<String> {
        let dir = from.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let beside = normalize(&if dir.is_empty() {
            inc.to_string()
        } else {
            format!("{dir}/{inc}")
        });
        [beside, normalize(&format!("include/{inc}"))]
            .into_iter()
            .find(|p| self.files.contains_key(p))
    }
}

fn quoted_includes(src: &str) -> impl Iterator<Item = &str> {
    src.lines().filter_map(|line| {
        let rest = line
            .trim_start()
            .strip_prefix('#')?
            .trim_start()
            .strip_prefix("include")?;
        let rest = rest.trim_start().strip_prefix('"')?;
        rest.split_once('"').map(|(name, _)| name)
    })
}

/// Folds `a/./b/../c` into `a/c`.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn builtin_tree() -> Arc<SourceTree> {
    static TREE: std::sync::OnceLock<Arc<SourceTree>> = std::sync::OnceLock::new();
    TREE.get_or_init(|| {
        Arc::new(
            CSRC_FILES
                .iter()
                .map(|(p, s)| (p.to_string(), Cow::Borrowed(*s)))
                .collect(),
        )
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> KernelSpec {
        let mut spec = KernelSpec::from_source("k", Compiler::Nvcc, "");
        spec.entry = "ops/k.cu".into();
        spec.files = Arc::new(
            files
                .iter()
                .map(|(p, s)| (p.to_string(), Cow::Owned(s.to_string())))
                .collect(),
        );
        spec
    }

    #[test]
    fn follows_includes_beside_and_in_include_dir() {
        let spec = tree(&[
            (
                "ops/k.cu",
                "#include \"local.cuh\"\n#  include \"common.h\"\n#include <cuda.h>\n#include \"cutlass/gemm.h\"",
            ),
            ("ops/local.cuh", "#include \"../include/common.h\""),
            ("include/common.h", "int x;"),
            ("include/unused.h", "int y;"),
        ]);
        let names: Vec<&str> = spec.included_sources().iter().map(|(p, _)| *p).collect();
        assert_eq!(names, ["include/common.h", "ops/k.cu", "ops/local.cuh"]);
    }

    #[test]
    fn builtin_kernels_have_their_entry() {
        for id in KernelId::ALL {
            let spec = KernelSpec::builtin(*id);
            assert!(spec.files.contains_key(&spec.entry), "{}", spec.entry);
        }
    }
}
