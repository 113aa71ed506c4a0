//! CPU compute ops. All compute in f32; inputs may be any float dtype, outputs are f32
//! (except [`Tensor::argmax_last`], which returns i64 indices, and [`cat`], which keeps the dtype).

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::{DType, Result, Tensor, TensorError};

fn require_float(op: &'static str, arg: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(TensorError::DType {
            op,
            arg,
            expected: "a float dtype (f32, bf16, f16)".into(),
            got: t.dtype(),
        });
    }
    Ok(())
}

fn last_dim(op: &'static str, arg: &'static str, t: &Tensor) -> Result<usize> {
    match t.shape().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => Err(TensorError::Shape {
            op,
            arg,
            expected: "rank >= 1 with a non-empty last dim".into(),
            got: t.shape().to_vec(),
        }),
    }
}

/// Float input converted to f32, borrowing when it already is f32.
fn f32_data<'a>(t: &'a Tensor, buf: &'a mut Vec<f32>) -> Result<&'a [f32]> {
    if t.dtype() == DType::F32 {
        return t.as_slice::<f32>();
    }
    *buf = t.to_f32_vec()?;
    Ok(buf)
}

/// Raw pointer that may be shared across rayon tasks writing disjoint regions.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: only used to write disjoint output regions from parallel tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// Method access makes closures capture the whole (Send) wrapper, not the raw field.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// bf16 values as their raw bits.
pub(super) fn bf16_bits(s: &[bf16]) -> &[u16] {
    // SAFETY: bf16 is a transparent wrapper around u16 (same size and alignment).
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u16, s.len()) }
}

/// Sizes of `x · wᵀ` with `x` `[..., K]` and `w` `[N, K]`, both float.
pub(super) struct NtDims {
    /// Rows of `x` (product of its leading dims).
    pub m: usize,
    /// Rows of `w`.
    pub n: usize,
    /// The shared inner dim.
    pub k: usize,
    /// `x`'s shape with the last dim replaced by `N`.
    pub out_shape: Vec<usize>,
}

/// Checks dtypes and shapes of `x · wᵀ` for `op`.
pub(super) fn nt_dims(op: &'static str, x: &Tensor, w: &Tensor) -> Result<NtDims> {
    require_float(op, "x", x)?;
    require_float(op, "w", w)?;
    let k = match (x.shape().last(), w.shape()) {
        (Some(&k), &[_, wk]) if wk == k => k,
        _ => {
            return Err(TensorError::Shape {
                op,
                arg: "w",
                expected: format!("[N, K] with K = last dim of x {:?}", x.shape()),
                got: w.shape().to_vec(),
            })
        }
    };
    let n = w.shape()[0];
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap() = n;
    Ok(NtDims {
        m: x.numel().checked_div(k).unwrap_or(0),
        n,
        k,
        out_shape,
    })
}

/// Elements per rayon task of elementwise ops (smaller inputs run on one thread).
const ELEMS_PER_TASK: usize = 1 << 14;

/// Rows of `w` per gemm block (each converted to f32 independently when `w` is bf16/f16).
const N_BLOCK: usize = 64;

