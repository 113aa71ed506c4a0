//! The `sample` kernel (seeded top-k / top-p / min-p sampling) against
//! `reference::sample`. GPU tests are skipped (with the reason printed)
//! where no CUDA device exists; the validation test runs everywhere.
//!
//! Tolerances: both sides draw the same `u` (Philox, bit exact) and divide
//! by the temperature the same way (IEEE f32), so the ranking and top-k are
//! exact; masses are f32 sums of `expf` on the GPU vs f64 sums of `exp`, a
//! few 1e-6 relative apart. So ids must agree on every row whose
//! reference `margin` (distance of `u` from the chosen token's CDF edges,
//! less the mass of tokens whose top-p / min-p membership is within
//! rounding of its boundary, as a fraction of the kept mass) exceeds 1e-4; the
//! log-probabilities (f32 block sum vs f64) within 1e-4 absolute + 1e-5
//! relative, as argmax's.

mod common;

use common::{gpu_or_skip, random_f32};
use half::{bf16, f16};
use mllm_kernel::dtype::FloatElem;
use mllm_kernel::ops::{self, Meta, SampleParams};
use mllm_kernel::{reference, DType, DeviceTensor, Error, Gpu};

const MARGIN: f64 = 1e-4;

fn cast<T: FloatElem>(v: &[f32]) -> Vec<T> {
    v.iter().map(|x| T::from_f32(*x)).collect()
}

fn upload_params(gpu: &Gpu, rows: &[SampleParams]) -> DeviceTensor {
    let words = SampleParams::pack(rows).unwrap();
    DeviceTensor::from_host(gpu, &words, &[rows.len(), SampleParams::WORDS]).unwrap()
}

/// A different mix of filters on every row (each one alone, all together,
/// top-k at and past the vocabulary, none).
fn mixed_params(batch: usize, vocab: usize, seed: u64) -> Vec<SampleParams> {
    const TEMPS: [f32; 4] = [1.0, 0.7, 1.3, 0.5];
    const TOP_P: [f32; 5] = [1.0, 0.9, 0.5, 0.99, 1.0];
    const MIN_P: [f32; 3] = [0.0, 0.01, 0.3];
    let top_k = [0, 1, 20, 1000, vocab as i32 - 1, vocab as i32 + 5, -1];
    (0..batch)
        .map(|r| SampleParams {
            temperature: TEMPS[r % 4],
            top_k: top_k[r % 7],
            top_p: TOP_P[r % 5],
            min_p: MIN_P[r % 3],
            seed: seed.wrapping_mul(1000) + r as u64,
            offset: (r * 7) as u64,
        })
        .collect()
}

/// Runs the kernel and returns (ids, logprobs).
fn run<T: FloatElem>(gpu: &Gpu, logits: &[T], shape: [usize; 2], rows: &[SampleParams]) -> (Vec<i32>, Vec<f32>) {
    let ld = DeviceTensor::from_host(gpu, logits, &shape).unwrap();
    let pd = upload_params(gpu, rows);
    let (ids, lps) = ops::sample(gpu, &ld, &pd).unwrap();
    assert_eq!((ids.shape(), lps.shape()), (&[shape[0]][..], &[shape[0]][..]));
    (ids.to_host::<i32>(gpu).unwrap(), lps.to_host::<f32>(gpu).unwrap())
}

/// Logits `[batch, vocab]`: flat (|x| <= 8: top-p / min-p keep up to tens
/// of thousands of tokens, every CDF step is tiny) or peaky (|x| <= 3 plus
/// eight tokens per row at 16..23, which hold most of the mass).
fn logits_for(batch: usize, vocab: usize, seed: u64, peaky: bool) -> Vec<f32> {
    let mut v = random_f32(batch * vocab, seed, if peaky { 3.0 } else { 8.0 });
    if peaky {
        for r in 0..batch {
            let hot = random_f32(8, seed * 131 + r as u64, 1.0);
            for (j, h) in hot.iter().enumerate() {
                let at = (((h + 1.0) / 2.0 * vocab as f32) as usize).min(vocab - 1);
                v[r * vocab + at] = 16.0 + j as f32;
            }
        }
    }
    v
}

