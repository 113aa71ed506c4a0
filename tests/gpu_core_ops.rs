//! The model-step kernels (SiLU-and-mul, q/k norm + RoPE, embedding, KV
//! store, argmax / log-probabilities) against their CPU references.
//! GPU tests are skipped (with the reason printed) where no CUDA device
//! exists; the validation tests at the end run everywhere.
//!
//! Tolerances (p = mantissa bits: bf16 7, f16 10, f32 23):
//! * silu_and_mul: the GPU's expf and Rust's exp may differ by an ulp of
//!   f32, which can flip the rounding of silu(g) to T by one ulp (2^-p
//!   relative); the multiply by `up` adds at most half an ulp on each side,
//!   so outputs agree within 2^-(p-1) relative: 1/64 bf16, 1/512 f16; f32
//!   keeps the ulp-level expf difference, 1e-5 relative.
//! * qk_norm_rope: the norm's sum of squares runs in another order (one ulp
//!   flip of n, then of n * w), and the rotation is f32 (maybe fused) on the
//!   GPU vs f64 in the reference, so each output may differ by about an ulp
//!   of the largest element in its head: 2^-(p-1) of the head's max |value|
//!   (1e-5 for f32). Wrong pairing, sign or position gives O(1) errors.
//! * embedding, kv_store: pure copies, bit exact.
//! * argmax: ids exact (max is exact; both sides break ties to the lowest
//!   index); log-probabilities use an f32 block sum of ~150k expf terms vs
//!   an f64 sum: 1e-4 absolute + 1e-5 relative.

mod common;

use common::{cast, gpu_or_skip, random_f32};
use half::{bf16, f16};
use mllm_kernel::dtype::FloatElem;
use mllm_kernel::ops::{self, Meta, QkHeads};
use mllm_kernel::{reference, DType, DeviceTensor, Error, Gpu};

fn p_tol(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 1.0 / 64.0,
        DType::F16 => 1.0 / 512.0,
        _ => 1e-5,
    }
}

/// Deterministic i32 draws in `0..n`.
fn random_index(len: usize, seed: u64, n: usize) -> Vec<i32> {
    random_f32(len, seed, 1.0)
        .iter()
        .map(|x| (((x + 1.0) / 2.0 * n as f32) as usize).min(n - 1) as i32)
        .collect()
}

fn bits<T: FloatElem>(v: &[T]) -> Vec<u32> {
    v.iter().map(|x| x.to_f32().to_bits()).collect()
}

// ---------------------------------------------------------------- silu_and_mul

/// (rows, intermediate): packs and scalar fallbacks (I not a multiple of 8
/// or 4), one wide row split over several blocks, many rows.
const SILU_SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (3, 7),
    (5, 8),
    (17, 100),
    (2, 12_288),
    (1, 25_600),
    (4, 11_111),
    (513, 256),
    (0, 64),
];

fn check_silu<T: FloatElem>(gpu: &Gpu) {
    let dtype = T::DTYPE;
    let tol = p_tol(dtype);
    for (seed, &(rows, inter)) in SILU_SHAPES.iter().enumerate() {
        // Up to |8|: silu's exp runs over its whole interesting range.
        let x: Vec<T> = cast(&random_f32(rows * 2 * inter, 500 + seed as u64, 8.0));
        let want = reference::silu_and_mul(&x, inter);
        let xd = DeviceTensor::from_host(gpu, &x, &[rows, 2 * inter]).unwrap();
        let out = ops::silu_and_mul(gpu, &xd).unwrap();
        assert_eq!(out.shape(), &[rows, inter]);
        let got = out.to_host::<T>(gpu).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let (g, w) = (g.to_f32(), w.to_f32());
            assert!(
                (g - w).abs() <= tol * w.abs() + 1e-6,
                "silu_and_mul {dtype} [{rows}, {inter}] element {i}: gpu {g} vs reference {w}"
            );
        }
        // The _into form writes the same values.
        let mut out2 = DeviceTensor::zeros(gpu, &[rows, inter], dtype).unwrap();
        ops::silu_and_mul_into(gpu, &xd, &mut out2).unwrap();
        assert_eq!(bits(&out2.to_host::<T>(gpu).unwrap()), bits(&got));
    }
}

