//! The vision tower's kernels (LayerNorm with the fused residual add, GELU,
//! dense segment attention) against their CPU references. Skipped (with the
//! reason printed) without a CUDA device; the validation test runs anywhere.
//!
//! Tolerances (p = mantissa bits: bf16 8, f16 11 with the implicit bit):
//! * layer_norm: f32 statistics in another summation order than the f64
//!   reference, then one rounding each: at most one ulp of the output,
//!   2^-(p-1) of |out| plus a small absolute term for outputs near 0; the
//!   stored residual sum rounds identically on both sides (bit exact).
//! * gelu: f32 tanhf/erff vs f64, one rounding: one ulp (2^-(p-1) relative,
//!   1e-6 absolute for f32).
//! * segment_attention: scores and probabilities are rounded to the element
//!   type between the two GEMMs (as eager bf16 attention does), so each
//!   output is off by a few ulps of the largest |v| it averages: 2^-(p-3) of
//!   the segment's max |v| (1e-4 for f32).

mod common;

use common::{cast, gpu_or_skip, random_f32};
use half::{bf16, f16};
use mllm_kernel::dtype::FloatElem;
use mllm_kernel::ops::{self, Gelu, Meta};
use mllm_kernel::{reference, DType, DeviceTensor, Gpu};

fn ulp(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 1.0 / 128.0,
        DType::F16 => 1.0 / 1024.0,
        _ => 1e-6,
    }
}

fn f32s<T: FloatElem>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

fn check_layer_norm<T: FloatElem>(gpu: &Gpu) {
    for (seed, &(rows, cols)) in [(1, 1), (3, 32), (7, 1024), (2, 4096), (5, 1000)].iter().enumerate() {
        let seed = seed as u64;
        let x: Vec<T> = cast(&random_f32(rows * cols, 300 + seed, 3.0));
        let mut res: Vec<T> = cast(&random_f32(rows * cols, 310 + seed, 3.0));
        let w: Vec<T> = cast(
            &random_f32(cols, 320 + seed, 1.0)
                .iter()
                .map(|v| 1.0 + v)
                .collect::<Vec<_>>(),
        );
        let b: Vec<T> = cast(&random_f32(cols, 330 + seed, 0.5));
        let shape = [rows, cols];
        let (xd, wd, bd) = (
            DeviceTensor::from_host(gpu, &x, &shape).unwrap(),
            DeviceTensor::from_host(gpu, &w, &[cols]).unwrap(),
            DeviceTensor::from_host(gpu, &b, &[cols]).unwrap(),
        );
        for fused in [false, true] {
            let what = format!("layer_norm {} [{rows}, {cols}] fused={fused}", T::DTYPE);
            let mut rd = DeviceTensor::from_host(gpu, &res, &shape).unwrap();
            let mut out = DeviceTensor::empty(gpu, &shape, T::DTYPE).unwrap();
            let mut want_res = res.clone();
            let want = if fused {
                ops::layer_norm_into(gpu, &xd, Some(&mut rd), &wd, &bd, 1e-6, &mut out).unwrap();
                reference::layer_norm(&x, Some(&mut want_res), &w, &b, cols, 1e-6)
            } else {
                ops::layer_norm_into(gpu, &xd, None, &wd, &bd, 1e-6, &mut out).unwrap();
                reference::layer_norm(&x, None, &w, &b, cols, 1e-6)
            };
            let got = f32s(&out.to_host::<T>(gpu).unwrap());
            for (i, (g, e)) in got.iter().zip(f32s(&want)).enumerate() {
                let tol = 2.0 * ulp(T::DTYPE) * e.abs() + 4.0 * ulp(T::DTYPE) * 1e-2;
                assert!((g - e).abs() <= tol.max(1e-5), "{what}: [{i}] {g} vs {e}");
            }
            let got_res = f32s(&rd.to_host::<T>(gpu).unwrap());
            assert_eq!(got_res, f32s(&want_res), "{what}: stored residual");
        }
        res.reverse();
    }
}

#[test]
fn layer_norm_matches_reference() {
    if let Some(gpu) = gpu_or_skip("layer_norm_matches_reference") {
        check_layer_norm::<bf16>(&gpu);
        check_layer_norm::<f16>(&gpu);
        check_layer_norm::<f32>(&gpu);
    }
}

fn check_gelu<T: FloatElem>(gpu: &Gpu) {
    let n = 7 * 10_003;
    let x: Vec<T> = cast(&random_f32(n, 400, 6.0));
    let xd = DeviceTensor::from_host(gpu, &x, &[7, n / 7]).unwrap();
    for (kind, tanh) in [(Gelu::Tanh, true), (Gelu::Erf, false)] {
        let what = format!("gelu {kind:?} {}", T::DTYPE);
        let want = f32s(&reference::gelu(&x, tanh));
        let mut out = DeviceTensor::empty(gpu, &[7, n / 7], T::DTYPE).unwrap();
        ops::gelu_into(gpu, &xd, kind, &mut out).unwrap();
        let mut inplace = DeviceTensor::from_host(gpu, &x, &[7, n / 7]).unwrap();
        ops::gelu_inplace(gpu, &mut inplace, kind).unwrap();
        for got in [out, inplace] {
            let got = f32s(&got.to_host::<T>(gpu).unwrap());
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                let tol = (2.0 * ulp(T::DTYPE) * e.abs()).max(1e-6);
                assert!((g - e).abs() <= tol, "{what}: x={} {g} vs {e} at {i}", x[i].to_f32());
            }
        }
    }
}