/// Every row: the GPU's token is the reference's where the draw is clear of
/// rounding (`margin` > 1e-4), and elsewhere a kept token whose CDF step
/// lies within 1e-4 (plus the ambiguous mass) of `u`; its logprob matches
/// the reference's for that token. Peaky rows must mostly be clear.
fn check_against_reference<T: FloatElem>(gpu: &Gpu, batch: usize, vocab: usize, seed: u64, peaky: bool) {
    let what = format!("sample {} [{batch}, {vocab}] peaky={peaky}", T::DTYPE);
    let logits: Vec<T> = cast(&logits_for(batch, vocab, seed, peaky));
    let rows = mixed_params(batch, vocab, seed);
    let want = reference::sample(&logits, vocab, &rows);
    let (ids, lps) = run(gpu, &logits, [batch, vocab], &rows);
    let mut clear = 0;
    for (r, (w, p)) in want.iter().zip(&rows).enumerate() {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let kept = reference::kept_cdf(row, p).unwrap_or_else(|| panic!("{what}: reference row {r} invalid"));
        let id = ids[r];
        let ctx = format!(
            "{what} row {r} ({p:?}): gpu {id}, reference {} (u {}, margin {:.2e})",
            w.id, w.u, w.margin
        );
        if w.margin > MARGIN {
            clear += 1;
            assert_eq!(id, w.id, "{ctx}");
        } else {
            match kept.ids.binary_search(&(id as u32)) {
                Ok(j) => {
                    let (low, high) = kept.step(j);
                    let tol = MARGIN + 2.0 * kept.ambiguous;
                    let u = w.u as f64;
                    assert!(u >= low - tol && u < high + tol, "{ctx}: step [{low}, {high})");
                }
                Err(_) => assert!(kept.ambiguous > 0.0, "{ctx}: token not kept"),
            }
        }
        let scaled: Vec<f32> = row.iter().map(|v| v.to_f32() / p.temperature).collect();
        let want_lp = reference::token_logprobs(&scaled, vocab, &[id])[0];
        let tol = 1e-4 + 1e-5 * want_lp.abs();
        assert!(
            (lps[r] - want_lp).abs() <= tol,
            "{ctx}: logprob {} vs {want_lp}",
            lps[r]
        );
    }
    if peaky {
        assert!(
            clear * 10 >= batch * 9,
            "{what}: only {clear} of {batch} rows clear of rounding"
        );
    }
    // Deterministic: the same inputs give the same bits.
    assert_eq!(
        run(gpu, &logits, [batch, vocab], &rows),
        (ids, lps),
        "{what}: rerun differs"
    );
}

#[test]
fn sample_matches_reference() {
    let Some(gpu) = gpu_or_skip("sample_matches_reference") else {
        return;
    };
    for (i, &batch) in [1usize, 7, 64].iter().enumerate() {
        for (j, &vocab) in [1000usize, 151_936].iter().enumerate() {
            for peaky in [false, true] {
                check_against_reference::<f32>(&gpu, batch, vocab, 10 * i as u64 + j as u64 + 1, peaky);
            }
        }
    }
    // 16-bit logits: many exact ties, ranked by id on both sides.
    check_against_reference::<bf16>(&gpu, 7, 151_936, 101, false);
    check_against_reference::<bf16>(&gpu, 64, 151_936, 102, true);
    check_against_reference::<f16>(&gpu, 7, 151_936, 103, true);
    check_against_reference::<bf16>(&gpu, 13, 1000, 104, false);
    // Odd tiny vocabularies (a block of one warp, a partial scan tile).
    check_against_reference::<f32>(&gpu, 5, 1, 105, false);
    check_against_reference::<f32>(&gpu, 9, 37, 106, true);
}

#[test]
fn top_k_one_equals_argmax() {
    let Some(gpu) = gpu_or_skip("top_k_one_equals_argmax") else {
        return;
    };
    fn check<T: FloatElem>(gpu: &Gpu, batch: usize, vocab: usize, seed: u64) {
        let logits: Vec<T> = cast(&random_f32(batch * vocab, seed, 4.0));
        let rows: Vec<SampleParams> = (0..batch)
            .map(|r| SampleParams {
                top_k: 1,
                top_p: if r % 2 == 0 { 1.0 } else { 0.8 },
                seed: r as u64,
                ..Default::default()
            })
            .collect();
        let (ids, lps) = run(gpu, &logits, [batch, vocab], &rows);
        let ld = DeviceTensor::from_host(gpu, &logits, &[batch, vocab]).unwrap();
        let mut want = DeviceTensor::zeros(gpu, &[batch], DType::I32).unwrap();
        let mut want_lp = DeviceTensor::zeros(gpu, &[batch], DType::F32).unwrap();
        ops::argmax_into(gpu, &ld, &mut want, Some(&mut want_lp)).unwrap();
        assert_eq!(
            ids,
            want.to_host::<i32>(gpu).unwrap(),
            "{} [{batch}, {vocab}]",
            T::DTYPE
        );
        for (a, b) in lps.iter().zip(want_lp.to_host::<f32>(gpu).unwrap()) {
            assert!((a - b).abs() <= 1e-4 + 1e-5 * b.abs(), "{a} vs {b}");
        }
    }
    check::<f32>(&gpu, 64, 151_936, 7);
    check::<bf16>(&gpu, 64, 151_936, 8);
    check::<f32>(&gpu, 3, 1000, 9);
}

