//! `mllm-kernel bench <op>`: GPU timings with CUDA events, each with a peer
//! measured in the same run.

use std::process::Command;
use std::time::Instant;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::bench::{bench_bandwidth, bench_core_op, BandwidthOp, BandwidthRow, CoreOp, TimingPlan};
use crate::env::KernelEnv;
use crate::jit::{cache::create_private_dir, JitCache, KernelSpec};
use crate::registry::KernelBuild;
use crate::Gpu;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchOp {
    RmsNorm,
    FusedAddRmsNorm,
    PerTokenQuantInt8,
    /// bf16 [T, 2 * hidden] -> [T, hidden] (pass the intermediate size as --hidden).
    SiluAndMul,
    /// Qwen3-8B q/k heads (32 + 8, dim 128) of a packed qkv buffer, norm on.
    QkNormRope,
    /// bf16 rows of --hidden gathered from a 151936-row table.
    Embedding,
    /// Qwen3-8B K/V rows (8 heads x 128) of a packed qkv buffer into a slot pool.
    KvStore,
    /// f32 logits [T, 151936] -> greedy ids + log-probabilities.
    Argmax,
    /// f32 logits [T, 151936] -> seeded top-k 50 / top-p 0.95 samples (e.g. --tokens 1,64).
    Sampling,
    /// W8A8 int8 GEMM vs cuBLASLt int8 and cuBLAS bf16 (Qwen3-8B shapes, 8192³).
    Int8Mm,
    /// W8A8 MLP block of one decode row: `decode_mlp` (one kernel) vs the four kernels, --hidden
    /// x --inter (Qwen3-8B by default), weight bytes vs a copy.
    DecodeMlp,
    /// Paged decode attention, Qwen3-8B heads (32 q / 8 kv, d128, bf16): KV bytes read vs a copy.
    Attention,
    /// JIT cold compile and warm cache-hit load of every kernel.
    Jit,
    /// (internal) load one kernel from a warm cache and print microseconds.
    #[value(hide = true)]
    JitLoadOnce,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    pub op: BenchOp,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 4096)]
    pub hidden: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256,1024,4096,8192")]
    pub tokens: Vec<usize>,
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    #[arg(long, default_value_t = 30)]
    pub repeats: usize,
    /// int8-mm: the M values to run the layer shapes at (Qwen3-8B's, or --layers).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,128,256,1024,4096")]
    pub ms: Vec<usize>,
    /// int8-mm: layer shapes NxK (output features x input features) to run at every
    /// --ms instead of Qwen3-8B's layers and 8192³, e.g. 4096x4096,8192x2048.
    #[arg(long, value_delimiter = ',', value_parser = parse_layer)]
    pub layers: Vec<(usize, usize)>,
    /// int8-mm: time every kernel config on every shape (the dispatch table's data).
    #[arg(long)]
    pub sweep: bool,
    /// decode-mlp: the MLP's intermediate size (with --hidden).
    #[arg(long, default_value_t = 12288)]
    pub inter: usize,
    /// attention: decode batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub batch: Vec<usize>,
    /// attention: context tokens per sequence.
    #[arg(long, value_delimiter = ',', default_value = "1024,4096")]
    pub context: Vec<usize>,
    /// Time CUDA-graph replays of each sample's calls (no host launch cost, as in decode).
    #[arg(long)]
    pub graph: bool,
    /// Kernel for jit-load-once.
    #[arg(long, hide = true)]
    pub kernel: Option<String>,
}

pub fn run(env: &KernelEnv, args: BenchArgs) -> anyhow::Result<i32> {
    let plan = TimingPlan {
        warmup: args.warmup,
        repeats: args.repeats,
        graph: args.graph,
        ..TimingPlan::default()
    };
    let op = match args.op {
        BenchOp::RmsNorm => BandwidthOp::RmsNorm,
        BenchOp::FusedAddRmsNorm => BandwidthOp::FusedAddRmsNorm,
        BenchOp::PerTokenQuantInt8 => BandwidthOp::PerTokenQuantInt8,
        BenchOp::SiluAndMul => return bench_core(env, &args, plan, CoreOp::SiluAndMul),
        BenchOp::QkNormRope => return bench_core(env, &args, plan, CoreOp::QkNormRope),
        BenchOp::Embedding => return bench_core(env, &args, plan, CoreOp::Embedding),
        BenchOp::KvStore => return bench_core(env, &args, plan, CoreOp::KvStore),
        BenchOp::Argmax => return bench_core(env, &args, plan, CoreOp::Argmax),
        BenchOp::Sampling => return bench_core(env, &args, plan, CoreOp::Sampling),
        BenchOp::Int8Mm => return bench_int8_mm(env, &args, plan),
        BenchOp::Attention => return bench_attention(env, &args, plan),
        BenchOp::DecodeMlp => return bench_decode_mlp(env, &args, plan),
        BenchOp::Jit => return bench_jit(env, args.json),
        BenchOp::JitLoadOnce => return jit_load_once(env, args.kernel.as_deref()),
    };
    if args.hidden == 0 || args.tokens.contains(&0) {
        anyhow::bail!("--hidden and every --tokens value must be > 0");
    }
    let gpu = Gpu::with_env(0, env.clone())?;
    let rows = bench_bandwidth(&gpu, op, args.hidden, &args.tokens, plan)?;
    print_rows(&gpu, &rows, args.json)?;
    Ok(0)
}

