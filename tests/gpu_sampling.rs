//! The `sample` kernel (seeded top-k / top-p / min-p sampling) against
//! `reference::sample`, and the `argmax` kernel (split over several blocks
//! per row) against `reference::argmax`, and `feed_tokens` (sampled ids into
//! the next step's inputs) with a non-blocking readback. GPU tests are skipped (with the
//! reason printed) where no CUDA device exists; the validation test runs
//! everywhere.
//!
//! Tolerances: both sides draw the same `u` (Philox, bit exact) and divide
//! by the temperature the same way (IEEE f32), so the ranking and top-k are
//! exact; masses are f32 sums of `expf` on the GPU vs f64 sums of `exp`, a
//! few 1e-6 relative apart. So ids must agree on every row whose
//! reference `margin` (distance of `u` from the chosen token's CDF edges,
//! less the mass of tokens whose top-p / min-p membership is within
//! rounding of its boundary, as a fraction of the kept mass) exceeds 1e-4; the
//! log-probabilities (f32 block sum vs f64) within 1e-4 absolute + 1e-5
//! relative, as argmax's. Argmax ids are exact.
//!
//! The sampling kernel has a fast path (candidates above a pivot compacted
//! into shared memory) and a full-row fallback; which one a row takes is
//! not visible, so the cases below are built to reach both: top-k rows and
//! peaky rows compact; flat 152k rows with top-p or min-p alone, top-k
//! of 2000 or more, and no filter at all take the full-row path.

mod common;

use common::{cast, gpu_or_skip, random_f32};
use half::{bf16, f16};
use mllm_kernel::dtype::FloatElem;
use mllm_kernel::ops::{self, Meta, SampleParams};
use mllm_kernel::{reference, DType, DeviceTensor, Error, Gpu};

