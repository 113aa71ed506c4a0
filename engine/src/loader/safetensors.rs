//! safetensors checkpoints via mmap, single file or sharded.
//!
//! [`SafetensorsModel::open`] takes a model directory holding either `model.safetensors` or
//! `model.safetensors.index.json` (whose `weight_map` names the shard of each tensor), or a path to
//! one `.safetensors` file. Every file is memory-mapped once; [`SafetensorsModel::get`] returns
//! zero-copy [`Tensor`] views over the maps.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::{Dtype as StDtype, SafeTensors};
use serde::Deserialize;
use thiserror::Error;

use crate::tensor::{ByteSource, DType, Tensor, TensorError};

/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Errors of opening a checkpoint and reading tensors.
#[derive(Debug, Error)]
pub enum SafetensorsError {
    /// The directory or file does not exist.
    #[error("{path} does not exist")]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// The directory holds neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("{dir} contains neither {SINGLE_FILE} nor {INDEX_FILE}")]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
    },
    /// A file could not be opened, read or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The index file is not valid JSON or lacks `weight_map`.
    #[error("invalid index {path}: {msg}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The index names a shard file that does not exist.
    #[error("{index} names shard {shard}, which does not exist")]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The missing shard path.
        shard: PathBuf,
    },
    /// The index maps a tensor to a shard that does not contain it.
    #[error("{index} maps tensor `{name}` to {shard}, which does not contain it")]
    IndexMismatch {
        /// The index file.
        index: PathBuf,
        /// The tensor name.
        name: String,
        /// The shard file.
        shard: PathBuf,
    },
    /// A file's header is corrupt (bad length, JSON, offsets).
    #[error("corrupt safetensors header in {path}: {source}")]
    Header {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: safetensors::SafeTensorError,
    },
    /// No tensor of that name.
    #[error("tensor `{name}` not found{}", suggest(.suggestions))]
    TensorNotFound {
        /// The name asked for.
        name: String,
        /// Close names present in the checkpoint (possibly empty).
        suggestions: Vec<String>,
    },
    /// The tensor's dtype has no [`DType`] equivalent.
    #[error("tensor `{name}` has unsupported dtype {dtype} (supported: F32, BF16, F16, I8, I32, I64)")]
    UnsupportedDType {
        /// The tensor name.
        name: String,
        /// The safetensors dtype.
        dtype: String,
    },
    /// Building the tensor failed.
    #[error("tensor `{name}`: {source}")]
    Tensor {
        /// The tensor name.
        name: String,
        /// The tensor error.
        source: TensorError,
    },
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(
            "; did you mean {}?",
            s.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        )
    }
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, SafetensorsError>;

#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    offset: usize,
}

struct Shard {
    path: PathBuf,
    map: Arc<ByteSource>,
}

/// An opened (memory-mapped) safetensors checkpoint.
pub struct SafetensorsModel {
    shards: Vec<Shard>,
    entries: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for SafetensorsModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsModel")
            .field("files", &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct IndexJson {
    weight_map: HashMap<String, String>,
}

fn to_dtype(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F32 => DType::F32,
        StDtype::BF16 => DType::BF16,
        StDtype::F16 => DType::F16,
        StDtype::I8 => DType::I8,
        StDtype::I32 => DType::I32,
        StDtype::I64 => DType::I64,
        _ => return None,
    })
}

