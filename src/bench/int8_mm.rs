//! `mllm-kernel bench int8-mm`: our W8A8 GEMM against cuBLASLt int8 and
//! cuBLAS bf16 on the same shapes in the same run, and at small M the
//! weight-streaming rate against the device copy bandwidth.

use half::bf16;
use serde::Serialize;

use super::blas::{CublasBf16Gemm, LtInt8Gemm};
use super::{copy_bandwidth, random_bf16, rotation, time_gpu, xorshift, TimingPlan};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::ops::{self, Int8MmConfig};
use crate::tensor::DeviceTensor;
use crate::Result;

/// A GEMM shape: `out[M, N] = A[M, K] · W[N, K]ᵀ`.
#[derive(Debug, Clone, Serialize)]
pub struct GemmShape {
    pub label: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// Qwen3-8B's linear layers (qkv, o, gate_up, down) at each M, then 8192³.
pub fn default_shapes(ms: &[usize]) -> Vec<GemmShape> {
    let layers = [
        ("qwen3-8b qkv", 6144, 4096),
        ("qwen3-8b o", 4096, 4096),
        ("qwen3-8b gate_up", 24576, 4096),
        ("qwen3-8b down", 4096, 12288),
    ];
    let mut shapes = layer_shapes(ms, &layers);
    shapes.push(GemmShape {
        label: "square".into(),
        m: 8192,
        n: 8192,
        k: 8192,
    });
    shapes
}

/// Each `(label, N, K)` layer at each M, M-major (all layers at the first M,
/// then the next): e.g. the same weight bytes split into more or fewer output
/// tiles, to see what a GEMM's grid size costs at small M.
///
/// ```
/// let shapes = mllm_kernel::bench::layer_shapes(&[1, 16], &[("o", 4096, 4096), ("o-wide", 8192, 2048)]);
/// assert_eq!(shapes.len(), 4);
/// assert_eq!((shapes[1].label.as_str(), shapes[1].m, shapes[1].n), ("o-wide", 1, 8192));
/// ```
pub fn layer_shapes<L: AsRef<str>>(ms: &[usize], layers: &[(L, usize, usize)]) -> Vec<GemmShape> {
    ms.iter()
        .flat_map(|&m| {
            layers.iter().map(move |(label, n, k)| GemmShape {
                label: label.as_ref().to_string(),
                m,
                n: *n,
                k: *k,
            })
        })
        .collect()
}

/// One measured shape (and config, in a sweep).
#[derive(Debug, Clone, Serialize)]
pub struct Int8MmRow {
    pub shape: GemmShape,
    pub config: String,
    pub median_us: f64,
    pub tops: f64,
    pub cublaslt_int8_us: Option<f64>,
    pub cublaslt_int8_tops: Option<f64>,
    pub cublas_bf16_us: f64,
    pub cublas_bf16_tflops: f64,
    /// At M ≤ 16 on SM90: the same bf16 problem on `stream_linear` (our
    /// weight-streaming kernel), and cuBLAS's time over it.
    pub stream_bf16_us: Option<f64>,
    pub stream_bf16_vs_cublas: Option<f64>,
    pub speedup_vs_cublaslt_int8: Option<f64>,
    pub speedup_vs_cublas_bf16: f64,
    /// Quantize (bf16 → int8 per token) + GEMM, and its cost over the GEMM alone.
    pub dynamic_us: Option<f64>,
    pub dynamic_overhead: Option<f64>,
    /// At M ≤ 64: weight bytes / time, and that over the device copy bandwidth.
    pub weight_gbps: Option<f64>,
    pub copy_gbps: Option<f64>,
    pub weight_bw_ratio: Option<f64>,
    pub rotation: usize,
    pub plan: TimingPlan,
    /// The `MLLM_*` environment (path, config, swizzle and PDL overrides) the row ran under.
    pub env: std::collections::BTreeMap<String, String>,
}

fn random_i8(n: usize, seed: u64) -> Vec<i8> {
    xorshift(n, seed, |s| ((s % 255) as i32 - 127) as i8)
}

struct Set {
    a: DeviceTensor,
    w: DeviceTensor,
    sa: DeviceTensor,
    sw: DeviceTensor,
    out: DeviceTensor,
    x: DeviceTensor,
    wb: DeviceTensor,
    q: DeviceTensor,
    qs: DeviceTensor,
    out_i32: DeviceTensor,
}

fn make_set(gpu: &Gpu, s: &GemmShape, seed: u64) -> Result<Set> {
    let (m, n, k) = (s.m, s.n, s.k);
    Ok(Set {
        a: DeviceTensor::from_host(gpu, &random_i8(m * k, seed), &[m, k])?,
        w: DeviceTensor::from_host(gpu, &random_i8(n * k, seed + 1), &[n, k])?,
        sa: DeviceTensor::from_host(gpu, &vec![1e-3f32; m], &[m])?,
        sw: DeviceTensor::from_host(gpu, &vec![1e-3f32; n], &[n])?,
        out: DeviceTensor::zeros(gpu, &[m, n], DType::BF16)?,
        x: DeviceTensor::from_host(gpu, &random_bf16(m * k, seed + 2), &[m, k])?,
        wb: DeviceTensor::from_host(gpu, &vec![bf16::from_f32(0.01); n * k], &[n, k])?,
        q: DeviceTensor::zeros(gpu, &[m, k], DType::I8)?,
        qs: DeviceTensor::zeros(gpu, &[m], DType::F32)?,
        out_i32: DeviceTensor::zeros(gpu, &[m, n], DType::I32)?,
    })
}

/// Times every shape (each config that runs, with `sweep`) and its peers.
pub fn bench_int8_mm(gpu: &Gpu, shapes: &[GemmShape], plan: TimingPlan, sweep: bool) -> Result<Vec<Int8MmRow>> {
    let mut rows = Vec::new();
    let mut bf16_gemm = CublasBf16Gemm::new(gpu)?;
    let env = crate::env::mllm_vars();
    for s in shapes {
        let (m, n, k) = (s.m, s.n, s.k);
        let ops_count = 2.0 * m as f64 * n as f64 * k as f64;
        // int8 and bf16 operands together, cycled past the L2.
        let set_bytes = 3 * (m * k + n * k) + 6 * m * n;
        let sets = rotation(gpu, set_bytes)?;
        let mut data = (0..sets)
            .map(|i| make_set(gpu, s, 17 * i as u64 + 3))
            .collect::<Result<Vec<_>>>()?;
        let mut i = 0;
        let mut next = move || {
            i = (i + 1) % sets;
            i
        };
        let stream = gpu.stream();
        // cuBLASLt may have no int8 algorithm for a shape: report, don't abort.
        let lt_t = LtInt8Gemm::new(gpu, m, n, k).and_then(|mut lt| {
            time_gpu(gpu, plan, || {
                let d = &mut data[next()];
                let (a, _ga) = d.a.raw_ptr(stream);
                let (w, _gw) = d.w.raw_ptr(stream);
                let (o, _go) = d.out_i32.raw_ptr_mut(stream);
                lt.run(gpu, a, w, o)
            })
        });
        if let Err(e) = &lt_t {
            eprintln!("cuBLASLt int8 unavailable for {m}x{n}x{k}: {e}");
        }
        let lt_us = lt_t.ok().map(|t| t.median_us);
        let bf_t = time_gpu(gpu, plan, || {
            let d = &mut data[next()];
            let (a, _ga) = d.x.raw_ptr(stream);
            let (w, _gw) = d.wb.raw_ptr(stream);
            let (o, _go) = d.out.raw_ptr_mut(stream);
            bf16_gemm.run(m, n, k, a, w, o)
        })?;
        let stream_bf16_us = if ops::stream_linear_unsupported(gpu.arch(), m, n, k, DType::BF16, DType::BF16).is_none()
        {
            Some(
                time_gpu(gpu, plan, || {
                    let d = &mut data[next()];
                    ops::stream_linear_into(gpu, &d.x, &d.wb, None, &mut d.out)
                })?
                .median_us,
            )
        } else {
            None
        };
        let small = m <= 64;
        let copy_gbps = if small {
            Some(copy_bandwidth(gpu, n * k, plan)?)
        } else {
            None
        };
        let configs: Vec<Option<Int8MmConfig>> = if sweep {
            Int8MmConfig::ALL
                .into_iter()
                .filter(|c| c.runs_on(gpu.arch()) && m <= c.max_m())
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        for config in configs {
            let t = time_gpu(gpu, plan, || {
                let d = &mut data[next()];
                ops::int8_scaled_mm_into(gpu, &d.a, &d.w, &d.sa, &d.sw, None, &mut d.out, config)
            })?;
            let dynamic_us = if small || !sweep {
                Some(
                    time_gpu(gpu, plan, || {
                        let d = &mut data[next()];
                        ops::int8_scaled_mm_dynamic_into(
                            gpu, &d.x, &d.w, &d.sw, None, &mut d.q, &mut d.qs, &mut d.out, config,
                        )
                    })?
                    .median_us,
                )
            } else {
                None
            };
            let name = match config {
                Some(c) => c.name().to_string(),
                None => format!("auto: {}", ops::resolve_int8_mm_config(gpu.arch(), m, n, k, None)?),
            };
            let weight_gbps = small.then(|| (n * k) as f64 / t.median_us / 1e3);
            rows.push(Int8MmRow {
                shape: s.clone(),
                config: name,
                median_us: t.median_us,
                tops: ops_count / t.median_us / 1e6,
                cublaslt_int8_us: lt_us,
                cublaslt_int8_tops: lt_us.map(|u| ops_count / u / 1e6),
                cublas_bf16_us: bf_t.median_us,
                cublas_bf16_tflops: ops_count / bf_t.median_us / 1e6,
                stream_bf16_us,
                stream_bf16_vs_cublas: stream_bf16_us.map(|u| bf_t.median_us / u),
                speedup_vs_cublaslt_int8: lt_us.map(|u| u / t.median_us),
                speedup_vs_cublas_bf16: bf_t.median_us / t.median_us,
                dynamic_us,
                dynamic_overhead: dynamic_us.map(|d| d / t.median_us - 1.0),
                weight_gbps,
                copy_gbps,
                // Both are bytes through HBM per second (the copy counts read + write).
                weight_bw_ratio: weight_gbps.zip(copy_gbps).map(|(w, c)| w / c),
                rotation: sets,
                plan,
                env: env.clone(),
            });
        }
    }
    Ok(rows)
}
