use crate::dtype::{FloatElem, HostElem};

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

/// `dst[rows[i]] = src[i]`, or `+=` (in f32, rounded once) with `add`,
/// over rows of `hidden`; rows outside `dst` are skipped and returned, as the
/// kernel reports them.
///
/// ```
/// let mut dst = vec![1.0f32; 6];
/// let bad = mllm_kernel::reference::scatter_rows(&mut dst, &[2, 0, 9], &[5.0, 6.0, 7.0, 8.0, 0.0, 0.0], 2, true);
/// assert_eq!((dst, bad), (vec![8.0, 9.0, 1.0, 1.0, 6.0, 7.0], vec![2]));
/// ```
pub fn scatter_rows<T: FloatElem>(dst: &mut [T], rows: &[i32], src: &[T], hidden: usize, add: bool) -> Vec<usize> {
    assert!(hidden > 0 && dst.len().is_multiple_of(hidden) && src.len() == rows.len() * hidden);
    let n_dst = dst.len() / hidden;
    let mut bad = Vec::new();
    for (i, &r) in rows.iter().enumerate() {
        if r < 0 || r as usize >= n_dst {
            bad.push(i);
            continue;
        }
        let d = &mut dst[r as usize * hidden..(r as usize + 1) * hidden];
        for (o, s) in d.iter_mut().zip(&src[i * hidden..(i + 1) * hidden]) {
            *o = if add { T::from_f32(o.to_f32() + s.to_f32()) } else { *s };
        }
    }
    bad
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
