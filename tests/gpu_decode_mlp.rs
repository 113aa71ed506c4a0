//! `ops::decode_mlp_w8a8_into` (the W8A8 gated MLP block of one decode row as
//! one persistent kernel, SM90) against `reference::decode_mlp_w8a8`, the
//! unfused ops' references in sequence. Skipped, with the reason printed,
//! where no SM90 GPU exists.
//!
//! Tolerance: the kernel rounds every intermediate as the unfused kernels do
//! (and as the reference does), so most outputs match bit for bit. The one
//! free order is the RMSNorm's sum of squares: a last-bit difference in its
//! f32 total can move a normalized element across a bf16/f16 rounding
//! boundary and that element's int8 code by one, which moves every GEMM
//! output by about one weight step times the scales. So: the residual
//! exactly; `act` and `out` within one output step (2^-7 relative for bf16,
//! 2^-10 for f16) plus 1% of the largest reference magnitude, and at least
//! 99% of elements within one step alone.

mod common;

use common::{cast, random_f32, sm90_or_skip};
use half::{bf16, f16};
use mllm_kernel::dtype::FloatElem;
use mllm_kernel::ops::{decode_mlp_w8a8_into, DecodeMlpScratch, DecodeMlpWeights};
use mllm_kernel::{reference, DType, DeviceTensor, Gpu};

/// Random int8 values in [-127, 127].
fn random_i8(n: usize, seed: u64) -> Vec<i8> {
    random_f32(n, seed, 127.0).iter().map(|v| v.round() as i8).collect()
}

/// Per-channel scales that keep a K-long dot product of int8 values near 1.
fn random_scales(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let unit = 1.0 / (40.0 * 73.0 * (k as f32).sqrt());
    random_f32(n, seed, 0.5)
        .iter()
        .map(|v| (1.0 + v) * unit * 30.0)
        .collect()
}

/// The host side of one block: weights and inputs.
struct Problem<T> {
    hidden: usize,
    inter: usize,
    x: Vec<T>,
    residual: Vec<T>,
    norm: Vec<T>,
    gate_up: Vec<i8>,
    gate_up_scales: Vec<f32>,
    down: Vec<i8>,
    down_scales: Vec<f32>,
}

impl<T: FloatElem> Problem<T> {
    fn new(hidden: usize, inter: usize, seed: u64) -> Self {
        Self {
            hidden,
            inter,
            x: cast(&random_f32(hidden, seed, 1.0)),
            residual: cast(&random_f32(hidden, seed + 1, 2.0)),
            norm: cast(
                &random_f32(hidden, seed + 2, 0.2)
                    .iter()
                    .map(|v| 1.0 + v)
                    .collect::<Vec<_>>(),
            ),
            gate_up: random_i8(2 * inter * hidden, seed + 3),
            gate_up_scales: random_scales(2 * inter, hidden, seed + 4),
            down: random_i8(hidden * inter, seed + 5),
            down_scales: random_scales(hidden, inter, seed + 6),
        }
    }
}

/// Device copies of a problem's weights.
struct Weights {
    norm: DeviceTensor,
    gate_up: DeviceTensor,
    gate_up_scales: DeviceTensor,
    down: DeviceTensor,
    down_scales: DeviceTensor,
}

impl Weights {
    fn upload<T: FloatElem>(gpu: &Gpu, p: &Problem<T>) -> Self {
        let (h, i) = (p.hidden, p.inter);
        Self {
            norm: DeviceTensor::from_host(gpu, &p.norm, &[h]).unwrap(),
            gate_up: DeviceTensor::from_host(gpu, &p.gate_up, &[2 * i, h]).unwrap(),
            gate_up_scales: DeviceTensor::from_host(gpu, &p.gate_up_scales, &[2 * i]).unwrap(),
            down: DeviceTensor::from_host(gpu, &p.down, &[h, i]).unwrap(),
            down_scales: DeviceTensor::from_host(gpu, &p.down_scales, &[h]).unwrap(),
        }
    }

    fn view(&self, eps: f32) -> DecodeMlpWeights<'_> {
        DecodeMlpWeights {
            norm: &self.norm,
            gate_up: &self.gate_up,
            gate_up_scales: &self.gate_up_scales,
            down: &self.down,
            down_scales: &self.down_scales,
            eps,
        }
    }
}

fn step(dtype: DType) -> f32 {
    if dtype == DType::BF16 {
        1.0 / 128.0
    } else {
        1.0 / 1024.0
    }
}

fn assert_close<T: FloatElem>(what: &str, got: &[T], want: &[T]) {
    let peak = want.iter().fold(0f32, |m, v| m.max(v.to_f32().abs()));
    let rel = step(T::DTYPE);
    let mut within_step = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f32(), w.to_f32());
        let d = (g - w).abs();
        assert!(
            d <= rel * w.abs() + 0.01 * peak,
            "{what}[{i}] = {g}, reference {w} (peak {peak})"
        );
        within_step += usize::from(d <= rel * w.abs() + 1e-6);
    }
    assert!(
        within_step * 100 >= got.len() * 99,
        "{what}: only {within_step} of {} within one step of the reference",
        got.len()
    );
}

