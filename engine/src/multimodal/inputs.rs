//! What a tokenized request carries for its images ([`MultimodalInputs`]), and the prefix-cache
//! key that keeps two different images from sharing KV (pymllm defect 3: image placeholders are
//! the same token id for every image, so a cache keyed on token ids alone would hand one image's
//! KV to another).

use std::borrow::Cow;
use std::ops::Range;

use sha2::{Digest, Sha256};

use super::error::ImageInputError;
use super::patches::{GridThw, ImagePatches};
use super::placeholders::{expand_image_placeholders, VisionTokenIds};

/// SHA-256 of an image's encoded bytes, as carried in [`ImageInput::hash`].
pub type ImageHash = [u8; 32];

/// SHA-256 of `bytes`.
///
/// ```
/// let h = mllm_engine::multimodal::image_hash(b"abc");
/// assert_eq!(h[..4], [0xba, 0x78, 0x16, 0xbf]);
/// ```
pub fn image_hash(bytes: &[u8]) -> ImageHash {
    Sha256::digest(bytes).into()
}

/// One image of a request, preprocessed and placed in the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInput {
    /// HF's `pixel_values` rows of this image and its `image_grid_thw` row.
    pub patches: ImagePatches,
    /// Positions of this image's `<|image_pad|>` tokens in the request's `input_ids`:
    /// `patches.grid.num_tokens(merge_size)` of them, between a `<|vision_start|>` (at
    /// `start - 1`) and a `<|vision_end|>` (at `end`).
    pub token_range: Range<usize>,
    /// SHA-256 of the image's encoded bytes (PNG/JPEG/WebP as sent).
    pub hash: ImageHash,
}

/// The images of one tokenized request, in prompt order (token ranges ascending, disjoint).
///
/// Built by [`MultimodalInputs::expand`] from the rendered prompt's ids, which still hold one
/// `<|image_pad|>` per image.
///
/// ```
/// use mllm_engine::multimodal::*;
///
/// let t = VisionTokenIds { image_pad: 9, vision_start: 7, vision_end: 8 };
/// let patches = ImagePatches { pixel_values: vec![0.0; 16 * 4], patch_dim: 4, grid: GridThw { t: 1, h: 4, w: 4 } };
/// let (ids, mm) = MultimodalInputs::expand(&[1, 7, 9, 8, 2], vec![(patches, image_hash(b"png"))], t, 2)?;
/// assert_eq!(ids, [1, 7, 9, 9, 9, 9, 8, 2]);
/// assert_eq!(mm.images[0].token_range, 2..6);
/// // The prefix-cache key: the pads become ids derived from the image's hash.
/// let key = mm.radix_key(&ids);
/// assert_eq!((key[..2].to_vec(), key[6..].to_vec()), (vec![1, 7], vec![8, 2]));
/// assert!(key[2..6].iter().all(|&k| k >= IMAGE_KEY_BASE));
/// # Ok::<(), ImageInputError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MultimodalInputs {
    /// The images.
    pub images: Vec<ImageInput>,
    /// The checkpoint's vision token ids.
    pub tokens: VisionTokenIds,
}

/// Radix-key ids of image placeholder tokens are at least this: above any real vocabulary
/// (Qwen's is about 152k), so they never equal a text token's key.
pub const IMAGE_KEY_BASE: u32 = 1 << 31;

impl MultimodalInputs {
    /// Expands each `<|image_pad|>` of `ids` to its image's token count
    /// (`grid.num_tokens(merge_size)`) and records where each image's tokens are.
    ///
    /// Errors when the number of placeholders differs from the number of images, or a
    /// placeholder is not framed by `<|vision_start|>`/`<|vision_end|>`.
    pub fn expand(
        ids: &[u32],
        images: Vec<(ImagePatches, ImageHash)>,
        tokens: VisionTokenIds,
        merge_size: u32,
    ) -> Result<(Vec<u32>, Self), ImageInputError> {
        let counts: Vec<usize> = images.iter().map(|(p, _)| p.grid.num_tokens(merge_size)).collect();
        let expanded = expand_image_placeholders(ids, &counts, tokens)?;
        // The pads of image i are the i-th run of pad ids: runs are separated by the
        // `<|vision_end|>` / `<|vision_start|>` that frame every placeholder.
        let mut ranges = Vec::with_capacity(images.len());
        let mut i = 0;
        while i < expanded.len() {
            if expanded[i] == tokens.image_pad {
                let start = i;
                while i < expanded.len() && expanded[i] == tokens.image_pad {
                    i += 1;
                }
                ranges.push(start..i);
            } else {
                i += 1;
            }
        }
        let images = images
            .into_iter()
            .zip(ranges)
            .map(|((patches, hash), token_range)| ImageInput {
                patches,
                token_range,
                hash,
            })
            .collect();
        Ok((expanded, Self { images, tokens }))
    }

