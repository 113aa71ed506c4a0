//! CPU paged attention over a [`TokenToKvPool`], f32 compute (page size 1).
//!
//! Queries are row-major `[n_tokens, num_heads, head_dim]` f32 slices with their dims passed
//! explicitly; K/V are read through a sequence's KV slot indices, in place from an f32 pool (no
//! copy: decode reads each cached row once) or gathered to f32 first from a bf16 pool. With GQA,
//! `num_heads / num_kv_heads` consecutive query heads share each KV head. Query tokens run in
//! parallel with rayon (a few per task, all heads each); the softmax subtracts the row maximum.

use rayon::prelude::*;

use super::{KvBuffer, MemCacheError, Result, TokenToKvPool};

/// Causal attention for an extend (prefill) step.
///
/// - `q`: `[n_new, num_heads, head_dim]` with `q_dims = [n_new, num_heads, head_dim]`.
/// - `kv_slots`: the KV slots of the whole sequence, prefix then new tokens
///   (`kv_slots.len() == prefix_len + n_new`); the new tokens' K/V must already be in the pool.
/// - New token `i` attends to all `prefix_len` prefix tokens and new tokens `0..=i`.
///
/// Returns `[n_new, num_heads, head_dim]`.
///
/// ```
/// use mllm_engine::mem_cache::{extend_attention, KvDtype, TokenToKvPool};
///
/// let mut pool = TokenToKvPool::new(8, 1, 1, 2, KvDtype::F32);
/// let slots = pool.alloc(2).unwrap();
/// pool.set_kv(0, &slots, &[1.0, 0.0, 0.0, 1.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
/// let q = [1.0, 0.0, 1.0, 0.0];
/// let out = extend_attention(&q, [2, 1, 2], &pool, 0, &slots, 0, 1.0).unwrap();
/// assert_eq!(&out[..2], &[1.0, 2.0]); // token 0 only sees itself
/// ```
pub fn extend_attention(
    q: &[f32],
    q_dims: [usize; 3],
    pool: &TokenToKvPool,
    layer: usize,
    kv_slots: &[u32],
    prefix_len: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    let [n_new, num_heads, head_dim] = q_dims;
    if prefix_len > kv_slots.len() {
        return Err(MemCacheError::InvalidArgument(format!(
            "prefix_len {prefix_len} exceeds the sequence's {} KV slots",
            kv_slots.len()
        )));
    }
    if kv_slots.len() - prefix_len != n_new {
        return Err(MemCacheError::Shape {
            what: "extend_attention n_new (q_dims[0]) vs kv_slots.len() - prefix_len",
            expected: kv_slots.len() - prefix_len,
            got: n_new,
        });
    }
    let out = attend(q, q_dims, pool, layer, kv_slots, prefix_len, scale)?;
    debug_assert_eq!(out.len(), n_new * num_heads * head_dim);
    Ok(out)
}

/// Attention for one decode token: `q` is `[1, num_heads, head_dim]` (`q_dims[0] == 1`) and
/// attends to every slot in `kv_slots` (the whole sequence, its own K/V included, already in the
/// pool). Returns `[1, num_heads, head_dim]`.
pub fn decode_attention(
    q: &[f32],
    q_dims: [usize; 3],
    pool: &TokenToKvPool,
    layer: usize,
    kv_slots: &[u32],
    scale: f32,
) -> Result<Vec<f32>> {
    if q_dims[0] != 1 {
        return Err(MemCacheError::Shape {
            what: "decode_attention q_dims[0] (tokens)",
            expected: 1,
            got: q_dims[0],
        });
    }
    if kv_slots.is_empty() {
        return Err(MemCacheError::InvalidArgument(
            "decode_attention needs at least one KV slot".into(),
        ));
    }
    attend(q, q_dims, pool, layer, kv_slots, kv_slots.len() - 1, scale)
}