fn map_file(path: &Path) -> Result<Arc<ByteSource>> {
    let io = |source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: the checkpoint is treated as read-only and must not be modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    Ok(Arc::new(ByteSource::Mapped(map)))
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

impl SafetensorsModel {
    /// Opens a model directory (single file or sharded via the index) or one `.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(SafetensorsError::NotFound {
                path: path.to_path_buf(),
            });
        }
        if path.is_file() {
            return Self::from_files(&[path.to_path_buf()], None);
        }
        let index = path.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_index(path, &index);
        }
        let single = path.join(SINGLE_FILE);
        if single.is_file() {
            return Self::from_files(&[single], None);
        }
        Err(SafetensorsError::NoWeights {
            dir: path.to_path_buf(),
        })
    }

    fn open_index(dir: &Path, index: &Path) -> Result<Self> {
        let bad = |msg: String| SafetensorsError::Index {
            path: index.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(index).map_err(|source| SafetensorsError::Io {
            path: index.to_path_buf(),
            source,
        })?;
        let idx: IndexJson = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut files: Vec<PathBuf> = Vec::new();
        let mut file_of: HashMap<&str, usize> = HashMap::new();
        let mut names: Vec<(&String, &String)> = idx.weight_map.iter().collect();
        names.sort();
        let mut shard_names: Vec<&String> = idx.weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        for s in shard_names {
            let shard = dir.join(s);
            if !shard.is_file() {
                return Err(SafetensorsError::MissingShard {
                    index: index.to_path_buf(),
                    shard,
                });
            }
            file_of.insert(s, files.len());
            files.push(shard);
        }
        let model = Self::from_files(&files, Some(index))?;
        for (name, shard) in names {
            let want = file_of[shard.as_str()];
            match model.entries.get(name) {
                Some(e) if e.file == want => {}
                _ => {
                    return Err(SafetensorsError::IndexMismatch {
                        index: index.to_path_buf(),
                        name: name.clone(),
                        shard: files[want].clone(),
                    })
                }
            }
        }
        Ok(model)
    }

    fn from_files(files: &[PathBuf], _index: Option<&Path>) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut entries = BTreeMap::new();
        for (fi, path) in files.iter().enumerate() {
            let map = map_file(path)?;
            let (n, meta) = SafeTensors::read_metadata(map.bytes()).map_err(|source| SafetensorsError::Header {
                path: path.clone(),
                source,
            })?;
            for (name, info) in meta.tensors() {
                let entry = Entry {
                    file: fi,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    offset: 8 + n + info.data_offsets.0,
                };
                entries.insert(name, entry);
            }
            shards.push(Shard {
                path: path.clone(),
                map,
            });
        }
        Ok(Self { shards, entries })
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the checkpoint has no tensors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The files that were mapped.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| {
            let limit = (name.len() / 4).max(2);
            let mut close: Vec<(usize, &String)> = self
                .entries
                .keys()
                .map(|k| (levenshtein(name, k), k))
                .filter(|(d, _)| *d <= limit)
                .collect();
            close.sort();
            SafetensorsError::TensorNotFound {
                name: name.to_string(),
                suggestions: close.into_iter().take(3).map(|(_, k)| k.clone()).collect(),
            }
        })
    }

    /// Shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.entry(name)?.shape)
    }

    /// Dtype of a tensor; an error for dtypes [`DType`] does not cover.
    pub fn dtype(&self, name: &str) -> Result<DType> {
        let e = self.entry(name)?;
        to_dtype(e.dtype).ok_or_else(|| SafetensorsError::UnsupportedDType {
            name: name.to_string(),
            dtype: format!("{:?}", e.dtype),
        })
    }

    /// A tensor as a zero-copy view over the memory map (copied only if the data is misaligned
    /// for its dtype).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let dtype = self.dtype(name)?;
        let e = self.entry(name)?;
        Tensor::from_mapped(self.shards[e.file].map.clone(), e.offset, &e.shape, dtype).map_err(|source| {
            SafetensorsError::Tensor {
                name: name.to_string(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;
    use safetensors::tensor::TensorView;

    fn bytes_of<T: Copy>(v: &[T]) -> Vec<u8> {
        // SAFETY: test-only reinterpretation of plain numeric data.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)).to_vec() }
    }

    struct Fixture {
        f32_data: Vec<f32>,
        bf16_data: Vec<bf16>,
        i64_data: Vec<i64>,
    }

    fn fixture() -> Fixture {
        Fixture {
            f32_data: (0..12).map(|i| i as f32 * 0.5 - 2.0).collect(),
            bf16_data: (0..6).map(|i| bf16::from_f32(i as f32 * 1.25)).collect(),
            i64_data: vec![7, -3, 1 << 40],
        }
    }

    fn write(path: &Path, tensors: Vec<(&str, StDtype, Vec<usize>, Vec<u8>)>) {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    fn check_values(m: &SafetensorsModel, f: &Fixture) {
        let a = m.get("model.embed_tokens.weight").unwrap();
        assert_eq!(a.shape(), [3, 4]);
        assert_eq!(a.dtype(), DType::F32);
        assert_eq!(a.as_slice::<f32>().unwrap(), f.f32_data);
        let b = m.get("model.layers.0.mlp.up_proj.weight").unwrap();
        assert_eq!(b.dtype(), DType::BF16);
        assert_eq!(b.as_slice::<bf16>().unwrap(), f.bf16_data);
        let Storage::Cpu(cpu) = b.storage();
        assert!(cpu.is_mapped(), "bf16 weight must be a zero-copy view");
        let c = m.get("ids").unwrap();
        assert_eq!(c.as_slice::<i64>().unwrap(), f.i64_data);
        assert_eq!(m.shape("model.layers.0.mlp.up_proj.weight").unwrap(), [2, 3]);
    }
    use crate::tensor::Storage;

    #[test]
    fn single_file_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let f = fixture();
        write(
            &dir.path().join(SINGLE_FILE),
            vec![
                (
                    "model.embed_tokens.weight",
                    StDtype::F32,
                    vec![3, 4],
                    bytes_of(&f.f32_data),
                ),
                (
                    "model.layers.0.mlp.up_proj.weight",
                    StDtype::BF16,
                    vec![2, 3],
                    bytes_of(&f.bf16_data),
                ),
                ("ids", StDtype::I64, vec![3], bytes_of(&f.i64_data)),
                ("u8", StDtype::U8, vec![2], vec![1, 2]),
            ],
        );
        let m = SafetensorsModel::open(dir.path()).unwrap();
        assert_eq!(
            m.names(),
            [
                "ids",
                "model.embed_tokens.weight",
                "model.layers.0.mlp.up_proj.weight",
                "u8"
            ]
        );
        assert_eq!(m.len(), 4);
        check_values(&m, &f);
        // a file path works too
        let m2 = SafetensorsModel::open(dir.path().join(SINGLE_FILE)).unwrap();
        check_values(&m2, &f);

        let err = m.get("u8").unwrap_err();
        assert!(matches!(&err, SafetensorsError::UnsupportedDType { name, dtype } if name == "u8" && dtype == "U8"));
        assert!(
            err.to_string().contains("`u8`") && err.to_string().contains("U8"),
            "{err}"
        );
        assert_eq!(m.shape("u8").unwrap(), [2]);

        let err = m.get("model.embed_token.weight").unwrap_err();
        match &err {
            SafetensorsError::TensorNotFound { name, suggestions } => {
                assert_eq!(name, "model.embed_token.weight");
                assert_eq!(suggestions, &["model.embed_tokens.weight"]);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(
            err.to_string().contains("did you mean `model.embed_tokens.weight`"),
            "{err}"
        );
        let err = m.get("lm_head.weight").unwrap_err();
        assert!(matches!(&err, SafetensorsError::TensorNotFound { suggestions, .. } if suggestions.is_empty()));
    }

    fn write_sharded(dir: &Path, f: &Fixture) {
        write(
            &dir.join("model-00001-of-00002.safetensors"),
            vec![
                (
                    "model.embed_tokens.weight",
                    StDtype::F32,
                    vec![3, 4],
                    bytes_of(&f.f32_data),
                ),
                ("ids", StDtype::I64, vec![3], bytes_of(&f.i64_data)),
            ],
        );
        write(
            &dir.join("model-00002-of-00002.safetensors"),
            vec![(
                "model.layers.0.mlp.up_proj.weight",
                StDtype::BF16,
                vec![2, 3],
                bytes_of(&f.bf16_data),
            )],
        );
        std::fs::write(
            dir.join(INDEX_FILE),
            r#"{"metadata":{"total_size":84},"weight_map":{
                "model.embed_tokens.weight":"model-00001-of-00002.safetensors",
                "ids":"model-00001-of-00002.safetensors",
                "model.layers.0.mlp.up_proj.weight":"model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
    }

    #[test]
    fn sharded_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let f = fixture();
        write_sharded(dir.path(), &f);
        let m = SafetensorsModel::open(dir.path()).unwrap();
        assert_eq!(m.files().len(), 2);
        assert_eq!(m.len(), 3);
        check_values(&m, &f);
    }

    #[test]
    fn sharded_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = fixture();
        write_sharded(dir.path(), &f);
        std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
        let err = SafetensorsModel::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, SafetensorsError::MissingShard { shard, .. } if shard.ends_with("model-00002-of-00002.safetensors"))
        );

        // index points a tensor at the wrong shard
        write_sharded(dir.path(), &f);
        let idx = std::fs::read_to_string(dir.path().join(INDEX_FILE)).unwrap();
        std::fs::write(
            dir.path().join(INDEX_FILE),
            idx.replace(r#""ids":"model-00001-of-00002"#, r#""ids":"model-00002-of-00002"#),
        )
        .unwrap();
        let err = SafetensorsModel::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, SafetensorsError::IndexMismatch { name, .. } if name == "ids"),
            "{err}"
        );

        std::fs::write(dir.path().join(INDEX_FILE), "{\"metadata\":{}}").unwrap();
        let err = SafetensorsModel::open(dir.path()).unwrap_err();
        assert!(matches!(&err, SafetensorsError::Index { .. }), "{err}");
        assert!(err.to_string().contains("weight_map"), "{err}");
    }

    #[test]
    fn missing_and_corrupt() {
        let err = SafetensorsModel::open("/nonexistent/dir").unwrap_err();
        assert!(matches!(&err, SafetensorsError::NotFound { path } if path == Path::new("/nonexistent/dir")));
        assert!(err.to_string().contains("/nonexistent/dir"));

        let dir = tempfile::tempdir().unwrap();
        let err = SafetensorsModel::open(dir.path()).unwrap_err();
        assert!(matches!(err, SafetensorsError::NoWeights { .. }), "{err}");

        let path = dir.path().join(SINGLE_FILE);
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
        let err = SafetensorsModel::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, SafetensorsError::Header { path: p, .. } if p == &path),
            "{err}"
        );
        std::fs::write(&path, b"\x03").unwrap();
        assert!(matches!(
            SafetensorsModel::open(dir.path()).unwrap_err(),
            SafetensorsError::Header { .. }
        ));
    }

    #[test]
    fn levenshtein_distance() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }
}