#[test]
fn frequencies_over_seeds_follow_the_softmax() {
    let Some(gpu) = gpu_or_skip("frequencies_over_seeds_follow_the_softmax") else {
        return;
    };
    let row = [1.0f32, 2.0, 0.5, -1.0, 1.5];
    let n = 20_000;
    let softmax = |t: f32, keep: &[usize]| {
        let e: Vec<f64> = keep.iter().map(|&i| ((row[i] / t) as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        let mut p = [0.0; 5];
        for (&i, e) in keep.iter().zip(&e) {
            p[i] = e / z;
        }
        p
    };
    let cases = [
        (SampleParams::default(), softmax(1.0, &[0, 1, 2, 3, 4])),
        (
            SampleParams {
                temperature: 0.6,
                ..Default::default()
            },
            softmax(0.6, &[0, 1, 2, 3, 4]),
        ),
        (
            SampleParams {
                top_k: 3,
                ..Default::default()
            },
            softmax(1.0, &[1, 4, 0]),
        ),
        // probs 0.45, 0.27, 0.16, ...: the nucleus of 0.6 is {1, 4}.
        (
            SampleParams {
                top_p: 0.6,
                ..Default::default()
            },
            softmax(1.0, &[1, 4]),
        ),
        // p / p_max >= 0.3: exp(-1) and exp(-0.5) pass, exp(-1.5) does not.
        (
            SampleParams {
                min_p: 0.3,
                ..Default::default()
            },
            softmax(1.0, &[0, 1, 4]),
        ),
    ];
    for (c, (p, want)) in cases.iter().enumerate() {
        // One row per seed, all in one launch; offsets vary too.
        let rows: Vec<SampleParams> = (0..n)
            .map(|r| SampleParams {
                seed: (c * n + r) as u64,
                offset: (r % 3) as u64,
                ..*p
            })
            .collect();
        let logits: Vec<f32> = row.iter().copied().cycle().take(n * row.len()).collect();
        let (ids, _) = run(&gpu, &logits, [n, row.len()], &rows);
        let mut counts = [0usize; 5];
        for id in &ids {
            counts[*id as usize] += 1;
        }
        for (k, (cnt, w)) in counts.iter().zip(want).enumerate() {
            let f = *cnt as f64 / n as f64;
            assert!((f - w).abs() < 0.015, "case {c} token {k}: {f} vs {w} ({counts:?})");
            if *w == 0.0 {
                assert_eq!(*cnt, 0, "case {c}: token {k} was filtered out");
            }
        }
        // The reference draws the same tokens.
        let want_ids: Vec<i32> = reference::sample(&logits, row.len(), &rows)
            .iter()
            .map(|s| s.id)
            .collect();
        let same = ids.iter().zip(&want_ids).filter(|(a, b)| a == b).count();
        assert!(
            same * 1000 >= n * 999,
            "case {c}: {same} of {n} ids agree with the reference"
        );
    }
}

#[test]
fn seeds_and_offsets_drive_the_draw() {
    let Some(gpu) = gpu_or_skip("seeds_and_offsets_drive_the_draw") else {
        return;
    };
    let vocab = 1000;
    let base: Vec<f32> = random_f32(vocab, 77, 2.0);
    let logits: Vec<f32> = base.iter().copied().cycle().take(8 * vocab).collect();
    let rows = |seed: u64, step: u64| -> Vec<SampleParams> {
        (0..8)
            .map(|r| SampleParams {
                seed,
                offset: step + r,
                ..Default::default()
            })
            .collect()
    };
    let (a, _) = run(&gpu, &logits, [8, vocab], &rows(5, 0));
    assert_eq!(run(&gpu, &logits, [8, vocab], &rows(5, 0)).0, a);
    assert_ne!(run(&gpu, &logits, [8, vocab], &rows(6, 0)).0, a);
    // Row b at offset b equals row 0 at offset b: the draw depends on
    // (seed, offset), not on the batch position.
    let (shifted, _) = run(&gpu, &logits, [8, vocab], &rows(5, 1));
    assert_eq!(a[1..], shifted[..7]);
}

#[test]
fn bad_rows_and_arguments() {
    let Some(gpu) = gpu_or_skip("bad_rows_and_arguments") else {
        return;
    };
    let ok = SampleParams::default();
    let logits = [
        0.0f32,
        1.0,
        f32::NAN,
        0.0,
        0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        2.0,
        1.0,
    ];
    let rows = [ok; 5];
    let (ids, lps) = run(&gpu, &logits, [5, 2], &rows);
    assert_eq!(ids[1..4], [-1, -1, -1]);
    assert!([ids[0], ids[4]].iter().all(|i| (0..2).contains(i)), "{ids:?}");
    assert!(lps[1].is_nan() && lps[2].is_nan() && lps[3].is_nan() && !lps[4].is_nan());
    // Out-of-range params written around `pack` (raw words) give -1 too.
    let mut words = SampleParams::pack(&[ok, ok]).unwrap();
    words[SampleParams::WORDS + 2] = 1.5f32.to_bits() as i32; // row 1 top_p
    let ld = DeviceTensor::from_host(&gpu, &[0.0f32, 1.0, 0.0, 1.0], &[2, 2]).unwrap();
    let pd = DeviceTensor::from_host(&gpu, &words, &[2, SampleParams::WORDS]).unwrap();
    let (ids, _) = ops::sample(&gpu, &ld, &pd).unwrap();
    assert_eq!(ids.to_host::<i32>(&gpu).unwrap()[1], -1);

    let mut ids = DeviceTensor::zeros(&gpu, &[3], DType::I32).unwrap();
    assert!(matches!(
        ops::sample_into(&gpu, &ld, &pd, &mut ids, None),
        Err(Error::ShapeMismatch { arg: "ids", .. })
    ));
    let mut ids = DeviceTensor::zeros(&gpu, &[2], DType::I32).unwrap();
    let mut lps = DeviceTensor::zeros(&gpu, &[2], DType::BF16).unwrap();
    assert!(matches!(
        ops::sample_into(&gpu, &ld, &pd, &mut ids, Some(&mut lps)),
        Err(Error::DTypeMismatch { arg: "logprobs", .. })
    ));
    let short = DeviceTensor::from_host(&gpu, &words[..8], &[1, 8]).unwrap();
    assert!(matches!(
        ops::sample(&gpu, &ld, &short),
        Err(Error::ShapeMismatch { arg: "params", .. })
    ));
    // An empty batch launches nothing; the device is healthy afterwards.
    let empty = DeviceTensor::zeros(&gpu, &[0, 2], DType::F32).unwrap();
    let no_params = DeviceTensor::zeros(&gpu, &[0, 8], DType::I32).unwrap();
    assert_eq!(ops::sample(&gpu, &empty, &no_params).unwrap().0.shape(), &[0]);
    ops::sample_into(&gpu, &ld, &pd, &mut ids, None).unwrap();
    gpu.synchronize().unwrap();
}

#[test]
fn every_sample_symbol_resolves() {
    let Some(gpu) = gpu_or_skip("every_sample_symbol_resolves") else {
        return;
    };
    use mllm_kernel::registry::{KernelBuild, KernelId};
    for build in KernelBuild::of(KernelId::Sample) {
        let k = gpu.kernel(build).unwrap();
        for sym in ops::kernel_symbols(build) {
            assert!(k.function(KernelId::Sample, &sym).is_ok(), "{build} lacks {sym}");
        }
    }
}

/// Host-side validation needs no device: this runs on every machine.
#[test]
fn validation_rejects_bad_arguments_without_a_gpu() {
    let p = [2, SampleParams::WORDS];
    assert!(ops::validate_sample(Meta::new(&[2, 5], DType::F32), Meta::new(&p, DType::I32)).is_ok());
    assert!(matches!(
        ops::validate_sample(Meta::new(&[2, 5], DType::I32), Meta::new(&p, DType::I32)),
        Err(Error::DTypeMismatch {
            op: "sample",
            arg: "logits",
            ..
        })
    ));
    assert!(matches!(
        ops::validate_sample(Meta::new(&[2, 0], DType::F32), Meta::new(&p, DType::I32)),
        Err(Error::ShapeMismatch {
            op: "sample",
            arg: "logits",
            ..
        })
    ));
    assert!(matches!(
        ops::validate_sample(Meta::new(&[3, 5], DType::F32), Meta::new(&p, DType::I32)),
        Err(Error::ShapeMismatch { arg: "params", .. })
    ));
    assert!(matches!(
        ops::validate_sample(Meta::new(&[2, 5], DType::F32), Meta::new(&p, DType::F32)),
        Err(Error::DTypeMismatch { arg: "params", .. })
    ));
    let bad = SampleParams {
        min_p: 2.0,
        ..Default::default()
    };
    assert!(matches!(
        SampleParams::pack(&[bad]),
        Err(Error::InvalidArgument { arg: "min_p", .. })
    ));
}