/// Shared core: query row `i` sees keys `0..prefix_len + i + 1`.
fn attend(
    q: &[f32],
    q_dims: [usize; 3],
    pool: &TokenToKvPool,
    layer: usize,
    kv_slots: &[u32],
    prefix_len: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    let [n_new, num_heads, head_dim] = q_dims;
    let kv_heads = pool.num_kv_heads();
    if head_dim != pool.head_dim() {
        return Err(MemCacheError::Shape {
            what: "q head_dim vs pool head_dim",
            expected: pool.head_dim(),
            got: head_dim,
        });
    }
    if num_heads == 0 || kv_heads == 0 || !num_heads.is_multiple_of(kv_heads) {
        return Err(MemCacheError::InvalidArgument(format!(
            "num_heads {num_heads} must be a positive multiple of num_kv_heads {kv_heads}"
        )));
    }
    let expected = n_new
        .checked_mul(num_heads)
        .and_then(|x| x.checked_mul(head_dim))
        .ok_or_else(|| MemCacheError::InvalidArgument(format!("q_dims {q_dims:?} overflow")))?;
    if q.len() != expected {
        return Err(MemCacheError::Shape {
            what: "q length (n_tokens * num_heads * head_dim)",
            expected,
            got: q.len(),
        });
    }
    if !scale.is_finite() {
        return Err(MemCacheError::InvalidArgument(format!(
            "attention scale {scale} is not finite"
        )));
    }

    let row = kv_heads * head_dim;
    let buffers = (pool.k_buffer(layer)?, pool.v_buffer(layer)?);
    pool.check_slots(kv_slots)?;
    if expected == 0 {
        return Ok(Vec::new());
    }
    let shape = Shape {
        num_heads,
        head_dim,
        group: num_heads / kv_heads,
        prefix_len,
        scale,
    };
    #[cfg(target_arch = "x86_64")]
    if let (KvBuffer::BF16(k), KvBuffer::BF16(v)) = buffers
        && let Some(run) = simd_rows(head_dim)
    {
        let kv = InPlace::new(k, v, kv_slots, row);
        return Ok(attend_rows(q, expected, &kv, &shape, run));
    }
    if let (KvBuffer::F32(k), KvBuffer::F32(v)) = buffers {
        let kv = InPlace::new(k, v, kv_slots, row);
        return Ok(attend_rows(q, expected, &kv, &shape, rows_dispatch));
    }
    // Other pools (bf16 without AVX-512 rows for this head dim): gather to f32 first.
    let mut k = vec![0.0f32; kv_slots.len() * row];
    let mut v = vec![0.0f32; kv_slots.len() * row];
    pool.gather_kv(layer, kv_slots, &mut k, &mut v)?;
    let kv = Gathered { k: &k, v: &v, row };
    Ok(attend_rows(q, expected, &kv, &shape, rows_dispatch))
}

/// Signature of the per-task attention rows over a [`KvRows`] source.
type RowsFn<R> = fn(&[f32], usize, &R, &Shape, &mut [f32]);

/// The AVX-512 rows for this head dim over `R`, where the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
fn simd_rows<R: KvRows>(head_dim: usize) -> Option<RowsFn<R>>
where
    R::Elem: super::attention_avx512::Load16,
{
    use super::attention_avx512::rows;
    if !crate::tensor::simd::has_avx512() {
        return None;
    }
    // SAFETY (both): AVX-512F is present (checked above) and the head dim matches DC.
    match head_dim {
        64 => Some(|q, i0, kv, s, out| unsafe { rows::<4, R>(q, i0, kv, s, out) }),
        128 => Some(|q, i0, kv, s, out| unsafe { rows::<8, R>(q, i0, kv, s, out) }),
        _ => None,
    }
}

/// Where the attention rows read a token's K/V (all KV heads, `row` values) from.
pub(super) trait KvRows: Sync {
    /// Stored element type (f32, or bf16 read in place by the AVX-512 rows).
    type Elem: Copy;
    /// K of the sequence's `j`-th token.
    fn k(&self, j: usize) -> &[Self::Elem];
    /// V of the sequence's `j`-th token.
    fn v(&self, j: usize) -> &[Self::Elem];
}

/// Rows copied out of a pool as f32, `[seq_len, kv_heads, head_dim]`.
struct Gathered<'a> {
    k: &'a [f32],
    v: &'a [f32],
    row: usize,
}

