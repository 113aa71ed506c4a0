//! `mllm bench-one-batch`: prefill of B random prompts of I tokens, then O-1 decode steps, like
//! SGLang's `bench_one_batch`. Warmup runs are dropped. Decode steps overlap as the server's do
//! (step k + 1 launched before step k's tokens are read; `--disable-overlap-schedule` reads
//! each step first). A step's latency is the time between consecutive token reads.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::model_args::ModelArgs;
use super::record::{command_line, DeviceInfo, Revision};
use crate::executor::forward_batch::{LogitsMode, SequenceInput};
use crate::executor::model_runner::{ModelRunner, RunnerConfig, RunnerModel};
use crate::executor::sampler::{SamplingParams, SequenceState};
use crate::generation::{Generator, ModelInfo, ModelSource};
use crate::multimodal::{image_hash, GridThw, ImageInput, ImagePatches, MultimodalInputs, VisionTokenIds};
use crate::tensor::DType;

/// How to get weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LoadFormat {
    /// From the checkpoint (--model or the default model).
    #[default]
    Auto,
    /// Random weights for --config (no checkpoint needed).
    Dummy,
}

/// Arguments of `mllm bench-one-batch`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Sequences in the batch.
    #[arg(long)]
    pub batch_size: usize,
    /// Prompt length in tokens.
    #[arg(long)]
    pub input_len: usize,
    /// Generated tokens per sequence (1 from prefill, the rest from decode steps).
    #[arg(long)]
    pub output_len: usize,
    /// Which model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// An HF config.json (file or directory) for --load-format dummy.
    #[arg(long, visible_alias = "model-config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where the weights come from.
    #[arg(long, value_enum, default_value_t = LoadFormat::Auto)]
    pub load_format: LoadFormat,
    /// Untimed runs before the measured ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Measured runs.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Seed of the random prompts (and of dummy weights).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON line per measured run on stdout.
    #[arg(long)]
    pub json: bool,
    /// Append the JSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Qwen3-VL: one random image of PIXELS x PIXELS (a multiple of patch_size x
    /// spatial_merge_size, e.g. 448) at the start of every prompt; --input-len counts its
    /// placeholder tokens, and the record gets the vision tower's time.
    #[arg(long, value_name = "PIXELS")]
    pub image_size: Option<usize>,
    /// CUDA: write every kernel the GPU runs (start, end, CUDA-graph node; CUPTI) to FILE as
    /// CSV, from before the decode graphs are captured to the end of the last run, e.g. to see
    /// what a replayed decode step is made of (`scripts/timeline_step.py`).
    #[arg(long, value_name = "FILE")]
    pub kernel_timeline: Option<PathBuf>,
    /// Read each decode step's tokens before launching the next (as `mllm serve
    /// --disable-overlap-schedule`).
    #[arg(long)]
    pub disable_overlap_schedule: bool,
}