fn bench_core(env: &KernelEnv, args: &BenchArgs, plan: TimingPlan, op: CoreOp) -> anyhow::Result<i32> {
    if args.hidden == 0 || args.tokens.contains(&0) {
        anyhow::bail!("--hidden and every --tokens value must be > 0");
    }
    let gpu = Gpu::with_env(0, env.clone())?;
    let rows = bench_core_op(&gpu, op, args.hidden, &args.tokens, plan)?;
    print_rows(&gpu, &rows, args.json)?;
    Ok(0)
}

fn bench_attention(env: &KernelEnv, args: &BenchArgs, plan: TimingPlan) -> anyhow::Result<i32> {
    if args.batch.is_empty() || args.context.is_empty() || args.batch.contains(&0) || args.context.contains(&0) {
        anyhow::bail!("--batch and --context need values > 0");
    }
    let gpu = Gpu::with_env(0, env.clone())?;
    let rows = crate::bench::bench_attention_decode(&gpu, &args.batch, &args.context, plan)?;
    let info = gpu.info();
    if args.json {
        for r in &rows {
            let mut v = serde_json::to_value(r)?;
            v["gpu"] = info.name.clone().into();
            v["arch"] = gpu.arch().to_string().into();
            v["driver"] = info.driver_version.clone().into();
            println!("{v}");
        }
        return Ok(0);
    }
    println!(
        "{} ({}), warmup {} / repeats {} (median{}); heads 32/8, d128, bf16",
        info.name,
        gpu.arch(),
        plan.warmup,
        plan.repeats,
        if plan.graph { ", CUDA-graph replay" } else { "" }
    );
    println!(
        "{:<18} {:<13} {:>6} {:>8} {:>10} {:>10} {:>9} {:>9} {:>7}",
        "op", "kernel", "batch", "context", "MiB", "median_us", "GB/s", "copyGB/s", "ratio"
    );
    for r in &rows {
        println!(
            "{:<18} {:<13} {:>6} {:>8} {:>10.1} {:>10.2} {:>9.0} {:>9.0} {:>6.0}%",
            r.op,
            r.kernel,
            r.batch,
            r.context,
            r.bytes as f64 / (1 << 20) as f64,
            r.median_us,
            r.gbps,
            r.copy_gbps,
            100.0 * r.ratio_to_copy
        );
    }
    Ok(0)
}

fn print_rows(gpu: &Gpu, rows: &[BandwidthRow], json: bool) -> anyhow::Result<()> {
    let info = gpu.info();
    if json {
        for r in rows {
            let mut v = serde_json::to_value(r)?;
            v["gpu"] = info.name.clone().into();
            v["arch"] = gpu.arch().to_string().into();
            v["driver"] = info.driver_version.clone().into();
            println!("{v}");
        }
        return Ok(());
    }
    println!(
        "{} ({}), warmup {} / repeats {} (median)",
        info.name,
        gpu.arch(),
        rows[0].plan.warmup,
        rows[0].plan.repeats
    );
    println!(
        "{:<22} {:>7} {:>7} {:>10} {:>9} {:>9} {:>7}",
        "op", "tokens", "hidden", "median_us", "GB/s", "copyGB/s", "ratio"
    );
    for r in rows {
        println!(
            "{:<22} {:>7} {:>7} {:>10.2} {:>9.0} {:>9.0} {:>6.0}%",
            r.op,
            r.tokens,
            r.hidden,
            r.median_us,
            r.gbps,
            r.copy_gbps,
            100.0 * r.ratio_to_copy
        );
    }
    Ok(())
}

