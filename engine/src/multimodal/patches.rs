//! Resized RGB image to the vision encoder's input: rescale and normalise in
//! f32, repeat the still frame `temporal_patch_size` times, and flatten into
//! patches in HF's order.

use super::config::ImageProcessorConfig;
use super::decode::Rgb8Image;
use super::error::ImageInputError;
use super::resize::{resize_bicubic, smart_resize};

/// The patch grid of one image: `t` temporal patches (1 for a still image),
/// `h` x `w` spatial patches. HF's `image_grid_thw` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridThw {
    pub t: u32,
    pub h: u32,
    pub w: u32,
}

impl GridThw {
    /// Rows of `pixel_values`: `t * h * w`.
    pub fn num_patches(&self) -> usize {
        self.t as usize * self.h as usize * self.w as usize
    }

    /// LLM placeholder tokens for this image: `t * h * w / merge_size²`.
    ///
    /// ```
    /// use mllm_engine::multimodal::GridThw;
    ///
    /// assert_eq!(GridThw { t: 1, h: 20, w: 14 }.num_tokens(2), 70);
    /// ```
    pub fn num_tokens(&self, merge_size: u32) -> usize {
        self.num_patches() / (merge_size as usize).pow(2)
    }
}

/// One preprocessed image: HF's `pixel_values` rows and `image_grid_thw` row.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePatches {
    /// Row-major `[grid.num_patches(), patch_dim]`.
    pub pixel_values: Vec<f32>,
    /// `3 * temporal_patch_size * patch_size²` (1536 for Qwen3-VL).
    pub patch_dim: usize,
    pub grid: GridThw,
}

impl ImageProcessorConfig {
    /// HF `Qwen2VLImageProcessor` on one RGB image: `smart_resize`, bicubic
    /// antialiased resize, `(x - mean / r) / (std / r)` in f32 with
    /// `r = rescale_factor` (HF's fused rescale + normalise), then patches.
    ///
    /// Row order: 2x2 (`merge_size`) groups of patches in raster order of the
    /// groups, raster order inside a group; each row is channel-major, then
    /// the repeated frame, then the 16x16 pixels row by row.
    ///
    /// ```
    /// use mllm_engine::multimodal::{ImageProcessorConfig, Rgb8Image};
    ///
    /// let cfg = ImageProcessorConfig::default();
    /// let img = Rgb8Image::new(64, 32, vec![255; 64 * 32 * 3]).unwrap();
    /// let p = cfg.preprocess(&img).unwrap();
    /// // 64x32 is below 256² pixels: smart_resize scales it up to 384x192.
    /// assert_eq!((p.grid.t, p.grid.h, p.grid.w), (1, 12, 24));
    /// assert_eq!(p.pixel_values.len(), 12 * 24 * 1536);
    /// assert!(p.pixel_values.iter().all(|&v| v == 1.0)); // white -> (255 - 127.5) / 127.5
    /// ```
    pub fn preprocess(&self, img: &Rgb8Image) -> Result<ImagePatches, ImageInputError> {
        let (height, width) = smart_resize(
            img.height(),
            img.width(),
            self.factor(),
            self.min_pixels,
            self.max_pixels,
        )?;
        let resized;
        let img = if (height, width) == (img.height(), img.width()) {
            img
        } else {
            resized = resize_bicubic(img, height, width);
            &resized
        };
        Ok(self.patchify(img))
    }

    /// Per-channel `(scale, mean, std)` so that the output is
    /// `(x * scale - mean) / std`, reproducing torch's float32 arithmetic.
    fn channel_affine(&self, c: usize) -> (f32, f32, f32) {
        match (self.rescale_factor, self.do_normalize) {
            // HF folds the rescale into mean and std: mean / r, std / r.
            (Some(r), true) => {
                let inv = (1.0 / r) as f32;
                (1.0, self.image_mean[c] * inv, self.image_std[c] * inv)
            }
            (Some(r), false) => (r as f32, 0.0, 1.0),
            (None, true) => (1.0, self.image_mean[c], self.image_std[c]),
            (None, false) => (1.0, 0.0, 1.0),
        }
    }