/// Runs a `hidden x inter` block `runs` times back to back (each launch on a
/// fresh copy of the residual, so the grid barrier's state carries from one
/// launch to the next as in a decode step) and checks each against the
/// reference; every run must also match the first bit for bit.
fn check<T: FloatElem>(gpu: &Gpu, hidden: usize, inter: usize, seed: u64, runs: usize) {
    let p = Problem::<T>::new(hidden, inter, seed);
    let eps = 1e-6;
    let mut want_residual = p.residual.clone();
    let (want_act, want_out) = reference::decode_mlp_w8a8(
        &p.x,
        &mut want_residual,
        &p.norm,
        (&p.gate_up, &p.gate_up_scales),
        (&p.down, &p.down_scales),
        eps,
    );
    let w = Weights::upload(gpu, &p);
    let x = DeviceTensor::from_host(gpu, &p.x, &[1, hidden]).unwrap();
    let mut scratch = DecodeMlpScratch::new(gpu).unwrap();
    let mut launched = Vec::new();
    for _ in 0..runs {
        let mut residual = DeviceTensor::from_host(gpu, &p.residual, &[1, hidden]).unwrap();
        let mut act = DeviceTensor::zeros(gpu, &[1, inter], T::DTYPE).unwrap();
        let mut out = DeviceTensor::zeros(gpu, &[1, hidden], T::DTYPE).unwrap();
        decode_mlp_w8a8_into(gpu, &x, &mut residual, &w.view(eps), &mut act, &mut scratch, &mut out).unwrap();
        launched.push((residual, act, out));
    }
    let what = format!("{} hidden={hidden} inter={inter}", T::DTYPE);
    let mut first: Option<Vec<u32>> = None;
    for (run, (residual, act, out)) in launched.iter().enumerate() {
        let residual: Vec<T> = residual.to_host(gpu).unwrap();
        let act: Vec<T> = act.to_host(gpu).unwrap();
        let out: Vec<T> = out.to_host(gpu).unwrap();
        let bits: Vec<u32> = out.iter().map(|v| v.to_f32().to_bits()).collect();
        match &first {
            None => {
                assert!(
                    residual
                        .iter()
                        .zip(&want_residual)
                        .all(|(g, w)| g.to_f32() == w.to_f32()),
                    "{what}: residual differs from residual + x"
                );
                assert_close(&format!("{what} act"), &act, &want_act);
                assert_close(&format!("{what} out"), &out, &want_out);
                first = Some(bits);
            }
            Some(f) => assert!(f == &bits, "{what}: run {run} differs from run 0"),
        }
    }
}

#[test]
fn qwen3_shapes_match_reference() {
    let Some(gpu) = sm90_or_skip("qwen3_shapes_match_reference", "decode_mlp") else {
        return;
    };
    check::<bf16>(&gpu, 4096, 12288, 1, 8); // Qwen3-8B
    check::<bf16>(&gpu, 1024, 3072, 2, 2); // Qwen3-0.6B
    check::<f16>(&gpu, 1024, 3072, 3, 2);
}

#[test]
fn odd_sizes_match_reference() {
    let Some(gpu) = sm90_or_skip("odd_sizes_match_reference", "decode_mlp") else {
        return;
    };
    // Partial last stages (528 = 512 + 16), fewer tiles than blocks, one tile.
    check::<bf16>(&gpu, 528, 272, 4, 3);
    check::<f16>(&gpu, 16, 16, 5, 3);
    check::<bf16>(&gpu, 2048, 6144 + 16, 6, 2);
}

#[test]
fn bad_shapes_are_errors() {
    let Some(gpu) = sm90_or_skip("bad_shapes_are_errors", "decode_mlp") else {
        return;
    };
    let p = Problem::<bf16>::new(64, 32, 7);
    let w = Weights::upload(&gpu, &p);
    let mut scratch = DecodeMlpScratch::new(&gpu).unwrap();
    let zeros = |shape: &[usize], dt| DeviceTensor::zeros(&gpu, shape, dt).unwrap();
    let (mut residual, mut out) = (zeros(&[1, 64], DType::BF16), zeros(&[1, 64], DType::BF16));
    let view = w.view(1e-6);
    let mut error_of = |x: &DeviceTensor, act: &mut DeviceTensor| {
        decode_mlp_w8a8_into(&gpu, x, &mut residual, &view, act, &mut scratch, &mut out)
            .unwrap_err()
            .to_string()
    };
    let act = || zeros(&[1, 32], DType::BF16);
    for (x, mut act, expected) in [
        (zeros(&[2, 64], DType::BF16), act(), "one row"),
        (zeros(&[1, 64], DType::F16), act(), "residual"),
        (zeros(&[1, 64], DType::BF16), zeros(&[1, 16], DType::BF16), "act"),
    ] {
        let e = error_of(&x, &mut act);
        assert!(e.contains(expected), "{e}");
    }
}
