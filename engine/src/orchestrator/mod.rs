//! The serving pipeline behind the HTTP handlers: the tokenizer stage ([`tokenizer_stage`]),
//! the scheduler thread that owns the model ([`scheduler`]), the per-sequence detokenizer
//! ([`detokenizer`]) and [`metrics`]. [`Engine`] ties them together: submit a
//! [`TokenizedRequest`], read its text chunks from a [`SeqStream`]; dropping the stream aborts
//! the sequence and frees its KV slots.

pub mod batch_log;
pub mod detokenizer;
pub mod metrics;
pub mod scheduler;
pub mod tokenizer_stage;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub use detokenizer::{Detokenizer, TextOptions};
pub use metrics::Metrics;
pub use scheduler::{Scheduler, SchedulerConfig};

use crate::executor::device::Device;
use crate::executor::model_runner::{ModelRunner, RunnerConfig};
use crate::executor::sampler::SampleOutput;
use crate::generation::{Generator, LoadedModel, ModelInfo};
use crate::io_struct::{Finish, SchedulerMsg, SeqId, TokenEvent, TokenizedRequest};
use crate::mem_cache::KvDtype;
use crate::tokenizer::Tokenizer;

/// Engine sizing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// Most sequences running at once.
    pub max_running_requests: usize,
    /// KV cache size in tokens.
    pub max_total_tokens: usize,
    /// Prefill token budget per step.
    pub max_prefill_tokens: usize,
    /// Context length override (at most the model's).
    pub context_length: Option<usize>,
    /// Most sequences waiting beyond the running ones before requests get 429.
    pub max_queued_requests: usize,
    /// Turn the prefix (radix) cache off.
    pub disable_radix_cache: bool,
    /// Read each step's tokens before launching the next (turns overlap scheduling off).
    pub disable_overlap_schedule: bool,
    /// Where the model runs.
    pub device: Device,
    /// On a GPU, size the KV cache to this fraction of its memory (minus the weights) instead
    /// of `max_total_tokens`.
    pub mem_fraction_static: Option<f64>,
    /// On a GPU, decode batches of up to this many sequences run on CUDA graphs (0: never).
    pub cuda_graph_max_bs: usize,
    /// KV cache storage on the CPU; `None` follows the weights (bf16 weights: bf16 KV, else
    /// f32). A GPU always keeps bf16 KV.
    pub kv_cache_dtype: Option<KvDtype>,
}

impl Default for EngineConfig {
    /// 32 running, 8192 KV tokens, 8192 prefill tokens, 256 queued, radix cache on, overlap
    /// scheduling on.
    fn default() -> Self {
        Self {
            max_running_requests: 32,
            max_total_tokens: 8192,
            max_prefill_tokens: 8192,
            context_length: None,
            max_queued_requests: 256,
            disable_radix_cache: false,
            disable_overlap_schedule: false,
            device: Device::Cpu,
            mem_fraction_static: None,
            cuda_graph_max_bs: 32,
            kv_cache_dtype: None,
        }
    }
}

/// Errors of starting the engine or submitting to it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A configuration value is unusable.
    #[error("invalid {flag}: {reason}")]
    Config {
        /// The flag.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// The model runner could not be built.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// Too many sequences in flight.
    #[error("the server is busy: {inflight} sequences in flight (limit {limit}); retry later")]
    QueueFull {
        /// Sequences in flight.
        inflight: usize,
        /// The limit.
        limit: usize,
    },
    /// The scheduler thread is gone.
    #[error("the scheduler is not running")]
    SchedulerGone,
    /// The server is shutting down and admits no new requests.
    #[error("the server is shutting down; send the request to another replica")]
    Draining,
}

/// The running pipeline: model facts for the handlers, the scheduler's inbox and metrics.
#[derive(Debug)]
pub struct Engine {
    tx: Mutex<Sender<SchedulerMsg>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    tokenizer: Option<Arc<Tokenizer>>,
    info: ModelInfo,
    metrics: Arc<Metrics>,
    inflight: Arc<AtomicUsize>,
    draining: AtomicBool,
    max_inflight: usize,
    kv_capacity: usize,
    /// The K/V cache's element type as the runner keeps it (`bf16`, `f16`, `f32`).
    kv_cache_dtype: &'static str,
    context_len: usize,
    vocab_size: usize,
    architectures: Vec<String>,
    accepts_images: bool,
    cfg: EngineConfig,
}

