use crate::dtype::FloatElem;
use crate::ops::SampleParams;

/// Philox4x32-10 (Salmon et al., SC'11): the `sample` kernel's generator,
/// bit for bit (as Random123 and curand).
///
/// ```
/// // Random123's known-answer vector for a zero counter and key.
/// let r = mllm_kernel::reference::philox4x32_10([0; 4], [0; 2]);
/// assert_eq!(r, [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
/// ```
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, [mut k0, mut k1]) = (counter, key);
    for _ in 0..10 {
        let p0 = 0xD251_1F53u64 * c[0] as u64;
        let p1 = 0xCD9E_8D57u64 * c[2] as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0];
        k0 = k0.wrapping_add(0x9E37_79B9);
        k1 = k1.wrapping_add(0xBB67_AE85);
    }
    c
}

/// The uniform `u` in `[0, 1)` a row with `seed` draws at `offset`: the top
/// 24 bits of Philox word 0 for counter `(offset, 0)` and key `seed`.
///
/// ```
/// use mllm_kernel::reference::sample_uniform;
/// assert_eq!(sample_uniform(7, 3), sample_uniform(7, 3));
/// assert_ne!(sample_uniform(7, 3), sample_uniform(7, 4));
/// assert!((0.0..1.0).contains(&sample_uniform(u64::MAX, u64::MAX)));
/// ```
pub fn sample_uniform(seed: u64, offset: u64) -> f32 {
    let r = philox4x32_10(
        [offset as u32, (offset >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    (r[0] >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// One row's draw from [`sample`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The token, or -1 for a row with NaN / `+inf` (after scaling), no
    /// finite logit, or out-of-range params.
    pub id: i32,
    /// `log_softmax(logits / temperature)[id]` over the whole row (f64 sum).
    pub logprob: f32,
    /// The row's uniform draw.
    pub u: f32,
    /// How far the draw is from changing: the distance of `u` from the
    /// chosen token's CDF step edges less twice [`KeptCdf::ambiguous`]. A
    /// GPU (f32 sums, `expf`) may only pick another token where this is
    /// tiny or negative.
    pub margin: f64,
}

/// Per row of `vocab` logits and its [`SampleParams`]: the `sample`
/// kernel's token and logprob, computed in f64 with a full sort (the
/// kernel sorts a compacted candidate set, or searches thresholds over the
/// whole row). `top_k <= 0` is off, as on the GPU.
///
/// ```
/// use mllm_kernel::{ops::SampleParams, reference};
/// let row = [0.0f32, 3.0, 1.0, 3.0];
/// let p = SampleParams { top_k: 1, ..Default::default() };
/// assert_eq!(reference::sample(&row, 4, &[p])[0].id, 1); // ties to the lower id
/// let bad = reference::sample(&[0.0f32, f32::NAN], 2, &[SampleParams::default()]);
/// assert_eq!(bad[0].id, -1);
/// ```
pub fn sample<T: FloatElem>(logits: &[T], vocab: usize, params: &[SampleParams]) -> Vec<Sampled> {
    assert!(vocab > 0 && logits.len() == vocab * params.len());
    logits
        .chunks(vocab)
        .zip(params)
        .map(|(row, p)| sample_row(row, p))
        .collect()
}

/// The distribution one row draws from: the kept tokens in ascending id
/// order with their cumulative probability (the last is 1).
#[derive(Debug, Clone, PartialEq)]
pub struct KeptCdf {
    /// Kept token ids, ascending.
    pub ids: Vec<u32>,
    /// `cdf[j]`: the kept probability of `ids[..=j]`.
    pub cdf: Vec<f64>,
    /// Probability (of the kept mass) of tokens whose top-p or min-p
    /// membership lies within rounding of its boundary: a GPU may keep or
    /// drop those, shifting every CDF step by up to this much.
    pub ambiguous: f64,
}

impl KeptCdf {
    /// The token `u` lands on: the first with `cdf > u` and non-zero
    /// probability (the last such if rounding falls off the end).
    pub fn pick(&self, u: f64) -> usize {
        let prob = |j: usize| self.cdf[j] - if j == 0 { 0.0 } else { self.cdf[j - 1] };
        (0..self.ids.len())
            .find(|&j| self.cdf[j] > u && prob(j) > 0.0)
            .or_else(|| (0..self.ids.len()).rev().find(|&j| prob(j) > 0.0))
            .unwrap_or(0)
    }

    /// `[low, high)` of position `j`.
    pub fn step(&self, j: usize) -> (f64, f64) {
        (if j == 0 { 0.0 } else { self.cdf[j - 1] }, self.cdf[j])
    }
}

/// The distribution a row with `params` samples from (after temperature,
/// top-k, top-p, min-p), or `None` where the kernel gives id -1.
///
/// ```
/// use mllm_kernel::{ops::SampleParams, reference};
/// let p = SampleParams { top_k: 2, ..Default::default() };
/// let kept = reference::kept_cdf(&[0.0f32, 1.0, 1.0], &p).unwrap();
/// assert_eq!(kept.ids, [1, 2]);
/// assert!((kept.cdf[0] - 0.5).abs() < 1e-12);
/// ```
pub fn kept_cdf<T: FloatElem>(row: &[T], p: &SampleParams) -> Option<KeptCdf> {
    scaled(row, p).map(|x| cdf_of(&x, p))
}

/// `logits / temperature`, or `None` for out-of-range params or a row with
/// NaN / `+inf` (after scaling) or no finite value.
fn scaled<T: FloatElem>(row: &[T], p: &SampleParams) -> Option<Vec<f32>> {
    let t = p.temperature;
    let params_ok = t > 0.0 && t < f32::INFINITY && p.top_p > 0.0 && p.top_p <= 1.0 && (0.0..=1.0).contains(&p.min_p);
    let x: Vec<f32> = row
        .iter()
        .map(|v| if t != 1.0 { v.to_f32() / t } else { v.to_f32() })
        .collect();
    let bad = x.iter().any(|v| v.is_nan() || *v == f32::INFINITY) || !x.iter().any(|v| v.is_finite());
    (params_ok && !bad).then_some(x)
}

fn cdf_of(x: &[f32], p: &SampleParams) -> KeptCdf {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w = |v: f32| ((v - m) as f64).exp();
    let (mut kept, ambiguous) = survivors(x, p);
    kept.sort_unstable_by_key(|c| c.1);
    let total: f64 = kept.iter().map(|c| w(c.0)).sum();
    let mut cum = 0.0;
    let cdf = kept
        .iter()
        .map(|c| {
            cum += w(c.0);
            cum / total
        })
        .collect();
    KeptCdf {
        ids: kept.iter().map(|c| c.1).collect(),
        cdf,
        ambiguous: ambiguous / total,
    }
}

fn sample_row<T: FloatElem>(row: &[T], p: &SampleParams) -> Sampled {
    let u = sample_uniform(p.seed, p.offset);
    let Some(x) = scaled(row, p) else {
        return Sampled {
            id: -1,
            logprob: f32::NAN,
            u,
            margin: f64::INFINITY,
        };
    };
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m as f64 + x.iter().map(|&v| ((v - m) as f64).exp()).sum::<f64>().ln();
    let kept = cdf_of(&x, p);
    let j = kept.pick(u as f64);
    let (low, high) = kept.step(j);
    let id = kept.ids[j] as usize;
    Sampled {
        id: id as i32,
        logprob: (x[id] as f64 - lse) as f32,
        u,
        margin: (u as f64 - low).min(high - u as f64) - 2.0 * kept.ambiguous,
    }
}

/// Relative rounding within which a top-p or min-p decision counts as
/// ambiguous: the GPU's f32 block sums of ~150k terms stay well inside it.
const AMBIGUOUS: f64 = 2e-5;

/// The tokens surviving top-k → top-p → min-p on scaled logits `x` (no NaN
/// or `+inf`, one finite at least), as `(x, id)` most likely first, and the
/// mass (relative to the max token's) of tokens whose top-p or min-p
/// decision lies within [`AMBIGUOUS`] of its boundary.
fn survivors(x: &[f32], p: &SampleParams) -> (Vec<(f32, u32)>, f64) {
    let mut cands: Vec<(f32, u32)> = (0..x.len())
        .filter(|&i| x[i] > f32::NEG_INFINITY)
        .map(|i| (x[i], i as u32))
        .collect();
    cands.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let m = cands[0].0;
    let w = |v: f32| ((v - m) as f64).exp();
    let mut ambiguous = 0.0;
    if p.top_k > 0 && (p.top_k as usize) < cands.len() {
        cands.truncate(p.top_k as usize);
    }
    if p.top_p < 1.0 && cands.len() > 1 {
        // Token i is kept iff the mass before it is below the target.
        let z: f64 = cands.iter().map(|c| w(c.0)).sum();
        let target = p.top_p as f64 * z;
        let (mut cum, mut keep) = (0.0, None);
        for (i, c) in cands.iter().enumerate() {
            if cum >= target && keep.is_none() {
                keep = Some(i);
            }
            if cum > target + AMBIGUOUS * z {
                break;
            }
            if (cum - target).abs() <= AMBIGUOUS * z {
                ambiguous += w(c.0);
            }
            cum += w(c.0);
        }
        cands.truncate(keep.unwrap_or(cands.len()).max(1));
    }
    if p.min_p > 0.0 {
        let min_p = p.min_p as f64;
        ambiguous += cands[1..]
            .iter()
            .map(|c| w(c.0))
            .filter(|w| (w - min_p).abs() <= AMBIGUOUS * min_p)
            .sum::<f64>();
        cands.retain(|c| w(c.0) >= min_p);
    }
    (cands, ambiguous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl Fn(&mut SampleParams)) -> SampleParams {
        let mut p = SampleParams::default();
        f(&mut p);
        p
    }

    fn ids(x: &[f32], p: &SampleParams) -> Vec<u32> {
        let mut v: Vec<u32> = survivors(x, p).0.iter().map(|c| c.1).collect();
        v.sort();
        v
    }

    fn row(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let r = philox4x32_10([i as u32, 0, 0, 0], [seed as u32, 1])[0];
                ((r >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_argmax() {
        for seed in 0..20 {
            let x = row(1000, seed, 5.0);
            let want = crate::reference::argmax(&x, x.len())[0].0;
            for offset in 0..10 {
                let k1 = params(|p| (p.top_k, p.seed, p.offset) = (1, seed, offset));
                let tiny = params(|p| (p.top_p, p.temperature, p.seed, p.offset) = (1e-7, 0.8, seed, offset));
                assert_eq!(sample(&x, x.len(), &[k1])[0].id, want);
                assert_eq!(sample(&x, x.len(), &[tiny])[0].id, want);
            }
        }
    }

    #[test]
    fn seeds_reproduce_and_offsets_advance() {
        let x = row(500, 3, 2.0);
        let draw = |seed, offset| sample(&x, x.len(), &[params(|p| (p.seed, p.offset) = (seed, offset))])[0].id;
        let a: Vec<i32> = (0..50).map(|o| draw(11, o)).collect();
        assert_eq!(a, (0..50).map(|o| draw(11, o)).collect::<Vec<_>>());
        assert_ne!(a, (0..50).map(|o| draw(12, o)).collect::<Vec<_>>());
        assert!(a.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn filters_keep_exact_sets() {
        let probs = [0.5f64, 0.3, 0.15, 0.05];
        let x: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
        let min_p = |v| ids(&x, &params(|p| p.min_p = v));
        assert_eq!(min_p(0.25), [0, 1, 2]); // threshold 0.125
        assert_eq!(min_p(0.5), [0, 1]);
        assert_eq!(min_p(0.09), [0, 1, 2, 3]);
        assert_eq!(min_p(1.0), [0]);
        let top_p = |v| ids(&x, &params(|p| p.top_p = v));
        assert_eq!(top_p(0.45), [0]);
        assert_eq!(top_p(0.6), [0, 1]);
        assert_eq!(top_p(0.9), [0, 1, 2]);
        assert_eq!(top_p(0.96), [0, 1, 2, 3]);
        // top-p is relative to the top-k survivors: 0.5 / 0.8 < 0.7 <= 1.
        assert_eq!(ids(&x, &params(|p| (p.top_k, p.top_p) = (2, 0.7))), [0, 1]);
        assert_eq!(ids(&x, &params(|p| (p.top_k, p.top_p) = (2, 0.6))), [0]);
        // Ties rank the lower id first.
        assert_eq!(ids(&[1.0, 2.0, 2.0, 2.0], &params(|p| p.top_k = 2)), [1, 2]);
        assert_eq!(
            ids(&[2.0, 2.0, 1.0, f32::NEG_INFINITY], &params(|p| p.top_k = 3)),
            [0, 1, 2]
        );
        // min-p never draws what it drops.
        for offset in 0..2000 {
            let p = params(|p| (p.min_p, p.seed, p.offset) = (0.25, 5, offset));
            assert_ne!(sample(&x, 4, &[p])[0].id, 3);
        }
    }

    #[test]
    fn frequencies_follow_the_renormalized_softmax() {
        let x = [1.0f32, 2.0, 0.5, -1.0];
        let n = 40_000;
        let freq = |p: SampleParams| {
            let mut counts = [0usize; 4];
            for offset in 0..n {
                let id = sample(&x, 4, &[SampleParams { offset, ..p }])[0].id;
                counts[id as usize] += 1;
            }
            counts.map(|c| c as f64 / n as f64)
        };
        let softmax = |t: f32, keep: usize| {
            let e: Vec<f64> = x.iter().map(|&v| ((v / t) as f64).exp()).collect();
            let mut order: Vec<usize> = (0..4).collect();
            order.sort_by(|&a, &b| e[b].total_cmp(&e[a]));
            let z: f64 = order[..keep].iter().map(|&i| e[i]).sum();
            let mut p = [0.0; 4];
            for &i in &order[..keep] {
                p[i] = e[i] / z;
            }
            p
        };
        for (p, want) in [
            (params(|p| p.seed = 9), softmax(1.0, 4)),
            (params(|p| (p.seed, p.temperature) = (10, 0.5)), softmax(0.5, 4)),
            (params(|p| (p.seed, p.top_k) = (11, 2)), softmax(1.0, 2)),
        ] {
            let got = freq(p);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 0.01, "{got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn bad_rows_and_params_give_minus_one() {
        let ok = SampleParams::default();
        for (row, p) in [
            (vec![0.0f32, f32::NAN], ok),
            (vec![0.0, f32::INFINITY], ok),
            (vec![f32::NEG_INFINITY; 3], ok),
            (vec![1e38, 0.0], params(|p| p.temperature = 1e-3)), // overflows to +inf
            (vec![0.0, 1.0], params(|p| p.temperature = 0.0)),
            (vec![0.0, 1.0], params(|p| p.top_p = 0.0)),
            (vec![0.0, 1.0], params(|p| p.min_p = f32::NAN)),
        ] {
            let s = sample(&row, row.len(), &[p])[0];
            assert_eq!(s.id, -1, "{row:?} {p:?}");
            assert!(s.logprob.is_nan());
        }
        let s = sample(&[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY], 3, &[ok])[0];
        assert_eq!((s.id, s.logprob), (1, 0.0));
    }

    #[test]
    fn logprob_is_before_truncation() {
        let x = [0.0f32, 1.0, 2.0];
        let p = params(|p| (p.top_k, p.temperature) = (1, 0.5));
        let s = sample(&x, 3, &[p])[0];
        let lse = [0.0f64, 2.0, 4.0].iter().map(|v| v.exp()).sum::<f64>().ln();
        assert_eq!(s.id, 2);
        assert!((s.logprob as f64 - (4.0 - lse)).abs() < 1e-6);
    }
}