/// `x · wᵀ`: `x` is `[..., K]` (any float dtype, typically f32), `w` is `[N, K]` (f32, bf16 or f16,
/// kept in its dtype in memory; converted to f32 one block of rows at a time). Returns f32 `[..., N]`.
/// Blocks of `N` run in parallel on rayon, each with a single-threaded `gemm` call.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "matmul_t";
    require_float(OP, "x", x)?;
    require_float(OP, "w", w)?;
    if x.rank() < 1 {
        return Err(TensorError::Shape {
            op: OP,
            arg: "x",
            expected: "[..., K]".into(),
            got: x.shape().to_vec(),
        });
    }
    if w.rank() != 2 {
        return Err(TensorError::Shape {
            op: OP,
            arg: "w",
            expected: "[N, K]".into(),
            got: w.shape().to_vec(),
        });
    }
    let k = *x.shape().last().unwrap();
    let (n, wk) = (w.shape()[0], w.shape()[1]);
    if wk != k {
        return Err(TensorError::Shape {
            op: OP,
            arg: "w",
            expected: format!("[N, {k}] (K of x)"),
            got: w.shape().to_vec(),
        });
    }
    let m = x.numel() / k.max(1);
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap() = n;
    if m == 0 || n == 0 || k == 0 {
        return Ok(Tensor::f32_filled(&out_shape, |_| {}));
    }
    let mut xbuf = Vec::new();
    let xs = f32_data(x, &mut xbuf)?;
    let wdtype = w.dtype();
    let wf32: &[f32] = if wdtype == DType::F32 {
        w.as_slice::<f32>()?
    } else {
        &[]
    };
    let wb16: &[bf16] = if wdtype == DType::BF16 {
        w.as_slice::<bf16>()?
    } else {
        &[]
    };
    let wf16: &[f16] = if wdtype == DType::F16 {
        w.as_slice::<f16>()?
    } else {
        &[]
    };
    Ok(Tensor::f32_filled(&out_shape, |out| {
        let dst = SendPtr(out.as_mut_ptr());
        let blocks = n.div_ceil(N_BLOCK);
        (0..blocks).into_par_iter().for_each(|b| {
            let n0 = b * N_BLOCK;
            let nb = N_BLOCK.min(n - n0);
            let range = n0 * k..(n0 + nb) * k;
            let mut conv = Vec::new();
            let wblk: &[f32] = match wdtype {
                DType::F32 => &wf32[range],
                DType::BF16 => {
                    conv.resize(nb * k, 0f32);
                    wb16[range].convert_to_f32_slice(&mut conv);
                    &conv
                }
                _ => {
                    conv.resize(nb * k, 0f32);
                    wf16[range].convert_to_f32_slice(&mut conv);
                    &conv
                }
            };
            // SAFETY: dst is [m, n] row-major; this block writes only columns n0..n0+nb, disjoint from
            // other blocks. lhs is x [m, k] row-major; rhs[kk][j] = wblk[j * k + kk] (wᵀ block, k × nb).
            unsafe {
                gemm::gemm(
                    m,
                    nb,
                    k,
                    dst.get().add(n0),
                    1,
                    n as isize,
                    false,
                    xs.as_ptr(),
                    1,
                    k as isize,
                    wblk.as_ptr(),
                    k as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    }))
}

fn binary(op: &'static str, a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
    require_float(op, "a", a)?;
    require_float(op, "b", b)?;
    let (sa, sb) = (a.shape(), b.shape());
    if sb.len() > sa.len() || sa[sa.len() - sb.len()..] != *sb {
        return Err(TensorError::Shape {
            op,
            arg: "b",
            expected: format!("{sa:?} or a suffix of it (broadcast over leading dims)"),
            got: sb.to_vec(),
        });
    }
    let mut ab = Vec::new();
    let mut bb = Vec::new();
    let av = f32_data(a, &mut ab)?;
    let bv = f32_data(b, &mut bb)?;
    Ok(Tensor::f32_filled(sa, |out| {
        if !bv.is_empty() {
            let chunk = bv.len() * (ELEMS_PER_TASK / bv.len()).max(1);
            out.par_chunks_mut(chunk).zip(av.par_chunks(chunk)).for_each(|(o, x)| {
                for (o, x) in o.chunks_mut(bv.len()).zip(x.chunks(bv.len())) {
                    for ((o, &x), &y) in o.iter_mut().zip(x).zip(bv) {
                        *o = f(x, y);
                    }
                }
            });
        }
    }))
}

/// Rows [`Tensor::rms_norm`] sums together.
const NORM_ROWS: usize = 8;

/// `Σ x²` of each `d`-long row of `rows` (up to [`NORM_ROWS`] of them; the rest stay 0), each
/// summed in order (the numerics every caller has been measured with) but [`NORM_ROWS`] rows at
/// once: one row's running sum is a serial chain of dependent adds, eight of them fill the
/// pipeline.
fn sum_squares_per_row(rows: &[f32], d: usize) -> [f32; NORM_ROWS] {
    let mut ss = [0f32; NORM_ROWS];
    if rows.len() < NORM_ROWS * d {
        for (s, r) in ss.iter_mut().zip(rows.chunks(d)) {
            *s = r.iter().map(|&x| x * x).sum();
        }
        return ss;
    }
    for j in 0..d {
        for (i, s) in ss.iter_mut().enumerate() {
            let x = rows[i * d + j];
            *s += x * x;
        }
    }
    ss
}

/// Applies `f` to each row (last dim) of a float tensor, returning f32 of the same shape.
fn rowwise(op: &'static str, x: &Tensor, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Result<Tensor> {
    row_groups(op, x, 1, f)
}

/// [`rowwise`] over groups of up to `rows` consecutive rows: `f` gets a group's input and
/// output rows, each concatenated.
fn row_groups(op: &'static str, x: &Tensor, rows: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Result<Tensor> {
    require_float(op, "x", x)?;
    let group = last_dim(op, "x", x)? * rows;
    let mut xb = Vec::new();
    let xv = f32_data(x, &mut xb)?;
    Ok(Tensor::f32_filled(x.shape(), |out| {
        out.par_chunks_mut(group)
            .zip(xv.par_chunks(group))
            .for_each(|(o, r)| f(r, o));
    }))
}

impl Tensor {
    /// Elementwise `self + other`; `other` has the same shape or a suffix of it (e.g. a bias `[N]`
    /// added to `[M, N]`). Float inputs, f32 output.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        binary("add", self, other, |a, b| a + b)
    }

    /// Elementwise `self * other`, broadcasting like [`Tensor::add`]. Float inputs, f32 output.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        binary("mul", self, other, |a, b| a * b)
    }

    /// `x * sigmoid(x)` elementwise. Float input, f32 output.
    pub fn silu(&self) -> Result<Tensor> {
        require_float("silu", "x", self)?;
        let mut b = Vec::new();
        let v = f32_data(self, &mut b)?;
        Ok(Tensor::f32_filled(self.shape(), |out| {
            out.par_chunks_mut(ELEMS_PER_TASK)
                .zip(v.par_chunks(ELEMS_PER_TASK))
                .for_each(|(o, v)| o.iter_mut().zip(v).for_each(|(o, &x)| *o = x / (1.0 + (-x).exp())));
        }))
    }

    /// Numerically stable softmax over the last dim. Float input, f32 output.
    pub fn softmax_last(&self) -> Result<Tensor> {
        rowwise("softmax", self, |r, o| {
            let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &x) in o.iter_mut().zip(r) {
                *o = (x - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|v| *v *= inv);
        })
    }

    /// RMSNorm over the last dim with HF numerics: in f32, `x * rsqrt(mean(x²) + eps)`; when `self`
    /// is bf16/f16 the normalized value is rounded to that dtype (as HF's `.to(input_dtype)`) before
    /// the multiply by `weight` (`[D]`, any float dtype). Returns f32; `.to_dtype(input dtype)` of
    /// the result matches HF's output.
    pub fn rms_norm(&self, weight: &Tensor, eps: f32) -> Result<Tensor> {
        const OP: &str = "rms_norm";
        require_float(OP, "weight", weight)?;
        let d = last_dim(OP, "x", self)?;
        if weight.shape() != [d] {
            return Err(TensorError::Shape {
                op: OP,
                arg: "weight",
                expected: format!("[{d}]"),
                got: weight.shape().to_vec(),
            });
        }
        let wv = weight.to_f32_vec()?;
        // One monomorphized loop per dtype, so the rounding inlines.
        fn norm_rows(x: &Tensor, wv: &[f32], eps: f32, round: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
            let d = wv.len();
            row_groups(OP, x, NORM_ROWS, |r, o| {
                for (ss, (o, r)) in sum_squares_per_row(r, d)
                    .into_iter()
                    .zip(o.chunks_mut(d).zip(r.chunks(d)))
                {
                    let inv = 1.0 / (ss / d as f32 + eps).sqrt();
                    for ((o, &x), &w) in o.iter_mut().zip(r).zip(wv) {
                        *o = w * round(x * inv);
                    }
                }
            })
        }
        match self.dtype() {
            DType::BF16 => norm_rows(self, &wv, eps, |v| bf16::from_f32(v).to_f32()),
            DType::F16 => norm_rows(self, &wv, eps, |v| f16::from_f32(v).to_f32()),
            _ => norm_rows(self, &wv, eps, |v| v),
        }
    }

    /// Index of the maximum over the last dim (first one on ties), as i64 of shape `shape[..rank-1]`.
    pub fn argmax_last(&self) -> Result<Tensor> {
        let idx = self.argmax_vec()?;
        let shape = &self.shape()[..self.rank() - 1];
        Tensor::from_vec(idx.into_iter().map(|i| i as i64).collect::<Vec<_>>(), shape)
    }

    /// [`Tensor::argmax_last`] as a plain vector of indices, one per row.
    pub fn argmax_vec(&self) -> Result<Vec<usize>> {
        const OP: &str = "argmax";
        let d = last_dim(OP, "x", self)?;
        let v = self.to_f32_vec()?;
        Ok(v.par_chunks(d)
            .map(|r| {
                let mut best = 0;
                for (i, &x) in r.iter().enumerate() {
                    if x > r[best] || (r[best].is_nan() && !x.is_nan()) {
                        best = i;
                    }
                }
                best
            })
            .collect())
    }
}

/// Concatenates tensors along dim 0. All must share dtype and trailing dims. Copies.
pub fn cat(tensors: &[&Tensor]) -> Result<Tensor> {
    const OP: &str = "cat";
    let Some(first) = tensors.first() else {
        return Err(TensorError::Invalid {
            op: OP,
            msg: "no tensors to concatenate".into(),
        });
    };
    if first.rank() == 0 {
        return Err(TensorError::Shape {
            op: OP,
            arg: "tensors[0]",
            expected: "rank >= 1".into(),
            got: vec![],
        });
    }
    let tail = &first.shape()[1..];
    let mut rows = 0;
    for t in tensors {
        if t.dtype() != first.dtype() {
            return Err(TensorError::DType {
                op: OP,
                arg: "tensors",
                expected: first.dtype().to_string(),
                got: t.dtype(),
            });
        }
        if t.rank() != first.rank() || &t.shape()[1..] != tail {
            return Err(TensorError::Shape {
                op: OP,
                arg: "tensors",
                expected: format!(
                    "[_, {}]",
                    tail.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                ),
                got: t.shape().to_vec(),
            });
        }
        rows += t.shape()[0];
    }
    let mut shape = first.shape().to_vec();
    shape[0] = rows;
    // Straight into the result, in 1 MiB pieces on all cores: fusing a model's q/k/v and
    // gate/up weights moves gigabytes at load time.
    Ok(Tensor::bytes_filled(&shape, first.dtype(), |out| {
        let mut parts = Vec::with_capacity(tensors.len());
        let mut rest = out;
        for t in tensors {
            let (dst, tail) = rest.split_at_mut(t.as_bytes().len());
            parts.push((dst, t.as_bytes()));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(dst, src)| {
            dst.par_chunks_mut(1 << 20)
                .zip(src.par_chunks(1 << 20))
                .for_each(|(d, s)| d.copy_from_slice(s));
        });
    }))
}
