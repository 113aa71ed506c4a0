//! The W8A8 int8 GEMM on the GPU against its CPU reference (exact int32
//! accumulation, f32 epilogue). Skipped, with the reason printed, where no
//! CUDA device exists.
//!
//! Tolerance: one rounding step of the output dtype. The kernels and the
//! reference compute the same f32 epilogue `fma(scale_a, scale_b * acc,
//! bias)`; a contraction or order difference moves the f32 result by an ulp
//! or so, which can flip the final rounding to bf16/f16 by one step.
//!
//! Large problems check a sample of rows (the reference is O(MNK) on the
//! CPU); every column of a checked row is compared.

mod common;

use common::{assert_bitwise_repeatable, gpu_or_skip, random_f32};
use half::{bf16, f16};
use mllm_kernel::dtype::FloatElem;
use mllm_kernel::ops::{self, Int8MmConfig, Int8MmPath};
use mllm_kernel::{reference, DType, DeviceTensor, Gpu};

fn random_i8(n: usize, seed: u64) -> Vec<i8> {
    random_f32(n, seed, 127.0)
        .into_iter()
        .map(|v| v.round() as i8)
        .collect()
}

/// The gap between `w` and its neighbour in the output dtype.
fn step(w: f32, dtype: DType) -> f32 {
    let (mantissa, min_normal_exp) = match dtype {
        DType::BF16 => (7, -126),
        _ => (10, -14),
    };
    let e = (w.abs().log2().floor() as i32).max(min_normal_exp);
    2f32.powi(e - mantissa)
}

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    per_token: bool,
    per_channel: bool,
    bias: bool,
    seed: u64,
}

/// Rows the reference checks: all of a small M, else a spread sample
/// (fewer when a row costs N*K >= 16M multiply-adds on the CPU), always
/// including both edges of the first tile boundaries and the last rows.
fn checked_rows(m: usize, nk: usize) -> Vec<usize> {
    let heavy = nk >= 16 << 20;
    if m <= 64 && (!heavy || m <= 8) {
        return (0..m).collect();
    }
    let mut rows = vec![0, m / 2, m - 1];
    if !heavy {
        rows.extend([1, 15, 16, 63, 64.min(m - 1), m - 2]);
        rows.extend((0..7).map(|i| (i * 7919 + 13) % m));
    } else {
        rows.extend([17.min(m - 1), (m * 3 / 4).min(m - 1)]);
    }
    rows.sort();
    rows.dedup();
    rows
}

fn run_case<T: FloatElem>(gpu: &Gpu, c: Case, config: Option<Int8MmConfig>, what: &str) {
    run_case_repeated::<T>(gpu, c, config, what, 1);
}

/// [`run_case`] over `runs` back-to-back launches that must agree bit for bit.
fn run_case_repeated<T: FloatElem>(gpu: &Gpu, c: Case, config: Option<Int8MmConfig>, what: &str, runs: usize) {
    let Case { m, n, k, .. } = c;
    let a = random_i8(m * k, c.seed);
    let b = random_i8(n * k, c.seed + 1);
    let sa: Vec<f32> = if c.per_token {
        random_f32(m, c.seed + 2, 1e-3).iter().map(|v| v.abs() + 1e-4).collect()
    } else {
        vec![7e-4]
    };
    let sb: Vec<f32> = if c.per_channel {
        random_f32(n, c.seed + 3, 1e-2).iter().map(|v| v.abs() + 1e-3).collect()
    } else {
        vec![3e-3]
    };
    let bias: Option<Vec<T>> = c
        .bias
        .then(|| random_f32(n, c.seed + 4, 4.0).into_iter().map(T::from_f32).collect());
    let da = DeviceTensor::from_host(gpu, &a, &[m, k]).unwrap_or_else(|e| panic!("{what}: {e}"));
    let db = DeviceTensor::from_host(gpu, &b, &[n, k]).unwrap_or_else(|e| panic!("{what}: {e}"));
    let dsa = DeviceTensor::from_host(gpu, &sa, &[sa.len()]).unwrap_or_else(|e| panic!("{what}: {e}"));
    let dsb = DeviceTensor::from_host(gpu, &sb, &[sb.len()]).unwrap_or_else(|e| panic!("{what}: {e}"));
    let dbias = bias
        .as_ref()
        .map(|v| DeviceTensor::from_host(gpu, v, &[n]).unwrap_or_else(|e| panic!("{what}: {e}")));
    let got: Vec<T> = assert_bitwise_repeatable(gpu, what, (m, n), runs, |out| {
        ops::int8_scaled_mm_into(gpu, &da, &db, &dsa, &dsb, dbias.as_ref(), out, config)
            .unwrap_or_else(|e| panic!("{what} {c:?}: {e}"))
    });
    for row in checked_rows(m, n * k) {
        let row_sa = if c.per_token { vec![sa[row]] } else { sa.clone() };
        let want =
            reference::int8_scaled_mm::<T>(&a[row * k..(row + 1) * k], &b, 1, n, k, &row_sa, &sb, bias.as_deref());
        for (j, w) in want.iter().enumerate() {
            let (g, w) = (got[row * n + j].to_f32(), w.to_f32());
            assert!(
                (g - w).abs() <= step(w, T::DTYPE),
                "{what} {c:?} config {config:?}: out[{row}, {j}] = {g}, reference {w}"
            );
        }
    }
}