/// Timings of one measured run.
#[derive(Debug, Clone, Serialize)]
struct Timings {
    prefill_latency_s: f64,
    prefill_throughput_tok_s: f64,
    /// Median over decode steps (`None` with --output-len 1).
    decode_median_latency_s: Option<f64>,
    /// `batch_size / decode_median_latency_s`.
    decode_throughput_tok_s: Option<f64>,
    decode_total_s: f64,
    /// GPU time of one decode step's CUDA-graph replay, median (`None` without graphs);
    /// `decode_median_latency_s` minus this is the host's share of a step.
    decode_graph_gpu_s: Option<f64>,
    /// Vision-tower time inside the prefill (`None` without images).
    vision_encode_s: Option<f64>,
    total_latency_s: f64,
    /// All prompt and generated tokens over the total latency.
    total_throughput_tok_s: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Workload {
    batch_size: usize,
    input_len: usize,
    output_len: usize,
    temperature: f32,
    warmup: usize,
    /// Pixels per side of each prompt's image (`None`: text only).
    image_size: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
struct Flags {
    radix_cache: bool,
    cuda_graph: bool,
    overlap_schedule: bool,
    jit_compile_included: bool,
}

#[derive(Debug, Clone, Serialize)]
struct ModelRecord {
    model: String,
    format: &'static str,
    quant: String,
    weight_dtype: String,
    kv_dtype: &'static str,
}

/// One JSON line.
#[derive(Debug, Clone, Serialize)]
struct Record {
    bench: &'static str,
    #[serde(flatten)]
    revision: Revision,
    device: DeviceInfo,
    #[serde(flatten)]
    model: ModelRecord,
    command: String,
    /// The `MLLM_*` environment variables set (kernel and tuning overrides change results).
    env: std::collections::BTreeMap<String, String>,
    #[serde(flatten)]
    workload: Workload,
    #[serde(flatten)]
    flags: Flags,
    repeat: usize,
    timestamp: u64,
    timings: Timings,
}

impl BenchArgs {
    fn source(&self) -> anyhow::Result<ModelSource> {
        match self.load_format {
            LoadFormat::Dummy => {
                let config = self
                    .config
                    .clone()
                    .or_else(|| self.model.model.clone())
                    .context("--load-format dummy needs --config config.json (or --model DIR holding one)")?;
                if !config.exists() {
                    bail!("invalid --config {}: no such file or directory", config.display());
                }
                let dtype = self.model.weight_dtype.dtype().unwrap_or(DType::F32);
                Ok(ModelSource::Dummy {
                    config,
                    dtype,
                    seed: self.seed,
                })
            }
            LoadFormat::Auto if self.config.is_some() => {
                bail!("--config is only read with --load-format dummy (a checkpoint brings its own config)")
            }
            LoadFormat::Auto => self.model.source(),
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        for (flag, v) in [
            ("--batch-size", self.batch_size),
            ("--input-len", self.input_len),
            ("--output-len", self.output_len),
            ("--repeats", self.repeats),
        ] {
            if v == 0 {
                bail!("invalid {flag} 0: must be at least 1");
            }
        }
        Ok(())
    }
}

/// Runs `mllm bench-one-batch`.
pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    args.check()?;
    let device = args.model.resolve_device()?;
    if args.kernel_timeline.is_some() && !device.is_cuda() {
        bail!("--kernel-timeline traces CUDA kernels; it needs --device cuda");
    }
    let source = args.source()?;
    let loaded = args.model.load_source(&source)?;
    let (b, i, o) = (args.batch_size, args.input_len, args.output_len);
    let max_context = loaded.max_context();
    if i + o > max_context {
        bail!(
            "--input-len {i} + --output-len {o} = {} exceeds the model's context window of {max_context} tokens",
            i + o
        );
    }
    let (model, _, info) = loaded.into_runner_parts();
    let vocab = model.config().vocab_size;
    let images = args.image_size.map(|px| image_prompt(&model, px, i)).transpose()?;
    let kv_dtype = args
        .model
        .kv_cache_dtype
        .dtype()
        .unwrap_or_else(|| info.default_kv_dtype());
    let cfg = RunnerConfig {
        kv_budget_bytes: Generator::kv_bytes_for(model.config(), b * (i + o), kv_dtype),
        kv_dtype,
        max_running_requests: b,
        max_context_len: i + o,
        device,
        gpu_mem_fraction: None,
        cuda_graph_max_bs: args.model.cuda_graph_max_bs(),
    };
    // Started before the runner captures its graphs, so their replays are traced too.
    let timeline = match &args.kernel_timeline {
        Some(path) => {
            // Created now, so a bad path fails before the runs rather than after them.
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create --kernel-timeline {}", path.display()))?;
            Some((mllm_kernel::kernel_timeline::KernelTimeline::start()?, file, path))
        }
        None => None,
    };
    let mut runner = ModelRunner::new(model, cfg).context("cannot size the KV cache")?;
    let mut prompts: Vec<Prompt> = random_prompts(b, i, vocab, args.seed)
        .into_iter()
        .map(|ids| Prompt { ids, mm: None })
        .collect();
    if let Some((head, mm)) = &images {
        for p in &mut prompts {
            p.ids.splice(..head.len(), head.iter().copied());
            p.mm = Some(mm.clone());
        }
    }
    let mut out_file = match &args.out {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open --out {}", path.display()))?,
        ),
        None => None,
    };
    let revision = Revision::current();
    let device = DeviceInfo::of(runner.device());
    for run in 0..args.warmup + args.repeats {
        let overlap = !args.disable_overlap_schedule;
        let t = one_batch(&mut runner, &prompts, o, overlap).with_context(|| format!("run {run} failed"))?;
        let Some(repeat) = run.checked_sub(args.warmup) else {
            eprintln!("mllm: warmup run {run} done ({:.3} s, dropped)", t.total_latency_s);
            continue;
        };
        print_human(&info, args, repeat, &t);
        let record = Record {
            bench: "bench-one-batch",
            revision: revision.clone(),
            device: device.clone(),
            model: model_record(&info, runner.kv_dtype_name()),
            command: command_line(),
            env: mllm_kernel::env::mllm_vars(),
            workload: Workload {
                batch_size: b,
                input_len: i,
                output_len: o,
                temperature: 0.0,
                warmup: args.warmup,
                image_size: args.image_size,
            },
            flags: Flags {
                radix_cache: false,
                cuda_graph: runner.device().is_cuda() && args.model.cuda_graph_max_bs() >= b,
                overlap_schedule: !args.disable_overlap_schedule,
                jit_compile_included: false,
            },
            repeat,
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            timings: t,
        };
        let line = serde_json::to_string(&record)?;
        if args.json {
            println!("{line}");
        }
        if let Some(f) = out_file.as_mut() {
            writeln!(f, "{line}").context("cannot write --out")?;
        }
    }
    if let Some(report) = runner.profile_report() {
        eprintln!("{report}");
    }
    // Each run ends by reading its last tokens back, so every kernel has finished.
    if let Some((timeline, file, path)) = timeline {
        let kernels = timeline.finish()?;
        mllm_kernel::kernel_timeline::write_csv(&kernels, std::io::BufWriter::new(file))
            .with_context(|| format!("cannot write --kernel-timeline {}", path.display()))?;
        eprintln!("mllm: {} kernels written to {}", kernels.len(), path.display());
    }
    Ok(())
}

fn model_record(info: &ModelInfo, kv_dtype: &'static str) -> ModelRecord {
    ModelRecord {
        model: info.name.clone(),
        format: info.format,
        quant: info.quant.clone(),
        weight_dtype: info.weight_dtype_name().to_string(),
        kv_dtype,
    }
}

fn print_human(info: &ModelInfo, args: &BenchArgs, repeat: usize, t: &Timings) {
    let decode = match (t.decode_throughput_tok_s, t.decode_median_latency_s) {
        (Some(tp), Some(lat)) => {
            let gpu = t
                .decode_graph_gpu_s
                .map_or(String::new(), |g| format!(", graph replay {:.2} ms", g * 1e3));
            format!("decode {tp:.1} tok/s (median step {:.2} ms{gpu})", lat * 1e3)
        }
        _ => "no decode steps".into(),
    };
    eprintln!(
        "mllm: {} batch {} input {} output {} run {repeat}: prefill {:.1} tok/s ({:.2} ms), {decode}, total {:.3} s",
        info.name,
        args.batch_size,
        args.input_len,
        args.output_len,
        t.prefill_throughput_tok_s,
        t.prefill_latency_s * 1e3,
        t.total_latency_s,
    );
}

/// `batch` prompts of `len` tokens, uniform over the vocabulary (splitmix64).
fn random_prompts(batch: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % vocab.max(1) as u64) as u32
    };
    (0..batch).map(|_| (0..len).map(|_| next()).collect()).collect()
}