impl KvRows for Gathered<'_> {
    type Elem = f32;
    #[inline(always)]
    fn k(&self, j: usize) -> &[f32] {
        &self.k[j * self.row..][..self.row]
    }
    #[inline(always)]
    fn v(&self, j: usize) -> &[f32] {
        &self.v[j * self.row..][..self.row]
    }
}

/// A pool layer read in place through the sequence's (checked) slots.
struct InPlace<'a, E> {
    k: &'a [E],
    v: &'a [E],
    slots: &'a [u32],
    row: usize,
}

impl<'a, E> InPlace<'a, E> {
    fn new(k: &'a [E], v: &'a [E], slots: &'a [u32], row: usize) -> Self {
        Self { k, v, slots, row }
    }
}

impl<E: Copy + Sync> KvRows for InPlace<'_, E> {
    type Elem = E;
    #[inline(always)]
    fn k(&self, j: usize) -> &[E] {
        &self.k[self.slots[j] as usize * self.row..][..self.row]
    }
    #[inline(always)]
    fn v(&self, j: usize) -> &[E] {
        &self.v[self.slots[j] as usize * self.row..][..self.row]
    }
}

/// Query tokens in parallel, a few per task (later tokens see more keys); all heads per token.
fn attend_rows<R: KvRows>(q: &[f32], len: usize, kv: &R, shape: &Shape, run: RowsFn<R>) -> Vec<f32> {
    let qrow = shape.num_heads * shape.head_dim;
    let mut out = vec![0.0f32; len];
    out.par_chunks_mut(QUERY_ROWS_PER_TASK * qrow)
        .enumerate()
        .for_each(|(t, o)| {
            let i0 = t * QUERY_ROWS_PER_TASK;
            let n = o.len() / qrow;
            run(&q[i0 * qrow..(i0 + n) * qrow], i0, kv, shape, o);
        });
    out
}

/// Query tokens per rayon task in [`attend`].
const QUERY_ROWS_PER_TASK: usize = 4;

/// Dimensions shared by every query row of one [`attend`] call.
pub(super) struct Shape {
    pub(super) num_heads: usize,
    pub(super) head_dim: usize,
    /// Query heads per KV head.
    pub(super) group: usize,
    pub(super) prefix_len: usize,
    pub(super) scale: f32,
}

