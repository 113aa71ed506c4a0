//! GPU kernels against their CPU references. Skipped (with the reason
//! printed) where no CUDA device exists.
//!
//! Tolerances: RMSNorm sums squares in a different order on the GPU (f32
//! tree) than the reference (f64), which can flip the rounding of the
//! normalized value n by one ulp (2^-p relative, p mantissa bits); the
//! weight multiply carries that through and its own rounding adds at most
//! 2^-(p+1) on each side, so outputs agree within 2^-(p-1) relative:
//! 2^-6 for bf16 (p=7), 2^-9 for f16 (p=10), 1e-5 for f32.
//! Per-token quantization uses the same IEEE f32 ops as the reference, so
//! it must match exactly.

mod common;

use common::{cast, gpu_or_skip, random_f32};
use half::{bf16, f16};
use mllm_kernel::dtype::FloatElem;
use mllm_kernel::{ops, reference, DType, DeviceTensor, Error, Gpu};

const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (3, 7),
    (17, 64),
    (5, 127),
    (33, 4096),
    // The fused forms' decode launch: one 8-byte pack per thread (1024 / 128 threads).
    (1, 4096),
    (64, 512),
    (2, 5120),
    (4, 40_000),
    // More rows than one wave of blocks: each block walks several rows.
    (3001, 256),
    (1500, 4096),
    (0, 128),
];

fn rel_tol(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 1.0 / 64.0,
        DType::F16 => 1.0 / 512.0,
        _ => 1e-5,
    }
}

fn assert_close<T: FloatElem>(got: &[T], want: &[T], dtype: DType, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let tol = rel_tol(dtype);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f32(), w.to_f32());
        assert!(
            (g - w).abs() <= tol * w.abs() + 1e-6,
            "{what}: element {i}: gpu {g} vs reference {w} (tolerance {tol} relative)"
        );
    }
}

fn check_rms_norm<T: FloatElem>(gpu: &Gpu) {
    let dtype = T::DTYPE;
    for (seed, &(rows, cols)) in SHAPES.iter().enumerate() {
        let x: Vec<T> = cast(&random_f32(rows * cols, seed as u64, 3.0));
        let w: Vec<T> = cast(&random_f32(cols, 100 + seed as u64, 1.5));
        let want = reference::rms_norm(&x, &w, cols, 1e-6);
        let xd = DeviceTensor::from_host(gpu, &x, &[rows, cols]).unwrap();
        let wd = DeviceTensor::from_host(gpu, &w, &[cols]).unwrap();
        let got = ops::rms_norm(gpu, &xd, &wd, 1e-6).unwrap().to_host::<T>(gpu).unwrap();
        assert_close(&got, &want, dtype, &format!("rms_norm {dtype} [{rows}, {cols}]"));

        // Fused: residual must be the exactly rounded sum, x the norm of it.
        let r: Vec<T> = cast(&random_f32(rows * cols, 200 + seed as u64, 3.0));
        let (mut want_x, mut want_r) = (x.clone(), r.clone());
        reference::fused_add_rms_norm(&mut want_x, &mut want_r, &w, cols, 1e-6);
        let mut xd = DeviceTensor::from_host(gpu, &x, &[rows, cols]).unwrap();
        let mut rd = DeviceTensor::from_host(gpu, &r, &[rows, cols]).unwrap();
        ops::fused_add_rms_norm(gpu, &mut xd, &mut rd, &wd, 1e-6).unwrap();
        let got_r = rd.to_host::<T>(gpu).unwrap();
        assert!(
            got_r.iter().zip(&want_r).all(|(a, b)| a.to_f32() == b.to_f32()),
            "fused residual {dtype} [{rows}, {cols}] not exact"
        );
        assert_close(
            &xd.to_host::<T>(gpu).unwrap(),
            &want_x,
            dtype,
            &format!("fused_add_rms_norm {dtype} [{rows}, {cols}]"),
        );
    }
}

#[test]
fn rms_norm_matches_reference_bf16() {
    if let Some(gpu) = gpu_or_skip("rms_norm_matches_reference_bf16") {
        check_rms_norm::<bf16>(&gpu);
    }
}

#[test]
fn rms_norm_matches_reference_f16() {
    if let Some(gpu) = gpu_or_skip("rms_norm_matches_reference_f16") {
        check_rms_norm::<f16>(&gpu);
    }
}

#[test]
fn rms_norm_matches_reference_f32() {
    if let Some(gpu) = gpu_or_skip("rms_norm_matches_reference_f32") {
        check_rms_norm::<f32>(&gpu);
    }
}

