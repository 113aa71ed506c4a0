use crate::dtype::FloatElem;

/// Per row of `vocab` logits: the greedy id (largest value, ties to the
/// lowest index, NaN skipped; 0 if every value is NaN) and its
/// `log_softmax`, with the softmax sum in f64 (NaN if the row holds a NaN).
///
/// ```
/// let r = mllm_kernel::reference::argmax(&[f32::NAN, 0.0, 1.0, 3.0, 3.0, f32::NEG_INFINITY], 3);
/// assert_eq!(r[0].0, 2);
/// assert!(r[0].1.is_nan());
/// assert_eq!(r[1].0, 0);
/// assert!((r[1].1 - 0.5f32.ln()).abs() < 1e-6);
/// ```
pub fn argmax<T: FloatElem>(logits: &[T], vocab: usize) -> Vec<(i32, f32)> {
    assert!(vocab > 0 && logits.len().is_multiple_of(vocab));
    logits
        .chunks(vocab)
        .map(|row| {
            let mut best: Option<(usize, f32)> = None;
            for (i, v) in row.iter().enumerate() {
                let v = v.to_f32();
                if best.is_none_or(|(_, b)| v > b) && !v.is_nan() {
                    best = Some((i, v));
                }
            }
            let id = best.map_or(0, |(i, _)| i);
            (id as i32, logprob_of(row, id))
        })
        .collect()
}

/// `log_softmax(row)[ids[b]]` per row; an id outside the row gives NaN.
///
/// ```
/// let lp = mllm_kernel::reference::token_logprobs(&[0.0f32, 0.0], 2, &[1]);
/// assert!((lp[0] - 0.5f32.ln()).abs() < 1e-6);
/// ```
pub fn token_logprobs<T: FloatElem>(logits: &[T], vocab: usize, ids: &[i32]) -> Vec<f32> {
    assert!(vocab > 0 && logits.len() == vocab * ids.len());
    logits
        .chunks(vocab)
        .zip(ids)
        .map(|(row, &id)| {
            if id < 0 || id as usize >= vocab {
                f32::NAN
            } else {
                logprob_of(row, id as usize)
            }
        })
        .collect()
}

fn logprob_of<T: FloatElem>(row: &[T], id: usize) -> f32 {
    let max = row.iter().map(|v| v.to_f32()).fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|v| (v.to_f32() as f64 - max).exp()).sum();
    (row[id].to_f32() as f64 - max - sum.ln()) as f32
}

/// Per row: the `n` best of `x · scale[row]` (`None`: 1), most likely
/// first with ties to the lowest index, NaN skipped, and their
/// `log_softmax` over the scaled row (log-sum-exp in f64; NaN when the row
/// holds a NaN or nothing above -inf). Slots past a row's non-NaN values
/// get id -1 and NaN. Flat `[rows · n]` ids and logprobs.
///
/// ```
/// let (ids, lps) = mllm_kernel::reference::top_logprobs(&[0.0f32, 2.0, 2.0, f32::NAN], 4, None, 4);
/// assert_eq!(ids, vec![1, 2, 0, -1]);
/// assert!(lps.iter().all(|lp| lp.is_nan()));
/// let (ids, lps) = mllm_kernel::reference::top_logprobs(&[0.0f32, 0.0], 2, Some(&[0.5]), 1);
/// assert_eq!(ids, vec![0]);
/// assert!((lps[0] - 0.5f32.ln()).abs() < 1e-6);
/// ```
pub fn top_logprobs<T: FloatElem>(logits: &[T], vocab: usize, scale: Option<&[f32]>, n: usize) -> (Vec<i32>, Vec<f32>) {
    assert!(vocab > 0 && logits.len().is_multiple_of(vocab) && n <= vocab);
    let rows = logits.len() / vocab;
    let (mut ids, mut lps) = (Vec::with_capacity(rows * n), Vec::with_capacity(rows * n));
    for (r, row) in logits.chunks(vocab).enumerate() {
        let k = scale.map_or(1.0, |s| s[r]);
        let x: Vec<f32> = row.iter().map(|v| v.to_f32() * k).collect();
        let max = x
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        let lse = if x.iter().any(|v| v.is_nan()) || max == f32::NEG_INFINITY {
            f64::NAN
        } else {
            max as f64 + x.iter().map(|&v| (v as f64 - max as f64).exp()).sum::<f64>().ln()
        };
        let mut order: Vec<usize> = (0..vocab).filter(|&i| !x[i].is_nan()).collect();
        // partial_cmp (no NaN left): -0 and +0 tie, as on the GPU.
        order.sort_by(|&a, &b| x[b].partial_cmp(&x[a]).expect("NaN filtered").then(a.cmp(&b)));
        for slot in 0..n {
            match order.get(slot) {
                Some(&i) => {
                    ids.push(i as i32);
                    lps.push((x[i] as f64 - lse) as f32);
                }
                None => {
                    ids.push(-1);
                    lps.push(f32::NAN);
                }
            }
        }
    }
    (ids, lps)
}

/// `ids[row] = sampled[src]` for each `(row, src)` pair (the `feed_tokens`
/// kernel's definition; pairs are in range).
///
/// ```
/// let mut ids = vec![0, 5, 0];
/// mllm_kernel::reference::feed_tokens(&mut ids, &[11, 22], &[(0, 1), (2, 0)]);
/// assert_eq!(ids, [22, 5, 11]);
/// ```
pub fn feed_tokens(ids: &mut [i32], sampled: &[i32], pairs: &[(usize, usize)]) {
    for &(row, src) in pairs {
        ids[row] = sampled[src];
    }
}