const MARGIN: f64 = 1e-4;

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
/// the reference's for that token. A row the reference rejects (NaN, +inf,
/// no finite logit) must give -1 and NaN. Returns the rows clear of rounding.
fn check_rows<T: FloatElem>(gpu: &Gpu, what: &str, logits: &[T], vocab: usize, rows: &[SampleParams]) -> usize {
    let batch = rows.len();
    let want = reference::sample(logits, vocab, rows);
    let (ids, lps) = run(gpu, logits, [batch, vocab], rows);
    let mut clear = 0;
    for (r, (w, p)) in want.iter().zip(rows).enumerate() {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let id = ids[r];
        let ctx = format!(
            "{what} row {r} ({p:?}): gpu {id}, reference {} (u {}, margin {:.2e})",
            w.id, w.u, w.margin
        );
        let Some(kept) = reference::kept_cdf(row, p) else {
            assert_eq!((id, w.id), (-1, -1), "{ctx}");
            assert!(lps[r].is_nan(), "{ctx}: logprob {}", lps[r]);
            continue;
        };
        assert!(id >= 0 && (id as usize) < vocab, "{ctx}: not a token");
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
    // Deterministic: the same inputs give the same bits.
    assert_eq!(
        same_bits(&run(gpu, logits, [batch, vocab], rows)),
        same_bits(&(ids, lps)),
        "{what}: rerun differs"
    );
    clear
}

/// [`check_rows`] on [`logits_for`] rows with [`mixed_params`]; peaky rows
/// must mostly be clear of rounding.
fn check_against_reference<T: FloatElem>(gpu: &Gpu, batch: usize, vocab: usize, seed: u64, peaky: bool) {
    let what = format!("sample {} [{batch}, {vocab}] peaky={peaky}", T::DTYPE);
    let logits: Vec<T> = cast(&logits_for(batch, vocab, seed, peaky));
    let rows = mixed_params(batch, vocab, seed);
    let clear = check_rows(gpu, &what, &logits, vocab, &rows);
    if peaky {
        assert!(
            clear * 10 >= batch * 9,
            "{what}: only {clear} of {batch} rows clear of rounding"
        );
    }
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

/// The engine's common filter settings, each reaching the fast path or the
/// full-row fallback depending on the row (see the top of the file).
fn filter_sets() -> Vec<SampleParams> {
    let p = |temperature: f32, top_k: i32, top_p: f32, min_p: f32| SampleParams {
        temperature,
        top_k,
        top_p,
        min_p,
        ..Default::default()
    };
    vec![
        p(0.8, 50, 0.95, 0.0),   // the bench's setting
        p(1.0, 0, 0.95, 0.0),    // nucleus alone
        p(1.0, -1, 1.0, 0.05),   // min-p alone
        p(1e-3, 20, 0.9, 0.0),   // tiny temperature (scaled logits in the thousands)
        p(1e-3, 0, 1.0, 0.0),    // tiny temperature, no filter
        p(0.7, 1000, 0.9, 0.0),  // a large top-k
        p(1.0, 2000, 0.9, 0.01), // a top-k whose candidates overflow shared memory
        p(1.0, 3000, 0.9, 0.0),  // top-k above twice the block's threads
        p(1.2, 0, 0.5, 0.02),    // top-p and min-p without top-k
        p(0.9, 50, 1.0, 0.3),    // top-k and min-p
        p(1.0, 1, 1.0, 0.0),     // greedy as the engine sends it
    ]
}

/// `set`'s filters with a per-row seed and offset.
fn seeded(set: SampleParams, seed: u64, r: usize) -> SampleParams {
    SampleParams {
        seed: seed.wrapping_mul(7919) + r as u64,
        offset: (r * 3) as u64,
        ..set
    }
}

/// Logits with many exact ties: [`logits_for`] rounded to eighths, so a
/// 152k row holds hundreds of tokens at its max.
fn tied_logits(batch: usize, vocab: usize, seed: u64) -> Vec<f32> {
    logits_for(batch, vocab, seed, false)
        .iter()
        .map(|v| (v * 8.0).round() / 8.0)
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Rows {
    Flat,
    Peaky,
    Tied,
}

fn rows_of(kind: Rows, batch: usize, vocab: usize, seed: u64) -> Vec<f32> {
    match kind {
        Rows::Flat => logits_for(batch, vocab, seed, false),
        Rows::Peaky => logits_for(batch, vocab, seed, true),
        Rows::Tied => tied_logits(batch, vocab, seed),
    }
}

#[test]
fn filter_sets_match_reference() {
    let Some(gpu) = gpu_or_skip("filter_sets_match_reference") else {
        return;
    };
    let sets = filter_sets();
    for (v, &vocab) in [1000usize, 151_936].iter().enumerate() {
        for (k, kind) in [Rows::Flat, Rows::Peaky, Rows::Tied].into_iter().enumerate() {
            let (mut clear, mut total) = (0, 0);
            let mut check = |batch: usize, seed: u64, rows: &[SampleParams]| {
                let what = format!("sample f32 [{batch}, {vocab}] {kind:?}");
                let logits = rows_of(kind, batch, vocab, seed);
                clear += check_rows(&gpu, &what, &logits, vocab, rows);
                total += batch;
            };
            // B = 1 and 7: every set on a whole batch; B = 64: the sets mixed.
            for (i, set) in sets.iter().enumerate() {
                for batch in [1usize, 7] {
                    let seed = 1000 * v as u64 + 100 * k as u64 + 10 * i as u64 + batch as u64;
                    let rows: Vec<SampleParams> = (0..batch).map(|r| seeded(*set, seed, r)).collect();
                    check(batch, seed, &rows);
                }
            }
            let seed = 5000 + 10 * v as u64 + k as u64;
            let rows: Vec<SampleParams> = (0..64).map(|r| seeded(sets[r % sets.len()], seed, r)).collect();
            check(64, seed, &rows);
            if matches!(kind, Rows::Peaky) {
                assert!(
                    clear * 10 >= total * 9,
                    "vocab {vocab} peaky: only {clear} of {total} rows clear of rounding"
                );
            }
        }
    }
}

#[test]
fn filter_sets_match_reference_16_bit() {
    let Some(gpu) = gpu_or_skip("filter_sets_match_reference_16_bit") else {
        return;
    };
    let sets = filter_sets();
    let vocab = 151_936;
    for (k, kind) in [Rows::Flat, Rows::Peaky].into_iter().enumerate() {
        let rows: Vec<SampleParams> = (0..2 * sets.len())
            .map(|r| seeded(sets[r % sets.len()], 300 + k as u64, r))
            .collect();
        let logits = rows_of(kind, rows.len(), vocab, 300 + k as u64);
        check_rows::<bf16>(&gpu, &format!("sample bf16 {kind:?}"), &cast(&logits), vocab, &rows);
        check_rows::<f16>(&gpu, &format!("sample f16 {kind:?}"), &cast(&logits), vocab, &rows);
    }
}

/// Rows the kernel must reject (NaN, +inf, all -inf, a logit the
/// temperature overflows) mixed with valid ones, under every filter set,
/// and logits the temperature sends to -inf (dropped, not rejected).
#[test]
fn bad_and_extreme_rows_under_filters() {
    let Some(gpu) = gpu_or_skip("bad_and_extreme_rows_under_filters") else {
        return;
    };
    let sets = filter_sets();
    for vocab in [1000usize, 151_936] {
        let batch = 64;
        let mut logits = logits_for(batch, vocab, 77, false);
        let mut rows: Vec<SampleParams> = (0..batch).map(|r| seeded(sets[r % sets.len()], 77, r)).collect();
        let at = random_index(batch, 78, vocab);
        for r in 0..batch {
            let row = &mut logits[r * vocab..(r + 1) * vocab];
            match r % 6 {
                0 => row[at[r]] = f32::NAN,
                1 => row[at[r]] = f32::INFINITY,
                2 => row.fill(f32::NEG_INFINITY),
                3 => {
                    // 1e38 / 1e-3 overflows to +inf: rejected.
                    row[at[r]] = 1e38;
                    rows[r].temperature = 1e-3;
                }
                4 => {
                    // -3e38 / 0.5 is -inf: those tokens drop out (every one
                    // of them in every other such row: rejected).
                    rows[r].temperature = 0.5;
                    if r % 12 == 4 {
                        for i in (at[r] % 97..vocab).step_by(97) {
                            row[i] = -3e38;
                        }
                    } else {
                        row.fill(-3e38);
                    }
                }
                _ => {
                    // Mostly -inf: few finite tokens, below any top-k.
                    for (i, v) in row.iter_mut().enumerate() {
                        if i % 50 != r % 50 {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        let what = format!("sample extreme rows [{batch}, {vocab}]");
        check_rows(&gpu, &what, &logits, vocab, &rows);
    }
}

/// Index `n` random positions in `0..vocab`.
fn random_index(n: usize, seed: u64, vocab: usize) -> Vec<usize> {
    random_f32(n, seed, 1.0)
        .iter()
        .map(|x| (((x + 1.0) / 2.0 * vocab as f32) as usize).min(vocab - 1))
        .collect()
}

// ---------------------------------------------------------------- argmax

/// Argmax rows, by `(r + seed) % 8`: random; a run of equal maxima longer than any
/// chunk (so every chunk boundary inside it has the max on both sides);
/// all equal; the max only at the last index; isolated ties plus NaNs; only
/// NaN; only -inf; the max only at index 0 with -inf around.
fn argmax_rows(batch: usize, vocab: usize, seed: u64) -> Vec<f32> {
    let mut v = random_f32(batch * vocab, seed, 12.0);
    let at = random_index(batch * 3, seed + 1, vocab);
    for r in 0..batch {
        let row = &mut v[r * vocab..(r + 1) * vocab];
        match (r as u64 + seed) % 8 {
            0 => {}
            1 => {
                let start = at[3 * r] / 2;
                let end = (start + 40_000).min(vocab);
                row[start..end].fill(50.0);
            }
            2 => row.fill(0.0),
            3 => row[vocab - 1] = 50.0,
            4 => {
                let (a, b, c) = (at[3 * r], at[3 * r + 1], at[3 * r + 2]);
                row[a] = 50.0;
                row[b] = 50.0;
                row[c] = f32::NAN;
                row[(c + 1) % vocab] = f32::NAN;
            }
            5 => row.fill(f32::NAN),
            6 => row.fill(f32::NEG_INFINITY),
            _ => {
                row.fill(f32::NEG_INFINITY);
                row[0] = -5.0;
                row[at[3 * r]] = -7.0;
            }
        }
    }
    v
}

/// A GPU log-probability against the reference's: within 1e-4 + 1e-5
/// relative (f32 block sum vs f64), NaN where the reference says NaN, and
/// equal infinities (a -inf token's logprob) count as close.
fn logprob_close(g: f32, w: f32) -> bool {
    (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-4 + 1e-5 * w.abs()
}

/// ids exact; logprobs (and token_logprobs of given ids, one out of range)
/// by [`logprob_close`].
fn check_argmax<T: FloatElem>(gpu: &Gpu, batch: usize, vocab: usize, seed: u64) -> (Vec<i32>, Vec<f32>) {
    let what = format!("argmax {} [{batch}, {vocab}]", T::DTYPE);
    let logits: Vec<T> = cast(&argmax_rows(batch, vocab, seed));
    let want = reference::argmax(&logits, vocab);
    let ld = DeviceTensor::from_host(gpu, &logits, &[batch, vocab]).unwrap();
    let mut ids = DeviceTensor::zeros(gpu, &[batch], DType::I32).unwrap();
    let mut lps = DeviceTensor::zeros(gpu, &[batch], DType::F32).unwrap();
    ops::argmax_into(gpu, &ld, &mut ids, Some(&mut lps)).unwrap();
    let got_ids = ids.to_host::<i32>(gpu).unwrap();
    let got_lp = lps.to_host::<f32>(gpu).unwrap();
    assert_eq!(got_ids, want.iter().map(|w| w.0).collect::<Vec<_>>(), "{what}: ids");
    for (b, (g, w)) in got_lp.iter().zip(&want).enumerate() {
        assert!(
            logprob_close(*g, w.1),
            "{what}: row {b} logprob gpu {g} vs reference {}",
            w.1
        );
    }
    assert_eq!(
        ops::argmax(gpu, &ld).unwrap().to_host::<i32>(gpu).unwrap(),
        got_ids,
        "{what}: plain"
    );
    let mut pick: Vec<i32> = random_index(batch, seed + 2, vocab).iter().map(|&i| i as i32).collect();
    pick[0] = got_ids[0];
    if batch >= 2 {
        pick[1] = vocab as i32;
    }
    let want_t = reference::token_logprobs(&logits, vocab, &pick);
    let pd = DeviceTensor::from_host(gpu, &pick, &[batch]).unwrap();
    let got_t = ops::token_logprobs(gpu, &ld, &pd).unwrap().to_host::<f32>(gpu).unwrap();
    for (b, (g, w)) in got_t.iter().zip(&want_t).enumerate() {
        assert!(
            logprob_close(*g, *w),
            "{what}: token_logprob row {b}: gpu {g} vs reference {w}"
        );
    }
    (got_ids, got_lp)
}

/// Ids and logprob bits: NaN logprobs (bad rows) compare equal to themselves.
fn same_bits((ids, lps): &(Vec<i32>, Vec<f32>)) -> (Vec<i32>, Vec<u32>) {
    (ids.clone(), lps.iter().map(|x| x.to_bits()).collect())
}

#[test]
fn argmax_split_rows_match_reference() {
    let Some(gpu) = gpu_or_skip("argmax_split_rows_match_reference") else {
        return;
    };
    // Back-to-back launches of every shape: each split row's arrival
    // counter must be back at 0 for the next launch.
    // Seeds 0..8 give a one-row batch every row pattern.
    for round in 0..2 {
        for &batch in &[1usize, 3, 64, 8] {
            for &vocab in &[1usize, 1000, 151_936, 151_937] {
                for seed in 0..if batch < 8 { 8 } else { 1 } {
                    let first = check_argmax::<f32>(&gpu, batch, vocab, seed);
                    if round == 1 {
                        // Same bits again (the sum's order is fixed).
                        assert_eq!(
                            same_bits(&check_argmax::<f32>(&gpu, batch, vocab, seed)),
                            same_bits(&first)
                        );
                    }
                }
            }
        }
    }
    for batch in [1usize, 3, 64] {
        for vocab in [1000usize, 151_936, 151_937] {
            for seed in 0..if batch < 8 { 8 } else { 1 } {
                check_argmax::<bf16>(&gpu, batch, vocab, 40 + seed);
                check_argmax::<f16>(&gpu, batch, vocab, 48 + seed);
            }
        }
    }
    // Past the split limit (one block per row) and just under it.
    check_argmax::<f32>(&gpu, 600, 4096, 60);
    check_argmax::<bf16>(&gpu, 511, 4096, 61);
}

// ---------------------------------------------------------- top logprobs

/// `top_logprobs` against `reference::top_logprobs`: ids exact (both sides
/// scale in f32 and order the same way), logprobs by [`logprob_close`].
fn check_top<T: FloatElem>(gpu: &Gpu, logits: &[T], vocab: usize, scale: Option<&[f32]>, n: usize) {
    let rows = logits.len() / vocab;
    let what = format!(
        "top_logprobs {} [{rows}, {vocab}] n {n} scale {}",
        T::DTYPE,
        scale.is_some()
    );
    let ld = DeviceTensor::from_host(gpu, logits, &[rows, vocab]).unwrap();
    let sd = scale.map(|s| DeviceTensor::from_host(gpu, s, &[rows]).unwrap());
    let (ids, lps) = ops::top_logprobs(gpu, &ld, sd.as_ref(), n).unwrap();
    let (ids, lps) = (ids.to_host::<i32>(gpu).unwrap(), lps.to_host::<f32>(gpu).unwrap());
    let (want_ids, want_lps) = reference::top_logprobs(logits, vocab, scale, n);
    for r in 0..rows {
        let slots = r * n..(r + 1) * n;
        assert_eq!(ids[slots.clone()], want_ids[slots.clone()], "{what}: row {r} ids");
        for i in slots {
            let (g, w) = (lps[i], want_lps[i]);
            assert!(
                logprob_close(g, w),
                "{what}: row {r} slot {}: gpu {g}, reference {w}",
                i - r * n
            );
        }
    }
}

#[test]
fn top_logprobs_match_reference() {
    let Some(gpu) = gpu_or_skip("top_logprobs_match_reference") else {
        return;
    };
    // The argmax edge rows (long runs of equal maxima, all equal, NaN, only
    // NaN, only -inf) and random rows with many exact ties.
    let vocab = 151_936;
    let rows = 8;
    let mut logits = argmax_rows(rows, vocab, 0);
    logits.extend(tied_logits(4, vocab, 9));
    let scale: Vec<f32> = (0..rows + 4).map(|r| [1.0, 1.0 / 0.7, 1.0 / 1.3, 2.0][r % 4]).collect();
    for n in [1, 7, ops::MAX_TOP_LOGPROBS] {
        check_top(&gpu, &logits, vocab, None, n);
        check_top(&gpu, &logits, vocab, Some(&scale), n);
    }
    check_top::<bf16>(&gpu, &cast(&logits), vocab, Some(&scale), 5);
    check_top::<f16>(&gpu, &cast(&tied_logits(3, 32_000, 4)), 32_000, None, 20);
    // Fewer tokens than a warp, every one requested (a full sort).
    let small = [0.5f32, -1.0, 2.0, 2.0, f32::NEG_INFINITY, 0.5, 3.0];
    check_top(&gpu, &small, 7, Some(&[0.5]), 7);
    check_top(&gpu, &small[..5], 5, None, 5);
    let ld = DeviceTensor::from_host(&gpu, &small, &[1, 7]).unwrap();
    let err = ops::top_logprobs(&gpu, &ld, None, 8).unwrap_err().to_string();
    assert!(err.contains("`n`") && err.contains("at most vocab 7"), "{err}");
}

/// The split argmax as a CUDA-graph-style caller uses it: the same
/// buffers, many launches in a row without a sync, then one check.
#[test]
fn argmax_relaunches_without_sync() {
    let Some(gpu) = gpu_or_skip("argmax_relaunches_without_sync") else {
        return;
    };
    let (batch, vocab) = (2, 151_936);
    let logits = argmax_rows(batch, vocab, 89); // a run of maxima over many chunks; all equal
    let want = reference::argmax(&logits, vocab);
    let ld = DeviceTensor::from_host(&gpu, &logits, &[batch, vocab]).unwrap();
    let mut ids = DeviceTensor::zeros(&gpu, &[batch], DType::I32).unwrap();
    let mut lps = DeviceTensor::zeros(&gpu, &[batch], DType::F32).unwrap();
    let mut outs = Vec::new();
    for _ in 0..3 {
        for _ in 0..50 {
            ops::argmax_into(&gpu, &ld, &mut ids, Some(&mut lps)).unwrap();
        }
        outs.push((ids.to_host::<i32>(&gpu).unwrap(), lps.to_host::<f32>(&gpu).unwrap()));
    }
    assert_eq!(outs[0].0, want.iter().map(|w| w.0).collect::<Vec<_>>());
    assert!(outs
        .windows(2)
        .all(|w| w[0].0 == w[1].0 && bits(&w[0].1) == bits(&w[1].1)));
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
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

/// `feed_tokens` against its reference: a batch whose rows continue the previous step's rows
/// in a shuffled order (some rows new, fed nothing), the inputs and pairs uploaded through
/// page-locked staging buffers used in turn, then a non-blocking readback of the fed ids. Pairs out of
/// range on the device are skipped; bad arguments fail on the host.
#[test]
fn feed_tokens_matches_reference_and_reads_back() {
    let Some(gpu) = gpu_or_skip("feed_tokens_matches_reference_and_reads_back") else {
        return;
    };
    let mut stage = mllm_kernel::staging::StagingPair::new(&gpu).unwrap();
    for (rows, sampled_rows, seed) in [(1, 1, 1u64), (5, 8, 2), (700, 640, 3)] {
        let sampled: Vec<i32> = (0..sampled_rows as i32).map(|i| 1000 + 7 * i).collect();
        let mut ids: Vec<i32> = (0..rows as i32).map(|i| -i).collect();
        // Every other row of `ids` continues some previous row (a permutation).
        let order = random_index(sampled_rows, seed, sampled_rows);
        let mut seen = vec![false; sampled_rows];
        let pairs: Vec<(usize, usize)> = (0..rows)
            .step_by(2)
            .zip(order.into_iter().filter(|&s| !std::mem::replace(&mut seen[s], true)))
            .collect();
        ops::validate_feed_tokens(rows, sampled_rows, &pairs).unwrap();
        let sampled_dev = DeviceTensor::from_host(&gpu, &sampled, &[sampled_rows]).unwrap();
        let mut ids_dev = DeviceTensor::zeros(&gpu, &[rows], DType::I32).unwrap();
        let bytes = mllm_kernel::staging::Staging::bytes_for(&[4 * rows, 8 * pairs.len()]);
        let mut up = stage.begin(&gpu, bytes).unwrap();
        up.write(&mut ids_dev, &ids).unwrap();
        assert!(up.tensor(&[1i32, 2, 3], &[2]).is_err(), "3 values for shape [2]");
        let pairs_dev = up.tensor(&flat_pairs(&pairs), &[pairs.len(), 2]).unwrap();
        assert!(up.write(&mut ids_dev, &ids).is_err(), "past the bytes begun with");
        up.finish().unwrap();
        ops::feed_tokens_into(&gpu, &mut ids_dev, &sampled_dev, &pairs_dev).unwrap();
        let mut rb = mllm_kernel::readback::Readback::new(&gpu, 4 * rows).unwrap();
        rb.start(&gpu, &ids_dev).unwrap();
        reference::feed_tokens(&mut ids, &sampled, &pairs);
        assert_eq!(rb.wait::<i32>().unwrap(), ids, "{rows} rows from {sampled_rows}");
        assert!(rb.wait::<f32>().is_err(), "readback as another dtype");
    }
    let sampled = DeviceTensor::from_host(&gpu, &[1i32, 2], &[2]).unwrap();
    let mut ids = DeviceTensor::from_host(&gpu, &[0i32; 4], &[4]).unwrap();
    let wild = DeviceTensor::from_host(&gpu, &[4i32, 0, 0, 2, -1, 0, 0, -1], &[4, 2]).unwrap();
    ops::feed_tokens_into(&gpu, &mut ids, &sampled, &wild).unwrap();
    let mut floats = DeviceTensor::from_host(&gpu, &[0f32; 4], &[4]).unwrap();
    let one = DeviceTensor::from_host(&gpu, &[0i32, 0], &[1, 2]).unwrap();
    assert!(ops::feed_tokens_into(&gpu, &mut floats, &sampled, &one).is_err());
    let flat = DeviceTensor::from_host(&gpu, &[0i32, 0], &[2]).unwrap();
    assert!(ops::feed_tokens_into(&gpu, &mut ids, &sampled, &flat).is_err());
    let mut small = mllm_kernel::readback::Readback::new(&gpu, 4).unwrap();
    assert!(small.start(&gpu, &ids).is_err(), "16 bytes into a 4-byte readback");
    assert_eq!(ids.to_host::<i32>(&gpu).unwrap(), vec![0; 4], "nothing was written");
}

fn flat_pairs(pairs: &[(usize, usize)]) -> Vec<i32> {
    pairs.iter().flat_map(|&(r, s)| [r as i32, s as i32]).collect()
}
