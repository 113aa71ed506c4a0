//! End-to-end tests of `mllm serve` in-process: a tiny random-weight model (no tokenizer) for
//! the pipeline, scheduling and errors, and the real SmolLM2 (when cached) for chat.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mllm_engine::generation::{LoadedModel, ModelSource};
use mllm_engine::orchestrator::{Engine, EngineConfig};
use mllm_engine::parsers::{ReasoningParserKind, ToolParserKind};
use mllm_engine::server::{router, serve_with, AppState, ServerParsers, DEFAULT_SHUTDOWN_TIMEOUT};
use mllm_engine::tensor::DType;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

const TINY_CONFIG: &str = r#"{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "vocab_size": 256, "rms_norm_eps": 1e-6, "max_position_embeddings": 256,
    "tie_word_embeddings": true}"#;

struct TestServer {
    addr: SocketAddr,
    engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start_with(loaded: LoadedModel, cfg: EngineConfig, api_key: Option<&str>) -> Self {
        Self::start_full(loaded, cfg, api_key, ServerParsers::default(), DEFAULT_SHUTDOWN_TIMEOUT).await
    }

    async fn start_full(
        loaded: LoadedModel,
        cfg: EngineConfig,
        api_key: Option<&str>,
        parsers: ServerParsers,
        shutdown_timeout: Duration,
    ) -> Self {
        let engine = Engine::start(loaded, cfg).expect("engine");
        let state = AppState::new(
            engine.clone(),
            Some("tiny".into()),
            "tiny".into(),
            api_key.map(str::to_string),
        )
        .with_parsers(parsers);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = rx.await;
        };
        let task = tokio::spawn(serve_with(
            listener,
            router(state, 64 << 10),
            engine.clone(),
            shutdown,
            shutdown_timeout,
        ));
        Self {
            addr,
            engine,
            stop: Some(stop),
            task,
        }
    }

    async fn start(cfg: EngineConfig) -> Self {
        Self::start_with(tiny_model(), cfg, None).await
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, None, &[]).await
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, b) = http(self.addr, "POST", path, Some(&body.to_string()), &[]).await;
        (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }

    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }

    /// Waits until no sequence holds KV slots or runs.
    async fn wait_idle(&self) {
        let t = Instant::now();
        while self.metric("mllm_kv_used_tokens").await != 0.0 || self.metric("mllm_num_running_reqs").await != 0.0 {
            assert!(t.elapsed() < Duration::from_secs(20), "KV never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn tiny_model() -> LoadedModel {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, TINY_CONFIG).unwrap();
    let source = ModelSource::Dummy {
        config,
        dtype: DType::F32,
        seed: 7,
    };
    LoadedModel::load(&source, &Default::default()).unwrap()
}

fn cfg() -> EngineConfig {
    EngineConfig {
        max_running_requests: 16,
        max_total_tokens: 4096,
        max_prefill_tokens: 1024,
        context_length: None,
        max_queued_requests: 64,
        disable_radix_cache: false,
        ..EngineConfig::default()
    }
}

/// A minimal HTTP/1.1 client: one request per connection, chunked bodies decoded.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (method, path, body) = (method.to_string(), path.to_string(), body.map(str::to_string));
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || http_blocking(addr, &method, &path, body.as_deref(), &headers))
        .await
        .unwrap()
}

fn http_blocking(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(String, String)],
) -> (u16, String) {
    let raw = common::raw_request(addr, method, path, body.unwrap_or(""), headers);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    common::split_response(raw).map_or((0, String::from_utf8_lossy(raw).into_owned()), |(s, _, b)| (s, b))
}

/// The `data:` payloads of an SSE body.
fn sse(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

fn ids_prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 7 + seed * 13 + 1) % 256).collect()
}

