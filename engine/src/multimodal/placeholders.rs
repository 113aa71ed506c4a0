//! Expanding each image placeholder token of a prompt to the image's token
//! count, as HF's Qwen3-VL processor does on the prompt text.

use super::error::ImageInputError;

/// The vision special-token ids of a checkpoint's tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionTokenIds {
    /// `<|image_pad|>`.
    pub image_pad: u32,
    /// `<|vision_start|>`.
    pub vision_start: u32,
    /// `<|vision_end|>`.
    pub vision_end: u32,
}

impl VisionTokenIds {
    /// Qwen2-VL / Qwen2.5-VL / Qwen3-VL (151655, 151652, 151653).
    pub const QWEN3_VL: Self = Self {
        image_pad: 151_655,
        vision_start: 151_652,
        vision_end: 151_653,
    };
}

/// Replaces the `i`-th `<|image_pad|>` in `ids` with `tokens_per_image[i]`
/// copies of it.
///
/// Each placeholder must be written `<|vision_start|><|image_pad|><|vision_end|>`
/// (as the chat template writes it) and there must be exactly one per image.
///
/// ```
/// use mllm_engine::multimodal::{expand_image_placeholders, VisionTokenIds};
///
/// let t = VisionTokenIds { image_pad: 9, vision_start: 7, vision_end: 8 };
/// let ids = [1, 7, 9, 8, 2];
/// assert_eq!(expand_image_placeholders(&ids, &[3], t).unwrap(), vec![1, 7, 9, 9, 9, 8, 2]);
/// assert!(expand_image_placeholders(&ids, &[3, 4], t).is_err());
/// ```
pub fn expand_image_placeholders(
    ids: &[u32],
    tokens_per_image: &[usize],
    tokens: VisionTokenIds,
) -> Result<Vec<u32>, ImageInputError> {
    let positions: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter_map(|(i, &id)| (id == tokens.image_pad).then_some(i))
        .collect();
    if positions.len() != tokens_per_image.len() {
        return Err(ImageInputError::PlaceholderCount {
            placeholders: positions.len(),
            images: tokens_per_image.len(),
        });
    }
    for &p in &positions {
        let framed = p > 0 && ids[p - 1] == tokens.vision_start && ids.get(p + 1) == Some(&tokens.vision_end);
        if !framed {
            return Err(ImageInputError::MisplacedPlaceholder { position: p });
        }
    }
    let extra: usize = tokens_per_image.iter().map(|n| n.saturating_sub(1)).sum();
    let mut out = Vec::with_capacity(ids.len() + extra);
    let mut counts = tokens_per_image.iter();
    for &id in ids {
        if id == tokens.image_pad {
            let n = *counts.next().expect("one count per placeholder, checked above");
            out.extend(std::iter::repeat_n(id, n));
        } else {
            out.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: VisionTokenIds = VisionTokenIds::QWEN3_VL;

    #[test]
    fn expands_several_images_in_order() {
        let (s, p, e) = (T.vision_start, T.image_pad, T.vision_end);
        let ids = [10, s, p, e, 11, s, p, e];
        let out = expand_image_placeholders(&ids, &[2, 1], T).unwrap();
        assert_eq!(out, vec![10, s, p, p, e, 11, s, p, e]);
        assert_eq!(expand_image_placeholders(&[1, 2], &[], T).unwrap(), vec![1, 2]);
    }

    #[test]
    fn rejects_count_mismatch_and_unframed_pads() {
        let (s, p, e) = (T.vision_start, T.image_pad, T.vision_end);
        let err = expand_image_placeholders(&[s, p, e], &[], T).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the prompt has 1 image placeholders but 0 images were given"
        );
        let err = expand_image_placeholders(&[p, e], &[4], T).unwrap_err();
        assert!(matches!(err, ImageInputError::MisplacedPlaceholder { position: 0 }));
        let err = expand_image_placeholders(&[s, p, p, e], &[1, 1], T).unwrap_err();
        assert!(matches!(err, ImageInputError::MisplacedPlaceholder { position: 1 }));
    }
}
