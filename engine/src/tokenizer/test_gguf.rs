//! Test-only GGUF writer: metadata of a few types plus 1-element F32 tensors.

use crate::loader::gguf::GgufFile;

/// A metadata value to write.
pub(crate) enum V {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArr(Vec<String>),
    I32Arr(Vec<i32>),
}

/// Builds GGUF v3 bytes in memory.
#[derive(Default)]
pub(crate) struct GgufBuilder {
    kvs: Vec<(String, V)>,
    tensors: Vec<String>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

impl GgufBuilder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn kv(mut self, key: &str, v: V) -> Self {
        self.kvs.push((key.to_string(), v));
        self
    }

    pub(crate) fn tensor(mut self, name: &str) -> Self {
        self.tensors.push(name.to_string());
        self
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut b, k);
            let (ty, payload): (u32, Vec<u8>) = match v {
                V::U32(x) => (4, x.to_le_bytes().to_vec()),
                V::F32(x) => (6, x.to_le_bytes().to_vec()),
                V::Bool(x) => (7, vec![u8::from(*x)]),
                V::Str(s) => {
                    let mut p = Vec::new();
                    put_str(&mut p, s);
                    (8, p)
                }
                V::StrArr(items) => {
                    let mut p = 8u32.to_le_bytes().to_vec();
                    p.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for s in items {
                        put_str(&mut p, s);
                    }
                    (9, p)
                }
                V::I32Arr(items) => {
                    let mut p = 5u32.to_le_bytes().to_vec();
                    p.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for x in items {
                        p.extend_from_slice(&x.to_le_bytes());
                    }
                    (9, p)
                }
            };
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&payload);
        }
        for (i, name) in self.tensors.iter().enumerate() {
            put_str(&mut b, name);
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&(i as u64 * 32).to_le_bytes());
        }
        b.resize(b.len().next_multiple_of(32), 0);
        for _ in &self.tensors {
            b.extend_from_slice(&[0u8; 32]);
        }
        b
    }

    pub(crate) fn open(&self) -> GgufFile {
        GgufFile::from_bytes(self.bytes()).expect("test GGUF parses")
    }
}
