//! JPEG to RGB through libjpeg-turbo (as vendored by `mozjpeg-sys`), the library PIL links.
//!
//! Why not the `image` crate's zune-jpeg: the HF processor sees PIL's decode, and only the same
//! library gives the same pixels. libjpeg-turbo's integer IDCT, its "fancy" 4:2:0 chroma
//! upsampling (one rounding after both directions) and its fixed-point YCbCr tables reproduce
//! `Image.open(f).convert("RGB")` bit for bit; zune-jpeg rounds the upsampling after each
//! direction and was up to 5 levels off on a camera JPEG (3e-3 mean abs after normalisation,
//! three times the parity target).
//!
//! libjpeg reports a fatal error by calling `error_exit`, which must not return; ours unwinds
//! (`mozjpeg-sys`'s `unwinding` feature compiles the C with unwind tables) and the unwind is
//! caught here, so a malformed file is an error value, never an abort.

use std::ffi::c_int;
use std::panic::{self, AssertUnwindSafe};

use mozjpeg_sys as jpeg;

use super::decode::Rgb8Image;

/// What libjpeg made of the bytes.
pub(super) enum JpegDecode {
    /// Decoded exactly as PIL does.
    Rgb(Rgb8Image),
    /// CMYK or YCCK: libjpeg does not convert these to RGB; the caller decodes another way.
    NotRgbConvertible,
}

/// Decodes baseline or progressive JPEG (grayscale, YCbCr or RGB) to RGB8. A file that ends
/// before its last scan is an error, as in PIL (which raises "image file is truncated");
/// recoverable corruption warnings are ignored, as PIL ignores them.
pub(super) fn decode_jpeg(bytes: &[u8]) -> Result<JpegDecode, String> {
    let len = jpeg::c_ulong::try_from(bytes.len()).map_err(|_| "file too large".to_string())?;
    let mut session = Session::new();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| session.run(bytes, len)));
    outcome.unwrap_or_else(|payload| {
        Err(payload
            .downcast::<String>()
            .map(|m| *m)
            .unwrap_or_else(|_| "libjpeg failed".to_string()))
    })
}

/// One libjpeg decompressor and its error manager, boxed so the pointers libjpeg keeps into
/// them stay valid; destroyed on drop, also after an unwind out of libjpeg.
struct Session {
    cinfo: Box<jpeg::jpeg_decompress_struct>,
    _err: Box<jpeg::jpeg_error_mgr>,
}

impl Session {
    fn new() -> Self {
        // SAFETY: both structs are plain C data for which all-zero is the documented
        // pre-initialisation state; `jpeg_std_error` fills the manager, then our two hooks
        // replace the ones that would exit or print.
        unsafe {
            let mut err: Box<jpeg::jpeg_error_mgr> = Box::new(std::mem::zeroed());
            jpeg::jpeg_std_error(&mut err);
            err.error_exit = Some(unwind_on_error);
            err.emit_message = Some(unwind_on_truncation);
            let mut cinfo: Box<jpeg::jpeg_decompress_struct> = Box::new(std::mem::zeroed());
            cinfo.common.err = &mut *err;
            jpeg::jpeg_create_decompress(&mut *cinfo);
            Self { cinfo, _err: err }
        }
    }

