//! `mllm bench-serve`: load-testing a running server, like SGLang's and vLLM's
//! `bench_serving`. A workload ([`workload`]: random token-id prompts, or [`sharegpt`]
//! conversations) is sent to one endpoint ([`backend`]) over streamed HTTP ([`client`], [`sse`])
//! at a request rate or concurrency ([`runner`]); the per-request times become throughput and
//! TTFT/TPOT/ITL/E2E percentiles ([`metrics`], [`report`]).
//!
//! Random prompts are token ids, so their lengths are exact without a tokenizer; outputs ignore
//! EOS, so each request generates exactly the tokens asked for.

pub mod backend;
pub mod client;
pub mod metrics;
pub mod report;
pub mod runner;
pub mod sharegpt;
pub mod sse;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde::Serialize;

pub use backend::{Backend, EventInfo};
pub use client::{Client, ServerFacts};
pub use metrics::{percentile, Distribution, Outcome, RequestStats, Summary};
pub use report::render_table;
pub use runner::{arrival_gaps, run_load, LoadShape};
pub use sharegpt::{estimate_tokens, load_sharegpt, parse_sharegpt, DatasetError, SharegptOptions};
pub use sse::SseDecoder;
pub use workload::{random_workload, LenRange, Prompt, RandomSpec, TokenIdRange, WorkItem};

/// Token ids drawn when the server reports no vocabulary size (below every common vocabulary).
pub const FALLBACK_TOKEN_IDS: TokenIdRange = TokenIdRange { lo: 1000, hi: 20000 };

/// Where prompts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// Random token ids with random lengths (seeded).
    #[default]
    Random,
    /// A ShareGPT-format JSON file (--dataset-path).
    Sharegpt,
}

/// One benchmark run's settings (recorded with its results; the API key is not).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchConfig {
    /// The server, e.g. `http://127.0.0.1:30000`.
    pub base_url: String,
    /// The endpoint loaded.
    pub backend: Backend,
    /// The model name to send (`None`: ask `/v1/models`).
    pub model: Option<String>,
    /// Bearer token.
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Where prompts come from.
    pub dataset: Dataset,
    /// The ShareGPT file.
    pub dataset_path: Option<PathBuf>,
    /// Requests to send.
    pub num_prompts: usize,
    /// Random prompt lengths.
    pub input_len: LenRange,
    /// Random output lengths.
    pub output_len: LenRange,
    /// Output length of every ShareGPT request instead of the reply's estimate.
    pub sharegpt_output_len: Option<usize>,
    /// Token ids of random prompts (`None`: from the server's vocabulary size).
    pub token_id_range: Option<TokenIdRange>,
    /// Seed of the workload and the arrivals.
    pub seed: u64,
    /// Arrivals per second (`None`: all at once).
    pub request_rate: Option<f64>,
    /// Most requests in flight (`None`: no limit).
    pub max_concurrency: Option<usize>,
    /// Untimed requests sent first (the first also checks that the server answers).
    pub warmup_requests: usize,
}

/// A finished run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    /// The model requests named.
    pub model: String,
    /// The server's context length, if reported.
    pub context_len: Option<usize>,
    /// The token ids random prompts were drawn from.
    pub token_ids: Option<TokenIdRange>,
    /// `GET /server_info`, if the server has it.
    pub server_info: Option<serde_json::Value>,
    /// Requests in the workload.
    pub num_requests: usize,
    /// The measurements.
    pub metrics: Summary,
}

/// Runs the benchmark `cfg` describes; `progress` draws a progress bar on stderr.
pub async fn run_benchmark(cfg: &BenchConfig, progress: bool) -> anyhow::Result<BenchResult> {
    if cfg.num_prompts == 0 {
        bail!("--num-prompts must be at least 1");
    }
    if matches!(cfg.max_concurrency, Some(0)) {
        bail!("--max-concurrency must be at least 1");
    }
    let client = Client::new(&cfg.base_url, cfg.api_key.clone(), cfg.backend)?;
    let facts = client.discover(cfg.model.as_deref()).await?;
    let (items, token_ids) = build_workload(cfg, &facts)?;
    for k in 0..cfg.warmup_requests {
        let mut item = items[k % items.len()].clone();
        item.output_len = item.output_len.min(8);
        if let Err(e) = client.send(&item, &facts.model).await {
            bail!(
                "the warmup request to {}{} failed: {e}",
                cfg.base_url,
                cfg.backend.path()
            );
        }
    }
    let shape = LoadShape {
        request_rate: cfg.request_rate,
        max_concurrency: cfg.max_concurrency,
        seed: cfg.seed,
        progress,
    };
    let num_requests = items.len();
    let (outcomes, duration) = run_load(Arc::new(client), facts.model.as_str().into(), items, shape).await;
    Ok(BenchResult {
        model: facts.model,
        context_len: facts.context_len,
        token_ids,
        server_info: facts.server_info,
        num_requests,
        metrics: Summary::new(&outcomes, duration),
    })
}

/// The workload, and for random prompts the token ids they use.
fn build_workload(cfg: &BenchConfig, facts: &ServerFacts) -> anyhow::Result<(Vec<WorkItem>, Option<TokenIdRange>)> {
    match cfg.dataset {
        Dataset::Random => {
            if !cfg.backend.takes_token_ids() {
                bail!(
                    "random prompts are token ids, which {} cannot carry; use --backend openai or native, or --dataset sharegpt",
                    cfg.backend.path()
                );
            }
            let longest = cfg.input_len.max + cfg.output_len.max;
            if let Some(ctx) = facts.context_len.filter(|&c| longest > c) {
                bail!(
                    "the longest request ({} prompt + {} output = {longest} tokens) exceeds the server's context length {ctx}; shorten --input-len-range or --output-len-range",
                    cfg.input_len.max,
                    cfg.output_len.max
                );
            }
            let token_ids = cfg
                .token_id_range
                .or(facts.vocab_size.map(TokenIdRange::for_vocab))
                .unwrap_or(FALLBACK_TOKEN_IDS);
            if let Some(vocab) = facts.vocab_size.filter(|&v| token_ids.hi > v) {
                bail!(
                    "--token-id-range {}:{} reaches past the vocabulary ({vocab} ids)",
                    token_ids.lo,
                    token_ids.hi
                );
            }
            let spec = RandomSpec {
                num_prompts: cfg.num_prompts,
                input_len: cfg.input_len,
                output_len: cfg.output_len,
                token_ids,
                seed: cfg.seed,
            };
            Ok((random_workload(&spec), Some(token_ids)))
        }
        Dataset::Sharegpt => {
            let path = cfg
                .dataset_path
                .as_ref()
                .context("--dataset sharegpt needs --dataset-path FILE (a ShareGPT JSON file)")?;
            let opts = SharegptOptions {
                num_prompts: cfg.num_prompts,
                seed: cfg.seed,
                output_len_override: cfg.sharegpt_output_len,
                max_total_len: facts.context_len.unwrap_or(usize::MAX),
            };
            Ok((load_sharegpt(path, &opts)?, None))
        }
    }
}
