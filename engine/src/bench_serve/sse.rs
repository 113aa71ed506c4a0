//! Server-sent events framing: bytes in (split anywhere), the `data` of each complete event out.

/// Incremental SSE decoder.
///
/// ```
/// use mllm_engine::bench_serve::SseDecoder;
/// let mut d = SseDecoder::default();
/// assert!(d.push(b"data: {\"a\"").is_empty());
/// assert_eq!(d.push(b": 1}\n\ndata: [DONE]\n\n"), vec!["{\"a\": 1}", "[DONE]"]);
/// ```
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// `data` lines of the event being read.
    data: Vec<String>,
}

impl SseDecoder {
    /// Feeds bytes; returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(std::mem::take(&mut self.data).join("\n"));
                }
                continue;
            }
            let line = String::from_utf8_lossy(&line);
            // Other fields (event, id, retry) and `:` comments carry nothing we measure.
            if let Some(rest) = line.strip_prefix("data:") {
                self.data.push(rest.strip_prefix(' ').unwrap_or(rest).to_string());
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_at_every_byte() {
        let stream = b": keep-alive\r\n\r\ndata: one\r\n\r\nevent: x\ndata:two\ndata: lines\n\ndata: [DONE]\n\n";
        let mut d = SseDecoder::default();
        let mut got = Vec::new();
        for b in stream {
            got.extend(d.push(std::slice::from_ref(b)));
        }
        assert_eq!(got, vec!["one", "two\nlines", "[DONE]"]);
    }

    #[test]
    fn unfinished_event_is_held_back() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: partial\n").is_empty());
        assert_eq!(d.push(b"\n"), vec!["partial"]);
    }
}
