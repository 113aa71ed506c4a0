//! `ops::stream_linear_into` (bf16/f16 linear at M <= 16 on SM90, the weight
//! streamed by TMA bulk copies) against the f64 CPU reference, and through
//! `ops::linear_into` against cuBLAS. Skipped, with the reason printed, where
//! no SM90 GPU exists.
//!
//! Tolerance: the kernel accumulates exact bf16/f16 products in f32, in
//! another order than the reference's f64 sum. With x in [-1, 1] and weights
//! in [-1, 1] / sqrt(K), outputs are O(1) and the f32 sum's error is below
//! K * 2^-24 (< 1e-3 at K = 12288); the output then rounds once, and a sum
//! that close to a rounding boundary may land on the other neighbour (seen on
//! an H200: 0.5586 for 0.5625 at K = 12288). So |gpu - ref| <= one output step
//! (its ulp: at most 2^-7 bf16, 2^-10 f16 relative) + 1e-3 absolute; f32
//! outputs get 1e-3 absolute + 1e-5 relative.

mod common;

use common::{assert_bitwise_repeatable, cast, gpu_or_skip, random_f32, sm90_or_skip};
use half::{bf16, f16};
use mllm_kernel::dtype::FloatElem;
use mllm_kernel::{ops, reference, DType, DeviceTensor, Gpu};

fn tolerance(dtype: DType, want: f32) -> f32 {
    let rel = match dtype {
        DType::BF16 => 1.0 / 128.0,
        DType::F16 => 1.0 / 1024.0,
        _ => 1e-5,
    };
    rel * want.abs() + 1e-3
}

/// One `m x n x k` problem in `T`, written as `O` (T or f32).
fn check<T: FloatElem, O: FloatElem>(gpu: &Gpu, (m, n, k): (usize, usize, usize), bias: bool, seed: u64) {
    check_runs::<T, O>(gpu, (m, n, k), bias, seed, 1);
}

/// [`check`] over `runs` back-to-back launches that must agree bit for bit.
fn check_runs<T: FloatElem, O: FloatElem>(
    gpu: &Gpu,
    (m, n, k): (usize, usize, usize),
    bias: bool,
    seed: u64,
    runs: usize,
) {
    let x: Vec<T> = cast(&random_f32(m * k, seed, 1.0));
    let w: Vec<T> = cast(&random_f32(n * k, seed + 1, 1.0 / (k as f32).sqrt()));
    let b: Option<Vec<T>> = bias.then(|| cast(&random_f32(n, seed + 2, 1.0)));
    let want: Vec<O> = reference::linear(&x, &w, b.as_deref(), m, n, k);
    let dx = DeviceTensor::from_host(gpu, &x, &[m, k]).unwrap();
    let dw = DeviceTensor::from_host(gpu, &w, &[n, k]).unwrap();
    let db = b.as_ref().map(|b| DeviceTensor::from_host(gpu, b, &[n]).unwrap());
    let what = format!("{} m={m} n={n} k={k}", T::DTYPE);
    let got: Vec<O> = assert_bitwise_repeatable(gpu, &what, (m, n), runs, |out| {
        ops::stream_linear_into(gpu, &dx, &dw, db.as_ref(), out).unwrap()
    });
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (g, w) = (g.to_f32(), w.to_f32());
        assert!(
            (g - w).abs() <= tolerance(O::DTYPE, w),
            "{} -> {} m={m} n={n} k={k} bias={bias}: out[{}, {}] = {g}, reference {w}",
            T::DTYPE,
            O::DTYPE,
            i / n,
            i % n
        );
    }
}

#[test]
fn qwen3_8b_shapes_match_reference() {
    let Some(gpu) = sm90_or_skip("qwen3_8b_shapes_match_reference", "stream_linear") else {
        return;
    };
    // qkv, o, gate_up (3072 column groups: persistent blocks), down.
    let layers = [(6144, 4096), (4096, 4096), (24_576, 4096), (4096, 12_288)];
    for (i, m) in [1usize, 3, 16].into_iter().enumerate() {
        for (j, &(n, k)) in layers.iter().enumerate() {
            let seed = 100 * i as u64 + 10 * j as u64;
            if (i + j) % 2 == 0 {
                check::<bf16, bf16>(&gpu, (m, n, k), j % 2 == 0, seed);
            } else {
                check::<f16, f16>(&gpu, (m, n, k), j % 2 == 1, seed);
            }
        }
    }
}