fn bench_decode_mlp(env: &KernelEnv, args: &BenchArgs, plan: TimingPlan) -> anyhow::Result<i32> {
    let gpu = Gpu::with_env(0, env.clone())?;
    let r = crate::bench::bench_decode_mlp(&gpu, args.hidden, args.inter, plan)?;
    if args.json {
        let mut v = serde_json::to_value(&r)?;
        v["op"] = "decode_mlp".into();
        v["gpu"] = gpu.info().name.clone().into();
        v["graph"] = plan.graph.into();
        println!("{v}");
        return Ok(0);
    }
    println!(
        "decode_mlp {} x {} ({:.0} MB of int8 weight): one kernel {:.1} us ({:.0} GB/s), four kernels {:.1} us \
         ({:.0} GB/s), {:.2}x; copy {:.0} GB/s",
        r.hidden,
        r.inter,
        r.weight_bytes as f64 / 1e6,
        r.fused_us,
        r.fused_gbps,
        r.unfused_us,
        r.unfused_gbps,
        r.unfused_us / r.fused_us,
        r.copy_gbps
    );
    Ok(0)
}

fn bench_int8_mm(env: &KernelEnv, args: &BenchArgs, plan: TimingPlan) -> anyhow::Result<i32> {
    if args.ms.contains(&0) {
        anyhow::bail!("every --ms value must be > 0");
    }
    let shapes = if args.layers.is_empty() {
        crate::bench::default_shapes(&args.ms)
    } else {
        let layers: Vec<(String, usize, usize)> =
            args.layers.iter().map(|&(n, k)| (format!("{n}x{k}"), n, k)).collect();
        crate::bench::layer_shapes(&args.ms, &layers)
    };
    let gpu = Gpu::with_env(0, env.clone())?;
    let rows = crate::bench::bench_int8_mm(&gpu, &shapes, plan, args.sweep)?;
    let info = gpu.info();
    if args.json {
        for r in &rows {
            let mut v = serde_json::to_value(r)?;
            v["op"] = "int8_scaled_mm".into();
            v["gpu"] = info.name.clone().into();
            v["arch"] = gpu.arch().to_string().into();
            v["driver"] = info.driver_version.clone().into();
            println!("{v}");
        }
        return Ok(0);
    }
    println!(
        "{} ({}), warmup {} / repeats {} x {} calls (median); TOPS = 2MNK / time",
        info.name,
        gpu.arch(),
        plan.warmup,
        plan.repeats,
        plan.calls_per_repeat
    );
    println!(
        "{:<18} {:>5} {:>6} {:>6} {:<34} {:>9} {:>7} {:>9} {:>7} {:>9} {:>7} {:>6} {:>7} {:>8} {:>10}",
        "shape",
        "M",
        "N",
        "K",
        "config",
        "us",
        "TOPS",
        "LtI8 us",
        "LtTOPS",
        "bf16 us",
        "vs Lt",
        "vsbf16",
        "+quant",
        "wBW/copy",
        "bf16 strm"
    );
    for r in &rows {
        let opt = |v: Option<f64>, scale: f64| v.map_or("-".to_string(), |x| format!("{:.0}%", x * scale));
        println!(
            "{:<18} {:>5} {:>6} {:>6} {:<34} {:>9.2} {:>7.1} {:>9} {:>7} {:>9.2} {:>7} {:>5.2}x {:>7} {:>8} {:>10}",
            r.shape.label,
            r.shape.m,
            r.shape.n,
            r.shape.k,
            r.config,
            r.median_us,
            r.tops,
            fixed(r.cublaslt_int8_us, 2, ""),
            fixed(r.cublaslt_int8_tops, 1, ""),
            r.cublas_bf16_us,
            fixed(r.speedup_vs_cublaslt_int8, 2, "x"),
            r.speedup_vs_cublas_bf16,
            opt(r.dynamic_overhead, 100.0),
            opt(r.weight_bw_ratio, 100.0),
            // Our bf16 streaming kernel's time (and cuBLAS bf16's over it).
            r.stream_bf16_us
                .zip(r.stream_bf16_vs_cublas)
                .map_or("-".into(), |(us, x)| format!("{us:.1} {x:.2}x")),
        );
    }
    Ok(0)
}

/// `12.34` + suffix, or `-` where the peer had no result.
fn fixed(v: Option<f64>, digits: usize, suffix: &str) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}{suffix}"))
}

#[derive(Debug, Serialize)]
struct JitRow {
    kernel: String,
    arch: String,
    cold_compile_ms: f64,
    warm_load_ms_median: f64,
    warm_load_samples: usize,
    warm_includes_module_load: bool,
}

