//! Dequantization of ggml block formats to `f32`, following the block layouts
//! and formulas of ggml's reference `dequantize_row_*` functions.

use half::{bf16, f16};
use rayon::prelude::*;

use super::{GgmlType, GgufError, Result};

/// Tensors with at least this many elements are dequantized in parallel.
const PAR_THRESHOLD: usize = 1 << 16;
/// Elements per parallel task; a multiple of every supported block size.
const CHUNK_ELEMS: usize = 1 << 14;

/// A kernel converts a run of whole blocks (`src`) into `dst`.
type Kernel = fn(&[u8], &mut [f32]);

fn kernel(ty: GgmlType) -> Option<Kernel> {
    Some(match ty {
        GgmlType::F32 => deq_f32,
        GgmlType::F16 => deq_f16,
        GgmlType::BF16 => deq_bf16,
        GgmlType::Q8_0 => deq_q8_0,
        GgmlType::Q4_0 => deq_q4_0,
        GgmlType::Q4_1 => deq_q4_1,
        GgmlType::Q4_K => deq_q4_k,
        GgmlType::Q6_K => deq_q6_k,
        _ => return None,
    })
}

/// Dequantizes `n_elements` values of type `ty` from `bytes` (which must be
/// exactly [`GgmlType::bytes_for`]`(n_elements)` long).
///
/// ```
/// use mllm_engine::loader::gguf::{dequantize, GgmlType};
///
/// let bytes = [0x00, 0x3c, 0x00, 0xc0]; // f16 1.0, -2.0
/// assert_eq!(dequantize(GgmlType::F16, &bytes, 2).unwrap(), vec![1.0, -2.0]);
/// ```
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    if !ty.can_dequantize() {
        return Err(GgufError::UnsupportedType {
            tensor: "<unnamed>".to_string(),
            ggml_type: ty,
        });
    }
    let mut out = vec![0f32; n_elements];
    dequantize_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// Dequantizes `src` (whole blocks of `ty`) into `dst`.
pub(super) fn dequantize_into(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let size_err = |expected| GgufError::DataSize {
        ggml_type: ty,
        n_elements: dst.len(),
        expected,
        actual: src.len(),
    };
    let Some(f) = kernel(ty) else {
        return Err(GgufError::UnsupportedType {
            tensor: "<unnamed>".to_string(),
            ggml_type: ty,
        });
    };
    let bs = ty.block_size();
    let ts = ty.type_size();
    if !dst.len().is_multiple_of(bs) {
        return Err(size_err(0));
    }
    let expected = dst.len() / bs * ts;
    if src.len() != expected {
        return Err(size_err(expected));
    }
    if dst.len() < PAR_THRESHOLD {
        f(src, dst);
    } else {
        let src_chunk = CHUNK_ELEMS / bs * ts;
        src.par_chunks(src_chunk)
            .zip(dst.par_chunks_mut(CHUNK_ELEMS))
            .for_each(|(s, d)| f(s, d));
    }
    Ok(())
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn deq_f32(src: &[u8], dst: &mut [f32]) {
    for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn deq_f16(src: &[u8], dst: &mut [f32]) {
    for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

fn deq_bf16(src: &[u8], dst: &mut [f32]) {
    for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

/// `block_q8_0`: f16 d, 32 × i8; y = q·d.
fn deq_q8_0(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(blk, 0);
        for (o, &q) in y.iter_mut().zip(&blk[2..34]) {
            *o = f32::from(q as i8) * d;
        }
    }
}

/// `block_q4_0`: f16 d, 16 bytes; y[j] = (lo(q[j]) − 8)·d, y[j+16] = (hi(q[j]) − 8)·d.
fn deq_q4_0(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(blk, 0);
        let (lo, hi) = y.split_at_mut(16);
        for ((a, b), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[2..18]) {
            *a = f32::from(i16::from(q & 0x0F) - 8) * d;
            *b = f32::from(i16::from(q >> 4) - 8) * d;
        }
    }
}

/// `block_q4_1`: f16 d, f16 m, 16 bytes; y[j] = lo(q[j])·d + m, y[j+16] = hi(q[j])·d + m.
fn deq_q4_1(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let (lo, hi) = y.split_at_mut(16);
        for ((a, b), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[4..20]) {
            *a = f32::from(q & 0x0F) * d + m;
            *b = f32::from(q >> 4) * d + m;
        }
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8)
/// from the 12 packed bytes of a Q4_K/Q5_K super-block.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc, m)
    }
}

/// `block_q4_K`: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of
/// nibbles. Each 64-element group uses 32 bytes: low nibbles are sub-block 2g
/// and high nibbles sub-block 2g+1; y = d·sc·q − dmin·m.
fn deq_q4_k(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(256)) {
        let d = f16_at(blk, 0);
        let dmin = f16_at(blk, 2);
        let scales = &blk[4..16];
        let qs = &blk[16..144];
        for (g, (q, yg)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * g, scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
            let (lo, hi) = yg.split_at_mut(32);
            for ((a, b), &qb) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
                *a = d1 * f32::from(qb & 0x0F) - m1;
                *b = d2 * f32::from(qb >> 4) - m2;
            }
        }
    }
}

/// `block_q6_K`: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16 i8
/// scales (one per 16 elements), f16 d; y = d·sc·(q − 32).
fn deq_q6_k(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(256)) {
        let d = f16_at(blk, 208);
        for n in 0..2 {
            let ql = &blk[64 * n..64 * n + 64];
            let qh = &blk[128 + 32 * n..128 + 32 * n + 32];
            let sc = &blk[192 + 8 * n..192 + 8 * n + 8];
            let y = &mut y[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let h = qh[l];
                let q1 = i16::from((ql[l] & 0x0F) | ((h & 3) << 4)) - 32;
                let q2 = i16::from((ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4)) - 32;
                let q3 = i16::from((ql[l] >> 4) | (((h >> 4) & 3) << 4)) - 32;
                let q4 = i16::from((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32;
                let s = |k: usize| f32::from(sc[is + k] as i8);
                y[l] = d * s(0) * f32::from(q1);
                y[l + 32] = d * s(2) * f32::from(q2);
                y[l + 64] = d * s(4) * f32::from(q3);
                y[l + 96] = d * s(6) * f32::from(q4);
            }
        }
    }
}