/// gate_up's shape at 16 rows, where one run of session 17 got one wrong
/// 16-byte weight piece (a bulk copy refilling a ring slot before a lagging
/// shared-memory read of it; mllm_tma.cuh's sync_before_refill): 256 runs
/// back to back, bit-identical, the first within tolerance.
#[test]
fn repeated_runs_are_bitwise_identical() {
    let Some(gpu) = sm90_or_skip("repeated_runs_are_bitwise_identical", "stream_linear") else {
        return;
    };
    check_runs::<bf16, bf16>(&gpu, (16, 24_576, 4096), true, 220, 256);
    check_runs::<f16, f16>(&gpu, (1, 6144, 4096), false, 230, 256);
}

#[test]
fn odd_aligned_shapes_and_f32_logits_match_reference() {
    let Some(gpu) = sm90_or_skip("odd_aligned_shapes_and_f32_logits_match_reference", "stream_linear") else {
        return;
    };
    // No stage or group count divides these; K = 4104 ends mid-stage.
    for (i, &(m, n, k)) in [(1, 8, 8), (2, 264, 528), (7, 136, 4104), (16, 72, 24)]
        .iter()
        .enumerate()
    {
        check::<bf16, bf16>(&gpu, (m, n, k), i % 2 == 0, 500 + i as u64);
        check::<f16, f16>(&gpu, (m, n, k), i % 2 == 1, 600 + i as u64);
    }
    // An LM head writing f32 logits.
    check::<bf16, f32>(&gpu, (1, 32_000, 4096), false, 700);
    check::<f16, f32>(&gpu, (4, 2048, 1024), true, 710);
}

/// `linear_into` routes here only under MLLM_LINEAR_SMALL_M=stream (read once
/// per process, so this binary's other tests are unaffected either way); the
/// two paths agree within the tolerance, whichever ran.
#[test]
fn agrees_with_cublas_linear() {
    let Some(gpu) = sm90_or_skip("agrees_with_cublas_linear", "stream_linear") else {
        return;
    };
    let (m, n, k) = (3, 4096, 4096);
    let x: Vec<bf16> = cast(&random_f32(m * k, 800, 1.0));
    let w: Vec<bf16> = cast(&random_f32(n * k, 801, 1.0 / 64.0));
    let dx = DeviceTensor::from_host(&gpu, &x, &[m, k]).unwrap();
    let dw = DeviceTensor::from_host(&gpu, &w, &[n, k]).unwrap();
    let mut ours = DeviceTensor::zeros(&gpu, &[m, n], DType::BF16).unwrap();
    ops::stream_linear_into(&gpu, &dx, &dw, None, &mut ours).unwrap();
    let theirs = ops::linear(&gpu, &dx, &dw, None).unwrap();
    let (a, b): (Vec<bf16>, Vec<bf16>) = (ours.to_host(&gpu).unwrap(), theirs.to_host(&gpu).unwrap());
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        let (p, q) = (p.to_f32(), q.to_f32());
        assert!(
            (p - q).abs() <= 2.0 * tolerance(DType::BF16, q),
            "out {i}: stream {p} vs linear {q}"
        );
    }
}

#[test]
fn unsupported_problems_are_errors() {
    let Some(gpu) = gpu_or_skip("unsupported_problems_are_errors") else {
        return;
    };
    // The error of an m x n x k problem of `dtype` (zeros), as text.
    let error = |(m, n, k): (usize, usize, usize), dtype: DType| {
        let x = DeviceTensor::zeros(&gpu, &[m, k], dtype).unwrap();
        let w = DeviceTensor::zeros(&gpu, &[n, k], dtype).unwrap();
        let mut out = DeviceTensor::zeros(&gpu, &[m, n], dtype).unwrap();
        ops::stream_linear_into(&gpu, &x, &w, None, &mut out)
            .unwrap_err()
            .to_string()
    };
    let pre_hopper = gpu.arch().major < 9;
    for (shape, dtype, why) in [
        ((17, 64, 64), DType::BF16, "at most 16 rows"),
        ((1, 64, 12), DType::BF16, "multiples of 8"),
        ((1, 64, 64), DType::F32, "bf16 or f16"),
    ] {
        let err = error(shape, dtype);
        assert!(
            err.contains(if pre_hopper { "SM90" } else { why }),
            "{shape:?} {dtype}: {err}"
        );
    }
}
