//! Grid bookkeeping of the vision tower, from each input's [`GridThw`] alone: where every patch
//! row sits in its image, the bilinear taps into the learned position table, and the attention
//! segments (one per frame).
//!
//! Patch rows come in HF's order: frame by frame, and inside a frame the `merge × merge` groups
//! in raster order of the groups, raster order inside a group.

use crate::multimodal::GridThw;

/// `(row, col)` of every patch of `grid` in the patch-grid, in input row order (frames repeat).
/// These are also the 2-D rotary position ids (HF `get_vision_position_ids`).
///
/// ```
/// use mllm_engine::models::qwen3_vl::patch_coords;
/// use mllm_engine::multimodal::GridThw;
///
/// let ids = patch_coords(GridThw { t: 1, h: 2, w: 4 }, 2);
/// assert_eq!(ids, [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]);
/// ```
pub fn patch_coords(grid: GridThw, merge: usize) -> Vec<(usize, usize)> {
    let (h, w) = (grid.h as usize, grid.w as usize);
    let mut frame = Vec::with_capacity(h * w);
    for block_row in 0..h / merge {
        for block_col in 0..w / merge {
            for in_row in 0..merge {
                for in_col in 0..merge {
                    frame.push((block_row * merge + in_row, block_col * merge + in_col));
                }
            }
        }
    }
    frame.repeat(grid.t as usize)
}

/// Bilinear taps of one patch into the flat `side × side` position table: `(index, weight)`
/// for (row₀, col₀), (row₀, col₁), (row₁, col₀), (row₁, col₁).
pub type PosTaps = [(usize, f32); 4];

/// The taps resampling the square `side × side` table to `grid`'s `h × w` with `align_corners`
/// bilinear interpolation, one per patch in input row order (HF
/// `get_vision_interpolation_indices_and_weights(mode="bilinear", align_corners=True)`, the same
/// f32 arithmetic).
///
/// ```
/// use mllm_engine::models::qwen3_vl::position_taps;
/// use mllm_engine::multimodal::GridThw;
///
/// // A 2x2 grid over a 3x3 table hits the four corners exactly.
/// let taps = position_taps(GridThw { t: 1, h: 2, w: 2 }, 3, 2);
/// let corners: Vec<usize> = taps.iter().map(|t| t[0].0).collect();
/// assert_eq!(corners, [0, 2, 6, 8]);
/// assert!(taps.iter().all(|t| t[0].1 == 1.0));
/// ```
pub fn position_taps(grid: GridThw, side: usize, merge: usize) -> Vec<PosTaps> {
    let (h, w) = (grid.h as usize, grid.w as usize);
    patch_coords(grid, merge)
        .into_iter()
        .map(|(row, col)| {
            let (r, rw) = axis_taps(row, h, side);
            let (c, cw) = axis_taps(col, w, side);
            [
                (r[0] * side + c[0], rw[0] * cw[0]),
                (r[0] * side + c[1], rw[0] * cw[1]),
                (r[1] * side + c[0], rw[1] * cw[0]),
                (r[1] * side + c[1], rw[1] * cw[1]),
            ]
        })
        .collect()
}

/// The two source taps and weights of target `index` on an axis of `size` over a table `side`
/// long: `src = index · (side − 1) / max(size − 1, 1)`, taps ⌊src⌋ and ⌊src⌋ + 1 (clamped).
fn axis_taps(index: usize, size: usize, side: usize) -> ([usize; 2], [f32; 2]) {
    let src = index as f32 * (side - 1) as f32 / (size.max(2) - 1) as f32;
    let floor = src.floor();
    let frac = src - floor;
    let base = floor as usize;
    let taps = [base.min(side - 1), (base + 1).min(side - 1)];
    let weights = [(1.0 - frac.abs()).max(0.0), (1.0 - (frac - 1.0).abs()).max(0.0)];
    (taps, weights)
}

/// Cumulative attention segment bounds over all inputs: one segment of `h · w` rows per frame
/// (HF `cu_seqlens`, starting with 0).
///
/// ```
/// use mllm_engine::models::qwen3_vl::frame_bounds;
/// use mllm_engine::multimodal::GridThw;
///
/// let grids = [GridThw { t: 1, h: 4, w: 6 }, GridThw { t: 2, h: 2, w: 2 }];
/// assert_eq!(frame_bounds(&grids), [0, 24, 28, 32]);
/// ```
pub fn frame_bounds(grids: &[GridThw]) -> Vec<usize> {
    let mut bounds = vec![0];
    for g in grids {
        for _ in 0..g.t {
            bounds.push(bounds.last().unwrap() + g.h as usize * g.w as usize);
        }
    }
    bounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_of_an_upsampled_axis() {
        // 3 targets over a 2-long table: src = 0, 0.5, 1.
        assert_eq!(axis_taps(0, 3, 2), ([0, 1], [1.0, 0.0]));
        assert_eq!(axis_taps(1, 3, 2), ([0, 1], [0.5, 0.5]));
        assert_eq!(axis_taps(2, 3, 2), ([1, 1], [1.0, 0.0]));
        // A single target maps to the first entry.
        assert_eq!(axis_taps(0, 1, 8), ([0, 1], [1.0, 0.0]));
    }

    #[test]
    fn weights_sum_to_one() {
        for t in position_taps(GridThw { t: 1, h: 6, w: 10 }, 5, 2) {
            let s: f32 = t.iter().map(|x| x.1).sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn frames_repeat_coordinates() {
        let c = patch_coords(GridThw { t: 2, h: 2, w: 2 }, 2);
        assert_eq!(c[..4], c[4..]);
    }
}
