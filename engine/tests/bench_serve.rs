//! End-to-end tests of `mllm bench-serve` against an in-process server on a tiny random-weight
//! model (no tokenizer, so prompts are token ids): every request succeeds and generates exactly
//! what was asked; failures are counted, not fatal; the CLI writes its JSON line.

use std::net::SocketAddr;
use std::sync::Arc;

use mllm_engine::bench_serve::{
    random_workload, run_benchmark, Backend, BenchConfig, Dataset, LenRange, RandomSpec, TokenIdRange,
};
use mllm_engine::generation::{LoadedModel, ModelSource};
use mllm_engine::orchestrator::{Engine, EngineConfig};
use mllm_engine::server::{router, serve, AppState};
use mllm_engine::tensor::DType;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// 256 ids of vocabulary, 256 positions of context.
const TINY_QWEN3: &str = r#"{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "vocab_size": 256, "rms_norm_eps": 1e-6, "max_position_embeddings": 256,
    "tie_word_embeddings": true}"#;

/// A server on a free loopback port, stopped by [`Server::stop`].
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(&config, TINY_QWEN3).unwrap();
        let source = ModelSource::Dummy {
            config,
            dtype: DType::F32,
            seed: 11,
        };
        let loaded = LoadedModel::load(&source, &Default::default()).unwrap();
        let cfg = EngineConfig {
            max_running_requests: 8,
            max_total_tokens: 4096,
            max_prefill_tokens: 1024,
            ..Default::default()
        };
        let engine: Arc<Engine> = Engine::start(loaded, cfg).unwrap();
        let state = AppState::new(engine.clone(), Some("tiny".into()), "tiny".into(), None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, router(state, 1 << 20), engine, async {
            let _ = rx.await;
        }));
        Self { addr, stop, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn config(base_url: String, backend: Backend) -> BenchConfig {
    BenchConfig {
        base_url,
        backend,
        model: None,
        api_key: None,
        dataset: Dataset::Random,
        dataset_path: None,
        num_prompts: 8,
        input_len: LenRange { min: 8, max: 32 },
        output_len: LenRange { min: 4, max: 16 },
        sharegpt_output_len: None,
        token_id_range: None,
        seed: 5,
        request_rate: None,
        max_concurrency: Some(4),
        warmup_requests: 1,
    }
}

/// The token counts the workload of `cfg` asks for (ids drawn as for a 256-id vocabulary).
fn expected_tokens(cfg: &BenchConfig) -> (usize, usize) {
    let spec = RandomSpec {
        num_prompts: cfg.num_prompts,
        input_len: cfg.input_len,
        output_len: cfg.output_len,
        token_ids: TokenIdRange::for_vocab(256),
        seed: cfg.seed,
    };
    let w = random_workload(&spec);
    (
        w.iter().map(|i| i.input_len).sum(),
        w.iter().map(|i| i.output_len).sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_succeeds_with_the_asked_token_counts() {
    let srv = Server::start().await;
    for backend in [Backend::Openai, Backend::Native] {
        let cfg = config(srv.url(), backend);
        let res = run_benchmark(&cfg, false).await.unwrap();
        let m = &res.metrics;
        assert_eq!((m.completed, m.failed), (8, 0), "{backend:?}: {:?}", m.errors);
        assert_eq!(
            (m.total_input_tokens, m.total_output_tokens),
            expected_tokens(&cfg),
            "{backend:?}"
        );
        assert_eq!(res.model, "tiny");
        assert_eq!(res.token_ids, Some(TokenIdRange { lo: 64, hi: 256 }));
        assert!(m.output_throughput > 0.0 && m.duration_s > 0.0);
        let (ttft, e2e) = (m.ttft_ms.unwrap(), m.e2e_ms.unwrap());
        assert!(ttft.p50 <= e2e.p50 && ttft.max <= e2e.max, "{ttft:?} {e2e:?}");
        assert!(m.tpot_ms.is_some());
        let server = res.server_info.as_ref().unwrap();
        assert_eq!(server["max_running_requests"], 8);
        // The record says what ran: device and quantization come from the server.
        assert_eq!(server["device"]["kind"], "cpu", "{server}");
        assert!(server["quantization"].is_string(), "{server}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_requests_are_counted_with_their_error() {
    let srv = Server::start().await;
    let mut cfg = config(srv.url(), Backend::Openai);
    // A wrong model name gets 400 from every request; without warmup the run still completes.
    cfg.model = Some("no-such-model".into());
    cfg.warmup_requests = 0;
    let res = run_benchmark(&cfg, false).await.unwrap();
    let m = &res.metrics;
    assert_eq!((m.completed, m.failed), (0, 8));
    let (msg, count) = m.errors.iter().next().unwrap();
    assert!(msg.starts_with("HTTP 400") && msg.contains("no-such-model"), "{msg}");
    assert_eq!(*count, 8);
    // With warmup, the first failure stops the run before it starts.
    cfg.warmup_requests = 1;
    let err = run_benchmark(&cfg, false).await.unwrap_err().to_string();
    assert!(err.contains("warmup request") && err.contains("HTTP 400"), "{err}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_clear_errors() {
    let srv = Server::start().await;
    let mut cfg = config(srv.url(), Backend::OpenaiChat);
    let err = run_benchmark(&cfg, false).await.unwrap_err().to_string();
    assert!(
        err.contains("token ids") && err.contains("/v1/chat/completions"),
        "{err}"
    );
    cfg.backend = Backend::Openai;
    cfg.input_len = LenRange { min: 200, max: 250 };
    let err = run_benchmark(&cfg, false).await.unwrap_err().to_string();
    assert!(err.contains("exceeds the server's context length 256"), "{err}");
    cfg.input_len = LenRange { min: 8, max: 8 };
    cfg.token_id_range = Some(TokenIdRange { lo: 10, hi: 300 });
    let err = run_benchmark(&cfg, false).await.unwrap_err().to_string();
    assert!(err.contains("past the vocabulary (256 ids)"), "{err}");
    cfg.token_id_range = None;
    cfg.dataset = Dataset::Sharegpt;
    let err = run_benchmark(&cfg, false).await.unwrap_err().to_string();
    assert!(err.contains("--dataset-path"), "{err}");
    srv.stop().await;
    // Nobody listens any more.
    let err = run_benchmark(&config(srv_url_closed().await, Backend::Openai), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is it running"), "{err}");
}

/// A loopback URL with no listener.
async fn srv_url_closed() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_prints_the_table_and_appends_json_lines() {
    let srv = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs.jsonl");
    let port = srv.addr.port().to_string();
    let out_arg = out.display().to_string();
    let run = move |conc: &'static str| {
        let (port, out_arg) = (port.clone(), out_arg.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_mllm"))
                .args([
                    "bench-serve",
                    "--port",
                    &port,
                    "--num-prompts",
                    "4",
                    "--input-len-range",
                    "8:16",
                ])
                .args([
                    "--output-len-range",
                    "5",
                    "--max-concurrency",
                    conc,
                    "--disable-progress",
                ])
                .args(["--output-file", &out_arg])
                .output()
                .unwrap()
        })
    };
    for conc in ["2", "1"] {
        let o = run(conc).await.unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
        assert!(stdout.contains("Output token throughput (tok/s):") && stdout.contains("P99 TPOT (ms):"));
        assert!(stdout.contains(&format!("concurrency {conc}")), "{stdout}");
    }
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for (line, conc) in lines.iter().zip([2, 1]) {
        assert_eq!(line["bench"], "bench-serve");
        assert_eq!(line["config"]["max_concurrency"], conc);
        assert_eq!(line["config"]["input_len"]["max"], 16);
        assert_eq!(line["metrics"]["completed"], 4);
        assert_eq!(line["metrics"]["total_output_tokens"], 20);
        assert!(line["metrics"]["ttft_ms"]["p99"].as_f64().unwrap() > 0.0);
        assert!(line["config"].get("api_key").is_none());
    }
    srv.stop().await;
}