    /// Placeholder tokens of all images.
    pub fn num_image_tokens(&self) -> usize {
        self.images.iter().map(|im| im.token_range.len()).sum()
    }

    /// HF's `image_grid_thw`, one row per image.
    pub fn grids(&self) -> Vec<GridThw> {
        self.images.iter().map(|im| im.patches.grid).collect()
    }

    /// The image whose placeholder tokens include position `pos`, if any.
    pub fn image_at(&self, pos: usize) -> Option<usize> {
        self.images.iter().position(|im| im.token_range.contains(&pos))
    }

    /// `len` moved back to the start of the image it would cut, so a cached prefix of `len`
    /// tokens holds every image either whole or not at all.
    ///
    /// ```
    /// # use mllm_engine::multimodal::*;
    /// # let t = VisionTokenIds { image_pad: 9, vision_start: 7, vision_end: 8 };
    /// # let p = ImagePatches { pixel_values: vec![0.0; 16], patch_dim: 1, grid: GridThw { t: 1, h: 4, w: 4 } };
    /// let (_, mm) = MultimodalInputs::expand(&[7, 9, 8], vec![(p, [0; 32])], t, 2)?; // pads at 1..5
    /// assert_eq!([0, 1, 3, 5, 6].map(|n| mm.clamp_prefix(n)), [0, 1, 1, 5, 6]);
    /// # Ok::<(), ImageInputError>(())
    /// ```
    pub fn clamp_prefix(&self, len: usize) -> usize {
        self.images
            .iter()
            .find(|im| im.token_range.start < len && len < im.token_range.end)
            .map_or(len, |im| im.token_range.start)
    }

    /// The prefix-cache key of `tokens` (the request's ids, possibly with generated tokens
    /// after them): each image's placeholder tokens replaced by [`image_key_id`]s of its hash,
    /// every other token kept. Equal keys mean equal text and equal images in equal places.
    pub fn radix_key<'a>(&self, tokens: &'a [u32]) -> Cow<'a, [u32]> {
        if !self.images.iter().any(|im| im.token_range.start < tokens.len()) {
            return Cow::Borrowed(tokens);
        }
        let mut key = tokens.to_vec();
        for im in &self.images {
            let end = im.token_range.end.min(key.len());
            for (k, pos) in (im.token_range.start..end).enumerate() {
                key[pos] = image_key_id(&im.hash, k);
            }
        }
        Cow::Owned(key)
    }
}

