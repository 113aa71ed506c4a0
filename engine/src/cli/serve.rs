//! `mllm serve`: the OpenAI-compatible HTTP server.

use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::model_args::ModelArgs;
use crate::executor::device::Device;
use crate::generation::{LoadedModel, ModelSource};
use crate::multimodal::{ImageLimits, LocalMediaRoot, VisionSetup};
use crate::orchestrator::{Engine, EngineConfig};
use crate::parsers::{ReasoningParserKind, ToolParserKind};
use crate::server::{loading_router, router, serve_with, AppState, ServerParsers, ShutdownSignals};
use crate::tensor::DType;

/// Arguments of `mllm serve` (names as in SGLang).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Which model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Serve random weights for this HF config.json instead of a checkpoint (no tokenizer:
    /// only `/generate` with `input_ids` works).
    #[arg(long, value_name = "CONFIG", conflicts_with = "model")]
    pub dummy_config: Option<PathBuf>,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind.
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// Model name in responses and /v1/models [default: the model's name].
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer <KEY>` on every endpoint but /health.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Most sequences running at once.
    #[arg(long, default_value_t = 32)]
    pub max_running_requests: usize,
    /// KV cache size in tokens (all running sequences together) [default: 8192 on the CPU; on a
    /// GPU, what --mem-fraction-static leaves].
    #[arg(long)]
    pub max_total_tokens: Option<usize>,
    /// GPU only: the fraction of GPU memory weights + KV cache may take (the rest stays free for
    /// activations and workspaces) [default: 0.85 unless --max-total-tokens is given].
    #[arg(long, value_name = "FRACTION")]
    pub mem_fraction_static: Option<f64>,
    /// Prompt tokens prefilled per step; longer prompts are prefilled in chunks.
    #[arg(long, default_value_t = 8192)]
    pub max_prefill_tokens: usize,
    /// Sequences that may wait beyond the running ones; more get 429.
    #[arg(long, default_value_t = 256)]
    pub max_queued_requests: usize,
    /// Context length (at most the model's).
    #[arg(long)]
    pub context_length: Option<usize>,
    /// Turn off the prefix (radix) cache that reuses the KV of shared prompt prefixes.
    #[arg(long)]
    pub disable_radix_cache: bool,
    /// Read step k's tokens before launching step k + 1. By default step k + 1 is launched
    /// first (its decode rows take step k's tokens on the GPU), hiding the host's work.
    #[arg(long)]
    pub disable_overlap_schedule: bool,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Split `<think>` reasoning into `reasoning_content`: qwen3, qwen3-thinking, deepseek-r1.
    #[arg(long, value_name = "NAME")]
    pub reasoning_parser: Option<ReasoningParserKind>,
    /// Read tool calls into `tool_calls` when a request sends `tools`: hermes, qwen25,
    /// qwen3_coder, llama3.
    #[arg(long, value_name = "NAME")]
    pub tool_call_parser: Option<ToolParserKind>,
    /// Seconds in-flight requests may run after SIGTERM/SIGINT before they are aborted
    /// (new requests get 503 meanwhile).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub shutdown_timeout: f64,
    /// Let image parts name local files (paths or file:// URLs) inside DIR (after resolving
    /// `..` and symlinks) [default: off; only data: URIs].
    #[arg(long, value_name = "DIR")]
    pub allowed_local_media_path: Option<PathBuf>,
    /// Most images in one chat request (vision models).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_images_per_request: usize,
    /// Largest image in bytes, as encoded (PNG/JPEG/WebP); base64 payloads also count against
    /// --max-body-bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 20 << 20)]
    pub max_image_bytes: usize,
    /// Largest image in pixels (width x height) before resizing; the checkpoint's
    /// preprocessor_config.json max_pixels then bounds the resized image.
    #[arg(long, value_name = "PIXELS", default_value_t = 1 << 25)]
    pub max_image_pixels: u64,
}

impl ServeArgs {
    /// The per-request image limits.
    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_images: self.max_images_per_request,
            max_bytes: self.max_image_bytes,
            max_pixels: self.max_image_pixels,
        }
    }

    /// Image input for the model at `source`: only HF directories whose `config.json` has a
    /// `vision_config` accept images.
    fn vision_setup(&self, source: &ModelSource, loaded: &LoadedModel) -> anyhow::Result<Option<VisionSetup>> {
        let root = match &self.allowed_local_media_path {
            Some(dir) => Some(
                LocalMediaRoot::new(dir)
                    .with_context(|| format!("invalid --allowed-local-media-path {}", dir.display()))?,
            ),
            None => None,
        };
        let ModelSource::Dir(dir) = source else {
            return Ok(None);
        };
        let setup = VisionSetup::from_model_dir(dir, loaded.tokenizer().ok(), self.image_limits(), root)
            .context("cannot set up image input")?;
        Ok(setup)
    }

    /// The engine configuration (resolves `--device`).
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        let device = self.model.resolve_device()?;
        if device == Device::Cpu && self.mem_fraction_static.is_some() {
            anyhow::bail!("--mem-fraction-static sizes a GPU's KV cache; on the CPU use --max-total-tokens");
        }
        Ok(EngineConfig {
            max_running_requests: self.max_running_requests,
            max_total_tokens: self.max_total_tokens.unwrap_or(8192),
            max_prefill_tokens: self.max_prefill_tokens,
            context_length: self.context_length,
            max_queued_requests: self.max_queued_requests,
            disable_radix_cache: self.disable_radix_cache,
            disable_overlap_schedule: self.disable_overlap_schedule,
            device,
            cuda_graph_max_bs: self.model.cuda_graph_max_bs(),
            kv_cache_dtype: self.model.kv_cache_dtype.dtype(),
            mem_fraction_static: match (device, self.max_total_tokens) {
                (Device::Cuda(_), None) => Some(self.mem_fraction_static.unwrap_or(0.85)),
                (Device::Cuda(_), Some(_)) => self.mem_fraction_static,
                (Device::Cpu, _) => None,
            },
        })
    }
}

/// Runs `mllm serve` until SIGINT/SIGTERM.
pub(crate) fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let shutdown_timeout = Duration::try_from_secs_f64(args.shutdown_timeout)
        .map_err(|e| anyhow::anyhow!("invalid --shutdown-timeout {}: {e}", args.shutdown_timeout))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let (source, path) = match &args.dummy_config {
        Some(config) => (
            ModelSource::Dummy {
                config: config.clone(),
                // As bench-one-batch: `--weight-dtype` picks the random weights' dtype.
                dtype: args.model.weight_dtype.dtype().unwrap_or(DType::F32),
                seed: 0,
            },
            config.display().to_string(),
        ),
        None => {
            let s = args.model.source()?;
            let p = args
                .model
                .model
                .as_ref()
                .map_or_else(|| "default".into(), |p| p.display().to_string());
            (s, p)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        // Listening from the start, so a SIGTERM at any point (loading, the switch to serving)
        // drains and exits.
        let mut signals = ShutdownSignals::new().context("cannot listen for SIGINT/SIGTERM")?;
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        let local = listener.local_addr()?;
        // Bound before loading so probes and routers see 503 "loading", not a refused
        // connection; the same socket then serves the model.
        let listener = listener.into_std()?;
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
        let loading = tokio::spawn(
            axum::serve(
                tokio::net::TcpListener::from_std(listener.try_clone()?)?,
                loading_router(),
            )
            .with_graceful_shutdown(async {
                let _ = loaded_rx.await;
            })
            .into_future(),
        );
        eprintln!("mllm: listening on http://{local}; /health answers 503 until the model is loaded");
        let build = {
            let args = args.clone();
            tokio::task::spawn_blocking(move || build_app(&args, &source, path))
        };
        let (engine, app) = tokio::select! {
            built = build => built.context("model loading panicked")??,
            _ = signals.recv() => {
                eprintln!("mllm: shutdown requested while loading; exiting");
                return Ok(());
            }
        };
        let _ = loaded_tx.send(());
        let _ = loading.await;
        eprintln!("mllm: serving on http://{local}");
        let listener = tokio::net::TcpListener::from_std(listener)?;
        serve_with(
            listener,
            app,
            engine,
            async move { signals.recv().await },
            shutdown_timeout,
        )
        .await
        .context("server failed")
    })
}

/// Loads the model, starts the engine and builds the router (on a blocking thread).
fn build_app(args: &ServeArgs, source: &ModelSource, path: String) -> anyhow::Result<(Arc<Engine>, axum::Router)> {
    let loaded = args.model.load_source(source)?;
    let vision = args.vision_setup(source, &loaded)?;
    match &vision {
        Some(v) => eprintln!(
            "mllm: image input on: at most {} images of {} bytes / {} pixels per request; local files: {}",
            v.limits.max_images,
            v.limits.max_bytes,
            v.limits.max_pixels,
            v.local_root
                .as_ref()
                .map_or_else(|| "off".to_string(), |r| r.path().display().to_string())
        ),
        None => eprintln!("mllm: image input off (the model has no vision_config)"),
    }
    let engine = Engine::start(loaded, args.engine_config()?).context("cannot start the engine")?;
    eprintln!(
        "mllm: KV cache holds {} tokens; context length {}; max running requests {}",
        engine.kv_capacity(),
        engine.context_len(),
        args.max_running_requests
    );
    // The embedded model is served under its hub name, not its GGUF title.
    let default_name = matches!(source, ModelSource::Default).then(|| {
        crate::hub::DEFAULT_MODEL
            .file_name
            .trim_end_matches(".gguf")
            .trim_end_matches(".Q4_1")
            .to_string()
    });
    let state = AppState::new(
        engine.clone(),
        args.served_model_name.clone().or(default_name),
        path,
        args.api_key.clone(),
    )
    .with_parsers(ServerParsers {
        reasoning: args.reasoning_parser,
        tools: args.tool_call_parser,
    })
    .with_vision(vision);
    Ok((engine, router(state, args.max_body_bytes)))
}
