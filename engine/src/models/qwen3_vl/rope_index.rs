//! The 3-axis M-RoPE positions of a Qwen3-VL prompt (HF `Qwen3VLModel.get_rope_index`), a pure
//! function of the whole token list and the image grids.
//!
//! A running index `c` starts at 0. A text token gets `(c, c, c)` and `c += 1`. An image is a
//! run of `t · (h/m) · (w/m)` placeholder tokens (m = spatial merge size) whose token `(ti, hi,
//! wi)` in t/h/w raster order gets `(c + ti, c + hi, c + wi)`; then `c` continues from that
//! image's largest position + 1, i.e. `c += max(t, h/m, w/m)` (for still images, t = 1, this is
//! HF's `max(h, w) / m`). `delta = max position + 1 − tokens`, so a token appended at index `n`
//! (decode) sits at `n + delta` on all three axes.
//!
//! Positions are always computed from the start of the request and then sliced, so a request
//! resumed after a cached prefix (or prefilled in chunks) gets the same positions as a single
//! prefill — unlike pymllm, which restarted at 0 for the uncached suffix (defect D4).

use std::ops::Range;

use thiserror::Error;

use super::mrope::MropePos;
use crate::multimodal::GridThw;

/// Errors of matching image placeholders to grids; each names the image and token index.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RopeIndexError {
    /// A placeholder run starts but every grid is already used.
    #[error("image placeholder at token {token} has no image grid left ({grids} grid(s) given)")]
    TooFewGrids {
        /// Index of the first placeholder without a grid.
        token: usize,
        /// Grids given.
        grids: usize,
    },
    /// Grids remain after the last placeholder run.
    #[error("{grids} image grid(s) given but the prompt holds only {runs} image placeholder run(s)")]
    TooManyGrids {
        /// Grids given.
        grids: usize,
        /// Placeholder runs found.
        runs: usize,
    },
    /// A placeholder run is shorter than its grid needs.
    #[error("image {image} (grid {grid:?}) needs {expected} placeholder tokens from token {token}, found {got}")]
    RunLength {
        /// Image index.
        image: usize,
        /// Its grid.
        grid: GridThw,
        /// First placeholder token index.
        token: usize,
        /// Placeholders the grid needs.
        expected: usize,
        /// Consecutive placeholders found.
        got: usize,
    },
    /// A grid is empty or its h / w are not multiples of the merge size.
    #[error("image {image} has grid {grid:?}: t, h, w must be > 0 with h and w multiples of {merge}")]
    BadGrid {
        /// Image index.
        image: usize,
        /// The grid.
        grid: GridThw,
        /// The spatial merge size.
        merge: u32,
    },
    /// The requested range does not lie within the tokens.
    #[error("position range {start}..{end} is outside the {len} tokens")]
    Range {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// Token count.
        len: usize,
    },
}

/// Positions of a token range plus the request's rope delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopePositions {
    /// `[t, h, w]` per token of the range.
    pub positions: Vec<MropePos>,
    /// `max position + 1 − tokens` over the whole token list (≤ 0 with images).
    pub delta: i64,
}

/// The position of the token at `index` after the prompt (decode, text): `index + delta` on
/// all three axes.
///
/// ```
/// use mllm_engine::models::qwen3_vl::text_position;
/// assert_eq!(text_position(30, -7), [23, 23, 23]);
/// ```
pub fn text_position(index: usize, delta: i64) -> MropePos {
    let p = (index as i64 + delta).max(0) as u32;
    [p, p, p]
}