/// The radix-key id of the `k`-th placeholder token of an image with `hash`: 31 bits of the
/// hash (its eight 32-bit words in turn) above [`IMAGE_KEY_BASE`]. Two different images agree on
/// all of their first eight tokens only with probability 2^-248; a match that ends inside an
/// image is cut back to its start anyway ([`MultimodalInputs::clamp_prefix`]).
///
/// ```
/// use mllm_engine::multimodal::{image_hash, image_key_id, IMAGE_KEY_BASE};
///
/// let (a, b) = (image_hash(b"cat.png"), image_hash(b"dog.png"));
/// assert!(image_key_id(&a, 0) >= IMAGE_KEY_BASE);
/// assert_ne!(image_key_id(&a, 0), image_key_id(&b, 0));
/// assert_eq!(image_key_id(&a, 3), image_key_id(&a, 11));
/// ```
pub fn image_key_id(hash: &ImageHash, k: usize) -> u32 {
    let w = (k % 8) * 4;
    let word = u32::from_le_bytes([hash[w], hash[w + 1], hash[w + 2], hash[w + 3]]);
    IMAGE_KEY_BASE | (word & !IMAGE_KEY_BASE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_cache::radix_cache::RadixCache;

    const T: VisionTokenIds = VisionTokenIds::QWEN3_VL;

    fn patches(h: u32, w: u32) -> ImagePatches {
        let grid = GridThw { t: 1, h, w };
        ImagePatches {
            pixel_values: vec![0.0; grid.num_patches()],
            patch_dim: 1,
            grid,
        }
    }

    /// `text`, one image of 2x4 patches (2 tokens at merge 2), `tail`.
    fn prompt(image: &[u8], tail: &[u32]) -> (Vec<u32>, MultimodalInputs) {
        let (s, p, e) = (T.vision_start, T.image_pad, T.vision_end);
        let ids = [&[1, 2, 3, s, p, e][..], tail].concat();
        MultimodalInputs::expand(&ids, vec![(patches(2, 4), image_hash(image))], T, 2).unwrap()
    }

    /// Caches `ids` (fake KV slots 100..) and returns how many leading tokens of `probe` hit.
    fn shared_prefix(cached: &(Vec<u32>, MultimodalInputs), probe: &(Vec<u32>, MultimodalInputs)) -> usize {
        let mut cache = RadixCache::new(false);
        let key = cached.1.radix_key(&cached.0);
        let slots: Vec<u32> = (100..100 + key.len() as u32).collect();
        cache.insert(&key, &slots).unwrap();
        let hit = cache.match_prefix(&probe.1.radix_key(&probe.0)).kv_slots.len();
        probe.1.clamp_prefix(hit)
    }

    #[test]
    fn ranges_follow_the_expanded_prompt() {
        let (s, p, e) = (T.vision_start, T.image_pad, T.vision_end);
        let ids = [5, s, p, e, s, p, e, 6];
        let (out, mm) =
            MultimodalInputs::expand(&ids, vec![(patches(2, 2), [1; 32]), (patches(4, 4), [2; 32])], T, 2).unwrap();
        assert_eq!(out.len(), 8 - 2 + 1 + 4);
        assert_eq!(mm.images[0].token_range, 2..3);
        assert_eq!(mm.images[1].token_range, 5..9);
        assert_eq!(mm.num_image_tokens(), 5);
        assert_eq!(
            (mm.image_at(2), mm.image_at(4), mm.image_at(8)),
            (Some(0), None, Some(1))
        );
        assert!(mm
            .images
            .iter()
            .all(|im| out[im.token_range.clone()].iter().all(|&t| t == p)));
        let err = MultimodalInputs::expand(&ids, vec![(patches(2, 2), [1; 32])], T, 2).unwrap_err();
        assert!(matches!(
            err,
            ImageInputError::PlaceholderCount {
                placeholders: 2,
                images: 1
            }
        ));
    }

    #[test]
    fn key_changes_only_image_tokens() {
        let (ids, mm) = prompt(b"cat", &[4, 5]);
        let key = mm.radix_key(&ids);
        assert_eq!(key.len(), ids.len());
        for (pos, (&k, &t)) in key.iter().zip(&ids).enumerate() {
            if mm.image_at(pos).is_some() {
                assert!(k >= IMAGE_KEY_BASE, "{pos}");
            } else {
                assert_eq!(k, t, "{pos}");
            }
        }
        // A key of the text before the image is the text itself (no copy).
        assert!(matches!(mm.radix_key(&ids[..4]), Cow::Borrowed(_)));
        // Generated tokens after the prompt are kept.
        let longer = [&ids[..], &[77, 78]].concat();
        assert_eq!(mm.radix_key(&longer)[ids.len()..], [77, 78]);
    }

    #[test]
    fn different_images_share_only_the_text_before_them() {
        let cat = prompt(b"cat", &[4, 5]);
        let dog = prompt(b"dog", &[4, 5]);
        // [1, 2, 3, vision_start] is shared; the image and everything after it is not.
        assert_eq!(shared_prefix(&cat, &dog), 4);
        // The token ids alone would have matched in full.
        assert_eq!(cat.0, dog.0);
    }

    #[test]
    fn the_same_image_hits_in_full() {
        let a = prompt(b"cat", &[4, 5]);
        assert_eq!(shared_prefix(&a, &prompt(b"cat", &[4, 5])), a.0.len());
        // Same image, different text after it: shared up to the divergence.
        assert_eq!(shared_prefix(&a, &prompt(b"cat", &[4, 9])), a.0.len() - 1);
    }

    #[test]
    fn a_match_ending_inside_an_image_is_cut_to_its_start() {
        let a = prompt(b"cat", &[4, 5]);
        let mut cache = RadixCache::new(false);
        let key = a.1.radix_key(&a.0);
        // Only the first pad token of the image is cached (e.g. the rest was evicted).
        cache.insert(&key[..5], &[0, 1, 2, 3, 4]).unwrap();
        let hit = cache.match_prefix(&key).kv_slots.len();
        assert_eq!((hit, a.1.clamp_prefix(hit)), (5, 4));
    }
}
