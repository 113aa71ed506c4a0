//! Helpers shared by the engine's HTTP tests (each test binary uses what it needs).
#![allow(dead_code)]

pub mod logits;
pub mod vl;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use mllm_engine::hub::{cached_model, HubConfig, DEFAULT_MODEL};

/// The default model's GGUF for `test`: `$MLLM_TEST_GGUF`, else the hub cache (never
/// downloads). `None`, with a printed `SKIPPED` line naming `test`, when it is in neither.
pub fn default_model_gguf(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MLLM_TEST_GGUF").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let cfg = HubConfig {
        offline: true,
        progress: false,
        ..HubConfig::from_env().expect("hub config")
    };
    let found = cached_model(&cfg, &DEFAULT_MODEL).expect("reading the hub cache");
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: {} is not in {} and MLLM_TEST_GGUF is unset (run scripts/setup.sh)",
            DEFAULT_MODEL.file_name,
            cfg.models_dir().display()
        );
    }
    found
}

/// Sends one HTTP/1.1 request (`Connection: close`, JSON content type) and returns the raw
/// response bytes.
pub fn raw_request(addr: SocketAddr, method: &str, path: &str, body: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    raw
}

/// The status line, head and body (chunked transfer decoded) of a raw HTTP/1.1 response.
pub fn split_response(raw: &[u8]) -> Result<(u16, String, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Ok((status, head.to_string(), body))
}

/// The payload of a `Transfer-Encoding: chunked` body.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}