/// A benchmark prompt and its image, if any.
struct Prompt {
    ids: Vec<u32>,
    mm: Option<Arc<MultimodalInputs>>,
}

/// For a Qwen3-VL model: the first tokens of a prompt with one `px` x `px` image (vision start,
/// its placeholders, vision end) and that image, random pixels; `input_len` must leave room
/// for at least one text token after it.
fn image_prompt(model: &RunnerModel, px: usize, input_len: usize) -> anyhow::Result<(Vec<u32>, Arc<MultimodalInputs>)> {
    let RunnerModel::Qwen3Vl(m) = model else {
        bail!("--image-size needs a vision-language model (Qwen3-VL); this one reads text only");
    };
    let c = m.config();
    let (patch, merge) = (c.vision.patch_size, c.vision.spatial_merge_size);
    if px == 0 || !px.is_multiple_of(patch * merge) {
        bail!(
            "--image-size {px} must be a positive multiple of patch_size x spatial_merge_size = {}",
            patch * merge
        );
    }
    let side = (px / patch) as u32;
    let grid = GridThw { t: 1, h: side, w: side };
    let tokens = grid.num_tokens(merge as u32);
    if tokens + 3 > input_len {
        bail!(
            "--input-len {input_len} leaves no text after a {px}x{px} image ({tokens} placeholder tokens + 2 markers)"
        );
    }
    let cols = c.vision.patch_dim();
    let pixel_values: Vec<f32> = (0..grid.num_patches() * cols)
        .map(|k| ((k * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let mut head = vec![c.vision_start_token_id];
    head.extend(std::iter::repeat_n(c.image_token_id, tokens));
    head.push(c.vision_end_token_id);
    let bytes: Vec<u8> = pixel_values.iter().flat_map(|x| x.to_le_bytes()).collect();
    let image = ImageInput {
        patches: ImagePatches {
            pixel_values,
            patch_dim: cols,
            grid,
        },
        token_range: 1..1 + tokens,
        hash: image_hash(&bytes),
    };
    let tokens = VisionTokenIds {
        image_pad: c.image_token_id,
        vision_start: c.vision_start_token_id,
        vision_end: c.vision_end_token_id,
    };
    Ok((
        head,
        Arc::new(MultimodalInputs {
            images: vec![image],
            tokens,
        }),
    ))
}

/// One prefill + `output_len - 1` greedy decode steps; frees every slot afterwards.
fn one_batch(
    runner: &mut ModelRunner,
    prompts: &[Prompt],
    output_len: usize,
    overlap: bool,
) -> anyhow::Result<Timings> {
    let b = prompts.len();
    let slots = runner.req_pool_mut().alloc(b)?;
    let mut states = prompts
        .iter()
        .map(|p| SequenceState::new(SamplingParams::greedy(), &p.ids))
        .collect::<Result<Vec<_>, _>>()?;
    let mut inputs: Vec<SequenceInput> = prompts
        .iter()
        .zip(&slots)
        .map(|(p, &slot)| SequenceInput {
            req_slot: slot,
            prefix_len: 0,
            new_tokens: p.ids.clone(),
        })
        .collect();
    let vision_before = runner.vision_encode_seconds();
    let start = Instant::now();
    for (p, &slot) in prompts.iter().zip(&slots) {
        if let Some(mm) = &p.mm {
            runner.attach_images(slot, &p.ids, mm.clone())?;
            runner.encode_images(slot, 0..p.ids.len())?;
        }
    }
    let batch = runner.prepare(&inputs, LogitsMode::LastPerSequence)?;
    let first = runner.step(&batch, &mut states)?;
    let prefill = start.elapsed().as_secs_f64();
    let vision_encode_s = match (vision_before, runner.vision_encode_seconds()) {
        (Some(a), Some(b)) if prompts.iter().any(|p| p.mm.is_some()) => Some(b - a),
        _ => None,
    };
    let mut steps = Vec::with_capacity(output_len.saturating_sub(1));
    runner.take_graph_replay_seconds()?;
    // Each decode step feeds on the one before it: from its read tokens, or (overlapped) as
    // future tokens from the step still in flight.
    let mut known = Some(first);
    let mut in_flight = None;
    let mut last_read = Instant::now();
    let futures: Vec<(usize, usize)> = (0..b).map(|i| (i, i)).collect();
    for _ in 1..output_len {
        for (i, inp) in inputs.iter_mut().enumerate() {
            inp.prefix_len += inp.new_tokens.len();
            inp.new_tokens = vec![known.as_ref().map_or(0, |k| k[i].token)];
        }
        let mut batch = runner.prepare(&inputs, LogitsMode::LastPerSequence)?;
        if known.is_none() {
            batch = batch.with_future_tokens(&futures)?;
        }
        if !overlap {
            known = Some(runner.step(&batch, &mut states)?);
        } else if let Some(prev) = in_flight.replace(runner.launch(&batch, &mut states)?) {
            runner.finish(prev, &mut states)?;
        } else {
            // The first overlapped step: nothing was read yet.
            known = None;
            continue;
        }
        steps.push(last_read.elapsed().as_secs_f64());
        last_read = Instant::now();
    }
    if let Some(last) = in_flight.take() {
        runner.finish(last, &mut states)?;
        steps.push(last_read.elapsed().as_secs_f64());
    }
    let total = start.elapsed().as_secs_f64();
    let mut replays = runner.take_graph_replay_seconds()?.unwrap_or_default();
    for inp in &inputs {
        runner.release(inp.req_slot, inp.prefix_len + inp.new_tokens.len())?;
    }
    let in_tokens = (b * prompts.first().map_or(0, |p| p.ids.len())) as f64;
    let graph_gpu = median(&mut replays);
    let median = median(&mut steps);
    Ok(Timings {
        prefill_latency_s: prefill,
        prefill_throughput_tok_s: in_tokens / prefill,
        decode_median_latency_s: median,
        decode_throughput_tok_s: median.map(|m| b as f64 / m),
        decode_total_s: steps.iter().sum(),
        decode_graph_gpu_s: graph_gpu,
        vision_encode_s,
        total_latency_s: total,
        total_throughput_tok_s: (in_tokens + (b * output_len) as f64) / total,
    })
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::{median, random_prompts};

    #[test]
    fn median_and_prompts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let p = random_prompts(3, 5, 7, 1);
        assert_eq!((p.len(), p[0].len()), (3, 5));
        assert!(p.iter().flatten().all(|&t| t < 7));
        assert_ne!(p[0], p[1]);
    }
}