fn both_dtypes(gpu: &Gpu, c: Case, config: Option<Int8MmConfig>, what: &str) {
    run_case::<bf16>(gpu, c, config, what);
    let c16 = Case {
        per_token: !c.per_token,
        per_channel: !c.per_channel,
        bias: !c.bias,
        seed: c.seed + 100,
        ..c
    };
    run_case::<f16>(gpu, c16, config, what);
}

const MS: &[usize] = &[1, 3, 16, 17, 64, 255, 256, 1000, 4096];

#[test]
fn every_config_matches_reference_on_odd_aligned_shapes() {
    let Some(gpu) = gpu_or_skip("every_config_matches_reference_on_odd_aligned_shapes") else {
        return;
    };
    for config in Int8MmConfig::ALL.into_iter().filter(|c| c.runs_on(gpu.arch())) {
        for (i, &m) in MS.iter().filter(|&&m| m <= config.max_m()).enumerate() {
            // N = 8 * 33, K = 16 * 33: aligned, but no tile divides them.
            for &(n, k) in &[(264, 528), (8, 16), (136, 4112)] {
                let c = Case {
                    m,
                    n,
                    k,
                    per_token: true,
                    per_channel: true,
                    bias: true,
                    seed: 10 * i as u64 + n as u64,
                };
                both_dtypes(&gpu, c, Some(config), config.name());
            }
        }
    }
}

/// Qwen3-8B's projections: qkv, o, gate_up (K = 4096) and down (K = 12288).
const QWEN3_8B: &[(usize, usize)] = &[(6144, 4096), (4096, 4096), (24576, 4096), (4096, 12288)];

fn qwen_shapes_on_path(gpu: &Gpu, path: Int8MmPath) {
    for (i, &m) in MS.iter().enumerate() {
        for (j, &(n, k)) in QWEN3_8B.iter().enumerate() {
            let config = ops::select_int8_mm_config(gpu.arch(), path, m, n, k);
            let c = Case {
                m,
                n,
                k,
                per_token: i % 2 == 0,
                per_channel: true,
                bias: j % 2 == 0,
                seed: 1000 + i as u64,
            };
            let what = format!("{path:?} {}", config.name());
            if (i + j) % 2 == 0 {
                run_case::<bf16>(gpu, c, Some(config), &what);
            } else {
                run_case::<f16>(gpu, c, Some(config), &what);
            }
        }
    }
}

#[test]
fn auto_dispatch_on_qwen3_8b_shapes() {
    let Some(gpu) = gpu_or_skip("auto_dispatch_on_qwen3_8b_shapes") else {
        return;
    };
    qwen_shapes_on_path(&gpu, Int8MmPath::Auto);
}

#[test]
fn forced_sm80_path_on_qwen3_8b_shapes() {
    let Some(gpu) = gpu_or_skip("forced_sm80_path_on_qwen3_8b_shapes") else {
        return;
    };
    qwen_shapes_on_path(&gpu, Int8MmPath::Sm80);
}

#[test]
fn allocating_form_and_empty_m() {
    let Some(gpu) = gpu_or_skip("allocating_form_and_empty_m") else {
        return;
    };
    let a = DeviceTensor::from_host(&gpu, &[1i8; 2 * 32], &[2, 32]).unwrap();
    let b = DeviceTensor::from_host(&gpu, &[2i8; 8 * 32], &[8, 32]).unwrap();
    let sa = DeviceTensor::from_host(&gpu, &[0.5f32, 1.0], &[2]).unwrap();
    let sb = DeviceTensor::from_host(&gpu, &[0.25f32], &[1]).unwrap();
    let out = ops::int8_scaled_mm(&gpu, &a, &b, &sa, &sb, DType::BF16, None).unwrap();
    let got: Vec<bf16> = out.to_host(&gpu).unwrap();
    // 32 * 1 * 2 = 64; row 0: 0.5 * 0.25 * 64 = 8, row 1: 16.
    assert_eq!(got[..8], [bf16::from_f32(8.0); 8]);
    assert_eq!(got[8..], [bf16::from_f32(16.0); 8]);
    let empty = DeviceTensor::zeros(&gpu, &[0, 32], DType::I8).unwrap();
    let s0 = DeviceTensor::zeros(&gpu, &[0], DType::F32).unwrap();
    let out = ops::int8_scaled_mm(&gpu, &empty, &b, &s0, &sb, DType::F16, None).unwrap();
    assert_eq!(out.shape(), &[0, 8]);
}