#[test]
fn silu_and_mul_matches_reference() {
    if let Some(gpu) = gpu_or_skip("silu_and_mul_matches_reference") {
        check_silu::<bf16>(&gpu);
        check_silu::<f16>(&gpu);
        check_silu::<f32>(&gpu);
    }
}

// ---------------------------------------------------------------- qk_norm_rope

struct RopeCase {
    tokens: usize,
    heads: QkHeads,
    width: usize,
    norm: bool,
}

fn rope_cases() -> Vec<RopeCase> {
    let packed = |tokens, hq, hk, d, norm| RopeCase {
        tokens,
        heads: QkHeads::packed_qkv(hq, hk, d),
        width: (hq + 2 * hk) * d,
        norm,
    };
    vec![
        packed(1, 1, 1, 64, false),
        packed(5, 4, 2, 128, true),
        packed(7, 32, 8, 128, true),
        packed(3, 2, 2, 256, true),
        packed(33, 8, 2, 80, false),
        packed(17, 16, 4, 96, true),
        packed(9, 3, 1, 2, true),
        packed(300, 4, 1, 64, true),
        packed(0, 4, 2, 64, true),
        // q only, at an offset, in a padded row.
        RopeCase {
            tokens: 6,
            heads: QkHeads {
                q_col: 10,
                q_heads: 3,
                k_col: 0,
                k_heads: 0,
                head_dim: 64,
            },
            width: 10 + 3 * 64 + 5,
            norm: true,
        },
        // D = 128 at an odd column: the element-wise (unaligned) path.
        RopeCase {
            tokens: 5,
            heads: QkHeads {
                q_col: 11,
                q_heads: 2,
                k_col: 11 + 2 * 128,
                k_heads: 1,
                head_dim: 128,
            },
            width: 11 + 3 * 128 + 1,
            norm: true,
        },
        // k before q (e.g. a separate [T, Hk, D] view laid out first).
        RopeCase {
            tokens: 4,
            heads: QkHeads {
                q_col: 2 * 128,
                q_heads: 2,
                k_col: 0,
                k_heads: 2,
                head_dim: 128,
            },
            width: 4 * 128,
            norm: false,
        },
    ]
}