/// Independent accumulators of [`dot`] (vectorized by LLVM).
const LANES: usize = 16;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let n = a.len() / LANES * LANES;
    for (x, y) in a[..n].chunks_exact(LANES).zip(b[..n].chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a[n..].iter().zip(&b[n..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Attention of query tokens `i0..` (`q`: `[n, num_heads, head_dim]`) into `out` (same shape,
/// zero-filled) over the sequence's K/V rows `kv`.
#[inline(always)]
fn rows(q: &[f32], i0: usize, kv: &impl KvRows<Elem = f32>, s: &Shape, out: &mut [f32]) {
    let d = s.head_dim;
    let qrow = s.num_heads * d;
    let mut scores = vec![0.0f32; s.prefix_len + i0 + q.len() / qrow];
    for (ii, (qt, ot)) in q.chunks_exact(qrow).zip(out.chunks_exact_mut(qrow)).enumerate() {
        let visible = s.prefix_len + i0 + ii + 1;
        for (h, (qi, oi)) in qt.chunks_exact(d).zip(ot.chunks_exact_mut(d)).enumerate() {
            let off = h / s.group * d;
            let mut max = f32::NEG_INFINITY;
            for (j, sc) in scores[..visible].iter_mut().enumerate() {
                *sc = dot(qi, &kv.k(j)[off..off + d]) * s.scale;
                max = max.max(*sc);
            }
            let mut sum = 0.0f32;
            for sc in &mut scores[..visible] {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            let inv = 1.0 / sum;
            for (j, &p) in scores[..visible].iter().enumerate() {
                let w = p * inv;
                for (o, &x) in oi.iter_mut().zip(&kv.v(j)[off..off + d]) {
                    *o += w * x;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_avx2(q: &[f32], i0: usize, kv: &impl KvRows<Elem = f32>, s: &Shape, out: &mut [f32]) {
    rows(q, i0, kv, s, out)
}

fn rows_dispatch<R: KvRows<Elem = f32>>(q: &[f32], i0: usize, kv: &R, s: &Shape, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(run) = simd_rows::<R>(s.head_dim) {
        return run(q, i0, kv, s, out);
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the enabled target features (checked just above).
        return unsafe { rows_avx2(q, i0, kv, s, out) };
    }
    rows(q, i0, kv, s, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_cache::KvDtype;

    const HEADS: usize = 8;
    const KV_HEADS: usize = 2;
    const HEAD_DIM: usize = 64;

    /// xorshift64* uniform in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    /// Dense causal attention, f64 accumulation: q [n, H, D], k/v [n, KVH, D] -> [n, H, D].
    fn naive(q: &[f32], k: &[f32], v: &[f32], n: usize, heads: usize, kv_heads: usize, d: usize) -> Vec<f32> {
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0.0f32; n * heads * d];
        for h in 0..heads {
            let kvh = h / (heads / kv_heads);
            for i in 0..n {
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..d)
                            .map(|x| q[(i * heads + h) * d + x] as f64 * k[(j * kv_heads + kvh) * d + x] as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for x in 0..d {
                    let acc: f64 = (0..=i).map(|j| e[j] / z * v[(j * kv_heads + kvh) * d + x] as f64).sum();
                    out[(i * heads + h) * d + x] = acc as f32;
                }
            }
        }
        out
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// A full sequence of `total` tokens: random q/k/v, K/V written into a fresh pool at
    /// deliberately shuffled (non-contiguous) slots.
    struct Setup {
        pool: TokenToKvPool,
        slots: Vec<u32>,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
    }

    fn setup(total: usize, dtype: KvDtype, seed: u64) -> Setup {
        let mut rng = Rng(seed);
        let row = KV_HEADS * HEAD_DIM;
        let q = rng.vec(total * HEADS * HEAD_DIM);
        let k = rng.vec(total * row);
        let v = rng.vec(total * row);
        let mut pool = TokenToKvPool::new(64, 2, KV_HEADS, HEAD_DIM, dtype);
        let junk = pool.alloc(5).unwrap();
        let mut slots = pool.alloc(total).unwrap();
        pool.free(&junk).unwrap();
        slots.reverse();
        pool.set_kv(1, &slots, &k, &v).unwrap();
        Setup { pool, slots, q, k, v }
    }

    fn bf16_round(x: &[f32]) -> Vec<f32> {
        x.iter().map(|&a| half::bf16::from_f32(a).to_f32()).collect()
    }

    fn check_extend(prefix: usize, new: usize, dtype: KvDtype, tol: f32) {
        let total = prefix + new;
        let s = setup(total, dtype, 0x9E37_79B9 + total as u64);
        let scale = 1.0 / (HEAD_DIM as f32).sqrt();
        let qrow = HEADS * HEAD_DIM;
        let (k, v) = match dtype {
            KvDtype::F32 => (s.k.clone(), s.v.clone()),
            KvDtype::BF16 => (bf16_round(&s.k), bf16_round(&s.v)),
        };
        let reference = naive(&s.q, &k, &v, total, HEADS, KV_HEADS, HEAD_DIM);

        // Full prefill.
        let full = extend_attention(&s.q, [total, HEADS, HEAD_DIM], &s.pool, 1, &s.slots, 0, scale).unwrap();
        assert!(
            max_diff(&full, &reference) < tol,
            "full prefill diff {}",
            max_diff(&full, &reference)
        );

        // Extend over a cached prefix: equal to the last rows of the full prefill.
        let ext = extend_attention(
            &s.q[prefix * qrow..],
            [new, HEADS, HEAD_DIM],
            &s.pool,
            1,
            &s.slots,
            prefix,
            scale,
        )
        .unwrap();
        let d = max_diff(&ext, &full[prefix * qrow..]);
        assert!(d < 1e-5, "extend vs full prefill ({prefix}+{new}): {d}");
        let d = max_diff(&ext, &reference[prefix * qrow..]);
        assert!(d < tol, "extend vs naive ({prefix}+{new}): {d}");

        // The reference in f32 storage vs the actual (unrounded) data when bf16: within bf16 tolerance.
        if dtype == KvDtype::BF16 {
            let exact = naive(&s.q, &s.k, &s.v, total, HEADS, KV_HEADS, HEAD_DIM);
            let d = max_diff(&full, &exact);
            assert!(d < 2e-2, "bf16 KV vs f32 reference: {d}");
        }
    }

    #[test]
    fn extend_no_prefix() {
        check_extend(0, 7, KvDtype::F32, 1e-5);
    }

    #[test]
    fn extend_with_prefix() {
        check_extend(5, 3, KvDtype::F32, 1e-5);
    }

    #[test]
    fn extend_bf16_kv() {
        check_extend(0, 7, KvDtype::BF16, 1e-5);
        check_extend(5, 3, KvDtype::BF16, 1e-5);
    }

    #[test]
    fn decode_after_prefix() {
        for (dtype, tol) in [(KvDtype::F32, 1e-5), (KvDtype::BF16, 2e-2)] {
            let prefix = 9;
            let total = prefix + 1;
            let s = setup(total, dtype, 42);
            let scale = 1.0 / (HEAD_DIM as f32).sqrt();
            let qrow = HEADS * HEAD_DIM;
            let reference = naive(&s.q, &s.k, &s.v, total, HEADS, KV_HEADS, HEAD_DIM);
            let full = extend_attention(&s.q, [total, HEADS, HEAD_DIM], &s.pool, 1, &s.slots, 0, scale).unwrap();
            let dec =
                decode_attention(&s.q[prefix * qrow..], [1, HEADS, HEAD_DIM], &s.pool, 1, &s.slots, scale).unwrap();
            assert_eq!(dec.len(), qrow);
            assert!(max_diff(&dec, &full[prefix * qrow..]) < 1e-5);
            let d = max_diff(&dec, &reference[prefix * qrow..]);
            assert!(d < tol, "decode vs naive ({dtype:?}): {d}");
        }
    }

    #[test]
    fn long_sequences_every_head_dim_path() {
        // 64 and 128 take the AVX-512 rows where the CPU has them (16-key blocks plus a tail,
        // GQA groups of 4, 3 and 5 = 4 + 1 heads per pass); 48 the portable ones. 37 tokens with
        // a 20-token prefix cross several blocks.
        // bf16 pools are read in place by the AVX-512 rows and gathered to f32 otherwise.
        let shapes = [(64, 8, 2), (64, 6, 2), (128, 5, 1), (128, 8, 2), (48, 8, 2)];
        for ((d, heads, kv_heads), dtype) in shapes.into_iter().flat_map(|s| [(s, KvDtype::F32), (s, KvDtype::BF16)]) {
            let (total, prefix) = (37, 20);
            let mut rng = Rng(d as u64 + heads as u64);
            let row = kv_heads * d;
            let (q, k, v) = (rng.vec(total * heads * d), rng.vec(total * row), rng.vec(total * row));
            let mut pool = TokenToKvPool::new(64, 1, kv_heads, d, dtype);
            let mut slots = pool.alloc(total).unwrap();
            slots.reverse();
            pool.set_kv(0, &slots, &k, &v).unwrap();
            let scale = 1.0 / (d as f32).sqrt();
            let (k, v) = match dtype {
                KvDtype::F32 => (k, v),
                KvDtype::BF16 => (bf16_round(&k), bf16_round(&v)),
            };
            let reference = naive(&q, &k, &v, total, heads, kv_heads, d);
            let qrow = heads * d;
            let ext = extend_attention(
                &q[prefix * qrow..],
                [total - prefix, heads, d],
                &pool,
                0,
                &slots,
                prefix,
                scale,
            )
            .unwrap();
            let diff = max_diff(&ext, &reference[prefix * qrow..]);
            assert!(
                diff < 1e-5,
                "head_dim {d}, {heads}/{kv_heads} heads: extend vs naive {diff}"
            );
            let dec = decode_attention(&q[(total - 1) * qrow..], [1, heads, d], &pool, 0, &slots, scale).unwrap();
            assert_eq!(
                dec,
                ext[(total - prefix - 1) * qrow..],
                "head_dim {d}: decode vs extend"
            );
        }
    }

    #[test]
    fn gqa_groups_share_kv_head() {
        // Identical queries in heads 0..4 (KV head 0) give identical outputs; head 4 (KV head 1) differs.
        let s = setup(4, KvDtype::F32, 7);
        let mut q = s.q[..HEADS * HEAD_DIM].to_vec();
        for h in 1..HEADS {
            let (a, b) = q.split_at_mut(h * HEAD_DIM);
            b[..HEAD_DIM].copy_from_slice(&a[..HEAD_DIM]);
        }
        let out = decode_attention(&q, [1, HEADS, HEAD_DIM], &s.pool, 1, &s.slots, 0.125).unwrap();
        let head = |h: usize| &out[h * HEAD_DIM..(h + 1) * HEAD_DIM];
        for h in 1..4 {
            assert_eq!(head(h), head(0));
        }
        assert_ne!(head(4), head(0));
        for h in 5..8 {
            assert_eq!(head(h), head(4));
        }
    }

    #[test]
    fn stable_softmax_large_scores() {
        let mut pool = TokenToKvPool::new(4, 1, 1, 1, KvDtype::F32);
        let slots = pool.alloc(2).unwrap();
        pool.set_kv(0, &slots, &[1000.0, 999.0], &[1.0, 3.0]).unwrap();
        let out = decode_attention(&[1.0], [1, 1, 1], &pool, 0, &slots, 1.0).unwrap();
        let e = (-1.0f32).exp();
        let expected = (1.0 + 3.0 * e) / (1.0 + e);
        assert!(out[0].is_finite() && (out[0] - expected).abs() < 1e-5, "{}", out[0]);
    }

    #[test]
    fn dim_validation() {
        let s = setup(4, KvDtype::F32, 3);
        let q = &s.q[..2 * HEADS * HEAD_DIM];
        let ext = |q: &[f32], dims, prefix| extend_attention(q, dims, &s.pool, 1, &s.slots, prefix, 1.0);
        assert!(ext(q, [2, HEADS, HEAD_DIM], 2).is_ok());
        assert!(matches!(
            ext(q, [3, HEADS, HEAD_DIM], 2),
            Err(MemCacheError::Shape { .. })
        ));
        assert!(matches!(
            ext(q, [2, HEADS, HEAD_DIM], 5),
            Err(MemCacheError::InvalidArgument(_))
        ));
        assert!(matches!(
            ext(&q[1..], [2, HEADS, HEAD_DIM], 2),
            Err(MemCacheError::Shape { .. })
        ));
        assert!(matches!(
            ext(q, [2, HEADS * 2, HEAD_DIM / 2], 2),
            Err(MemCacheError::Shape { .. })
        ));
        let q3 = &s.q[..2 * 3 * HEAD_DIM];
        let err = ext(q3, [2, 3, HEAD_DIM], 2).unwrap_err();
        assert!(err.to_string().contains("multiple of num_kv_heads 2"), "{err}");
        assert!(matches!(
            extend_attention(q, [2, HEADS, HEAD_DIM], &s.pool, 2, &s.slots, 2, 1.0),
            Err(MemCacheError::LayerOutOfRange { .. })
        ));
        assert!(matches!(
            extend_attention(q, [2, HEADS, HEAD_DIM], &s.pool, 1, &[1, 2, 3, 999], 2, 1.0),
            Err(MemCacheError::KvSlotOutOfRange { .. })
        ));
        let one = &s.q[..HEADS * HEAD_DIM];
        assert!(decode_attention(q, [2, HEADS, HEAD_DIM], &s.pool, 1, &s.slots, 1.0).is_err());
        assert!(decode_attention(one, [1, HEADS, HEAD_DIM], &s.pool, 1, &[], 1.0).is_err());
        assert!(ext(&[], [0, HEADS, HEAD_DIM], 4).unwrap().is_empty());
    }
}