#[test]
fn gelu_matches_reference() {
    if let Some(gpu) = gpu_or_skip("gelu_matches_reference") {
        check_gelu::<bf16>(&gpu);
        check_gelu::<f16>(&gpu);
        check_gelu::<f32>(&gpu);
    }
}

fn check_segment_attention<T: FloatElem>(gpu: &Gpu) {
    // (heads, head_dim, segment lengths): one frame, several images of odd sizes, a
    // 784-patch (448x448) image of Qwen3-VL-2B's 16 heads of 64.
    for (seed, (heads, d, segs)) in [
        (2, 16, vec![24]),
        (3, 32, vec![6, 17, 40]),
        (16, 64, vec![784]),
        (4, 80, vec![1, 33]),
    ]
    .into_iter()
    .enumerate()
    {
        let n: usize = segs.iter().sum();
        let bounds: Vec<usize> = std::iter::once(0)
            .chain(segs.iter().scan(0, |acc, s| {
                *acc += s;
                Some(*acc)
            }))
            .collect();
        let qkv: Vec<T> = cast(&random_f32(n * 3 * heads * d, 500 + seed as u64, 2.0));
        let scale = (d as f32).powf(-0.5);
        let what = format!("segment_attention {} heads {heads} x {d}, segments {segs:?}", T::DTYPE);
        let qd = DeviceTensor::from_host(gpu, &qkv, &[n, 3 * heads * d]).unwrap();
        let mut out = DeviceTensor::empty(gpu, &[n, heads * d], T::DTYPE).unwrap();
        ops::segment_attention_into(gpu, &qd, heads, &bounds, scale, &mut out).unwrap();
        let got = f32s(&out.to_host::<T>(gpu).unwrap());
        let want = f32s(&reference::segment_attention(&qkv, heads, &bounds, scale));
        let vmax = f32s(&qkv).iter().fold(0f32, |m, v| m.max(v.abs()));
        let tol = match T::DTYPE {
            DType::F32 => 1e-4 * vmax,
            dt => 4.0 * ulp(dt) * vmax,
        };
        let worst = got.iter().zip(&want).map(|(g, e)| (g - e).abs()).fold(0f32, f32::max);
        eprintln!("{what}: max |diff| {worst:.2e} (tolerance {tol:.2e})");
        assert!(worst <= tol, "{what}: max |diff| {worst} > {tol}");
    }
}

#[test]
fn segment_attention_matches_reference() {
    if let Some(gpu) = gpu_or_skip("segment_attention_matches_reference") {
        check_segment_attention::<bf16>(&gpu);
        check_segment_attention::<f16>(&gpu);
        check_segment_attention::<f32>(&gpu);
    }
}

#[test]
fn validation_rejects_bad_shapes_without_a_gpu() {
    let (x, w) = (Meta::new(&[4, 8], DType::BF16), Meta::new(&[8], DType::BF16));
    assert!(ops::validate_layer_norm(x, w, Meta::new(&[8], DType::F16), 1e-6).is_err());
    assert!(ops::validate_layer_norm(x, w, w, f32::NAN).is_err());
    assert!(ops::validate_layer_norm(Meta::new(&[4, 8], DType::I8), w, w, 1e-6).is_err());
    let qkv = Meta::new(&[10, 48], DType::BF16);
    assert!(ops::validate_segment_attention(qkv, 2, &[0, 4, 10]).is_ok());
    assert!(ops::validate_segment_attention(qkv, 2, &[0, 4, 4, 10]).is_err());
    assert!(ops::validate_segment_attention(qkv, 2, &[1, 10]).is_err());
    assert!(ops::validate_segment_attention(Meta::new(&[10, 48], DType::I32), 2, &[0, 10]).is_err());
}

#[test]
fn every_vision_symbol_resolves() {
    let Some(gpu) = gpu_or_skip("every_vision_symbol_resolves") else {
        return;
    };
    use mllm_kernel::registry::{KernelBuild, KernelId};
    for id in [KernelId::LayerNorm, KernelId::Gelu, KernelId::Softmax] {
        for build in KernelBuild::of(id) {
            let k = gpu.kernel(build).unwrap();
            for sym in ops::kernel_symbols(build) {
                assert!(
                    k.function(id, &sym).is_ok(),
                    "{build} lacks {sym} (from {})",
                    k.origin()
                );
            }
        }
    }
}
