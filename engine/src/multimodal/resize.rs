//! Target size selection (`smart_resize`) and the bicubic antialiased
//! resampler of the HF Qwen2-VL/Qwen3-VL image processor.
//!
//! The default processor in transformers 5 resizes with torchvision
//! (`resize(..., BICUBIC, antialias=True)`) on the uint8 image. On CPU that is
//! torch's native uint8 path: separable passes, width first, with a Keys
//! cubic (a = -0.5) widened by the downscale factor, weights computed in f64,
//! normalised, then quantised to i16 at a precision chosen from the largest
//! weight; each pass accumulates in i32 with a rounding half and clamps back
//! to u8. This module reproduces that arithmetic, so the resized pixels equal
//! torch's bit for bit.

use super::decode::Rgb8Image;
use super::error::ImageInputError;

/// HF's limit on `max(h, w) / min(h, w)`.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// The resized `(height, width)`: multiples of `factor` with `height * width`
/// in `[min_pixels, max_pixels]`, keeping the aspect ratio as well as possible.
///
/// The same arithmetic as transformers' `smart_resize`: round half to even
/// (Python `round`) to the nearest multiple; if over `max_pixels`, scale down
/// by `sqrt(h * w / max_pixels)` and floor (at least one `factor`); if under
/// `min_pixels`, scale up by `sqrt(min_pixels / (h * w))` and ceil.
///
/// ```
/// use mllm_engine::multimodal::smart_resize;
///
/// // Qwen3-VL: factor 32, 256² ..= 4096² pixels.
/// assert_eq!(smart_resize(480, 640, 32, 65_536, 16_777_216).unwrap(), (480, 640));
/// assert_eq!(smart_resize(53, 37, 32, 65_536, 16_777_216).unwrap(), (320, 224));
/// assert!(smart_resize(1, 300, 32, 65_536, 16_777_216).is_err()); // ratio 300 > 200
/// ```
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), ImageInputError> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(ImageInputError::Degenerate { width, height });
    }
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(ImageInputError::AspectRatio { width, height, ratio });
    }
    let area = u64::from(height) * u64::from(width);
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (area as f64 / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / area as f64).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    if h_bar < 1.0 || w_bar < 1.0 || h_bar > f64::from(u32::MAX) || w_bar > f64::from(u32::MAX) {
        return Err(ImageInputError::Degenerate { width, height });
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// Keys cubic convolution with a = -0.5, written as torch's antialias filter.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// Quantised filter taps for one axis: output `i` reads `len[i]` inputs from
/// `start[i]` with weights `weights[i * taps ..]`.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    taps: usize,
    weights: Vec<i32>,
    precision: u32,
}

impl Taps {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let (support, inv_scale) = if scale >= 1.0 {
            (2.0 * scale, 1.0 / scale)
        } else {
            (2.0, 1.0)
        };
        let taps = support.ceil() as usize * 2 + 1;
        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut float_w = vec![0.0f64; out_size * taps];
        let mut w_max = 0.0f64;
        for i in 0..out_size {
            let center = scale * (i as f64 + 0.5);
            // `as` truncates toward zero like the C++ cast it mirrors.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (hi - lo as i64).clamp(0, taps as i64) as usize;
            let row = &mut float_w[i * taps..i * taps + n];
            let mut total = 0.0;
            for (j, w) in row.iter_mut().enumerate() {
                *w = bicubic(((j + lo) as f64 - center + 0.5) * inv_scale);
                total += *w;
            }
            if total != 0.0 {
                for w in row.iter_mut() {
                    *w /= total;
                    w_max = w_max.max(*w);
                }
            }
            start.push(lo);
            len.push(n);
        }
        // The largest precision (below 22 bits) whose doubled largest weight
        // still fits in i16.
        let mut precision = 0u32;
        while precision < 22 && ((0.5 + w_max * f64::from(1u32 << (precision + 1))) as i32) < (1 << 15) {
            precision += 1;
        }
        let one = f64::from(1u32 << precision);
        let weights = float_w
            .iter()
            .map(|&w| {
                let v = w * one;
                let q = if v < 0.0 { (v - 0.5) as i32 } else { (v + 0.5) as i32 };
                // torch stores the tap as i16.
                i32::from(q as i16)
            })
            .collect();
        Self {
            start,
            len,
            taps,
            weights,
            precision,
        }
    }

    /// One output sample from `len` inputs spaced `stride` apart in `src`.
    #[inline]
    fn apply(&self, i: usize, src: &[u8], base: usize, stride: usize) -> u8 {
        let w = &self.weights[i * self.taps..i * self.taps + self.len[i]];
        let first = base + self.start[i] * stride;
        let mut acc: i32 = 1 << (self.precision.max(1) - 1);
        for (j, &wj) in w.iter().enumerate() {
            acc += i32::from(src[first + j * stride]) * wj;
        }
        (acc >> self.precision).clamp(0, 255) as u8
    }
}

