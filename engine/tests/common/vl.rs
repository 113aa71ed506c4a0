//! Readers of the Qwen3-VL fixtures transformers wrote (scripts/fixtures/qwen3_vl_model.py).

use mllm_engine::loader::safetensors::SafetensorsModel;
use mllm_engine::multimodal::{GridThw, ImagePatches};

/// An i64 tensor of the reference file.
pub fn ints(r: &SafetensorsModel, name: &str) -> Vec<i64> {
    r.get(name).unwrap().as_slice::<i64>().unwrap().to_vec()
}

/// `[t, h, w]` triples as grids.
pub fn grid_list(flat: impl IntoIterator<Item = u32>) -> Vec<GridThw> {
    let flat: Vec<u32> = flat.into_iter().collect();
    flat.chunks(3)
        .map(|g| GridThw {
            t: g[0],
            h: g[1],
            w: g[2],
        })
        .collect()
}

/// Concatenated patch rows (`cols` values each) split into one image per grid.
pub fn split_by_grid(pixel_values: &[f32], cols: usize, grids: &[GridThw]) -> Vec<ImagePatches> {
    let mut start = 0;
    grids
        .iter()
        .map(|g| {
            let n = g.num_patches() * cols;
            start += n;
            ImagePatches {
                pixel_values: pixel_values[start - n..start].to_vec(),
                patch_dim: cols,
                grid: *g,
            }
        })
        .collect()
}

/// Prompt `p`'s images as HF's processor made them: `{p}.pixel_values` split by
/// `{p}.image_grid_thw`.
pub fn hf_images(r: &SafetensorsModel, p: &str) -> Vec<ImagePatches> {
    let grids = grid_list(ints(r, &format!("{p}.image_grid_thw")).into_iter().map(|x| x as u32));
    let px = r.get(&format!("{p}.pixel_values")).unwrap();
    split_by_grid(&px.to_f32_vec().unwrap(), px.shape()[1], &grids)
}