#[test]
fn bad_arguments_are_errors_not_launches() {
    let Some(gpu) = gpu_or_skip("bad_arguments_are_errors_not_launches") else {
        return;
    };
    let a = DeviceTensor::zeros(&gpu, &[4, 32], DType::I8).unwrap();
    let b = DeviceTensor::zeros(&gpu, &[8, 32], DType::I8).unwrap();
    let sa = DeviceTensor::zeros(&gpu, &[4], DType::F32).unwrap();
    let sb = DeviceTensor::zeros(&gpu, &[8], DType::F32).unwrap();
    let mut wrong_out = DeviceTensor::zeros(&gpu, &[4, 16], DType::BF16).unwrap();
    // B, its scales and no bias throughout; a, its scales, out and the config vary.
    let run = |a: &DeviceTensor, sa: &DeviceTensor, out: &mut DeviceTensor, config: Option<Int8MmConfig>| {
        ops::int8_scaled_mm_into(&gpu, a, &b, sa, &sb, None, out, config)
    };
    let e = run(&a, &sa, &mut wrong_out, None).unwrap_err();
    assert!(e.to_string().contains("`out`"), "{e}");
    let mut out = DeviceTensor::zeros(&gpu, &[4, 8], DType::BF16).unwrap();
    let e = run(&a, &sa, &mut out, Some(Int8MmConfig::SkinnyM16));
    assert!(e.is_ok(), "{e:?}");
    let big = DeviceTensor::zeros(&gpu, &[20, 32], DType::I8).unwrap();
    let sbig = DeviceTensor::zeros(&gpu, &[20], DType::F32).unwrap();
    let mut obig = DeviceTensor::zeros(&gpu, &[20, 8], DType::BF16).unwrap();
    let e = run(&big, &sbig, &mut obig, Some(Int8MmConfig::SkinnyM16)).unwrap_err();
    assert!(e.to_string().contains("at most 16 rows"), "{e}");
    if gpu.arch().major != 9 {
        let e = run(&a, &sa, &mut out, Some(Int8MmConfig::Sm90P64x128x128)).unwrap_err();
        assert!(e.to_string().contains("sm_90a"), "{e}");
    }
}

#[test]
fn dynamic_quant_then_gemm_matches_reference() {
    let Some(gpu) = gpu_or_skip("dynamic_quant_then_gemm_matches_reference") else {
        return;
    };
    // M <= 4 on SM90 runs the streaming GEMM that quantizes x itself (K = 4096 and 12288);
    // larger M the quantization kernel, holding rows of K <= 8192 in registers (K = 12288 is
    // past that).
    let shapes = [
        (1usize, 4096),
        (3, 12_288),
        (5, 4096),
        (16, 12_288),
        (64, 4096),
        (200, 12_288),
    ];
    for (i, &(m, k)) in shapes.iter().enumerate() {
        check_dynamic(&gpu, m, 4096, k, None, 50 + i as u64);
    }
}

/// `stream_m16` on a layer wider than one wave of resident blocks (gate_up:
/// 3072 column groups for 792 block slots on an H100), at 1 and 16 rows (the
/// kernel without and with A's rows 8-15); the plain int8 GEMM and the form
/// that quantizes x itself; and 256 back-to-back runs at 16 rows.
#[test]
fn stream_m16_covers_layers_wider_than_one_wave() {
    let Some(gpu) = gpu_or_skip("stream_m16_covers_layers_wider_than_one_wave") else {
        return;
    };
    if !Int8MmConfig::StreamM16.runs_on(gpu.arch()) {
        println!(
            "skipped stream_m16_covers_layers_wider_than_one_wave: stream_m16 needs SM90, this GPU is {}",
            gpu.arch()
        );
        return;
    }
    for (i, m) in [1usize, 16].into_iter().enumerate() {
        let c = Case {
            m,
            n: 24_576,
            k: 4096,
            per_token: true,
            per_channel: true,
            bias: i == 0,
            seed: 900 + i as u64,
        };
        run_case::<bf16>(&gpu, c, Some(Int8MmConfig::StreamM16), "stream_m16 gate_up");
    }
    // The ring's slot refill raced a lagging shared-memory read until
    // mllm_tma.cuh's sync_before_refill (found in stream_linear, which shares
    // the ring): many back-to-back runs must agree bit for bit.
    let c = Case {
        m: 16,
        n: 24_576,
        k: 4096,
        per_token: true,
        per_channel: true,
        bias: true,
        seed: 920,
    };
    run_case_repeated::<bf16>(&gpu, c, Some(Int8MmConfig::StreamM16), "stream_m16 gate_up x256", 256);
    check_dynamic(&gpu, 2, 24_576, 4096, Some(Int8MmConfig::StreamM16), 950);
}

