//! Readers of the Qwen3-VL fixtures transformers wrote (scripts/fixtures/qwen3_vl_model.py).

use mllm_engine::loader::safetensors::SafetensorsModel;
use mllm_engine::multimodal::{image_hash, GridThw, ImageInput, ImagePatches, MultimodalInputs, VisionTokenIds};

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

/// A request's images for `ids`: image `k` takes the `k`-th run of `tokens.image_pad`
/// placeholders, hashed by its pixel values.
pub fn multimodal_inputs(ids: &[u32], images: Vec<ImagePatches>, tokens: VisionTokenIds) -> MultimodalInputs {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = i;
        while i < ids.len() && ids[i] == tokens.image_pad {
            i += 1;
        }
        if i > start {
            runs.push(start..i);
        } else {
            i += 1;
        }
    }
    let images = images
        .into_iter()
        .zip(runs)
        .map(|(patches, token_range)| {
            let bytes: Vec<u8> = patches.pixel_values.iter().flat_map(|x| x.to_le_bytes()).collect();
            ImageInput {
                patches,
                token_range,
                hash: image_hash(&bytes),
            }
        })
        .collect();
    MultimodalInputs { images, tokens }
}