/// Positions of `ids[range]` given every image's grid (in prompt order), with
/// `image_token_id` the placeholder and `merge` the vision tower's spatial merge size.
///
/// ```
/// use mllm_engine::models::qwen3_vl::rope_positions;
/// use mllm_engine::multimodal::GridThw;
///
/// const IMG: u32 = 9;
/// // text, start, 2x3 merged image (6 placeholders), end, text
/// let ids = [1, 8, IMG, IMG, IMG, IMG, IMG, IMG, 7, 2];
/// let grid = GridThw { t: 1, h: 4, w: 6 };
/// let p = rope_positions(&ids, &[grid], IMG, 2, 0..ids.len())?;
/// assert_eq!(p.positions[2..5], [[2, 2, 2], [2, 2, 3], [2, 2, 4]]);
/// assert_eq!(p.positions[8], [5, 5, 5]); // continues after the widest axis (3 columns)
/// assert_eq!(p.delta, 7 - 10);
/// // Resuming after a cached prefix gives the same positions.
/// assert_eq!(rope_positions(&ids, &[grid], IMG, 2, 4..10)?.positions, p.positions[4..]);
/// # Ok::<(), mllm_engine::models::qwen3_vl::RopeIndexError>(())
/// ```
pub fn rope_positions(
    ids: &[u32],
    grids: &[GridThw],
    image_token_id: u32,
    merge: u32,
    range: Range<usize>,
) -> Result<RopePositions, RopeIndexError> {
    if range.start > range.end || range.end > ids.len() {
        return Err(RopeIndexError::Range {
            start: range.start,
            end: range.end,
            len: ids.len(),
        });
    }
    let mut out = Vec::with_capacity(ids.len());
    let mut next_grid = 0;
    let mut c: u32 = 0;
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != image_token_id {
            out.push([c, c, c]);
            c += 1;
            i += 1;
            continue;
        }
        let grid = *grids.get(next_grid).ok_or(RopeIndexError::TooFewGrids {
            token: i,
            grids: grids.len(),
        })?;
        let image = next_grid;
        next_grid += 1;
        let (t, h, w) = (grid.t, grid.h, grid.w);
        if merge == 0 || t == 0 || h == 0 || w == 0 || h % merge != 0 || w % merge != 0 {
            return Err(RopeIndexError::BadGrid { image, grid, merge });
        }
        let (lh, lw) = (h / merge, w / merge);
        let need = (t * lh * lw) as usize;
        let got = ids[i..].iter().take(need).take_while(|&&x| x == image_token_id).count();
        if got < need {
            return Err(RopeIndexError::RunLength {
                image,
                grid,
                token: i,
                expected: need,
                got,
            });
        }
        for ti in 0..t {
            for hi in 0..lh {
                out.extend((0..lw).map(|wi| [c + ti, c + hi, c + wi]));
            }
        }
        c += t.max(lh).max(lw);
        i += need;
    }
    if next_grid != grids.len() {
        return Err(RopeIndexError::TooManyGrids {
            grids: grids.len(),
            runs: next_grid,
        });
    }
    Ok(RopePositions {
        delta: i64::from(c) - ids.len() as i64,
        positions: out[range].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: u32 = 250;

    fn grid(t: u32, h: u32, w: u32) -> GridThw {
        GridThw { t, h, w }
    }

    #[test]
    fn text_only_is_arange() {
        let p = rope_positions(&[5, 6, 7], &[], IMG, 2, 0..3).unwrap();
        assert_eq!(p.positions, [[0; 3], [1; 3], [2; 3]]);
        assert_eq!(p.delta, 0);
        assert_eq!(rope_positions(&[], &[], IMG, 2, 0..0).unwrap().delta, 0);
    }

    #[test]
    fn two_images_and_adjacent_runs() {
        // Tall (4 rows x 2 cols of merged tokens) then small (2 x 3), back to back.
        let mut ids = vec![1];
        ids.extend([IMG; 8]);
        ids.extend([IMG; 6]);
        ids.push(2);
        let p = rope_positions(&ids, &[grid(1, 8, 4), grid(1, 4, 6)], IMG, 2, 0..ids.len()).unwrap();
        assert_eq!(p.positions[1..3], [[1, 1, 1], [1, 1, 2]]);
        assert_eq!(p.positions[8], [1, 4, 2]);
        assert_eq!(p.positions[9], [5, 5, 5]); // second image starts at 1 + 4
        assert_eq!(p.positions[14], [5, 6, 7]);
        assert_eq!(p.positions[15], [8, 8, 8]);
        assert_eq!(p.delta, 9 - 16);
        assert_eq!(text_position(16, p.delta), [9, 9, 9]);
    }

    #[test]
    fn video_like_grid_advances_by_largest_axis() {
        let ids = [IMG; 8];
        let p = rope_positions(&ids, &[grid(2, 4, 4)], IMG, 2, 0..8).unwrap();
        assert_eq!(p.positions[4], [1, 0, 0]);
        assert_eq!(p.delta, 2 - 8);
    }

    #[test]
    fn every_suffix_matches_the_full_prompt() {
        let mut ids = vec![3, 4];
        ids.extend([IMG; 6]);
        ids.extend([5, 6, 7]);
        let g = [grid(1, 4, 6)];
        let full = rope_positions(&ids, &g, IMG, 2, 0..ids.len()).unwrap();
        for start in 0..=ids.len() {
            let part = rope_positions(&ids, &g, IMG, 2, start..ids.len()).unwrap();
            assert_eq!(part.positions, full.positions[start..]);
            assert_eq!(part.delta, full.delta);
        }
    }

    #[test]
    fn malformed_inputs_name_the_problem() {
        let e = rope_positions(&[1, IMG, IMG], &[], IMG, 2, 0..3).unwrap_err();
        assert_eq!(e, RopeIndexError::TooFewGrids { token: 1, grids: 0 });
        let e = rope_positions(&[1, 2], &[grid(1, 2, 2)], IMG, 2, 0..2).unwrap_err();
        assert_eq!(e, RopeIndexError::TooManyGrids { grids: 1, runs: 0 });
        let e = rope_positions(&[IMG, IMG, 1], &[grid(1, 4, 4)], IMG, 2, 0..3).unwrap_err();
        assert!(
            matches!(
                e,
                RopeIndexError::RunLength {
                    expected: 4,
                    got: 2,
                    ..
                }
            ),
            "{e}"
        );
        let e = rope_positions(&[IMG], &[grid(1, 3, 2)], IMG, 2, 0..1).unwrap_err();
        assert!(matches!(e, RopeIndexError::BadGrid { image: 0, .. }), "{e}");
        assert!(e.to_string().contains("multiples of 2"), "{e}");
        let e = rope_positions(&[1], &[], IMG, 2, 0..2).unwrap_err();
        assert!(matches!(e, RopeIndexError::Range { .. }));
    }
}
