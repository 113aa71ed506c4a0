use crate::dtype::FloatElem;

/// A page-size-1 KV pool as the attention kernels read it: caches of
/// `[capacity, num_kv_heads, head_dim]` and, for sequence `i`, the slot ids
/// `kv_indices[kv_indptr[i] .. kv_indptr[i+1]]` of its context in order.
#[derive(Debug, Clone, Copy)]
pub struct PagedKv<'a, T> {
    pub k_cache: &'a [T],
    pub v_cache: &'a [T],
    pub kv_indices: &'a [i32],
    pub kv_indptr: &'a [i32],
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Paged causal attention, `[total_q, num_heads, head_dim]` in f32.
///
/// Query `j` of sequence `i` (rows `qo_indptr[i] ..`) sits at position
/// `kv_len_i - qo_len_i + j` and attends to context tokens `0 ..= position`
/// (bottom-right aligned mask); query head `h` reads kv head
/// `h / (num_heads / num_kv_heads)`. Logits are `scale * q·k`; the softmax
/// and the weighted sum run in f64 on the inputs' exact values, so this is
/// the more exact side of any comparison.
///
/// ```
/// use mllm_kernel::reference::{paged_attention, PagedKv};
/// // One kv head of dim 2 in slots 0..3; the query sees slots 2 and 0.
/// let k = [1.0f32, 0.0, 9.0, 9.0, 1.0, 0.0];
/// let v = [2.0f32, 4.0, 7.0, 7.0, 4.0, 8.0];
/// let kv = PagedKv { k_cache: &k, v_cache: &v, kv_indices: &[2, 0], kv_indptr: &[0, 2],
///                    num_kv_heads: 1, head_dim: 2 };
/// // Equal logits: the mean of the two values.
/// let out = paged_attention(&[1.0f32, 0.0], &[0, 1], 1, &kv, 1.0);
/// assert_eq!(out, vec![3.0, 6.0]);
/// ```
pub fn paged_attention<T: FloatElem>(
    q: &[T],
    qo_indptr: &[i32],
    num_heads: usize,
    kv: &PagedKv<T>,
    scale: f32,
) -> Vec<f32> {
    let (hk, d) = (kv.num_kv_heads, kv.head_dim);
    assert!(
        hk > 0 && d > 0 && num_heads.is_multiple_of(hk),
        "attention reference: bad heads"
    );
    assert_eq!(
        qo_indptr.len(),
        kv.kv_indptr.len(),
        "attention reference: indptr lengths"
    );
    let total_q = *qo_indptr.last().expect("qo_indptr is non-empty") as usize;
    assert_eq!(q.len(), total_q * num_heads * d, "attention reference: q size");
    let group = num_heads / hk;
    let row = hk * d;
    let mut out = vec![0f32; q.len()];
    let mut logits = Vec::new();
    for i in 0..qo_indptr.len() - 1 {
        let (q0, q1) = (qo_indptr[i] as usize, qo_indptr[i + 1] as usize);
        let slots = &kv.kv_indices[kv.kv_indptr[i] as usize..kv.kv_indptr[i + 1] as usize];
        assert!(q1 - q0 <= slots.len(), "attention reference: qo_len > kv_len");
        let first_pos = slots.len() - (q1 - q0);
        for (j, t) in (q0..q1).enumerate() {
            let visible = &slots[..=first_pos + j];
            for h in 0..num_heads {
                let qh = &q[(t * num_heads + h) * d..][..d];
                let kvh = (h / group) * d;
                logits.clear();
                logits.extend(visible.iter().map(|&s| {
                    let kr = &kv.k_cache[s as usize * row + kvh..][..d];
                    let dot: f64 = qh
                        .iter()
                        .zip(kr)
                        .map(|(a, b)| a.to_f32() as f64 * b.to_f32() as f64)
                        .sum();
                    dot * scale as f64
                }));
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut acc = vec![0f64; d];
                let mut denom = 0f64;
                for (&s, &l) in visible.iter().zip(&logits) {
                    let p = (l - max).exp();
                    denom += p;
                    let vr = &kv.v_cache[s as usize * row + kvh..][..d];
                    for (a, b) in acc.iter_mut().zip(vr) {
                        *a += p * b.to_f32() as f64;
                    }
                }
                for (o, a) in out[(t * num_heads + h) * d..][..d].iter_mut().zip(&acc) {
                    *o = (a / denom) as f32;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two kv heads of dim 1; kv head 0 has keys 0 (all logits equal),
    /// kv head 1 has keys that make the last visible token dominate.
    #[test]
    fn causal_mask_gqa_and_shuffled_slots() {
        // Slots: 4 tokens of one sequence stored in slots 3, 0, 2, 1.
        // Token t has value t + 1 in both heads; kv head 1's key is 100 * t.
        let slots = [3, 0, 2, 1];
        let mut k = vec![0f32; 8];
        let mut v = vec![0f32; 8];
        for (t, &s) in slots.iter().enumerate() {
            let s = s as usize;
            k[s * 2 + 1] = 100.0 * t as f32;
            v[s * 2] = t as f32 + 1.0;
            v[s * 2 + 1] = t as f32 + 1.0;
        }
        let kv = PagedKv {
            k_cache: &k,
            v_cache: &v,
            kv_indices: &slots,
            kv_indptr: &[0, 4],
            num_kv_heads: 2,
            head_dim: 1,
        };
        // Two new tokens (positions 2 and 3), 4 query heads (group 2), q = 1.
        let q = vec![1f32; 2 * 4];
        let out = paged_attention(&q, &[0, 2], 4, &kv, 1.0);
        // Heads 0-1 (kv head 0): the mean of the visible values.
        assert_eq!(out[0], 2.0); // position 2 sees values 1, 2, 3
        assert_eq!(out[1], 2.0);
        assert_eq!(out[4], 2.5); // position 3 sees 1..=4
                                 // Heads 2-3 (kv head 1): the newest visible token wins.
        assert!((out[2] - 3.0).abs() < 1e-6 && (out[3] - 3.0).abs() < 1e-6);
        assert!((out[6] - 4.0).abs() < 1e-6);
    }

    #[test]
    fn decode_batch_reads_each_sequence_only() {
        let k = vec![0f32; 6];
        let v = [1.0f32, 10.0, 100.0, 1000.0, 5.0, 7.0];
        let kv = PagedKv {
            k_cache: &k,
            v_cache: &v,
            kv_indices: &[4, 1, 5, 0, 3],
            kv_indptr: &[0, 2, 3, 5],
            num_kv_heads: 1,
            head_dim: 1,
        };
        let out = paged_attention(&[1f32; 3], &[0, 1, 2, 3], 1, &kv, 0.125);
        assert_eq!(out, vec![7.5, 7.0, 500.5]);
    }
}
