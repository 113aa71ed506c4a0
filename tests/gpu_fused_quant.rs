//! The W8A8 input kernels that quantize as they go: fused add + RMSNorm + per-token int8, and
//! SiLU-and-mul + per-token int8. Skipped (with the reason printed) where no CUDA device exists.
//!
//! Oracles: the float outputs (updated residual, normalized `x`, SiLU product) against the CPU
//! references with the tolerances of tests/gpu_ops.rs and tests/gpu_core_ops.rs; the int8 rows
//! and scales must equal, bit for bit, the per-token quantization reference applied to the
//! GPU's own float output (same IEEE f32 ops), since that is what the unfused path computes.

mod common;

use common::{cast, gpu_or_skip, random_f32};
use half::{bf16, f16};
use mllm_kernel::dtype::FloatElem;
use mllm_kernel::{ops, reference, DType, DeviceTensor, Gpu};

/// 2^-(p-1) relative for p mantissa bits (see the module docs of gpu_ops.rs).
fn rel_tol(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 1.0 / 64.0,
        DType::F16 => 1.0 / 512.0,
        _ => 1e-5,
    }
}

fn assert_close<T: FloatElem>(got: &[T], want: &[T], what: &str) {
    let tol = rel_tol(T::DTYPE);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f32(), w.to_f32());
        assert!(
            (g - w).abs() <= tol * w.abs().max(1e-3),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

/// The int8 outputs equal the reference quantization of the GPU's float rows.
fn assert_quant_of<T: FloatElem>(float_rows: &[T], cols: usize, q: &[i8], scales: &[f32], what: &str) {
    let (want_q, want_s) = reference::per_token_quant_int8(float_rows, cols);
    assert_eq!(scales, &want_s[..], "{what}: scales");
    assert_eq!(q, &want_q[..], "{what}: q");
}

/// (rows, cols): packs and 1-element fallbacks, rows wider than the cached packs, a zero-row
/// batch, the Qwen3-8B decode and prefill shapes.
const NORM_SHAPES: &[(usize, usize)] = &[
    (1, 4096),
    (64, 1024),
    (3, 7),
    (17, 64),
    (2, 5120),
    (4, 40_000),
    (0, 64),
    (257, 4096),
];

fn check_norm_quant<T: FloatElem>(gpu: &Gpu) {
    for (seed, &(rows, cols)) in NORM_SHAPES.iter().enumerate() {
        let x: Vec<T> = cast(&random_f32(rows * cols, 10 + seed as u64, 3.0));
        let r: Vec<T> = cast(&random_f32(rows * cols, 20 + seed as u64, 3.0));
        let w: Vec<T> = cast(&random_f32(cols, 30 + seed as u64, 1.5));
        let (mut want_x, mut want_r) = (x.clone(), r.clone());
        reference::fused_add_rms_norm(&mut want_x, &mut want_r, &w, cols, 1e-6);
        let mut xd = DeviceTensor::from_host(gpu, &x, &[rows, cols]).unwrap();
        let mut rd = DeviceTensor::from_host(gpu, &r, &[rows, cols]).unwrap();
        let wd = DeviceTensor::from_host(gpu, &w, &[cols]).unwrap();
        let mut q = DeviceTensor::zeros(gpu, &[rows, cols], DType::I8).unwrap();
        let mut s = DeviceTensor::zeros(gpu, &[rows], DType::F32).unwrap();
        ops::fused_add_rms_norm_quant(gpu, &mut xd, &mut rd, &wd, 1e-6, &mut q, &mut s).unwrap();
        let what = format!("fused_add_rms_norm_quant {} [{rows}, {cols}]", T::DTYPE);
        let got_r = rd.to_host::<T>(gpu).unwrap();
        assert!(
            got_r.iter().zip(&want_r).all(|(a, b)| a.to_f32() == b.to_f32()),
            "{what}: residual not exact"
        );
        let got_x = xd.to_host::<T>(gpu).unwrap();
        assert_close(&got_x, &want_x, &what);
        if rows > 0 {
            let (q, s) = (q.to_host::<i8>(gpu).unwrap(), s.to_host::<f32>(gpu).unwrap());
            assert_quant_of(&got_x, cols, &q, &s, &what);
        }
    }
}

#[test]
fn fused_add_rms_norm_quant_matches_reference() {
    if let Some(gpu) = gpu_or_skip("fused_add_rms_norm_quant_matches_reference") {
        check_norm_quant::<bf16>(&gpu);
        check_norm_quant::<f16>(&gpu);
        check_norm_quant::<f32>(&gpu);
    }
}

/// (rows, intermediate): the Qwen3-8B width, a scalar fallback, many rows.
/// (rows, I): on SM90 the cluster form at up to 64 rows whose I splits into 8 CTAs of whole
/// warps (1 x 12288, 64 x 2048), the one-block form otherwise.
const SILU_SHAPES: &[(usize, usize)] = &[
    (1, 12_288),
    (64, 2048),
    (65, 2048),
    (3, 7),
    (2, 25_600),
    (513, 256),
    (0, 64),
];

fn check_silu_quant<T: FloatElem>(gpu: &Gpu) {
    for (seed, &(rows, inter)) in SILU_SHAPES.iter().enumerate() {
        let x: Vec<T> = cast(&random_f32(rows * 2 * inter, 40 + seed as u64, 4.0));
        let want = reference::silu_and_mul(&x, inter);
        let xd = DeviceTensor::from_host(gpu, &x, &[rows, 2 * inter]).unwrap();
        let mut out = DeviceTensor::zeros(gpu, &[rows, inter], T::DTYPE).unwrap();
        let mut q = DeviceTensor::zeros(gpu, &[rows, inter], DType::I8).unwrap();
        let mut s = DeviceTensor::zeros(gpu, &[rows], DType::F32).unwrap();
        ops::silu_and_mul_quant_into(gpu, &xd, &mut out, &mut q, &mut s).unwrap();
        let what = format!("silu_and_mul_quant {} [{rows}, {inter}]", T::DTYPE);
        let got = out.to_host::<T>(gpu).unwrap();
        assert_close(&got, &want, &what);
        if rows > 0 {
            let (q, s) = (q.to_host::<i8>(gpu).unwrap(), s.to_host::<f32>(gpu).unwrap());
            assert_quant_of(&got, inter, &q, &s, &what);
        }
    }
}

#[test]
fn silu_and_mul_quant_matches_reference() {
    if let Some(gpu) = gpu_or_skip("silu_and_mul_quant_matches_reference") {
        check_silu_quant::<bf16>(&gpu);
        check_silu_quant::<f16>(&gpu);
        check_silu_quant::<f32>(&gpu);
    }
}

#[test]
fn wrong_quant_outputs_are_errors() {
    let Some(gpu) = gpu_or_skip("wrong_quant_outputs_are_errors") else {
        return;
    };
    let mut x = DeviceTensor::zeros(&gpu, &[2, 64], DType::BF16).unwrap();
    let mut r = DeviceTensor::zeros(&gpu, &[2, 64], DType::BF16).unwrap();
    let w = DeviceTensor::zeros(&gpu, &[64], DType::BF16).unwrap();
    let mut q_bad = DeviceTensor::zeros(&gpu, &[2, 64], DType::F32).unwrap();
    let mut s = DeviceTensor::zeros(&gpu, &[2], DType::F32).unwrap();
    let err = ops::fused_add_rms_norm_quant(&gpu, &mut x, &mut r, &w, 1e-6, &mut q_bad, &mut s).unwrap_err();
    assert!(err.to_string().contains("`q`"), "{err}");
    let mut q = DeviceTensor::zeros(&gpu, &[2, 64], DType::I8).unwrap();
    let mut s_bad = DeviceTensor::zeros(&gpu, &[3], DType::F32).unwrap();
    let err = ops::fused_add_rms_norm_quant(&gpu, &mut x, &mut r, &w, 1e-6, &mut q, &mut s_bad).unwrap_err();
    assert!(err.to_string().contains("`scales`"), "{err}");
    let mut out = DeviceTensor::zeros(&gpu, &[2, 32], DType::BF16).unwrap();
    let mut q32 = DeviceTensor::zeros(&gpu, &[2, 64], DType::I8).unwrap();
    let err = ops::silu_and_mul_quant_into(&gpu, &x, &mut out, &mut q32, &mut s).unwrap_err();
    assert!(err.to_string().contains("`q`"), "{err}");
}