impl Engine {
    /// Builds the model runner and starts the scheduler thread.
    pub fn start(loaded: LoadedModel, cfg: EngineConfig) -> Result<Arc<Self>, EngineError> {
        let bad = |flag, reason: &str| EngineError::Config {
            flag,
            reason: reason.into(),
        };
        if cfg.max_running_requests == 0 {
            return Err(bad("--max-running-requests", "must be at least 1"));
        }
        if cfg.max_prefill_tokens == 0 {
            return Err(bad("--max-prefill-tokens", "must be at least 1"));
        }
        if cfg.max_total_tokens < 2 {
            return Err(bad("--max-total-tokens", "must be at least 2"));
        }
        let (model, tokenizer, info) = loaded.into_runner_parts();
        let model_ctx = model.config().max_position_embeddings;
        let context_len = cfg.context_length.map_or(model_ctx, |c| c.min(model_ctx));
        if context_len < 2 {
            return Err(bad("--context-length", "must be at least 2"));
        }
        let vocab_size = model.config().vocab_size;
        let architectures = model.config().architectures.clone();
        let kv_dtype = cfg.kv_cache_dtype.unwrap_or_else(|| info.default_kv_dtype());
        let kv_budget_bytes = Generator::kv_bytes_for(model.config(), cfg.max_total_tokens, kv_dtype);
        let runner = ModelRunner::new(
            model,
            RunnerConfig {
                kv_budget_bytes,
                kv_dtype,
                max_running_requests: cfg.max_running_requests,
                max_context_len: context_len,
                device: cfg.device,
                gpu_mem_fraction: cfg.mem_fraction_static,
                cuda_graph_max_bs: cfg.cuda_graph_max_bs,
            },
        )?;
        let kv_capacity = runner.kv_pool().capacity();
        let kv_cache_dtype = runner.kv_dtype_name();
        let accepts_images = runner.runs_images();
        let metrics = Arc::new(Metrics::default());
        let sched_cfg = SchedulerConfig {
            max_running_requests: cfg.max_running_requests,
            max_prefill_tokens: cfg.max_prefill_tokens,
            max_context_len: context_len,
            enable_radix_cache: !cfg.disable_radix_cache,
            overlap: !cfg.disable_overlap_schedule,
        };
        let scheduler = Scheduler::new(runner, sched_cfg, metrics.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mllm-scheduler".into())
            .spawn(move || scheduler.run(rx))
            .map_err(|e| bad("scheduler thread", &e.to_string()))?;
        Ok(Arc::new(Self {
            tx: Mutex::new(tx),
            thread: Mutex::new(Some(thread)),
            tokenizer: tokenizer.map(Arc::new),
            info,
            metrics,
            inflight: Arc::new(AtomicUsize::new(0)),
            draining: AtomicBool::new(false),
            max_inflight: cfg.max_running_requests + cfg.max_queued_requests,
            kv_capacity,
            kv_cache_dtype,
            context_len,
            vocab_size,
            architectures,
            accepts_images,
            cfg,
        }))
    }

    /// The tokenizer (none for dummy weights).
    pub fn tokenizer(&self) -> Option<&Arc<Tokenizer>> {
        self.tokenizer.as_ref()
    }

    /// What was loaded.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// KV cache capacity in tokens.
    pub fn kv_capacity(&self) -> usize {
        self.kv_capacity
    }

    /// The K/V cache's element type as the runner keeps it.
    pub fn kv_cache_dtype(&self) -> &'static str {
        self.kv_cache_dtype
    }

    /// The context length requests are checked against.
    pub fn context_len(&self) -> usize {
        self.context_len
    }

    /// The longest sequence (prompt + output) a request may ask for: the context length or the
    /// KV capacity, whichever is smaller.
    pub fn max_seq_len(&self) -> usize {
        self.context_len.min(self.kv_capacity)
    }

    /// The vocabulary size of the model.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The model's HF `architectures` (e.g. `["Qwen3ForCausalLM"]`).
    pub fn architectures(&self) -> &[String] {
        &self.architectures
    }

    /// Whether the model runner runs requests with images ([`TokenizedRequest::mm`]): true
    /// for Qwen3-VL. Otherwise image requests (to a text decoder whose checkpoint has a
    /// `vision_config`) are validated and tokenized, then refused (501) instead of running
    /// image placeholders as text.
    pub fn accepts_images(&self) -> bool {
        self.accepts_images
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// EOS token ids (empty without a tokenizer).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.tokenizer
            .as_ref()
            .map(|t| t.eos_token_ids().to_vec())
            .unwrap_or_default()
    }