fn check_quant<T: FloatElem>(gpu: &Gpu) {
    for (seed, &(rows, cols)) in SHAPES.iter().enumerate() {
        let mut x: Vec<T> = cast(&random_f32(rows * cols, 300 + seed as u64, 5.0));
        if rows >= 3 {
            // A zero row (scale 1e-10/127, all-zero q) and an exact tie (63.5).
            x[cols..2 * cols].iter_mut().for_each(|v| *v = T::from_f32(0.0));
            x[0] = T::from_f32(-2.0);
            if cols > 1 {
                x[1] = T::from_f32(1.0);
            }
        }
        let (want_q, want_s) = reference::per_token_quant_int8(&x, cols);
        let xd = DeviceTensor::from_host(gpu, &x, &[rows, cols]).unwrap();
        let (q, s) = ops::per_token_quant_int8(gpu, &xd).unwrap();
        let what = format!("per_token_quant_int8 {} [{rows}, {cols}]", T::DTYPE);
        assert_eq!(s.to_host::<f32>(gpu).unwrap(), want_s, "{what}: scales");
        let got_q = q.to_host::<i8>(gpu).unwrap();
        let bad = got_q.iter().zip(&want_q).position(|(a, b)| a != b);
        assert!(bad.is_none(), "{what}: q differs at {bad:?}");
    }
}

#[test]
fn per_token_quant_matches_reference() {
    if let Some(gpu) = gpu_or_skip("per_token_quant_matches_reference") {
        check_quant::<bf16>(&gpu);
        check_quant::<f16>(&gpu);
        check_quant::<f32>(&gpu);
    }
}

