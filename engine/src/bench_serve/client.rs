//! The HTTP side: asking the server what it serves, and sending one streamed request while
//! timing its first output, the gaps between outputs and its end.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::backend::Backend;
use super::metrics::{Outcome, RequestStats};
use super::sse::SseDecoder;
use super::workload::WorkItem;

/// What the server says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerFacts {
    /// The served model name (first of `GET /v1/models`).
    pub model: String,
    /// The context length, when the server reports one.
    pub context_len: Option<usize>,
    /// The vocabulary size (`GET /model_info`), when reported.
    pub vocab_size: Option<u32>,
    /// `GET /server_info`, when the server has it (recorded as-is).
    pub server_info: Option<Value>,
}

/// A client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    backend: Backend,
}

impl Client {
    /// A client of `base_url` (e.g. `http://127.0.0.1:30000`). Proxies from the environment are
    /// not used: they would be part of what is measured.
    pub fn new(base_url: &str, api_key: Option<String>, backend: Backend) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
            backend,
        })
    }

    /// The endpoint loaded.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, String> {
        let url = format!("{}{path}", self.base_url);
        let mut req = self.http.get(&url);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {}: {}", status.as_u16(), error_message(&text)));
        }
        serde_json::from_str(&text).map_err(|e| format!("GET {url}: the answer is not JSON: {e}"))
    }

    /// Asks `/v1/models` (required unless `model` is given), `/model_info` and `/server_info`.
    pub async fn discover(&self, model: Option<&str>) -> anyhow::Result<ServerFacts> {
        let models = self.get_json("/v1/models").await;
        let first = models.as_ref().ok().and_then(|m| m.pointer("/data/0").cloned());
        let name = match (model, &first, &models) {
            (Some(m), _, _) => m.to_string(),
            (None, Some(f), _) => f
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow::anyhow!("GET /v1/models: the first model has no `id`; pass --model"))?
                .to_string(),
            (None, None, Err(e)) => {
                anyhow::bail!("cannot ask the server for its model ({e}); is it running? Or pass --model")
            }
            (None, None, Ok(_)) => anyhow::bail!("GET /v1/models lists no model; pass --model"),
        };
        let info = self.get_json("/model_info").await.ok();
        let size = |v: Option<&Value>, key: &str| v.and_then(|v| v.get(key)).and_then(Value::as_u64);
        let context_len = size(first.as_ref(), "max_model_len").or_else(|| size(info.as_ref(), "context_length"));
        Ok(ServerFacts {
            model: name,
            context_len: context_len.map(|n| n as usize),
            vocab_size: size(info.as_ref(), "vocab_size").and_then(|n| u32::try_from(n).ok()),
            server_info: self.get_json("/server_info").await.ok(),
        })
    }

    /// Sends `item` and measures it; every failure becomes an `Err` naming its cause.
    pub async fn send(&self, item: &WorkItem, model: &str) -> Outcome {
        let body = self.backend.body(item, model).ok_or_else(|| {
            format!(
                "{} cannot send token-id prompts; use --backend openai or native",
                self.backend.path()
            )
        })?;
        let url = format!("{}{}", self.base_url, self.backend.path());
        let mut req = self.http.post(&url).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let start = Instant::now();
        let mut resp = req.send().await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("HTTP {}: {}", status.as_u16(), error_message(&text)));
        }
        let mut timer = StreamTimer::new(start);
        let mut decoder = SseDecoder::default();
        let mut done = false;
        while let Some(bytes) = resp.chunk().await.map_err(|e| error_chain(&e))? {
            for data in decoder.push(&bytes) {
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let event: Value =
                    serde_json::from_str(&data).map_err(|e| format!("a streamed event is not JSON ({e}): {data}"))?;
                let info = self.backend.read_event(&event, timer.completion)?;
                timer.record(info.token, info.prompt_tokens, info.completion_tokens);
            }
        }
        if !done {
            return Err("the stream ended without [DONE]".into());
        }
        timer.finish(item)
    }
}

/// Times of one stream's events.
struct StreamTimer {
    start: Instant,
    last: Option<Instant>,
    ttft: Option<Duration>,
    itl_s: Vec<f64>,
    events: usize,
    prompt: Option<usize>,
    completion: usize,
    counted: bool,
}

impl StreamTimer {
    fn new(start: Instant) -> Self {
        Self {
            start,
            last: None,
            ttft: None,
            itl_s: Vec::new(),
            events: 0,
            prompt: None,
            completion: 0,
            counted: false,
        }
    }

    fn record(&mut self, token: bool, prompt: Option<usize>, completion: Option<usize>) {
        let now = Instant::now();
        if token {
            self.events += 1;
            match self.last {
                None => self.ttft = Some(now - self.start),
                Some(last) => self.itl_s.push((now - last).as_secs_f64()),
            }
            self.last = Some(now);
        }
        self.prompt = prompt.or(self.prompt);
        if let Some(c) = completion {
            self.completion = c;
            self.counted = true;
        }
    }

    fn finish(self, item: &WorkItem) -> Outcome {
        let e2e_s = self.start.elapsed().as_secs_f64();
        let ttft = self.ttft.ok_or("the stream carried no output")?;
        // Without a usage report, each event with output is one token (this server's
        // streams carry one token per event).
        let output_tokens = if self.counted { self.completion } else { self.events };
        Ok(RequestStats {
            input_tokens: self.prompt.unwrap_or(item.input_len),
            output_tokens,
            ttft_s: ttft.as_secs_f64(),
            e2e_s,
            itl_s: self.itl_s,
        })
    }
}

/// The `error.message` of an OpenAI-style error body, else the body itself (shortened).
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let msg = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message").or_else(|| v.get("message")))
        .and_then(Value::as_str);
    match msg {
        Some(m) => m.to_string(),
        None => body.chars().take(200).collect(),
    }
}

/// A reqwest error with its causes (its own message omits e.g. "connection refused").
fn error_chain(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_their_message() {
        assert_eq!(
            error_message(r#"{"error": {"message": "queue full", "code": 429}}"#),
            "queue full"
        );
        assert_eq!(error_message("plain text"), "plain text");
    }

    #[test]
    fn timer_counts_events_without_usage() {
        let item = WorkItem {
            prompt: super::super::workload::Prompt::Ids(vec![1; 3]),
            input_len: 3,
            output_len: 2,
        };
        let mut t = StreamTimer::new(Instant::now());
        t.record(false, None, None);
        t.record(true, None, None);
        t.record(true, None, None);
        let s = t.finish(&item).unwrap();
        assert_eq!((s.input_tokens, s.output_tokens, s.itl_s.len()), (3, 2, 1));
        assert!(s.ttft_s <= s.e2e_s);
        let empty = StreamTimer::new(Instant::now()).finish(&item).unwrap_err();
        assert!(empty.contains("no output"));
    }
}