    /// Whether the scheduler thread is alive.
    pub fn is_alive(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    fn send(&self, msg: SchedulerMsg) -> Result<(), EngineError> {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(msg)
            .map_err(|_| EngineError::SchedulerGone)
    }

    /// Stops admitting: from now on [`reserve`](Self::reserve) fails with
    /// [`EngineError::Draining`] while what is in flight runs to the end.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`begin_drain`](Self::begin_drain) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Sequences admitted and not yet finished (their permits are alive).
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Aborts every sequence in flight; each stream ends with [`Finish::Abort`].
    pub fn abort_all(&self) -> Result<(), EngineError> {
        self.send(SchedulerMsg::AbortAll)
    }

    /// Reserves room for `n` sequences, or [`EngineError::QueueFull`] (or
    /// [`EngineError::Draining`] once shutdown began).
    pub fn reserve(&self, n: usize) -> Result<Permit, EngineError> {
        if self.is_draining() {
            return Err(EngineError::Draining);
        }
        let prev = self.inflight.fetch_add(n, Ordering::SeqCst);
        if prev + n > self.max_inflight {
            self.inflight.fetch_sub(n, Ordering::SeqCst);
            return Err(EngineError::QueueFull {
                inflight: prev,
                limit: self.max_inflight,
            });
        }
        Ok(Permit {
            inflight: self.inflight.clone(),
            n,
        })
    }

    /// Submits one sequence; `text` says how its detokenizer turns tokens into text.
    pub fn submit(&self, req: TokenizedRequest, text: &TextOptions) -> Result<SeqStream, EngineError> {
        Metrics::add(&self.metrics.requests_total, 1);
        let (out, rx) = unbounded_channel();
        let id = req.id.clone();
        self.send(SchedulerMsg::Add(Box::new(req), out))?;
        Ok(SeqStream {
            rx,
            id,
            tx: self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            detok: Detokenizer::new(self.tokenizer.clone(), text),
            done: false,
            metrics: self.metrics.clone(),
        })
    }

    /// Aborts every sequence of request `rid`.
    pub fn abort(&self, rid: &str) -> Result<(), EngineError> {
        self.send(SchedulerMsg::Abort(rid.to_string()))
    }

    /// Drops the prefix cache; `false` when sequences are in flight (nothing is flushed then).
    pub async fn flush_cache(&self) -> Result<bool, EngineError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(SchedulerMsg::FlushCache(tx))?;
        rx.await.map_err(|_| EngineError::SchedulerGone)
    }

    /// Lets the scheduler finish what is running, then waits for its thread to exit.
    pub fn shutdown(&self) {
        let _ = self.send(SchedulerMsg::Shutdown);
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Room for sequences in flight; released on drop.
#[derive(Debug)]
pub struct Permit {
    inflight: Arc<AtomicUsize>,
    n: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inflight.fetch_sub(self.n, Ordering::SeqCst);
    }
}

/// One step of a sequence's output, after detokenization.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// New text (may be empty).
    pub text: String,
    /// The token this chunk is for (none for an abort).
    pub sample: Option<SampleOutput>,
    /// Set on the last chunk.
    pub finish: Option<Finish>,
}

/// The output of one submitted sequence. Dropping it before the end aborts the sequence.
#[derive(Debug)]
pub struct SeqStream {
    rx: UnboundedReceiver<TokenEvent>,
    id: SeqId,
    tx: Sender<SchedulerMsg>,
    detok: Detokenizer,
    done: bool,
    metrics: Arc<Metrics>,
}

impl SeqStream {
    /// The sequence's id.
    pub fn id(&self) -> &SeqId {
        &self.id
    }

    /// The next chunk; `None` after the last one. An error ends the stream.
    pub async fn next(&mut self) -> Option<Result<Chunk, String>> {
        if self.done {
            return None;
        }
        let Some(event) = self.rx.recv().await else {
            self.done = true;
            return Some(Err("the scheduler stopped before the sequence finished".into()));
        };
        let chunk = match event {
            TokenEvent::Token { sample, finish } => {
                let mut finish = finish;
                let mut text = String::new();
                if !matches!(finish, Some(Finish::StopToken(_))) {
                    match self.detok.push(sample.token) {
                        Ok(out) => {
                            text = out.text;
                            if let Some(stop) = out.stopped {
                                let _ = self.tx.send(SchedulerMsg::AbortSeq(self.id.clone()));
                                finish = Some(Finish::StopString(stop));
                            }
                        }
                        Err(e) => {
                            self.done = true;
                            let _ = self.tx.send(SchedulerMsg::AbortSeq(self.id.clone()));
                            return Some(Err(e));
                        }
                    }
                }
                if finish.is_some() {
                    text.push_str(&self.detok.finish());
                    self.done = true;
                }
                Chunk {
                    text,
                    sample: Some(sample),
                    finish,
                }
            }
            TokenEvent::Aborted => {
                self.done = true;
                Chunk {
                    text: String::new(),
                    sample: None,
                    finish: Some(Finish::Abort),
                }
            }
            TokenEvent::Error(e) => {
                self.done = true;
                Metrics::add(&self.metrics.request_errors_total, 1);
                return Some(Err(e));
            }
        };
        Some(Ok(chunk))
    }
}

impl Drop for SeqStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(SchedulerMsg::AbortSeq(self.id.clone()));
        }
    }
}