/// Cold compile into a fresh root, then warm loads in fresh processes (so
/// nothing is memoized in memory), median of 5.
fn bench_jit(env: &KernelEnv, json: bool) -> anyhow::Result<i32> {
    let gpu_arch = crate::device::list_devices().ok().map(|d| d[0].compute_capability);
    let arch = match (gpu_arch, env.cuda_archs.first()) {
        (Some((ma, mi)), _) => crate::jit::Arch::for_device(ma, mi),
        (None, Some(a)) => *a,
        (None, None) => "sm_90a".parse()?,
    };
    let root = std::env::temp_dir().join(format!("mllm-kernel-bench-jit-{}", std::process::id()));
    create_private_dir(&root)?;
    let mut env = env.clone();
    env.cache_dir = Some(root.clone());
    env.jit_disabled = false;
    let jit = JitCache::new(env.clone())?;
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    // The engine needs one dtype per kernel: time the bf16 builds.
    let builds = KernelBuild::all()
        .into_iter()
        .filter(|b| b.targets(arch) && b.variant.is_none_or(|v| !matches!(v, "f32" | "f16")));
    for build in builds {
        let name = build.to_string();
        let start = Instant::now();
        jit.get(&KernelSpec::for_build(build), arch)?;
        let cold = start.elapsed().as_secs_f64() * 1e3;
        let mut samples = Vec::new();
        for _ in 0..5 {
            let out = Command::new(&exe)
                .args(["bench", "jit-load-once", "--kernel", &name])
                .env("MLLM_KERNEL_CACHE_DIR", &root)
                .env("MLLM_KERNEL_JIT", "0")
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let ms: f64 = text.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "warm-load child failed: {}{}",
                    text,
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
            samples.push(ms);
        }
        samples.sort_by(f64::total_cmp);
        rows.push(JitRow {
            kernel: name,
            arch: arch.to_string(),
            cold_compile_ms: cold,
            warm_load_ms_median: samples[samples.len() / 2],
            warm_load_samples: samples.len(),
            warm_includes_module_load: gpu_arch.is_some(),
        });
    }
    let _ = std::fs::remove_dir_all(&root);
    for r in &rows {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!(
                "{:<22} {} cold compile {:>8.1} ms   warm load {:>6.2} ms (median of {}, {})",
                r.kernel,
                r.arch,
                r.cold_compile_ms,
                r.warm_load_ms_median,
                r.warm_load_samples,
                if r.warm_includes_module_load {
                    "key + verify + module load"
                } else {
                    "key + verify; no GPU to load onto"
                }
            );
        }
    }
    Ok(0)
}

/// Child of `bench jit`: time from "need kernel" to "kernel usable".
fn jit_load_once(env: &KernelEnv, kernel: Option<&str>) -> anyhow::Result<i32> {
    let builds = KernelBuild::parse(kernel.unwrap_or_default())?;
    let [build] = builds[..] else {
        anyhow::bail!("jit-load-once needs one build, e.g. rms_norm[bf16]");
    };
    let ms = match Gpu::with_env(0, env.clone()) {
        Ok(gpu) => {
            let start = Instant::now();
            gpu.kernel(build)?;
            start.elapsed().as_secs_f64() * 1e3
        }
        Err(_) => {
            let jit = JitCache::new(env.clone())?;
            let start = Instant::now();
            jit.get(
                &KernelSpec::for_build(build),
                env.cuda_archs.first().copied().unwrap_or("sm_90a".parse()?),
            )?;
            start.elapsed().as_secs_f64() * 1e3
        }
    };
    println!("{ms}");
    Ok(0)
}

/// `NxK` for `--layers`: both positive (the op's own checks then judge alignment).
fn parse_layer(text: &str) -> Result<(usize, usize), String> {
    let (n, k) = text
        .split_once('x')
        .ok_or_else(|| format!("`{text}` is not NxK (e.g. 4096x4096)"))?;
    let dim = |d: &str| match d.trim().parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("`{text}`: `{d}` is not a positive integer")),
    };
    Ok((dim(n)?, dim(k)?))
}

#[cfg(test)]
mod tests {
    use super::parse_layer;

    #[test]
    fn layer_shapes_parse_as_n_by_k() {
        assert_eq!(parse_layer("8192x2048"), Ok((8192, 2048)));
        for bad in ["4096", "0x4096", "4096x", "ax4096", "4096x-1"] {
            let err = parse_layer(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