/// The K-folded swap-AB config on shapes where each fold is picked (on a
/// 132-SM Hopper: o and down fold 2, qkv 4 and gate_up 2 at up to 8 tokens,
/// gate_up and qkv 1 above),
/// an odd N whose folded rows leave the last tile half empty (264 x 2112:
/// fold 4, K / 4 = 528, not a multiple of the 256-wide k-tile), every token
/// count across both tiles, and per-tensor scales. `gpu-test.sh` runs it
/// again under each `MLLM_INT8_MM_FOLD`, which forces a fold wherever it fits.
#[test]
fn folded_swap_tiles_match_reference() {
    let Some(gpu) = gpu_or_skip("folded_swap_tiles_match_reference") else {
        return;
    };
    let config = Int8MmConfig::Sm90SwapKFold;
    if !config.runs_on(gpu.arch()) {
        println!(
            "skipped folded_swap_tiles_match_reference: needs sm_90a, this GPU is {}",
            gpu.arch()
        );
        return;
    }
    let shapes = [(4096, 4096), (6144, 4096), (4096, 12_288), (24_576, 4096), (264, 2112)];
    for (i, m) in [1usize, 2, 3, 4, 5, 8, 9, 16, 17, 32].into_iter().enumerate() {
        for (j, &(n, k)) in shapes.iter().enumerate() {
            let c = Case {
                m,
                n,
                k,
                per_token: (i + j) % 3 != 0,
                per_channel: (i + j) % 4 != 1,
                bias: (i + j) % 2 == 0,
                seed: 2000 + 10 * i as u64 + j as u64,
            };
            if (i + j) % 2 == 0 {
                run_case::<bf16>(&gpu, c, Some(config), config.name());
            } else {
                run_case::<f16>(&gpu, c, Some(config), config.name());
            }
        }
    }
}

/// `int8_scaled_mm_dynamic` of a random bf16 `[m, k]` x and `[n, k]` int8
/// weight against per-token quantization + the int8 reference.
fn check_dynamic(gpu: &Gpu, m: usize, n: usize, k: usize, config: Option<Int8MmConfig>, seed: u64) {
    let x: Vec<bf16> = random_f32(m * k, seed, 3.0).into_iter().map(bf16::from_f32).collect();
    let w = random_i8(n * k, seed + 10);
    let sw: Vec<f32> = random_f32(n, 70, 1e-2).iter().map(|v| v.abs() + 1e-3).collect();
    let bias: Vec<bf16> = random_f32(n, 80, 1.0).into_iter().map(bf16::from_f32).collect();
    let dx = DeviceTensor::from_host(gpu, &x, &[m, k]).unwrap();
    let dw = DeviceTensor::from_host(gpu, &w, &[n, k]).unwrap();
    let dsw = DeviceTensor::from_host(gpu, &sw, &[n]).unwrap();
    let dbias = DeviceTensor::from_host(gpu, &bias, &[n]).unwrap();
    let mut q = DeviceTensor::zeros(gpu, &[m, k], DType::I8).unwrap();
    let mut qs = DeviceTensor::zeros(gpu, &[m], DType::F32).unwrap();
    let mut out = DeviceTensor::zeros(gpu, &[m, n], DType::BF16).unwrap();
    ops::int8_scaled_mm_dynamic_into(gpu, &dx, &dw, &dsw, Some(&dbias), &mut q, &mut qs, &mut out, config).unwrap();
    let got: Vec<bf16> = out.to_host(gpu).unwrap();
    let (q, qs) = reference::per_token_quant_int8(&x, k);
    for row in checked_rows(m, n * k) {
        let want = reference::int8_scaled_mm::<bf16>(
            &q[row * k..(row + 1) * k],
            &w,
            1,
            n,
            k,
            &qs[row..row + 1],
            &sw,
            Some(&bias),
        );
        for (j, wv) in want.iter().enumerate() {
            let (g, wv) = (got[row * n + j].to_f32(), wv.to_f32());
            assert!(
                (g - wv).abs() <= step(wv, DType::BF16),
                "m={m} n={n} k={k} {config:?}: out[{row}, {j}] = {g}, reference {wv}"
            );
        }
    }
}