    fn patchify(&self, img: &Rgb8Image) -> ImagePatches {
        let ps = self.patch_size as usize;
        let ms = self.merge_size as usize;
        let tps = self.temporal_patch_size as usize;
        let width = img.width() as usize;
        let (gh, gw) = (img.height() as usize / ps, width / ps);
        let patch_dim = self.patch_dim();
        let pixels = img.pixels();
        let affine: [(f32, f32, f32); 3] = std::array::from_fn(|c| self.channel_affine(c));
        let mut out = Vec::with_capacity(gh * gw * patch_dim);
        let mut frame = vec![0f32; ps * ps];
        for bh in 0..gh / ms {
            for bw in 0..gw / ms {
                for mh in 0..ms {
                    for mw in 0..ms {
                        let (y0, x0) = ((bh * ms + mh) * ps, (bw * ms + mw) * ps);
                        for (c, &(scale, mean, std)) in affine.iter().enumerate() {
                            for py in 0..ps {
                                let row = ((y0 + py) * width + x0) * 3 + c;
                                for px in 0..ps {
                                    let x = f32::from(pixels[row + px * 3]);
                                    frame[py * ps + px] = (x * scale - mean) / std;
                                }
                            }
                            for _ in 0..tps {
                                out.extend_from_slice(&frame);
                            }
                        }
                    }
                }
            }
        }
        ImagePatches {
            pixel_values: out,
            patch_dim,
            grid: GridThw {
                t: 1,
                h: gh as u32,
                w: gw as u32,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64x64 image whose red channel encodes the patch index (raster order
    /// over the 4x4 patch grid at patch 16), green the pixel row in the patch.
    #[test]
    fn rows_follow_merge_groups_then_channel_frame_pixel() {
        let cfg = ImageProcessorConfig {
            min_pixels: 0,
            rescale_factor: None,
            do_normalize: false,
            ..ImageProcessorConfig::default()
        };
        let mut data = vec![0u8; 64 * 64 * 3];
        for y in 0..64 {
            for x in 0..64 {
                let i = (y * 64 + x) * 3;
                data[i] = ((y / 16) * 4 + x / 16) as u8;
                data[i + 1] = (y % 16) as u8;
                data[i + 2] = (x % 16) as u8;
            }
        }
        let p = cfg.preprocess(&Rgb8Image::new(64, 64, data).unwrap()).unwrap();
        assert_eq!(p.grid, GridThw { t: 1, h: 4, w: 4 });
        let rows: Vec<f32> = p.pixel_values.chunks(1536).map(|r| r[0]).collect();
        // Group (0,0) = patches 0,1,4,5; group (0,1) = 2,3,6,7; ...
        let want = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15];
        assert_eq!(rows, want.map(|v| v as f32));
        let row = &p.pixel_values[..1536];
        // Channel 0 is constant, repeated for both frames.
        assert!(row[..512].iter().all(|&v| v == 0.0));
        // Channel 1 (green = pixel row), frame 1, pixel (row 3, col 5).
        assert_eq!(row[512 + 256 + 3 * 16 + 5], 3.0);
        // Channel 2 (blue = pixel col), frame 0, pixel (row 3, col 5).
        assert_eq!(row[1024 + 3 * 16 + 5], 5.0);
        assert_eq!(p.grid.num_tokens(2), 4);
    }

    #[test]
    fn normalises_with_the_fused_rescale() {
        let cfg = ImageProcessorConfig::default();
        let img = Rgb8Image::new(32, 32, [0u8, 128, 255].repeat(32 * 32)).unwrap();
        let cfg = ImageProcessorConfig { min_pixels: 0, ..cfg };
        let p = cfg.preprocess(&img).unwrap();
        assert_eq!(p.pixel_values[0], -1.0);
        assert_eq!(p.pixel_values[512], (128.0 - 127.5) / 127.5);
        assert_eq!(p.pixel_values[1024], 1.0);
    }
}
