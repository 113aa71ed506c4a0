//! `mllm bench-serve`: load-tests a running server (see [`crate::bench_serve`]), prints a
//! table and appends one JSON line per run to `--output-file`.

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::record::{command_line, Revision};
use crate::bench_serve::{
    render_table, run_benchmark, Backend, BenchConfig, BenchResult, Dataset, LenRange, TokenIdRange,
};

/// Arrivals per second: a positive number, or `inf` to send everything at once.
///
/// ```
/// use mllm_engine::cli::RequestRate;
/// assert_eq!("inf".parse::<RequestRate>().unwrap(), RequestRate(None));
/// assert_eq!("2.5".parse::<RequestRate>().unwrap(), RequestRate(Some(2.5)));
/// assert!("0".parse::<RequestRate>().is_err() && "fast".parse::<RequestRate>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRate(pub Option<f64>);

impl FromStr for RequestRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("inf") {
            return Ok(Self(None));
        }
        match s.parse::<f64>() {
            Ok(r) if r.is_infinite() && r > 0.0 => Ok(Self(None)),
            Ok(r) if r.is_finite() && r > 0.0 => Ok(Self(Some(r))),
            _ => Err(format!(
                "`{s}` is not a positive number of requests per second (or `inf`)"
            )),
        }
    }
}

/// Arguments of `mllm bench-serve` (names as in SGLang's `bench_serving` where they exist).
#[derive(Debug, Clone, Args)]
pub struct BenchServeArgs {
    /// The server's URL, e.g. http://10.0.0.5:30000 [default: http://HOST:PORT].
    #[arg(long)]
    pub base_url: Option<String>,
    /// The server's host (without --base-url).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The server's port (without --base-url).
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// The endpoint: openai = /v1/completions, openai-chat = /v1/chat/completions (text
    /// prompts only), native = /generate. All streamed.
    #[arg(long, value_enum, default_value_t = Backend::Openai)]
    pub backend: Backend,
    /// The model name in requests [default: the first of GET /v1/models].
    #[arg(long)]
    pub model: Option<String>,
    /// Send `Authorization: Bearer KEY`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Where prompts come from: random token ids, or a ShareGPT JSON file.
    #[arg(long, value_enum, default_value_t = Dataset::Random)]
    pub dataset: Dataset,
    /// The ShareGPT file (first human turn = prompt; output length = 1.3 tokens per word of
    /// the gpt reply, or --sharegpt-output-len).
    #[arg(long, value_name = "FILE")]
    pub dataset_path: Option<PathBuf>,
    /// Requests to send.
    #[arg(long, default_value_t = 100)]
    pub num_prompts: usize,
    /// Random prompt lengths in tokens, MIN:MAX (uniform) or LEN.
    #[arg(long, default_value = "64:256", value_name = "MIN:MAX")]
    pub input_len_range: LenRange,
    /// Random output lengths in tokens, MIN:MAX (uniform) or LEN; EOS is ignored.
    #[arg(long, default_value = "32:128", value_name = "MIN:MAX")]
    pub output_len_range: LenRange,
    /// Output tokens of every ShareGPT request, instead of the reply's estimated length.
    #[arg(long, value_name = "LEN")]
    pub sharegpt_output_len: Option<usize>,
    /// Token ids of random prompts, LO:HI (half-open) [default: from the server's vocabulary
    /// size, skipping the lowest ids; 1000:20000 when it reports none].
    #[arg(long, value_name = "LO:HI")]
    pub token_id_range: Option<TokenIdRange>,
    /// Seed of the workload and of the arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Requests per second (Poisson arrivals), or inf to send all at once.
    #[arg(long, default_value = "inf")]
    pub request_rate: RequestRate,
    /// Most requests in flight [default: no limit].
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Untimed requests before the run.
    #[arg(long, default_value_t = 1)]
    pub warmup_requests: usize,
    /// Append one JSON line (settings and results) to FILE.
    #[arg(long, value_name = "FILE")]
    pub output_file: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub disable_progress: bool,
}

impl BenchServeArgs {
    /// The benchmark settings.
    pub fn config(&self) -> BenchConfig {
        BenchConfig {
            base_url: self
                .base_url
                .clone()
                .unwrap_or_else(|| format!("http://{}:{}", self.host, self.port)),
            backend: self.backend,
            model: self.model.clone(),
            api_key: self.api_key.clone(),
            dataset: self.dataset,
            dataset_path: self.dataset_path.clone(),
            num_prompts: self.num_prompts,
            input_len: self.input_len_range,
            output_len: self.output_len_range,
            sharegpt_output_len: self.sharegpt_output_len,
            token_id_range: self.token_id_range,
            seed: self.seed,
            request_rate: self.request_rate.0,
            max_concurrency: self.max_concurrency,
            warmup_requests: self.warmup_requests,
        }
    }
}

/// One JSON line of `--output-file`.
#[derive(Debug, Serialize)]
struct Record<'a> {
    bench: &'static str,
    #[serde(flatten)]
    revision: Revision,
    command: String,
    timestamp: u64,
    config: &'a BenchConfig,
    #[serde(flatten)]
    result: &'a BenchResult,
}

/// Runs `mllm bench-serve`.
pub(crate) fn run(args: &BenchServeArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    // Open the record file first: a bad path should not cost a whole run.
    let mut out = match &args.output_file {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open --output-file {}", path.display()))?,
        ),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(run_benchmark(&cfg, !args.disable_progress))?;
    let conc = cfg.max_concurrency.map_or("unlimited".into(), |c| c.to_string());
    let rate = cfg.request_rate.map_or("inf".into(), |r| r.to_string());
    let title = format!(
        "bench-serve {} {}: concurrency {conc}, rate {rate}",
        result.model,
        cfg.backend.path()
    );
    print!("{}", render_table(&title, &result.metrics));
    if let Some(file) = &mut out {
        let record = Record {
            bench: "bench-serve",
            revision: Revision::current(),
            command: command_line(),
            timestamp: crate::server::unix_time(),
            config: &cfg,
            result: &result,
        };
        let line = serde_json::to_string(&record).context("cannot encode the JSON record")?;
        writeln!(file, "{line}").context("cannot write --output-file")?;
    }
    Ok(())
}
