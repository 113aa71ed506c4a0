use crate::dtype::FloatElem;

/// Rows of `2 * inter` elements → rows of `inter`:
/// `out = T(T(silu(g)) * u)` with `silu(g) = g / (1 + exp(-g))` in f32,
/// as HF's `act_fn(gate) * up` in the element type.
///
/// ```
/// let out = mllm_kernel::reference::silu_and_mul(&[0.0f32, 1.0, 2.0, 3.0], 2);
/// assert_eq!(out, vec![0.0, 3.0 / (1.0 + (-1f32).exp())]);
/// ```
pub fn silu_and_mul<T: FloatElem>(x: &[T], inter: usize) -> Vec<T> {
    assert!(
        inter > 0 && x.len().is_multiple_of(2 * inter),
        "silu_and_mul reference: bad sizes"
    );
    let mut out = Vec::with_capacity(x.len() / 2);
    for row in x.chunks(2 * inter) {
        let (gate, up) = row.split_at(inter);
        out.extend(gate.iter().zip(up).map(|(g, u)| {
            let g = g.to_f32();
            let s = T::from_f32(g / (1.0 + (-g).exp())).to_f32();
            T::from_f32(s * u.to_f32())
        }));
    }
    out
}
