//! The errors of image input handling. Every [`ImageInputError`] is the
//! client's fault (a 400 once wired into the server); [`ImageConfigError`] is
//! a bad checkpoint and is reported at startup.

use std::path::PathBuf;

/// Why an image in a request was refused. The messages are written for the
/// API user: they name the limit and the value that broke it.
#[derive(Debug, thiserror::Error)]
pub enum ImageInputError {
    /// `http://` / `https://` URLs: the server never fetches remote content.
    #[error("remote image URLs are not fetched; send a data: URI (got {url})")]
    RemoteUrl { url: String },
    /// A URL scheme other than `data:`, `file:` or http(s).
    #[error("unsupported image URL scheme `{scheme}:`; send a data: URI")]
    UnsupportedScheme { scheme: String },
    /// A `data:` URI that is not `data:image/...;base64,...`.
    #[error("malformed data: URI: {reason}; expected data:image/<png|jpeg|webp>;base64,<data>")]
    MalformedDataUri { reason: &'static str },
    /// A `data:` URI whose media type is not an image.
    #[error("data: URI has media type `{media_type}`, expected image/png, image/jpeg or image/webp")]
    NotAnImageMediaType { media_type: String },
    /// The base64 payload of a `data:` URI does not decode.
    #[error("data: URI payload is not valid base64: {source}")]
    Base64 {
        #[source]
        source: base64::DecodeError,
    },
    /// A local path was given but local media is off (the default).
    #[error(
        "local image paths are disabled on this server (start it with \
         --allowed-local-media-path to allow a directory); send a data: URI"
    )]
    LocalPathsDisabled,
    /// The path resolves (after `..` and symlinks) outside the allowed root.
    #[error("image path `{path}` is outside the allowed local media directory")]
    OutsideAllowedRoot { path: String },
    /// The local file is missing, unreadable or not a regular file.
    #[error("cannot read image file `{path}`: {reason}")]
    LocalFile { path: String, reason: String },
    /// More images in one request than allowed.
    #[error("too many images in the request: {given}, the limit is {max}")]
    TooManyImages { max: usize, given: usize },
    /// An image's encoded size is over the limit.
    #[error("image is {given} bytes, the limit is {max} bytes")]
    TooManyBytes { max: usize, given: usize },
    /// An image's decoded size is over the limit (checked before decoding).
    #[error("image is {width}x{height} = {pixels} pixels, the limit is {max} pixels")]
    TooManyPixels {
        max: u64,
        width: u32,
        height: u32,
        pixels: u64,
    },
    /// The bytes are not PNG, JPEG or WebP.
    #[error("unsupported image format{}; send PNG, JPEG or WebP", .detected.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    UnsupportedFormat { detected: Option<String> },
    /// The image header or data is corrupt.
    #[error("cannot decode {format} image: {reason}")]
    Decode { format: &'static str, reason: String },
    /// An image with a zero side, or one that would resize to a zero side.
    #[error("image size {width}x{height} is degenerate (a side is zero or resizes to zero)")]
    Degenerate { width: u32, height: u32 },
    /// The long side is more than 200 times the short side (the HF limit).
    #[error("image aspect ratio {ratio:.1} ({width}x{height}) is over the limit of 200")]
    AspectRatio { width: u32, height: u32, ratio: f64 },
    /// The image would need more placeholder tokens than the context has room for.
    #[error("the {width}x{height} image needs {tokens} tokens but only {budget} are left in the context")]
    TooManyTokens {
        width: u32,
        height: u32,
        tokens: usize,
        budget: usize,
    },
    /// The number of `<|image_pad|>` placeholders differs from the number of
    /// images.
    #[error("the prompt has {placeholders} image placeholders but {images} images were given")]
    PlaceholderCount { placeholders: usize, images: usize },
    /// An `<|image_pad|>` not written as `<|vision_start|><|image_pad|><|vision_end|>`.
    #[error("image placeholder at token {position} is not between <|vision_start|> and <|vision_end|>")]
    MisplacedPlaceholder { position: usize },
}

/// A `preprocessor_config.json` the Rust preprocessing cannot honour.
#[derive(Debug, thiserror::Error)]
pub enum ImageConfigError {
    /// Not valid JSON, or a field of the wrong type.
    #[error("cannot parse {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A value outside what the processor supports.
    #[error("preprocessor config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}