fn check_rope<T: FloatElem>(gpu: &Gpu) {
    let dtype = T::DTYPE;
    let tol = p_tol(dtype);
    let max_pos = 4096;
    for (seed, c) in rope_cases().iter().enumerate() {
        let seed = seed as u64;
        let d = c.heads.head_dim;
        let cache = ops::rope_cos_sin_cache(d, max_pos, 1e6);
        let qk: Vec<T> = cast(&random_f32(c.tokens * c.width, 600 + seed, 4.0));
        let mut pos = random_index(c.tokens, 700 + seed, max_pos);
        if c.tokens >= 3 {
            // Out of range: the kernel clamps (as the reference does).
            pos[1] = max_pos as i32 + 5;
            pos[2] = -3;
        }
        let qw: Vec<T> = cast(&random_f32(d, 800 + seed, 2.0));
        let kw: Vec<T> = cast(&random_f32(d, 900 + seed, 2.0));
        let mut want = qk.clone();
        let (qn, kn) = if c.norm {
            (Some(&qw[..]), Some(&kw[..]))
        } else {
            (None, None)
        };
        reference::qk_norm_rope(&mut want, c.width, c.heads, &pos, &cache, qn, kn, 1e-6);

        let mut qkd = DeviceTensor::from_host(gpu, &qk, &[c.tokens, c.width]).unwrap();
        let posd = DeviceTensor::from_host(gpu, &pos, &[c.tokens]).unwrap();
        let csd = DeviceTensor::from_host(gpu, &cache, &[max_pos, d]).unwrap();
        let qwd = DeviceTensor::from_host(gpu, &qw, &[d]).unwrap();
        let kwd = DeviceTensor::from_host(gpu, &kw, &[d]).unwrap();
        let args = ops::QkNormRope {
            heads: c.heads,
            positions: &posd,
            cos_sin: &csd,
            q_norm: c.norm.then_some(&qwd),
            k_norm: c.norm.then_some(&kwd),
            eps: 1e-6,
        };
        ops::qk_norm_rope(gpu, &mut qkd, &args).unwrap();
        let got = qkd.to_host::<T>(gpu).unwrap();
        let what = format!("qk_norm_rope {dtype} T={} {:?} norm={}", c.tokens, c.heads, c.norm);
        let in_head = |col: usize| {
            let h = c.heads;
            let q = col >= h.q_col && col < h.q_col + h.q_heads * d;
            let k = col >= h.k_col && col < h.k_col + h.k_heads * d;
            (q || k).then(|| {
                if q {
                    (col - h.q_col) / d * d + h.q_col
                } else {
                    (col - h.k_col) / d * d + h.k_col
                }
            })
        };
        for t in 0..c.tokens {
            for col in 0..c.width {
                let i = t * c.width + col;
                let (g, w) = (got[i].to_f32(), want[i].to_f32());
                match in_head(col) {
                    // Columns outside q and k (v, padding) are untouched.
                    None => assert_eq!(g.to_bits(), qk[i].to_f32().to_bits(), "{what}: column {col} changed"),
                    Some(start) => {
                        let head = &want[t * c.width + start..t * c.width + start + d];
                        let scale = head.iter().map(|v| v.to_f32().abs()).fold(0.0, f32::max);
                        assert!(
                            (g - w).abs() <= tol * scale + 1e-6,
                            "{what}: token {t} column {col}: gpu {g} vs reference {w} (head max {scale})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn qk_norm_rope_matches_reference() {
    if let Some(gpu) = gpu_or_skip("qk_norm_rope_matches_reference") {
        check_rope::<bf16>(&gpu);
        check_rope::<f16>(&gpu);
        check_rope::<f32>(&gpu);
    }
}

// ---------------------------------------------------------------- embedding

fn check_embedding<T: FloatElem>(gpu: &Gpu) {
    for (seed, &(tokens, vocab, hidden)) in [
        (1, 1, 1),
        (5, 10, 7),
        (17, 1000, 64),
        (33, 5000, 4096),
        (3, 100, 5120),
        (9, 50, 13),
        (0, 10, 8),
    ]
    .iter()
    .enumerate()
    {
        let table: Vec<T> = cast(&random_f32(vocab * hidden, 1000 + seed as u64, 3.0));
        let mut ids = random_index(tokens, 1100 + seed as u64, vocab);
        if tokens >= 5 {
            ids[0] = vocab as i32 - 1;
            ids[3] = vocab as i32;
            ids[4] = -1;
        }
        let (want, bad) = reference::embedding(&ids, &table, hidden);
        let idd = DeviceTensor::from_host(gpu, &ids, &[tokens]).unwrap();
        let td = DeviceTensor::from_host(gpu, &table, &[vocab, hidden]).unwrap();
        let what = format!("embedding {} [{tokens}] from [{vocab}, {hidden}]", T::DTYPE);
        let mut out = DeviceTensor::zeros(gpu, &[tokens, hidden], T::DTYPE).unwrap();
        let mut flag = DeviceTensor::zeros(gpu, &[1], DType::I32).unwrap();
        ops::embedding_into(gpu, &idd, &td, &mut out, Some(&mut flag)).unwrap();
        assert_eq!(bits(&out.to_host::<T>(gpu).unwrap()), bits(&want), "{what}");
        let f = flag.to_host::<i32>(gpu).unwrap()[0];
        if bad.is_empty() {
            assert_eq!(f, 0, "{what}: flag set without a bad id");
        } else {
            assert!(
                f > 0 && bad.contains(&(f as usize - 1)),
                "{what}: flag {f}, bad ids at {bad:?}"
            );
        }
        if bad.is_empty() {
            let plain = ops::embedding(gpu, &idd, &td).unwrap().to_host::<T>(gpu).unwrap();
            assert_eq!(bits(&plain), bits(&want), "{what} (allocating form)");
        }
    }
}

#[test]
fn embedding_matches_reference() {
    if let Some(gpu) = gpu_or_skip("embedding_matches_reference") {
        check_embedding::<bf16>(&gpu);
        check_embedding::<f16>(&gpu);
        check_embedding::<f32>(&gpu);
    }
}

// ---------------------------------------------------------------- scatter_rows

/// Replace is a copy (bit exact); add rounds f32(a + b) once on both sides
/// (bit exact too). Shapes: packed and scalar rows, rows split over blocks,
/// an out-of-range row that must be skipped and reported.
fn check_scatter<T: FloatElem>(gpu: &Gpu) {
    for (seed, &(n, dst_rows, hidden)) in [(1, 1, 1), (3, 10, 7), (17, 40, 64), (5, 9, 4096), (4, 6, 13)]
        .iter()
        .enumerate()
    {
        for add in [false, true] {
            let mut dst: Vec<T> = cast(&random_f32(dst_rows * hidden, 2000 + seed as u64, 2.0));
            let src: Vec<T> = cast(&random_f32((n + 1) * hidden, 2100 + seed as u64, 2.0));
            // Distinct rows in a scattered order, plus one out of range when n > 2.
            let mut seen = std::collections::HashSet::new();
            let mut rows: Vec<i32> = (0..n)
                .map(|i| ((i * 7 + seed) % dst_rows) as i32)
                .filter(|r| seen.insert(*r))
                .collect();
            if n > 2 {
                rows.push(dst_rows as i32 + 3);
            }
            let src = &src[..rows.len() * hidden];
            let what = format!(
                "scatter_rows {} add={add} [{}] into [{dst_rows}, {hidden}]",
                T::DTYPE,
                rows.len()
            );
            let mut dd = DeviceTensor::from_host(gpu, &dst, &[dst_rows, hidden]).unwrap();
            let sd = DeviceTensor::from_host(gpu, src, &[rows.len(), hidden]).unwrap();
            let rd = DeviceTensor::from_host(gpu, &rows, &[rows.len()]).unwrap();
            let mut flag = DeviceTensor::zeros(gpu, &[1], DType::I32).unwrap();
            let mode = if add { ops::Scatter::Add } else { ops::Scatter::Replace };
            ops::scatter_rows_into(gpu, &rd, &sd, &mut dd, mode, Some(&mut flag)).unwrap();
            let bad = reference::scatter_rows(&mut dst, &rows, src, hidden, add);
            assert_eq!(bits(&dd.to_host::<T>(gpu).unwrap()), bits(&dst), "{what}");
            let f = flag.to_host::<i32>(gpu).unwrap()[0];
            match bad.as_slice() {
                [] => assert_eq!(f, 0, "{what}: flag set without a bad row"),
                [b] => assert_eq!(f as usize, b + 1, "{what}"),
                more => panic!("{what}: several bad rows {more:?}"),
            }
        }
    }
}

#[test]
fn scatter_rows_matches_reference() {
    if let Some(gpu) = gpu_or_skip("scatter_rows_matches_reference") {
        check_scatter::<bf16>(&gpu);
        check_scatter::<f16>(&gpu);
        check_scatter::<f32>(&gpu);
    }
}

// ---------------------------------------------------------- qk_norm_rope_store

/// The fused kernel runs the same per-head code as `qk_norm_rope` (checked
/// against the reference above) and then stores, so it must equal
/// `qk_norm_rope` + `kv_store` + a q copy bit for bit, including skipped
/// (out-of-pool) slots and clamped positions.
fn check_rope_store<T: FloatElem>(gpu: &Gpu) {
    let max_pos = 4096;
    let packed = rope_cases()
        .into_iter()
        .filter(|c| c.heads == QkHeads::packed_qkv(c.heads.q_heads, c.heads.k_heads, c.heads.head_dim));
    for (seed, c) in packed.enumerate() {
        let seed = seed as u64;
        let (t, h, d) = (c.tokens, c.heads, c.heads.head_dim);
        let (hq, hk) = (h.q_heads, h.k_heads);
        let slots = t + 7;
        let cache = ops::rope_cos_sin_cache(d, max_pos, 1e6);
        let qkv: Vec<T> = cast(&random_f32(t * c.width, 2600 + seed, 4.0));
        let mut pos = random_index(t, 2700 + seed, max_pos);
        // Distinct slots: two tokens writing one slot would race.
        let mut loc: Vec<i32> = (0..t as i32).map(|i| slots as i32 - 1 - i).collect();
        if t >= 3 {
            pos[1] = max_pos as i32 + 5;
            loc[2] = -1;
        }
        let pool0: Vec<T> = cast(&random_f32(slots * hk * d, 2800 + seed, 1.0));
        let weights: Vec<T> = cast(&random_f32(2 * d, 2900 + seed, 2.0));
        let up = |v: &[T], shape: &[usize]| DeviceTensor::from_host(gpu, v, shape).unwrap();
        let posd = DeviceTensor::from_host(gpu, &pos, &[t]).unwrap();
        let locd = DeviceTensor::from_host(gpu, &loc, &[t]).unwrap();
        let csd = DeviceTensor::from_host(gpu, &cache, &[max_pos, d]).unwrap();
        let (qwd, kwd) = (up(&weights[..d], &[d]), up(&weights[d..], &[d]));
        let args = ops::QkNormRope {
            heads: h,
            positions: &posd,
            cos_sin: &csd,
            q_norm: c.norm.then_some(&qwd),
            k_norm: c.norm.then_some(&kwd),
            eps: 1e-6,
        };
        // Unfused: rotate in place, store k/v, copy q out.
        let mut qkv_d = up(&qkv, &[t, c.width]);
        let (mut k1, mut v1) = (up(&pool0, &[slots, hk, d]), up(&pool0, &[slots, hk, d]));
        ops::qk_norm_rope(gpu, &mut qkv_d, &args).unwrap();
        let k = ops::RowSpan {
            tensor: &qkv_d,
            col: hq * d,
        };
        let v = ops::RowSpan {
            tensor: &qkv_d,
            col: (hq + hk) * d,
        };
        ops::kv_store(gpu, k, v, &locd, &mut k1, &mut v1).unwrap();
        let rotated = qkv_d.to_host::<T>(gpu).unwrap();
        let want_q: Vec<T> = (0..t)
            .flat_map(|i| rotated[i * c.width..i * c.width + hq * d].to_vec())
            .collect();
        // Fused.
        let src = up(&qkv, &[t, c.width]);
        let mut q2 = DeviceTensor::zeros(gpu, &[t, hq, d], T::DTYPE).unwrap();
        let (mut k2, mut v2) = (up(&pool0, &[slots, hk, d]), up(&pool0, &[slots, hk, d]));
        let out = ops::RopeStoreOut {
            q_out: &mut q2,
            k_cache: &mut k2,
            v_cache: &mut v2,
            out_loc: &locd,
        };
        ops::qk_norm_rope_store(gpu, &src, &args, out).unwrap();
        let what = format!("qk_norm_rope_store {} T={t} {h:?} norm={}", T::DTYPE, c.norm);
        assert_eq!(bits(&q2.to_host::<T>(gpu).unwrap()), bits(&want_q), "{what}: q");
        assert_eq!(
            bits(&k2.to_host::<T>(gpu).unwrap()),
            bits(&k1.to_host::<T>(gpu).unwrap()),
            "{what}: k cache"
        );
        assert_eq!(
            bits(&v2.to_host::<T>(gpu).unwrap()),
            bits(&v1.to_host::<T>(gpu).unwrap()),
            "{what}: v cache"
        );
        assert_eq!(
            bits(&src.to_host::<T>(gpu).unwrap()),
            bits(&qkv),
            "{what}: qkv must stay unchanged"
        );
    }
}

#[test]
fn qk_norm_rope_store_equals_the_unfused_ops() {
    if let Some(gpu) = gpu_or_skip("qk_norm_rope_store_equals_the_unfused_ops") {
        check_rope_store::<bf16>(&gpu);
        check_rope_store::<f16>(&gpu);
        check_rope_store::<f32>(&gpu);
    }
}

// ---------------------------------------------------------------- kv_store

fn check_kv_store<T: FloatElem>(gpu: &Gpu) {
    // (tokens, q heads, kv heads, head dim, slots): packed qkv sources;
    // D = 7 and Hq * D = 21 take the element-wise path.
    for (seed, &(tokens, hq, hk, d, slots)) in [
        (1, 1, 1, 64, 4),
        (5, 4, 2, 128, 64),
        (37, 32, 8, 128, 100),
        (3, 3, 1, 7, 10),
        (8, 2, 2, 256, 8),
        (0, 2, 1, 64, 4),
    ]
    .iter()
    .enumerate()
    {
        let seed = seed as u64;
        let width = (hq + 2 * hk) * d;
        let row = hk * d;
        let qkv: Vec<T> = cast(&random_f32(tokens * width, 1200 + seed, 3.0));
        // Distinct slots (a permutation prefix), two of them invalid.
        let mut loc: Vec<i32> = (0..slots as i32).collect();
        let r = random_index(slots, 1300 + seed, slots);
        for j in (1..slots).rev() {
            loc.swap(j, r[j] as usize % (j + 1));
        }
        loc.truncate(tokens);
        if tokens >= 5 {
            loc[1] = -1;
            loc[4] = slots as i32;
        }
        let kc0: Vec<T> = cast(&random_f32(slots * row, 1400 + seed, 1.0));
        let vc0: Vec<T> = cast(&random_f32(slots * row, 1500 + seed, 1.0));
        let (mut want_k, mut want_v) = (kc0.clone(), vc0.clone());
        reference::kv_store(&mut want_k, row, &qkv, width, hq * d, &loc);
        reference::kv_store(&mut want_v, row, &qkv, width, (hq + hk) * d, &loc);

        let qd = DeviceTensor::from_host(gpu, &qkv, &[tokens, width]).unwrap();
        let ld = DeviceTensor::from_host(gpu, &loc, &[tokens]).unwrap();
        let mut kc = DeviceTensor::from_host(gpu, &kc0, &[slots, hk, d]).unwrap();
        let mut vc = DeviceTensor::from_host(gpu, &vc0, &[slots, hk, d]).unwrap();
        let k = ops::RowSpan {
            tensor: &qd,
            col: hq * d,
        };
        let v = ops::RowSpan {
            tensor: &qd,
            col: (hq + hk) * d,
        };
        ops::kv_store(gpu, k, v, &ld, &mut kc, &mut vc).unwrap();
        let what = format!("kv_store {} T={tokens} Hq={hq} Hk={hk} D={d} slots={slots}", T::DTYPE);
        assert_eq!(bits(&kc.to_host::<T>(gpu).unwrap()), bits(&want_k), "{what}: k_cache");
        assert_eq!(bits(&vc.to_host::<T>(gpu).unwrap()), bits(&want_v), "{what}: v_cache");

        // Contiguous [T, Hk, D] sources (column 0).
        let kk: Vec<T> = cast(&random_f32(tokens * row, 1600 + seed, 3.0));
        let vv: Vec<T> = cast(&random_f32(tokens * row, 1700 + seed, 3.0));
        reference::kv_store(&mut want_k, row, &kk, row, 0, &loc);
        reference::kv_store(&mut want_v, row, &vv, row, 0, &loc);
        let kd = DeviceTensor::from_host(gpu, &kk, &[tokens, hk, d]).unwrap();
        let vd = DeviceTensor::from_host(gpu, &vv, &[tokens, hk, d]).unwrap();
        let k = ops::RowSpan { tensor: &kd, col: 0 };
        let v = ops::RowSpan { tensor: &vd, col: 0 };
        ops::kv_store(gpu, k, v, &ld, &mut kc, &mut vc).unwrap();
        assert_eq!(
            bits(&kc.to_host::<T>(gpu).unwrap()),
            bits(&want_k),
            "{what}: k_cache (contiguous)"
        );
        assert_eq!(
            bits(&vc.to_host::<T>(gpu).unwrap()),
            bits(&want_v),
            "{what}: v_cache (contiguous)"
        );
    }
}

#[test]
fn kv_store_matches_reference() {
    if let Some(gpu) = gpu_or_skip("kv_store_matches_reference") {
        check_kv_store::<bf16>(&gpu);
        check_kv_store::<f16>(&gpu);
        check_kv_store::<f32>(&gpu);
    }
}

// ---------------------------------------------------------------- argmax

fn check_argmax<T: FloatElem>(gpu: &Gpu) {
    for (seed, &(batch, vocab)) in [(1, 1), (3, 5), (7, 1000), (2, 32_000), (5, 151_936), (0, 10)]
        .iter()
        .enumerate()
    {
        let mut logits: Vec<T> = cast(&random_f32(batch * vocab, 1800 + seed as u64, 12.0));
        if batch >= 3 && vocab >= 5 {
            // A tie (lowest index wins), a NaN, and a -inf.
            logits[vocab + 1] = T::from_f32(100.0);
            logits[vocab + 3] = T::from_f32(100.0);
            logits[2 * vocab] = T::from_f32(f32::NAN);
            logits[2 * vocab + 1] = T::from_f32(f32::NEG_INFINITY);
        }
        let want = reference::argmax(&logits, vocab);
        let what = format!("argmax {} [{batch}, {vocab}]", T::DTYPE);
        let ld = DeviceTensor::from_host(gpu, &logits, &[batch, vocab]).unwrap();
        let mut ids = DeviceTensor::zeros(gpu, &[batch], DType::I32).unwrap();
        let mut lps = DeviceTensor::zeros(gpu, &[batch], DType::F32).unwrap();
        ops::argmax_into(gpu, &ld, &mut ids, Some(&mut lps)).unwrap();
        let got_ids = ids.to_host::<i32>(gpu).unwrap();
        let got_lp = lps.to_host::<f32>(gpu).unwrap();
        assert_eq!(got_ids, want.iter().map(|w| w.0).collect::<Vec<_>>(), "{what}: ids");
        for (b, (g, w)) in got_lp.iter().zip(&want).enumerate() {
            // A row holding a NaN has a NaN softmax sum: both sides say NaN.
            assert!(
                (g.is_nan() && w.1.is_nan()) || (g - w.1).abs() <= 1e-4 + 1e-5 * w.1.abs(),
                "{what}: row {b} logprob gpu {g} vs reference {}",
                w.1
            );
        }
        assert_eq!(
            ops::argmax(gpu, &ld).unwrap().to_host::<i32>(gpu).unwrap(),
            got_ids,
            "{what}: plain"
        );

        // Log-probabilities of given (e.g. sampled) ids, one out of range.
        let mut pick = random_index(batch, 1900 + seed as u64, vocab);
        if batch >= 2 {
            pick[1] = vocab as i32;
        }
        let want = reference::token_logprobs(&logits, vocab, &pick);
        let pd = DeviceTensor::from_host(gpu, &pick, &[batch]).unwrap();
        let got = ops::token_logprobs(gpu, &ld, &pd).unwrap().to_host::<f32>(gpu).unwrap();
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            let ok = (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-4 + 1e-5 * w.abs();
            assert!(ok, "{what}: token_logprob row {b}: gpu {g} vs reference {w}");
        }
    }
}

#[test]
fn argmax_and_logprobs_match_reference() {
    if let Some(gpu) = gpu_or_skip("argmax_and_logprobs_match_reference") {
        check_argmax::<f32>(&gpu);
        check_argmax::<bf16>(&gpu);
        check_argmax::<f16>(&gpu);
    }
}

// ---------------------------------------------------------------- bad input

#[test]
fn bad_input_is_an_error_not_a_crash() {
    let Some(gpu) = gpu_or_skip("bad_input_is_an_error_not_a_crash") else {
        return;
    };
    let x = DeviceTensor::from_host(&gpu, &[bf16::ONE; 14], &[2, 7]).unwrap();
    assert!(matches!(
        ops::silu_and_mul(&gpu, &x),
        Err(Error::ShapeMismatch { arg: "x", .. })
    ));
    let x = DeviceTensor::from_host(&gpu, &[bf16::ONE; 16], &[2, 8]).unwrap();
    let mut wrong = DeviceTensor::zeros(&gpu, &[2, 8], DType::BF16).unwrap();
    assert!(matches!(
        ops::silu_and_mul_into(&gpu, &x, &mut wrong),
        Err(Error::ShapeMismatch { arg: "out", .. })
    ));
    let mut wrong = DeviceTensor::zeros(&gpu, &[2, 4], DType::F16).unwrap();
    assert!(matches!(
        ops::silu_and_mul_into(&gpu, &x, &mut wrong),
        Err(Error::DTypeMismatch { arg: "out", .. })
    ));

    let mut qk = DeviceTensor::zeros(&gpu, &[2, 384], DType::BF16).unwrap();
    let pos = DeviceTensor::from_host(&gpu, &[0i32, 1], &[2]).unwrap();
    let cs = DeviceTensor::from_host(&gpu, &ops::rope_cos_sin_cache(64, 8, 1e4), &[8, 64]).unwrap();
    let cs_bf = DeviceTensor::zeros(&gpu, &[8, 64], DType::BF16).unwrap();
    let args = ops::QkNormRope {
        heads: QkHeads::packed_qkv(4, 2, 64),
        positions: &pos,
        cos_sin: &cs_bf,
        q_norm: None,
        k_norm: None,
        eps: 1e-6,
    };
    assert!(matches!(
        ops::qk_norm_rope(&gpu, &mut qk, &args),
        Err(Error::DTypeMismatch { arg: "cos_sin", .. })
    ));
    let args = ops::QkNormRope {
        heads: QkHeads::packed_qkv(4, 3, 64),
        cos_sin: &cs,
        ..args
    };
    assert!(matches!(
        ops::qk_norm_rope(&gpu, &mut qk, &args),
        Err(Error::InvalidArgument { arg: "k_heads", .. })
    ));

    let table = DeviceTensor::zeros(&gpu, &[10, 8], DType::BF16).unwrap();
    let ids_f = DeviceTensor::zeros(&gpu, &[3], DType::F32).unwrap();
    assert!(matches!(
        ops::embedding(&gpu, &ids_f, &table),
        Err(Error::DTypeMismatch { arg: "ids", .. })
    ));

    let qkv = DeviceTensor::zeros(&gpu, &[2, 4 * 64], DType::BF16).unwrap();
    let loc = DeviceTensor::from_host(&gpu, &[0i32, 1, 2], &[3]).unwrap();
    let mut kc = DeviceTensor::zeros(&gpu, &[4, 1, 64], DType::BF16).unwrap();
    let mut vc = DeviceTensor::zeros(&gpu, &[4, 1, 64], DType::BF16).unwrap();
    let span = ops::RowSpan { tensor: &qkv, col: 0 };
    assert!(matches!(
        ops::kv_store(&gpu, span, span, &loc, &mut kc, &mut vc),
        Err(Error::ShapeMismatch { arg: "out_loc", .. })
    ));
    let past = ops::RowSpan {
        tensor: &qkv,
        col: 3 * 64 + 1,
    };
    let loc2 = DeviceTensor::from_host(&gpu, &[0i32, 1], &[2]).unwrap();
    assert!(matches!(
        ops::kv_store(&gpu, span, past, &loc2, &mut kc, &mut vc),
        Err(Error::ShapeMismatch { arg: "v", .. })
    ));

    let logits = DeviceTensor::zeros(&gpu, &[2, 5], DType::F32).unwrap();
    let mut ids = DeviceTensor::zeros(&gpu, &[3], DType::I32).unwrap();
    assert!(matches!(
        ops::argmax_into(&gpu, &logits, &mut ids, None),
        Err(Error::ShapeMismatch { arg: "ids", .. })
    ));
    // The device is still healthy afterwards.
    ops::argmax(&gpu, &logits).unwrap();
    gpu.synchronize().unwrap();
}

/// Host-side validation needs no device: these run on every machine.
#[test]
fn validation_rejects_bad_shapes_without_a_gpu() {
    let bf = DType::BF16;
    assert!(ops::validate_silu_and_mul(Meta::new(&[4, 9], bf)).is_err());
    assert!(ops::validate_silu_and_mul(Meta::new(&[4, 8], DType::I8)).is_err());
    let pos = [3];
    let cs = [16, 128];
    let heads = QkHeads::packed_qkv(2, 1, 128);
    let rope = |qk: &[usize], h: QkHeads, w: Option<Meta>| {
        ops::validate_qk_norm_rope(
            Meta::new(qk, bf),
            h,
            Meta::new(&pos, DType::I32),
            Meta::new(&cs, DType::F32),
            w,
            None,
            1e-6,
        )
    };
    assert_eq!(rope(&[3, 512], heads, None).unwrap(), (3, 512));
    assert!(rope(&[3, 383], heads, None).is_err());
    assert!(rope(&[3, 512], heads, Some(Meta::new(&[128], DType::F16))).is_err());
    assert!(rope(&[3, 512], QkHeads { head_dim: 127, ..heads }, None).is_err());
    assert!(ops::validate_embedding(Meta::new(&[3], DType::I32), Meta::new(&[10], bf)).is_err());
    assert!(ops::validate_token_ids(&[0, 9, 10], 10).is_err());
    let pool = [8, 2, 4];
    assert!(ops::validate_kv_store(
        (Meta::new(&[2, 16], bf), 0),
        (Meta::new(&[2, 16], bf), 8),
        Meta::new(&[2], DType::I32),
        Meta::new(&pool, bf),
        Meta::new(&pool, DType::F16),
    )
    .is_err());
    assert!(ops::validate_logits(Meta::new(&[2, 3, 4], DType::F32)).is_err());
    assert!(ops::validate_logits(Meta::new(&[2, 4], DType::I32)).is_err());
}

#[test]
fn every_new_symbol_resolves() {
    let Some(gpu) = gpu_or_skip("every_new_symbol_resolves") else {
        return;
    };
    use mllm_kernel::registry::{KernelBuild, KernelId};
    for id in [
        KernelId::SiluAndMul,
        KernelId::QkNormRope,
        KernelId::Embedding,
        KernelId::KvStore,
        KernelId::Argmax,
    ] {
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