    fn run(&mut self, bytes: &[u8], len: jpeg::c_ulong) -> Result<JpegDecode, String> {
        let cinfo = &mut *self.cinfo;
        // SAFETY: `bytes` outlives the session's use of it (the decode finishes or unwinds
        // before this returns); every call follows libjpeg's documented sequence.
        unsafe {
            jpeg::jpeg_mem_src(cinfo, bytes.as_ptr(), len);
            jpeg::jpeg_read_header(cinfo, 1);
            use jpeg::J_COLOR_SPACE::{JCS_CMYK, JCS_YCCK};
            if matches!(cinfo.jpeg_color_space, JCS_CMYK | JCS_YCCK) {
                return Ok(JpegDecode::NotRgbConvertible);
            }
            // The library defaults, restated because parity with PIL depends on them.
            cinfo.out_color_space = jpeg::J_COLOR_SPACE::JCS_RGB;
            cinfo.dct_method = jpeg::J_DCT_METHOD::JDCT_ISLOW;
            cinfo.do_fancy_upsampling = 1;
            jpeg::jpeg_start_decompress(cinfo);
            let (width, height) = (cinfo.output_width, cinfo.output_height);
            if cinfo.output_components != 3 {
                return Err(format!("{} output components, expected 3", cinfo.output_components));
            }
            let row_bytes = width as usize * 3;
            let mut data = vec![0u8; row_bytes * height as usize];
            while cinfo.output_scanline < height {
                let offset = cinfo.output_scanline as usize * row_bytes;
                let mut row = data[offset..].as_mut_ptr();
                if jpeg::jpeg_read_scanlines(cinfo, &mut row, 1) == 0 {
                    return Err("no scanline decoded".to_string());
                }
            }
            jpeg::jpeg_finish_decompress(cinfo);
            Rgb8Image::new(width, height, data)
                .map(JpegDecode::Rgb)
                .ok_or_else(|| "decoded size mismatch".to_string())
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: created in `new`; libjpeg allows destroy in any state, also mid-decode.
        unsafe { jpeg::jpeg_destroy_decompress(&mut self.cinfo) }
    }
}

/// libjpeg's text for the pending message.
fn message_text(cinfo: &mut jpeg::jpeg_common_struct) -> String {
    let mut buf = [0u8; 80];
    // SAFETY: `err` was set by `Session::new`; `format_message` writes a NUL-terminated string
    // of at most JMSG_LENGTH_MAX (80) bytes. The binding declares the buffer `&[u8; 80]`
    // although C writes to it, so it is passed as a pointer-compatible `&mut`.
    unsafe {
        let Some(format) = (*cinfo.err).format_message else {
            return format!("libjpeg message {}", (*cinfo.err).msg_code);
        };
        type Writer = unsafe extern "C-unwind" fn(&mut jpeg::jpeg_common_struct, &mut [u8; 80]);
        let format: Writer = std::mem::transmute(format);
        format(cinfo, &mut buf);
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

extern "C-unwind" fn unwind_on_error(cinfo: &mut jpeg::jpeg_common_struct) {
    // `resume_unwind` skips the panic hook: a bad upload is not a crash worth a backtrace.
    panic::resume_unwind(Box::new(message_text(cinfo)));
}

extern "C-unwind" fn unwind_on_truncation(cinfo: &mut jpeg::jpeg_common_struct, level: c_int) {
    // SAFETY: `err` was set by `Session::new`.
    let code = unsafe { (*cinfo.err).msg_code };
    if level < 0 && code == jpeg::JWRN_JPEG_EOF as c_int {
        panic::resume_unwind(Box::new(
            "the data ends before the image does (truncated file)".to_string(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 128]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg)
            .unwrap();
        out
    }

    #[test]
    fn decodes_to_rgb_of_the_header_size() {
        let JpegDecode::Rgb(img) = decode_jpeg(&encoded(33, 17)).unwrap() else {
            panic!("expected RGB");
        };
        assert_eq!((img.width(), img.height()), (33, 17));
        // Smooth content survives the round trip within JPEG's loss.
        let px = &img.pixels()[(5 * 33 + 4) * 3..][..3];
        assert!((i32::from(px[2]) - 128).abs() <= 8, "{px:?}");
    }

    #[test]
    fn truncated_and_garbage_input_are_errors_not_aborts() {
        let full = encoded(64, 64);
        let err = decode_jpeg(&full[..full.len() / 2]).err().unwrap();
        assert!(err.contains("truncated"), "{err}");
        let mut bad = full.clone();
        bad[2..40].fill(0x5a);
        let err = decode_jpeg(&bad).err().unwrap();
        assert!(!err.is_empty());
        assert!(decode_jpeg(b"\xff\xd8").is_err());
    }
}
