//! PNG/JPEG/WebP bytes to an 8-bit RGB image, the way HF's processor sees a
//! PIL image: transparency is composited onto opaque white with PIL's integer
//! `alpha_composite` arithmetic; JPEG goes through libjpeg-turbo as in PIL
//! (CMYK JPEG, which libjpeg does not turn into RGB, through the `image`
//! crate); EXIF orientation is not applied (the
//! processor does not apply it either).

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader};

use super::config::ImageLimits;
use super::error::ImageInputError;
use super::jpeg::{decode_jpeg, JpegDecode};

/// An 8-bit RGB image, rows top to bottom, `[r, g, b]` per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8Image {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl Rgb8Image {
    /// Wraps `data` (`width * height * 3` bytes); `None` if the length is wrong.
    ///
    /// ```
    /// let img = mllm_engine::multimodal::Rgb8Image::new(2, 1, vec![0, 0, 0, 255, 255, 255]);
    /// assert!(img.is_some());
    /// ```
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Option<Self> {
        (data.len() as u64 == u64::from(width) * u64::from(height) * 3).then_some(Self { width, height, data })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The interleaved RGB bytes.
    pub fn pixels(&self) -> &[u8] {
        &self.data
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        _ => "unsupported",
    }
}

/// Decodes PNG, JPEG or WebP bytes (format sniffed from the content) to RGB.
///
/// `limits.max_bytes` is checked first, then the header's `width * height`
/// against `limits.max_pixels`, before any pixel is decoded.
///
/// ```
/// use mllm_engine::multimodal::{decode_image, ImageLimits};
///
/// // A 1x1 PNG, fully transparent red: composited onto white.
/// let mut png = Vec::new();
/// image::RgbaImage::from_pixel(1, 1, image::Rgba([255, 0, 0, 0]))
///     .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
///     .unwrap();
/// let img = decode_image(&png, &ImageLimits::default()).unwrap();
/// assert_eq!(img.pixels(), &[255, 255, 255]);
/// ```
pub fn decode_image(bytes: &[u8], limits: &ImageLimits) -> Result<Rgb8Image, ImageInputError> {
    limits.check_bytes(bytes.len())?;
    let format = image::guess_format(bytes).ok();
    let format = match format {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => f,
        other => {
            return Err(ImageInputError::UnsupportedFormat {
                detected: other.map(|f| format!("{f:?}")),
            });
        }
    };
    let name = format_name(format);
    let decode_err = |e: image::ImageError| ImageInputError::Decode {
        format: name,
        reason: e.to_string(),
    };
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(decode_err)?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImageInputError::TooManyPixels {
            max: limits.max_pixels,
            width,
            height,
            pixels,
        });
    }
    if pixels == 0 {
        return Err(ImageInputError::Degenerate { width, height });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(width);
    image_limits.max_image_height = Some(height);
    // RGBA at 16 bits per channel is the largest buffer a decoder makes.
    image_limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(1 << 20));
    reader.limits(image_limits);
    if format == ImageFormat::Jpeg {
        match decode_jpeg(bytes) {
            Ok(JpegDecode::Rgb(img)) => return Ok(img),
            Ok(JpegDecode::NotRgbConvertible) => {}
            Err(reason) => return Err(ImageInputError::Decode { format: name, reason }),
        }
    }
    let decoded = reader.decode().map_err(decode_err)?;
    Ok(to_rgb(decoded))
}

/// RGB8 as PIL's `convert("RGB")` after compositing any alpha onto white.
fn to_rgb(img: DynamicImage) -> Rgb8Image {
    let (width, height) = (img.width(), img.height());
    let data = match img {
        DynamicImage::ImageRgb8(buf) => buf.into_raw(),
        other if other.color().has_alpha() => {
            let rgba = other.into_rgba8().into_raw();
            let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
            for px in rgba.chunks_exact(4) {
                let a = px[3];
                out.extend(px[..3].iter().map(|&c| over_white(c, a)));
            }
            out
        }
        other => other.into_rgb8().into_raw(),
    };
    Rgb8Image { width, height, data }
}

/// One channel of PIL `alpha_composite(white, src)`: with an opaque
/// destination PIL's blend coefficients reduce to `128 * a` and
/// `128 * (255 - a)` (7 fraction bits), and its rounded divide by 255 is
/// `(t + (t >> 8)) >> 8`.
fn over_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    let (c, a) = (u32::from(c), u32::from(a));
    let t = (c * a + 255 * (255 - a)) * 128 + (0x80 << 7);
    (((t + (t >> 8)) >> 8) >> 7) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_matches_the_exact_blend_when_it_is_integral() {
        for c in [0u8, 17, 128, 255] {
            assert_eq!(over_white(c, 255), c);
            assert_eq!(over_white(c, 0), 255);
        }
        // 0 * 128/255 + 255 * 127/255 = 127.
        assert_eq!(over_white(0, 128), 127);
    }

    #[test]
    fn composite_rounds_like_pil() {
        // Exact float blend, rounded: PIL agrees with it within one step
        // everywhere, and exactly where the blend is not near a half.
        for a in 1..=255u32 {
            for c in (0..=255u32).step_by(5) {
                let exact = (c * a + 255 * (255 - a)) as f64 / 255.0;
                let got = f64::from(over_white(c as u8, a as u8));
                assert!((got - exact).abs() <= 0.51, "c={c} a={a}: {got} vs {exact}");
            }
        }
    }

    #[test]
    fn rejects_other_formats_and_garbage() {
        let limits = ImageLimits::default();
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        let err = decode_image(gif, &limits).unwrap_err();
        assert!(matches!(err, ImageInputError::UnsupportedFormat { .. }), "{err}");
        assert!(err.to_string().contains("send PNG, JPEG or WebP"));
        let err = decode_image(b"not an image at all", &limits).unwrap_err();
        assert!(matches!(err, ImageInputError::UnsupportedFormat { detected: None }));
        // A PNG signature with a truncated header.
        let err = decode_image(b"\x89PNG\r\n\x1a\n\0\0", &limits).unwrap_err();
        assert!(matches!(err, ImageInputError::Decode { format: "PNG", .. }), "{err}");
    }

    #[test]
    fn enforces_byte_and_pixel_limits_before_decoding() {
        let mut png = Vec::new();
        let img = image::RgbImage::from_pixel(40, 30, image::Rgb([1, 2, 3]));
        img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
        let ok = decode_image(&png, &ImageLimits::default()).unwrap();
        assert_eq!((ok.width(), ok.height()), (40, 30));
        assert_eq!(&ok.pixels()[..3], &[1, 2, 3]);
        let tight = ImageLimits {
            max_pixels: 1199,
            ..ImageLimits::default()
        };
        let err = decode_image(&png, &tight).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image is 40x30 = 1200 pixels, the limit is 1199 pixels"
        );
        let tiny = ImageLimits {
            max_bytes: 10,
            ..ImageLimits::default()
        };
        assert!(matches!(
            decode_image(&png, &tiny),
            Err(ImageInputError::TooManyBytes { max: 10, .. })
        ));
    }
}