fn gen_body(ids: &[u32], max_new: usize) -> Value {
    json!({"input_ids": ids, "sampling_params": {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": true}})
}

fn output_ids(v: &Value) -> Vec<u64> {
    v["output_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_models_info_metrics() {
    let srv = TestServer::start(cfg()).await;
    assert_eq!(srv.get("/health").await.0, 200);
    let (s, b) = srv.get("/v1/models").await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["data"][0]["id"], "tiny");
    let (s, b) = srv.get("/model_info").await;
    assert!(s == 200 && b.contains("\"is_generation\":true"), "{b}");
    let info: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(info["architectures"], json!(["Qwen3ForCausalLM"]));
    assert_eq!(
        (&info["model_path"], &info["tokenizer_path"]),
        (&json!("tiny"), &json!("tiny"))
    );
    assert_eq!(info["served_model_name"], "tiny");
    assert_eq!(srv.get("/health_generate").await.0, 200);
    let (s, b) = srv.get("/server_info").await;
    let info: Value = serde_json::from_str(&b).unwrap();
    assert_eq!((s, info["max_total_tokens"].as_u64()), (200, Some(4096)), "{b}");
    assert_eq!(info["draining"], false);
    assert!(info["requests_total"].as_u64() >= Some(1), "{b}");
    for live in [
        "num_running_reqs",
        "num_queued_reqs",
        "kv_used_tokens",
        "kv_usage",
        "cache_hit_rate",
    ] {
        assert!(info[live].is_number(), "{live} missing in {b}");
    }
    // What ran, for benchmark records: the device, the weights' format and dtypes.
    assert_eq!(info["device"]["kind"], "cpu", "{b}");
    assert!(info["device"]["cores"].as_u64() >= Some(1), "{b}");
    for fact in ["load_format", "quantization", "weight_dtype", "kv_cache_dtype"] {
        assert!(
            info[fact].as_str().is_some_and(|v| !v.is_empty()),
            "{fact} missing in {b}"
        );
    }
    assert_eq!(
        (&info["cuda_graph_max_bs"], &info["disable_cuda_graph"]),
        (&Value::Null, &json!(false)),
        "{b}"
    );
    assert_eq!(srv.metric("mllm_kv_capacity_tokens").await, 4096.0);
    assert!(srv.metric("mllm_generation_tokens_total").await >= 1.0);
    let (_, m) = srv.get("/metrics").await;
    assert!(m.contains("mllm_time_to_first_token_seconds_bucket"), "{m}");
    assert_eq!(srv.get("/nope").await.0, 404);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generate_plain_and_streamed_agree() {
    let srv = TestServer::start(cfg()).await;
    let ids = ids_prompt(1, 12);
    let (s, v) = srv.post("/generate", &gen_body(&ids, 6)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(output_ids(&v).len(), 6);
    assert_eq!(v["meta_info"]["finish_reason"]["type"], "length");
    assert_eq!(v["meta_info"]["prompt_tokens"], 12);
    let mut body = gen_body(&ids, 6);
    body["stream"] = json!(true);
    let (s, text) = http(srv.addr, "POST", "/generate", Some(&body.to_string()), &[]).await;
    assert_eq!(s, 200);
    let events = sse(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(output_ids(&last), output_ids(&v));
    assert!(events.len() >= 7, "one event per token: {text}");
    // A stop token ends the output (it is the last id, finish "stop").
    let stop_at = output_ids(&v)[2];
    let first = output_ids(&v).iter().position(|&t| t == stop_at).unwrap();
    let body = json!({"input_ids": ids, "sampling_params": {"max_new_tokens": 6, "temperature": 0,
                      "stop_token_ids": [stop_at]}});
    let (_, w) = srv.post("/generate", &body).await;
    assert_eq!(output_ids(&w), output_ids(&v)[..=first].to_vec(), "{w}");
    assert_eq!(w["meta_info"]["finish_reason"]["type"], "stop");
    assert_eq!(w["meta_info"]["finish_reason"]["matched"], stop_at);
    // n = 2 with a seed: two choices.
    let body =
        json!({"input_ids": ids, "sampling_params": {"max_new_tokens": 3, "n": 2, "seed": 5, "ignore_eos": true}});
    let (s, v) = srv.post("/generate", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    // Logprobs.
    let body = json!({"input_ids": ids, "return_logprob": true, "top_logprobs_num": 2,
                      "sampling_params": {"max_new_tokens": 2, "temperature": 0}});
    let (_, v) = srv.post("/generate", &body).await;
    assert_eq!(
        v["meta_info"]["output_token_logprobs"].as_array().map(Vec::len),
        Some(2),
        "{v}"
    );
    srv.wait_idle().await;
    srv.stop().await;
}

async fn run_all(srv: &TestServer, prompts: &[Vec<u32>], max_new: usize, parallel: bool) -> Vec<Vec<u64>> {
    if !parallel {
        let mut out = Vec::new();
        for p in prompts {
            let (s, v) = srv.post("/generate", &gen_body(p, max_new)).await;
            assert_eq!(s, 200, "{v}");
            out.push(output_ids(&v));
        }
        return out;
    }
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (addr, body) = (srv.addr, gen_body(p, max_new).to_string());
            tokio::spawn(async move { http(addr, "POST", "/generate", Some(&body), &[]).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        let (s, b) = t.await.unwrap();
        assert_eq!(s, 200, "{b}");
        out.push(output_ids(&serde_json::from_str(&b).unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_greedy_matches_sequential() {
    let srv = TestServer::start(cfg()).await;
    let prompts: Vec<Vec<u32>> = (0..16).map(|i| ids_prompt(i, 5 + i as usize)).collect();
    let seq = run_all(&srv, &prompts, 8, false).await;
    let par = run_all(&srv, &prompts, 8, true).await;
    assert_eq!(seq, par);
    srv.wait_idle().await;
    srv.stop().await;
}

/// Equal JSON, floats within 1e-4: concurrent requests batch differently from run to run,
/// and a batch's composition moves f32 logprobs in the last bits.
fn same_up_to_rounding(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 1e-4
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_up_to_rounding(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_up_to_rounding(v, w)))
        }
        _ => a == b,
    }
}

/// Overlap scheduling (step k + 1 launched before step k's tokens are read) gives every
/// request exactly what reading each step first gives: greedy and seeded requests of
/// different lengths joining and leaving mid-batch, one stopped by a token it generates (so
/// the step after it already holds a wasted row), logprobs (read at launch), n = 2, and
/// chunked prefill under a small token budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlap_schedule_matches_sync_steps() {
    let sync_cfg = EngineConfig {
        disable_overlap_schedule: true,
        max_prefill_tokens: 24,
        ..cfg()
    };
    let sync = TestServer::start(sync_cfg).await;
    // A token the greedy continuation of prompt 1 produces third: a stop token for it.
    let (s, probe) = sync.post("/generate", &gen_body(&ids_prompt(1, 9), 6)).await;
    assert_eq!(s, 200, "{probe}");
    let stop = output_ids(&probe)[2];
    let mut bodies: Vec<Value> = (0..10u32)
        .map(|i| gen_body(&ids_prompt(i, 5 + 7 * i as usize), 1 + (i as usize * 3) % 11))
        .collect();
    bodies.push(json!({"input_ids": ids_prompt(1, 9), "sampling_params":
        {"max_new_tokens": 10, "temperature": 0, "stop_token_ids": [stop]}}));
    for seed in 0..3 {
        bodies.push(json!({"input_ids": ids_prompt(20 + seed, 30), "sampling_params":
            {"max_new_tokens": 7, "temperature": 1.0, "top_k": 20, "seed": seed, "ignore_eos": true}}));
    }
    bodies.push(
        json!({"input_ids": ids_prompt(30, 12), "return_logprob": true, "top_logprobs_num": 2,
        "sampling_params": {"max_new_tokens": 5, "temperature": 0, "ignore_eos": true}}),
    );
    bodies.push(json!({"input_ids": ids_prompt(31, 12), "sampling_params":
        {"max_new_tokens": 4, "temperature": 0.8, "seed": 9, "n": 2, "ignore_eos": true}}));
    let run = |srv: &TestServer| {
        let addr = srv.addr;
        let bodies = bodies.clone();
        async move {
            let tasks: Vec<_> = bodies
                .iter()
                .map(|b| {
                    let b = b.to_string();
                    tokio::spawn(async move { http(addr, "POST", "/generate", Some(&b), &[]).await })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                let (s, b) = t.await.unwrap();
                assert_eq!(s, 200, "{b}");
                let mut v: Value = serde_json::from_str(&b).unwrap();
                // Ids, finish reasons and logprobs; not timings or request ids.
                let strip = |c: &mut Value| {
                    for k in ["id", "e2e_latency", "ttft", "cached_tokens"] {
                        c["meta_info"].as_object_mut().map(|m| m.remove(k));
                    }
                };
                match v.as_array_mut() {
                    Some(choices) => choices.iter_mut().for_each(strip),
                    None => strip(&mut v),
                }
                out.push(v);
            }
            out
        }
    };
    let expect = run(&sync).await;
    sync.wait_idle().await;
    sync.stop().await;
    assert!(
        expect[10]["meta_info"]["finish_reason"].to_string().contains("stop"),
        "{}",
        expect[10]
    );
    let overlap = TestServer::start(EngineConfig {
        disable_overlap_schedule: false,
        ..sync_cfg
    })
    .await;
    let got = run(&overlap).await;
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert!(same_up_to_rounding(g, e), "request {i}:\n{g}\n{e}");
    }
    overlap.wait_idle().await;
    overlap.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_prefill_matches_one_shot() {
    let prompts: Vec<Vec<u32>> = vec![ids_prompt(3, 150), ids_prompt(4, 9)];
    let whole = TestServer::start(cfg()).await;
    let expect = run_all(&whole, &prompts, 5, false).await;
    whole.stop().await;
    let chunked = TestServer::start(EngineConfig {
        max_prefill_tokens: 16,
        ..cfg()
    })
    .await;
    assert_eq!(run_all(&chunked, &prompts, 5, true).await, expect);
    chunked.wait_idle().await;
    chunked.stop().await;
}

/// Seeded sampling gives the same tokens whether the prompt is prefilled at once or in
/// chunks: the rows of a chunk with more to come are sampled with a throwaway state, so
/// the request's own RNG advances only for its real tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_prefill_keeps_seeded_sampling() {
    let body = json!({"input_ids": ids_prompt(5, 120), "sampling_params":
        {"max_new_tokens": 8, "temperature": 1.0, "seed": 7, "ignore_eos": true}});
    let whole = TestServer::start(cfg()).await;
    let (s, expect) = whole.post("/generate", &body).await;
    assert_eq!(s, 200, "{expect}");
    whole.stop().await;
    let chunked = TestServer::start(EngineConfig {
        max_prefill_tokens: 16,
        ..cfg()
    })
    .await;
    let (s, got) = chunked.post("/generate", &body).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(output_ids(&got), output_ids(&expect));
    chunked.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiny_kv_budget_retracts_and_completes() {
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| ids_prompt(i, 10)).collect();
    let big = TestServer::start(cfg()).await;
    let expect = run_all(&big, &prompts, 20, false).await;
    big.stop().await;
    let srv = TestServer::start(EngineConfig {
        max_total_tokens: 64,
        ..cfg()
    })
    .await;
    assert_eq!(run_all(&srv, &prompts, 20, true).await, expect);
    assert!(srv.metric("mllm_retractions_total").await > 0.0);
    srv.wait_idle().await;
    // Beyond the KV capacity: 400 naming the field.
    let (s, v) = srv.post("/generate", &gen_body(&ids_prompt(1, 10), 60)).await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("sampling_params.max_new_tokens")),
        "{v}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefix_cache_reuses_kv_and_flushes() {
    let srv = TestServer::start(cfg()).await;
    let shared = ids_prompt(9, 40);
    let other = [&shared[..], &[5, 6, 7]].concat();
    let first = run_all(&srv, std::slice::from_ref(&shared), 6, false).await;
    assert_eq!(srv.metric("mllm_cached_tokens_total").await, 0.0);
    assert_eq!(run_all(&srv, std::slice::from_ref(&shared), 6, false).await, first);
    assert!(srv.metric("mllm_cached_tokens_total").await >= 39.0);
    // A longer prompt sharing the prefix gives what a cold server gives.
    let warm = run_all(&srv, std::slice::from_ref(&other), 6, true).await;
    srv.wait_idle().await;
    let (s, _) = http(srv.addr, "POST", "/flush_cache", None, &[]).await;
    assert_eq!(s, 200);
    let before = srv.metric("mllm_cached_tokens_total").await;
    assert_eq!(run_all(&srv, &[other], 6, false).await, warm);
    assert_eq!(
        srv.metric("mllm_cached_tokens_total").await,
        before,
        "flushed: nothing reused"
    );
    srv.stop().await;
    let cold = TestServer::start(EngineConfig {
        disable_radix_cache: true,
        ..cfg()
    })
    .await;
    assert_eq!(run_all(&cold, &[shared], 6, false).await, first);
    cold.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_request_ends_generation() {
    let srv = TestServer::start(cfg()).await;
    let body = json!({"rid": "victim", "input_ids": ids_prompt(2, 4),
                      "sampling_params": {"max_new_tokens": 250, "ignore_eos": true}});
    let addr = srv.addr;
    let task = tokio::spawn(async move { http(addr, "POST", "/generate", Some(&body.to_string()), &[]).await });
    let t = Instant::now();
    while srv.metric("mllm_num_running_reqs").await == 0.0 {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (s, _) = srv.post("/abort_request", &json!({"rid": "victim"})).await;
    assert_eq!(s, 200);
    let (s, b) = task.await.unwrap();
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        (s, v["meta_info"]["finish_reason"]["type"].as_str()),
        (200, Some("abort")),
        "{b}"
    );
    srv.wait_idle().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_disconnect_frees_kv() {
    let srv = TestServer::start(cfg()).await;
    let mut body = gen_body(&ids_prompt(5, 8), 240);
    body["stream"] = json!(true);
    let body = body.to_string();
    let mut s = TcpStream::connect(srv.addr).unwrap();
    let req = format!(
        "POST /generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    srv.wait_idle().await;
    // Non-streaming too: the handler is dropped with the connection.
    let body = gen_body(&ids_prompt(6, 8), 240).to_string();
    let mut s = TcpStream::connect(srv.addr).unwrap();
    let req = format!(
        "POST /generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let t = Instant::now();
    while srv.metric("mllm_num_running_reqs").await == 0.0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(s);
    srv.wait_idle().await;
    assert!(
        srv.metric("mllm_generation_tokens_total").await < 480.0,
        "generation did not stop"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_400_naming_the_field() {
    let srv = TestServer::start(cfg()).await;
    let (s, b) = http(srv.addr, "POST", "/generate", Some("{not json"), &[]).await;
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("malformed JSON"), "{b}");
    let cases = [
        (
            "/generate",
            json!({"input_ids": [1, 2], "sampling_params": {"temperature": "hot"}}),
            "sampling_params",
        ),
        (
            "/generate",
            json!({"input_ids": [1, 2], "sampling_params": {"temperature": -1}}),
            "sampling_params.temperature",
        ),
        ("/generate", json!({"input_ids": "x"}), "input_ids"),
        (
            "/generate",
            json!({"input_ids": [1, 2], "sampling_params": {"n": 100}}),
            "sampling_params.n",
        ),
        (
            "/generate",
            json!({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 0}}),
            "sampling_params.max_new_tokens",
        ),
        ("/generate", json!({"input_ids": ids_prompt(1, 300)}), "input_ids"),
        ("/generate", json!({"input_ids": []}), "input_ids"),
        ("/generate", json!({"input_ids": [999]}), "input_ids"),
        ("/generate", json!({}), "text"),
        (
            "/v1/completions",
            json!({"prompt": [1, 2], "max_tokens": 0}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1, 2], "max_tokens": 1000}),
            "max_tokens",
        ),
        ("/v1/completions", json!({"prompt": [1, 2], "model": "gpt-9"}), "model"),
        ("/v1/completions", json!({"prompt": [1, 2], "n": 0}), "n"),
        ("/v1/completions", json!({"prompt": [1, 2], "top_p": 2}), "top_p"),
        ("/v1/completions", json!({"max_tokens": 2}), "prompt"),
        ("/v1/chat/completions", json!({"messages": []}), "messages"),
        ("/v1/chat/completions", json!({"messages": "hi"}), "messages"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "temperature": "x"}),
            "temperature",
        ),
    ];
    for (path, body, param) in cases {
        let (s, v) = srv.post(path, &body).await;
        assert_eq!(s, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["param"].as_str(), Some(param), "{path} {body}: {v}");
        assert!(
            v["error"]["message"].is_string() && v["error"]["type"].is_string(),
            "{v}"
        );
    }
    let (_, v) = srv.post("/generate", &json!({"input_ids": ids_prompt(1, 300)})).await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("300") && msg.contains("256"), "{msg}");
    // Completions with ids work without a tokenizer; text needs one.
    let (s, v) = srv
        .post(
            "/v1/completions",
            &json!({"prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let (s, v) = srv
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("messages")), "{v}");
    // Body limit.
    let big = format!("{{\"text\": \"{}\"}}", "a".repeat(100 << 10));
    let (s, b) = http(srv.addr, "POST", "/generate", Some(&big), &[]).await;
    assert_eq!(s, 413, "{b}");
    assert!(b.contains("\"error\""), "{b}");
    srv.wait_idle().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_key_and_queue_limit() {
    let srv = TestServer::start_with(
        tiny_model(),
        EngineConfig {
            max_running_requests: 1,
            max_queued_requests: 0,
            ..cfg()
        },
        Some("sekrit"),
    )
    .await;
    assert_eq!(srv.get("/health").await.0, 200);
    assert_eq!(srv.get("/v1/models").await.0, 401);
    let auth = [("Authorization", "Bearer sekrit")];
    assert_eq!(http(srv.addr, "GET", "/v1/models", None, &auth).await.0, 200);
    let wrong = [("Authorization", "Bearer sekriT")];
    assert_eq!(http(srv.addr, "GET", "/v1/models", None, &wrong).await.0, 401);
    // The one slot (1 running + 0 queued) is taken: the next request gets 429.
    let body = gen_body(&ids_prompt(1, 4), 4).to_string();
    let held = srv.engine.reserve(1).unwrap();
    let (s, b) = http(srv.addr, "POST", "/generate", Some(&body), &auth).await;
    assert_eq!(s, 429, "{b}");
    assert!(b.contains("rate_limit_error"), "{b}");
    drop(held);
    assert_eq!(http(srv.addr, "POST", "/generate", Some(&body), &auth).await.0, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_in_flight_requests() {
    let srv = TestServer::start(cfg()).await;
    let addr = srv.addr;
    // On a loaded machine a request can finish between two metric polls; then it was never
    // seen in flight and another one is sent, until one is caught running.
    let t = Instant::now();
    let task = 'caught: loop {
        let body = gen_body(&ids_prompt(1, 4), 200).to_string();
        let task = tokio::spawn(async move { http(addr, "POST", "/generate", Some(&body), &[]).await });
        while !task.is_finished() {
            if srv.metric("mllm_num_running_reqs").await > 0.0 {
                break 'caught task;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(task.await.unwrap().0, 200);
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no request was ever seen running"
        );
    };
    let engine = srv.engine.clone();
    srv.stop().await;
    let (s, b) = task.await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(output_ids(&serde_json::from_str(&b).unwrap()).len(), 200);
    assert!(!engine.is_alive());
    assert!(TcpStream::connect(addr).is_err());
}

fn smollm2(test: &str) -> Option<LoadedModel> {
    let path = common::default_model_gguf(test)?;
    Some(LoadedModel::load(&ModelSource::Gguf(path), &Default::default()).expect("loading SmolLM2"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smollm2_chat_completions() {
    let Some(model) = smollm2("smollm2_chat_completions") else {
        return;
    };
    let srv = TestServer::start_with(
        model,
        EngineConfig {
            max_total_tokens: 2048,
            ..cfg()
        },
        None,
    )
    .await;
    let msgs = json!([{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]);
    let body = json!({"model": "tiny", "messages": msgs, "max_tokens": 12, "temperature": 0,
                      "logprobs": true, "top_logprobs": 2});
    let (s, v) = srv.post("/v1/chat/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(text.contains("Paris"), "{text}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        v["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap())
    );
    // Streamed: the same text, a usage chunk and [DONE].
    let body = json!({"messages": msgs, "max_tokens": 12, "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}});
    let (s, raw) = http(srv.addr, "POST", "/v1/chat/completions", Some(&body.to_string()), &[]).await;
    assert_eq!(s, 200);
    let events = sse(&raw);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        v["usage"]["completion_tokens"]
    );
    // A stop string never appears, not even in part.
    let body = json!({"messages": msgs, "max_tokens": 12, "temperature": 0, "stop": "Paris"});
    let (_, v) = srv.post("/v1/chat/completions", &body).await;
    let stopped = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        !stopped.contains("Paris") && text.starts_with(stopped),
        "{stopped:?} vs {text:?}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Completions with text and n = 2.
    let body = json!({"prompt": "The capital of France is", "max_tokens": 4, "n": 2, "temperature": 0});
    let (s, v) = srv.post("/v1/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], v["choices"][1]["text"]);
    srv.wait_idle().await;
    srv.stop().await;
}

/// `mllm serve` as a process: prints its capacity and address, serves, and on SIGTERM finishes
/// the in-flight request before exiting 0.
#[test]
fn mllm_serve_binary_drains_on_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, TINY_CONFIG).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mllm"))
        .args([
            "serve",
            "--port",
            "0",
            "--max-total-tokens",
            "512",
            "--served-model-name",
            "tiny",
            "--weight-dtype",
            "bf16",
        ])
        .arg("--dummy-config")
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if let Some(a) = line.strip_prefix("mllm: serving on http://") {
            addr = Some(a.parse::<SocketAddr>().unwrap());
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no address in {seen}"));
    assert!(seen.contains("KV cache holds 512 tokens"), "{seen}");
    std::thread::spawn(move || for _ in lines {});
    let (s, _) = http_blocking(addr, "GET", "/health", None, &[]);
    assert_eq!(s, 200);
    // Random weights in the dtype asked for, and /server_info says so.
    let (s, b) = http_blocking(addr, "GET", "/server_info", None, &[]);
    let info: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        (s, &info["load_format"], &info["weight_dtype"]),
        (200, &json!("dummy"), &json!("bf16")),
        "{b}"
    );
    let body = gen_body(&ids_prompt(1, 4), 200).to_string();
    let req = std::thread::spawn(move || http_blocking(addr, "POST", "/generate", Some(&body), &[]));
    std::thread::sleep(Duration::from_millis(20));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (s, b) = req.join().unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(output_ids(&serde_json::from_str(&b).unwrap()).len(), 200);
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_answers_503_with_retry_after_then_aborts_at_the_timeout() {
    let srv = TestServer::start_full(
        tiny_model(),
        cfg(),
        None,
        ServerParsers::default(),
        Duration::from_millis(500),
    )
    .await;
    // A held permit stands for a request in flight that outlives the shutdown timeout.
    let held = srv.engine.reserve(1).unwrap();
    let (addr, engine) = (srv.addr, srv.engine.clone());
    let stopping = tokio::spawn(srv.stop());
    let t = Instant::now();
    while !engine.is_draining() {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let body = gen_body(&ids_prompt(1, 4), 4).to_string();
    let raw = tokio::task::spawn_blocking(move || common::raw_request(addr, "POST", "/generate", &body, &[]))
        .await
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("retry-after: 5"), "{raw}");
    assert!(raw.contains("draining"), "{raw}");
    assert_eq!(http(addr, "GET", "/health", None, &[]).await.0, 503);
    // Past the timeout the server stops although the permit is still held.
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the drain ignored its timeout")
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_completion_prompts_match_single_requests() {
    let srv = TestServer::start(cfg()).await;
    let prompts = [ids_prompt(2, 6), ids_prompt(5, 9)];
    let body = json!({"prompt": prompts, "max_tokens": 5, "n": 2, "temperature": 0, "ignore_eos": true});
    let (s, v) = srv.post("/v1/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    assert_eq!(v["usage"]["prompt_tokens"], 15);
    assert_eq!(v["usage"]["completion_tokens"], 20);
    for (p, ids) in prompts.iter().enumerate() {
        let one =
            json!({"input_ids": ids, "sampling_params": {"max_new_tokens": 5, "temperature": 0, "ignore_eos": true}});
        let (_, single) = srv.post("/generate", &one).await;
        for j in 0..2 {
            let c = &choices[p * 2 + j];
            assert_eq!(c["index"], p * 2 + j);
            assert_eq!(c["finish_reason"], "length");
            let lp = json!({"prompt": ids, "max_tokens": 5, "temperature": 0, "ignore_eos": true, "logprobs": 0});
            let (_, solo) = srv.post("/v1/completions", &lp).await;
            assert_eq!(solo["choices"][0]["text"], c["text"]);
        }
        assert_eq!(output_ids(&single).len(), 5);
    }
    let too_many = json!({"prompt": vec![ids_prompt(1, 2); 40], "max_tokens": 1, "n": 8});
    let (s, v) = srv.post("/v1/completions", &too_many).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("prompt")), "{v}");
    let (s, v) = srv
        .post("/v1/completions", &json!({"prompt": [], "max_tokens": 1}))
        .await;
    assert_eq!(s, 400, "{v}");
    srv.wait_idle().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_tool_and_format_fields_are_checked() {
    let srv = TestServer::start(cfg()).await;
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let tool = json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}});
    let cases = [
        (
            json!({"messages": msgs, "response_format": {"type": "json_object"}}),
            "response_format",
            "json_object",
        ),
        (
            json!({"messages": msgs, "tools": [tool], "tool_choice": "required"}),
            "tool_choice",
            "constrained",
        ),
        (
            json!({"messages": msgs, "tools": [tool]}),
            "tools",
            "--tool-call-parser",
        ),
        (
            json!({"messages": msgs, "tools": [{"type": "function"}]}),
            "tools[0]",
            "function",
        ),
        (
            json!({"messages": msgs, "tool_choice": "auto"}),
            "tool_choice",
            "needs `tools`",
        ),
        (
            json!({"messages": msgs, "chat_template_kwargs": [1]}),
            "chat_template_kwargs",
            "object",
        ),
    ];
    for (body, param, words) in cases {
        let (s, v) = srv.post("/v1/chat/completions", &body).await;
        assert_eq!((s, v["error"]["param"].as_str()), (400, Some(param)), "{body} -> {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(words), "{v}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smollm2_chat_with_parsers_and_text_options() {
    let Some(model) = smollm2("smollm2_chat_with_parsers_and_text_options") else {
        return;
    };
    let parsers = ServerParsers {
        reasoning: Some(ReasoningParserKind::Qwen3),
        tools: Some(ToolParserKind::Hermes),
    };
    let srv = TestServer::start_full(
        model,
        EngineConfig {
            max_total_tokens: 2048,
            ..cfg()
        },
        None,
        parsers,
        DEFAULT_SHUTDOWN_TIMEOUT,
    )
    .await;
    let tool = json!({"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
    let msgs = json!([{"role": "user", "content": "What is the capital of France?"}]);
    let body = json!({"messages": msgs, "tools": [tool], "max_tokens": 24, "temperature": 0});
    let (s, v) = srv.post("/v1/chat/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    let message = &v["choices"][0]["message"];
    let content = message["content"].as_str().unwrap_or_default().to_string();
    for markup in ["<tool_call>", "</tool_call>", "<think>"] {
        assert!(!content.contains(markup), "{v}");
    }
    // Streamed deltas rebuild the same message.
    let stream = json!({"messages": msgs, "tools": [tool], "max_tokens": 24, "temperature": 0, "stream": true});
    let (s, raw) = http(srv.addr, "POST", "/v1/chat/completions", Some(&stream.to_string()), &[]).await;
    assert_eq!(s, 200);
    let events = sse(&raw);
    let deltas: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0].clone())
        .collect();
    let streamed: String = deltas.iter().filter_map(|c| c["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, content);
    assert_eq!(
        deltas.last().unwrap()["finish_reason"],
        v["choices"][0]["finish_reason"]
    );
    // Tool turns and tool results reach the template.
    let turns = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C and sunny"},
    ]);
    let body = json!({"messages": turns, "tools": [tool], "max_tokens": 8, "temperature": 0});
    let (s, v) = srv.post("/v1/chat/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    // continue_final_message: the answer continues the given assistant text.
    let partial = json!([{"role": "user", "content": "What is the capital of France?"},
                         {"role": "assistant", "content": "The capital of France is"}]);
    let body = json!({"messages": partial, "continue_final_message": true, "max_tokens": 4, "temperature": 0});
    let (s, v) = srv.post("/v1/chat/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    let more = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(more.contains("Paris"), "{v}");
    // no_stop_trim keeps the matched stop string; skip_special_tokens=false shows EOS text.
    let body = json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0,
                      "stop": "Paris", "no_stop_trim": true});
    let (_, v) = srv.post("/v1/completions", &body).await;
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.ends_with("Paris"), "{v}");
    srv.wait_idle().await;
    srv.stop().await;
}

/// `mllm serve` binds before loading: until the model is up every path answers 503 `loading`
/// (probes and routers wait rather than see a refused connection), then it serves.
#[test]
fn mllm_serve_answers_503_while_loading() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    // ~230M random f32 parameters: loading takes seconds on the 2-core CI machine, so the
    // first /health below (sent right after the listening line) sees it loading even when
    // the test thread is descheduled for a while.
    let big = TINY_CONFIG
        .replace("\"hidden_size\": 64", "\"hidden_size\": 768")
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 2048")
        .replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 24")
        .replace("\"vocab_size\": 256", "\"vocab_size\": 32000")
        .replace("\"head_dim\": 16", "\"head_dim\": 192");
    std::fs::write(&config, big).unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_mllm"))
            .args(["serve", "--port", "0", "--max-total-tokens", "256", "--dummy-config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(child.0.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            seen.push_str(&line);
            let a = line.strip_prefix("mllm: listening on http://")?;
            Some(a.split(';').next()?.parse::<SocketAddr>().unwrap())
        })
        .unwrap_or_else(|| panic!("no listening line in {seen}"));
    let (s, b) = http_blocking(addr, "GET", "/health", None, &[]);
    assert_eq!(s, 503, "{b}");
    assert!(b.contains("loading"), "{b}");
    let served = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("mllm: serving on"));
    assert!(served);
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(http_blocking(addr, "GET", "/health", None, &[]).0, 200);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(child.0.wait().unwrap().success());
}

/// Kills the server if the test fails first (a leaked child would keep the test's output
/// pipe open and hang the test runner).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
