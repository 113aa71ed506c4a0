use crate::dtype::HostElem;

/// `out[t] = table[ids[t]]` over rows of `hidden`; an id outside the table
/// gives a zero row, as the kernel. Also returns the positions of bad ids.
///
/// ```
/// let (out, bad) = mllm_kernel::reference::embedding(&[1, 7], &[1.0f32, 2.0, 3.0, 4.0], 2);
/// assert_eq!((out, bad), (vec![3.0, 4.0, 0.0, 0.0], vec![1]));
/// ```
pub fn embedding<T: HostElem>(ids: &[i32], table: &[T], hidden: usize) -> (Vec<T>, Vec<usize>) {
    assert!(hidden > 0 && table.len().is_multiple_of(hidden));
    let vocab = table.len() / hidden;
    let mut out = Vec::with_capacity(ids.len() * hidden);
    let mut bad = Vec::new();
    for (t, &id) in ids.iter().enumerate() {
        if id >= 0 && (id as usize) < vocab {
            out.extend_from_slice(&table[id as usize * hidden..(id as usize + 1) * hidden]);
        } else {
            out.extend(std::iter::repeat_n(T::default(), hidden));
            bad.push(t);
        }
    }
    (out, bad)
}

/// `cache[loc[t]] = src[t, col .. col + row]` for rows of `stride` elements
/// in `src`; slots outside the cache are skipped, as the kernel.
///
/// ```
/// let mut cache = vec![0i32; 4];
/// mllm_kernel::reference::kv_store(&mut cache, 2, &[9, 1, 2, 9, 3, 4], 3, 1, &[1, 5]);
/// assert_eq!(cache, vec![0, 0, 1, 2]);
/// ```
pub fn kv_store<T: HostElem>(cache: &mut [T], row: usize, src: &[T], stride: usize, col: usize, loc: &[i32]) {
    assert!(row > 0 && cache.len().is_multiple_of(row) && col + row <= stride);
    let slots = cache.len() / row;
    for (t, &slot) in loc.iter().enumerate() {
        if slot >= 0 && (slot as usize) < slots {
            let s = slot as usize;
            cache[s * row..(s + 1) * row].copy_from_slice(&src[t * stride + col..t * stride + col + row]);
        }
    }
}
