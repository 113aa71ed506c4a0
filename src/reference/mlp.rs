use super::{fused_add_rms_norm, int8_scaled_mm, per_token_quant_int8, silu_and_mul};
use crate::dtype::FloatElem;

/// A W8A8 gated MLP block over one row, the oracle of
/// `ops::decode_mlp_w8a8_into`: the references of the unfused ops in the
/// engine's order (add + RMSNorm, per-token int8, gate/up GEMM, SiLU × up,
/// per-token int8, down GEMM). Updates `residual` (`+= x`); returns
/// `(act, out)`, i.e. `silu(gate) * up` `[inter]` and the block's output
/// `[hidden]`.
///
/// `gate_up`: `[2 inter, hidden]` (gate rows, then up rows) with
/// `gate_up_scales` `[2 inter]`; `down`: `[hidden, inter]` with `down_scales`
/// `[hidden]`.
///
/// ```
/// let (mut residual, x, norm) = (vec![1.0f32, -1.0], vec![0.0f32, 0.0], vec![1.0f32, 1.0]);
/// // inter = 1: gate = n0 + n1 = 0, so act = silu(0) * up = 0 and out = 0.
/// let (act, out) = mllm_kernel::reference::decode_mlp_w8a8(
///     &x, &mut residual, &norm, (&[1, 1, 1, 0], &[1.0, 1.0]), (&[1, 1], &[1.0, 1.0]), 1e-6);
/// assert_eq!((act, out), (vec![0.0], vec![0.0, 0.0]));
/// ```
pub fn decode_mlp_w8a8<T: FloatElem>(
    x: &[T],
    residual: &mut [T],
    norm: &[T],
    (gate_up, gate_up_scales): (&[i8], &[f32]),
    (down, down_scales): (&[i8], &[f32]),
    eps: f32,
) -> (Vec<T>, Vec<T>) {
    let hidden = x.len();
    let inter = down.len() / hidden;
    let mut n = x.to_vec();
    fused_add_rms_norm(&mut n, residual, norm, hidden, eps);
    let (qn, s1) = per_token_quant_int8(&n, hidden);
    let gu: Vec<T> = int8_scaled_mm(&qn, gate_up, 1, 2 * inter, hidden, &s1, gate_up_scales, None);
    let act = silu_and_mul(&gu, inter);
    let (qa, s2) = per_token_quant_int8(&act, inter);
    let out = int8_scaled_mm(&qa, down, 1, hidden, inter, &s2, down_scales, None);
    (act, out)
}