#[test]
fn every_registered_symbol_resolves() {
    let Some(gpu) = gpu_or_skip("every_registered_symbol_resolves") else {
        return;
    };
    use mllm_kernel::registry::KernelBuild;
    for build in KernelBuild::all().into_iter().filter(|b| b.targets(gpu.arch())) {
        let k = gpu.kernel(build).unwrap();
        for sym in ops::kernel_symbols(build) {
            // C-ABI launchers of nvcc kernels, else a cubin function.
            let ok = match sym.as_str() {
                "mllm_per_token_quant_int8" => k.per_token_quant_int8().is_ok(),
                "mllm_int8_scaled_mm_sm80" => k.int8_scaled_mm_sm80().is_ok(),
                "mllm_int8_scaled_mm_dynamic_sm80" => k.int8_scaled_mm_dynamic_sm80().is_ok(),
                "mllm_int8_scaled_mm_sm90" => k.int8_scaled_mm_sm90().is_ok(),
                "mllm_int8_scaled_mm_dynamic_sm90" => k.int8_scaled_mm_dynamic_sm90().is_ok(),
                "mllm_attention_plan" => k.attention_plan().is_ok(),
                "mllm_attention_run" => k.attention_run().is_ok(),
                "mllm_stream_linear" => k.stream_linear().is_ok(),
                _ => k.function(build.id, &sym).is_ok(),
            };
            assert!(ok, "{build} lacks {sym} (from {})", k.origin());
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_crash() {
    let Some(gpu) = gpu_or_skip("bad_input_is_an_error_not_a_crash") else {
        return;
    };
    let x = DeviceTensor::from_host(&gpu, &[bf16::ONE; 8], &[2, 4]).unwrap();
    let w = DeviceTensor::from_host(&gpu, &[bf16::ONE; 3], &[3]).unwrap();
    assert!(matches!(
        ops::rms_norm(&gpu, &x, &w, 1e-6),
        Err(Error::ShapeMismatch { arg: "weight", .. })
    ));
    let wf = DeviceTensor::from_host(&gpu, &[1f32; 4], &[4]).unwrap();
    assert!(matches!(
        ops::rms_norm(&gpu, &x, &wf, 1e-6),
        Err(Error::DTypeMismatch { arg: "weight", .. })
    ));
    let xi = DeviceTensor::from_host(&gpu, &[1i32; 4], &[1, 4]).unwrap();
    assert!(matches!(
        ops::per_token_quant_int8(&gpu, &xi),
        Err(Error::DTypeMismatch { arg: "x", .. })
    ));
    let mut q = DeviceTensor::zeros(&gpu, &[2, 4], DType::I8).unwrap();
    let mut s = DeviceTensor::zeros(&gpu, &[3], DType::F32).unwrap();
    let err = ops::per_token_quant_int8_into(&gpu, &x, &mut q, &mut s).unwrap_err();
    assert!(err.to_string().contains("`scales`"), "{err}");
    // The device is still healthy afterwards.
    let w4 = DeviceTensor::from_host(&gpu, &[bf16::ONE; 4], &[4]).unwrap();
    ops::rms_norm(&gpu, &x, &w4, 1e-6).unwrap();
    gpu.synchronize().unwrap();
}

/// `graph::Graph` replays what it captured (the capture itself runs
/// nothing), `graph::GpuTimer` times each run, and the benches' `--graph`
/// timing (`bench::time_gpu` with `graph: true`) replays a captured sample.
#[test]
fn graphs_replay_and_timers_time_them() {
    use mllm_kernel::bench::{time_gpu, TimingPlan};
    use mllm_kernel::graph::{GpuTimer, Graph};
    let Some(gpu) = gpu_or_skip("graphs_replay_and_timers_time_them") else {
        return;
    };
    let (rows, cols) = (4, 256);
    let x = DeviceTensor::from_host(&gpu, &random_f32(rows * cols, 7, 2.0), &[rows, cols]).unwrap();
    let w = DeviceTensor::from_host(&gpu, &vec![1.0f32; cols], &[cols]).unwrap();
    let mut eager = DeviceTensor::zeros(&gpu, &[rows, cols], DType::F32).unwrap();
    ops::rms_norm_into(&gpu, &x, &w, 1e-6, &mut eager).unwrap();
    let mut out = DeviceTensor::zeros(&gpu, &[rows, cols], DType::F32).unwrap();
    let graph = Graph::capture(&gpu, || ops::rms_norm_into(&gpu, &x, &w, 1e-6, &mut out)).unwrap();
    assert!(
        out.to_host::<f32>(&gpu).unwrap().iter().all(|v| *v == 0.0),
        "capture ran the work"
    );
    let mut timer = GpuTimer::new(&gpu).unwrap();
    for _ in 0..2 {
        timer.time(&gpu, || graph.launch()).unwrap();
    }
    assert_eq!(out.to_host::<f32>(&gpu).unwrap(), eager.to_host::<f32>(&gpu).unwrap());
    let runs = timer.take().unwrap();
    assert!(runs.len() == 2 && runs.iter().all(|s| *s > 0.0 && *s < 1.0), "{runs:?}");
    assert!(timer.take().unwrap().is_empty());
    let plan = TimingPlan {
        warmup: 1,
        repeats: 3,
        calls_per_repeat: 4,
        graph: true,
    };
    let t = time_gpu(&gpu, plan, || ops::rms_norm_into(&gpu, &x, &w, 1e-6, &mut out)).unwrap();
    assert!(t.min_us > 0.0 && t.min_us <= t.median_us, "{t:?}");
}

/// `prefetch_l2` changes nothing: after prefetching whole, partial (not a
/// 16-byte multiple) and empty ranges, queued behind a kernel and ahead of
/// another, every buffer reads back as written and the stream is healthy; a
/// range past its tensor is an error before any launch.
#[test]
fn l2_prefetch_leaves_data_unchanged() {
    let Some(gpu) = gpu_or_skip("l2_prefetch_leaves_data_unchanged") else {
        return;
    };
    let big: Vec<f32> = random_f32(6 << 20, 41, 1.0); // 24 MiB: hundreds of 64 KiB pieces
    let small: Vec<bf16> = cast(&random_f32(1000, 42, 1.0));
    let a = DeviceTensor::from_host(&gpu, &big, &[big.len()]).unwrap();
    let b = DeviceTensor::from_host(&gpu, &small, &[small.len()]).unwrap();
    let x = DeviceTensor::from_host(&gpu, &big[..4096], &[1, 4096]).unwrap();
    let w = DeviceTensor::from_host(&gpu, &vec![1.0f32; 4096], &[4096]).unwrap();
    let before = ops::rms_norm(&gpu, &x, &w, 1e-6).unwrap();
    ops::prefetch_l2(&gpu, &[(&a, a.nbytes()), (&b, 999), (&a, 0)]).unwrap();
    let after = ops::rms_norm(&gpu, &x, &w, 1e-6).unwrap();
    assert_eq!(a.to_host::<f32>(&gpu).unwrap(), big);
    assert_eq!(b.to_host::<bf16>(&gpu).unwrap(), small);
    assert_eq!(
        before.to_host::<f32>(&gpu).unwrap(),
        after.to_host::<f32>(&gpu).unwrap()
    );
    let e = ops::prefetch_l2(&gpu, &[(&b, b.nbytes() + 16)]).unwrap_err();
    assert!(e.to_string().contains("2016 bytes asked of a 2000-byte tensor"), "{e}");
}