/// Resizes an RGB image to `height x width` with torch's uint8 bicubic
/// antialiased resampling (width pass first, then height; a pass whose size
/// does not change is skipped).
///
/// ```
/// use mllm_engine::multimodal::{resize_bicubic, Rgb8Image};
///
/// let img = Rgb8Image::new(3, 2, vec![200; 3 * 2 * 3]).unwrap();
/// let out = resize_bicubic(&img, 4, 5);
/// assert_eq!((out.width(), out.height()), (5, 4));
/// assert!(out.pixels().iter().all(|&p| p == 200)); // a flat image stays flat
/// ```
pub fn resize_bicubic(img: &Rgb8Image, height: u32, width: u32) -> Rgb8Image {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let mut data = img.pixels().to_vec();
    let mut cur_w = in_w;
    if out_w != in_w {
        let taps = Taps::new(in_w, out_w);
        let mut next = vec![0u8; in_h * out_w * 3];
        for y in 0..in_h {
            for x in 0..out_w {
                for c in 0..3 {
                    next[(y * out_w + x) * 3 + c] = taps.apply(x, &data, y * in_w * 3 + c, 3);
                }
            }
        }
        data = next;
        cur_w = out_w;
    }
    if out_h != in_h {
        let taps = Taps::new(in_h, out_h);
        let row = cur_w * 3;
        let mut next = vec![0u8; out_h * row];
        for y in 0..out_h {
            for k in 0..row {
                next[y * row + k] = taps.apply(y, &data, k, row);
            }
        }
        data = next;
    }
    Rgb8Image::new(width, height, data).expect("resampler output has the requested size")
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN3: (u32, u64, u64) = (32, 65_536, 16_777_216);

    fn qwen3(h: u32, w: u32) -> Result<(u32, u32), ImageInputError> {
        smart_resize(h, w, QWEN3.0, QWEN3.1, QWEN3.2)
    }

    #[test]
    fn keeps_multiples_inside_the_range() {
        assert_eq!(qwen3(512, 512).unwrap(), (512, 512));
        assert_eq!(qwen3(4096, 4096).unwrap(), (4096, 4096));
    }

    #[test]
    fn rounds_half_to_even_like_python() {
        // 48 / 32 = 1.5 -> 2, 80 / 32 = 2.5 -> 2 (not 3); then scaled up to min pixels.
        assert_eq!(smart_resize(48, 80, 32, 0, u64::MAX).unwrap(), (64, 64));
        assert_eq!(smart_resize(112, 144, 32, 0, u64::MAX).unwrap(), (128, 128));
    }

    #[test]
    fn scales_up_small_and_down_large_images() {
        // 53x37 -> beta = sqrt(65536 / 1961) = 5.781; ceil(53 * 5.781 / 32) = 10.
        assert_eq!(qwen3(53, 37).unwrap(), (320, 224));
        let (h, w) = qwen3(8000, 6000).unwrap();
        assert!(u64::from(h) * u64::from(w) <= QWEN3.2);
        assert_eq!((h % 32, w % 32), (0, 0));
        assert_eq!((h, w), (4704, 3520));
    }

    #[test]
    fn tiny_images_get_at_least_one_factor() {
        assert_eq!(
            smart_resize(1, 1, 32, 0, 1024).unwrap_err().to_string(),
            "image size 1x1 is degenerate (a side is zero or resizes to zero)"
        );
        assert_eq!(qwen3(1, 1).unwrap(), (256, 256));
        // floor(100 / 31.25 / 32) = 0, lifted to one factor.
        assert_eq!(smart_resize(10_000, 100, 32, 0, 32 * 32).unwrap(), (320, 32));
    }

    #[test]
    fn rejects_extreme_aspect_ratio_and_zero_sides() {
        assert!(matches!(qwen3(1, 201), Err(ImageInputError::AspectRatio { .. })));
        assert_eq!(qwen3(1, 200).unwrap(), (32, 3648));
        assert!(matches!(qwen3(0, 10), Err(ImageInputError::Degenerate { .. })));
        let msg = qwen3(10, 4000).unwrap_err().to_string();
        assert!(msg.contains("aspect ratio 400.0"), "{msg}");
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(37, 224), (224, 37), (200, 64), (5, 5), (1000, 3)] {
            let t = Taps::new(i, o);
            for k in 0..o {
                let s: i32 = t.weights[k * t.taps..k * t.taps + t.len[k]].iter().sum();
                let one = 1i32 << t.precision;
                assert!((s - one).abs() <= t.len[k] as i32, "{i}->{o} row {k}: {s} vs {one}");
            }
        }
    }
}
