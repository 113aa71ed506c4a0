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
