//! Where the bytes of an OpenAI `image_url` content part come from:
//! `data:` URIs always, local files only under an allowed directory
//! (`--allowed-local-media-path`, off by default), remote URLs never.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use base64::Engine;

use super::config::ImageLimits;
use super::error::ImageInputError;

/// The one directory local image paths may point into, canonicalised once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMediaRoot {
    root: PathBuf,
}

impl LocalMediaRoot {
    /// Canonicalises `dir` (resolving symlinks); errors if it is not a
    /// directory.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let root = dir.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Self { root })
    }

    /// The canonical directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The canonical path of `path` (relative paths are taken from the
    /// root), if it stays inside the root after `..` and symlinks resolve.
    fn resolve(&self, path: &Path) -> Result<PathBuf, ImageInputError> {
        let shown = || path.display().to_string();
        let joined = self.root.join(path);
        // Lexical check first, so a missing file outside the root is
        // reported as outside, not as missing.
        if !lexically_normal(&joined).starts_with(&self.root) {
            return Err(ImageInputError::OutsideAllowedRoot { path: shown() });
        }
        let real = joined.canonicalize().map_err(|e| ImageInputError::LocalFile {
            path: shown(),
            reason: e.kind().to_string(),
        })?;
        if !real.starts_with(&self.root) {
            return Err(ImageInputError::OutsideAllowedRoot { path: shown() });
        }
        Ok(real)
    }
}

/// `path` with `.` dropped and `..` applied to the preceding component,
/// without touching the file system.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The bytes behind an OpenAI `image_url.url`.
///
/// * `data:image/<png|jpeg|webp>;base64,<payload>`: decoded (padding optional,
///   ASCII whitespace ignored).
/// * a local path or `file://` URI: read only if `local_root` is set and the
///   canonical path lies inside it; relative paths are taken from the root.
/// * `http://`, `https://` and other schemes: refused.
///
/// `limits.max_bytes` bounds the returned bytes (checked before reading or
/// decoding where the size is known).
///
/// ```
/// use mllm_engine::multimodal::{load_image_url, ImageInputError, ImageLimits};
///
/// let limits = ImageLimits::default();
/// let bytes = load_image_url("data:image/png;base64,iVBORw0KGgo=", None, &limits).unwrap();
/// assert_eq!(bytes, b"\x89PNG\r\n\x1a\n");
/// let err = load_image_url("https://example.com/cat.png", None, &limits).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "remote image URLs are not fetched; send a data: URI (got https://example.com/cat.png)"
/// );
/// assert!(matches!(
///     load_image_url("/etc/passwd", None, &limits),
///     Err(ImageInputError::LocalPathsDisabled)
/// ));
/// ```
pub fn load_image_url(
    url: &str,
    local_root: Option<&LocalMediaRoot>,
    limits: &ImageLimits,
) -> Result<Vec<u8>, ImageInputError> {
    match scheme_of(url) {
        Some(s) if s.eq_ignore_ascii_case("data") => decode_data_uri(&url[s.len() + 1..], limits),
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
            Err(ImageInputError::RemoteUrl {
                url: url.chars().take(200).collect(),
            })
        }
        Some(s) if s.eq_ignore_ascii_case("file") => {
            let root = local_root.ok_or(ImageInputError::LocalPathsDisabled)?;
            let path = file_uri_path(&url[s.len() + 1..])?;
            read_local(root, &path, limits)
        }
        Some(s) => Err(ImageInputError::UnsupportedScheme {
            scheme: s.chars().take(32).collect(),
        }),
        None => {
            let root = local_root.ok_or(ImageInputError::LocalPathsDisabled)?;
            read_local(root, Path::new(url), limits)
        }
    }
}

/// The URI scheme (RFC 3986: a letter, then letters, digits, `+ - .`), if
/// `url` has one. A single letter is not taken as a scheme.
fn scheme_of(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && scheme.len() > 1;
    valid.then_some(scheme)
}

/// The path of `file:` URI text after the colon: `///abs/path` or
/// `//localhost/abs/path`, percent-decoded.
fn file_uri_path(rest: &str) -> Result<PathBuf, ImageInputError> {
    let bad = |reason: &str| ImageInputError::LocalFile {
        path: format!("file:{rest}"),
        reason: reason.to_string(),
    };
    let after = rest
        .strip_prefix("//")
        .ok_or_else(|| bad("file: URIs must be file:///absolute/path"))?;
    let path = if after.starts_with('/') {
        after
    } else if let Some(p) = after.strip_prefix("localhost") {
        p
    } else {
        return Err(bad("file: URIs with a host other than localhost are not supported"));
    };
    let mut bytes = Vec::with_capacity(path.len());
    let raw = path.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            bytes.push(byte.ok_or_else(|| bad("malformed percent escape"))?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("path is not UTF-8"))?;
    Ok(PathBuf::from(text))
}

fn read_local(root: &LocalMediaRoot, path: &Path, limits: &ImageLimits) -> Result<Vec<u8>, ImageInputError> {
    let real = root.resolve(path)?;
    let shown = || path.display().to_string();
    let io_err = |e: std::io::Error| ImageInputError::LocalFile {
        path: shown(),
        reason: e.kind().to_string(),
    };
    let file = std::fs::File::open(&real).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(ImageInputError::LocalFile {
            path: shown(),
            reason: "not a regular file".to_string(),
        });
    }
    limits.check_bytes(usize::try_from(meta.len()).unwrap_or(usize::MAX))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded even if the file grows after the size check.
    file.take(limits.max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    limits.check_bytes(bytes.len())?;
    Ok(bytes)
}

/// Media types accepted in a `data:` URI.
const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/jpg", "image/webp"];

/// `rest` is the URI after `data:`.
fn decode_data_uri(rest: &str, limits: &ImageLimits) -> Result<Vec<u8>, ImageInputError> {
    let (meta, payload) = rest.split_once(',').ok_or(ImageInputError::MalformedDataUri {
        reason: "no comma before the payload",
    })?;
    let mut parts = meta.split(';');
    let media_type = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let is_base64 = meta
        .rsplit(';')
        .next()
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("base64"));
    if !IMAGE_MEDIA_TYPES.contains(&media_type.as_str()) {
        return Err(ImageInputError::NotAnImageMediaType {
            media_type: if media_type.is_empty() {
                "text/plain (none given)".to_string()
            } else {
                media_type.chars().take(64).collect()
            },
        });
    }
    if !is_base64 {
        return Err(ImageInputError::MalformedDataUri {
            reason: "the payload is not marked ;base64",
        });
    }
    // Three bytes per four characters: refuse before decoding.
    limits.check_bytes(payload.len() / 4 * 3)?;
    let engine = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
    let decoded = if payload.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: Vec<u8> = payload.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        engine.decode(compact)
    } else {
        engine.decode(payload)
    }
    .map_err(|source| ImageInputError::Base64 { source })?;
    limits.check_bytes(decoded.len())?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ImageLimits {
        ImageLimits::default()
    }

    #[test]
    fn data_uris() {
        let ok = |u: &str| load_image_url(u, None, &limits());
        assert_eq!(ok("data:image/png;base64,AAEC").unwrap(), vec![0, 1, 2]);
        assert_eq!(ok("DATA:Image/JPEG;base64,AAE").unwrap(), vec![0, 1]);
        assert_eq!(ok("data:image/webp;charset=x;base64,AA\nEC\n").unwrap(), vec![0, 1, 2]);
        let err = ok("data:image/png,rawbytes").unwrap_err();
        assert!(matches!(err, ImageInputError::MalformedDataUri { .. }), "{err}");
        let err = ok("data:text/plain;base64,AAEC").unwrap_err();
        assert!(err.to_string().contains("media type `text/plain`"), "{err}");
        assert!(matches!(
            ok("data:;base64,AAEC"),
            Err(ImageInputError::NotAnImageMediaType { .. })
        ));
        assert!(matches!(
            ok("data:image/png;base64"),
            Err(ImageInputError::MalformedDataUri { .. })
        ));
        assert!(matches!(
            ok("data:image/png;base64,@@@@"),
            Err(ImageInputError::Base64 { .. })
        ));
        let tight = ImageLimits {
            max_bytes: 2,
            ..limits()
        };
        let err = load_image_url("data:image/png;base64,AAECAw==", None, &tight).unwrap_err();
        assert!(matches!(err, ImageInputError::TooManyBytes { max: 2, .. }), "{err}");
    }

    #[test]
    fn remote_and_unknown_schemes_are_refused() {
        for u in ["http://x/a.png", "HTTPS://x/a.png"] {
            assert!(matches!(
                load_image_url(u, None, &limits()),
                Err(ImageInputError::RemoteUrl { .. })
            ));
        }
        let err = load_image_url("ftp://x/a.png", None, &limits()).unwrap_err();
        assert_eq!(err.to_string(), "unsupported image URL scheme `ftp:`; send a data: URI");
    }

    #[test]
    fn scheme_detection() {
        assert_eq!(scheme_of("data:x"), Some("data"));
        assert_eq!(scheme_of("a+b.c-d:x"), Some("a+b.c-d"));
        assert_eq!(scheme_of("C:\\x"), None);
        assert_eq!(scheme_of("dir/a:b.png"), None);
        assert_eq!(scheme_of("plain.png"), None);
    }

    #[test]
    fn local_paths_are_off_by_default() {
        for u in ["/tmp/a.png", "a.png", "file:///tmp/a.png"] {
            let err = load_image_url(u, None, &limits()).unwrap_err();
            assert!(matches!(err, ImageInputError::LocalPathsDisabled), "{u}: {err}");
        }
    }

    #[test]
    fn local_paths_stay_inside_the_root() {
        let base = tempfile::tempdir().unwrap();
        let root_dir = base.path().join("media");
        std::fs::create_dir_all(root_dir.join("sub")).unwrap();
        std::fs::write(root_dir.join("sub/a b.png"), b"inside").unwrap();
        std::fs::write(base.path().join("secret.png"), b"outside").unwrap();
        let root = LocalMediaRoot::new(&root_dir).unwrap();
        let load = |u: &str| load_image_url(u, Some(&root), &limits());

        assert_eq!(load("sub/a b.png").unwrap(), b"inside");
        let abs = root.path().join("sub/a b.png");
        assert_eq!(load(abs.to_str().unwrap()).unwrap(), b"inside");
        let uri = format!("file://{}", abs.to_str().unwrap().replace(' ', "%20"));
        assert_eq!(load(&uri).unwrap(), b"inside");
        let uri = format!("file://localhost{}", abs.to_str().unwrap().replace(' ', "%20"));
        assert_eq!(load(&uri).unwrap(), b"inside");

        // Traversal, absolute escapes, and a missing file outside the root.
        for u in ["../secret.png", "sub/../../secret.png", "/etc/passwd", "../nope.png"] {
            let err = load(u).unwrap_err();
            assert!(matches!(err, ImageInputError::OutsideAllowedRoot { .. }), "{u}: {err}");
        }
        let secret = base.path().canonicalize().unwrap().join("secret.png");
        let err = load(&format!("file://{}", secret.display())).unwrap_err();
        assert!(matches!(err, ImageInputError::OutsideAllowedRoot { .. }), "{err}");
        assert!(matches!(load("missing.png"), Err(ImageInputError::LocalFile { .. })));
        assert!(matches!(load("sub"), Err(ImageInputError::LocalFile { .. })));
        assert!(matches!(
            load("file://host/x.png"),
            Err(ImageInputError::LocalFile { .. })
        ));

        // A symlink inside the root pointing out of it is refused; one
        // pointing inside is followed.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(base.path().join("secret.png"), root_dir.join("link.png")).unwrap();
            std::os::unix::fs::symlink(base.path(), root_dir.join("up")).unwrap();
            std::os::unix::fs::symlink(root_dir.join("sub/a b.png"), root_dir.join("ok.png")).unwrap();
            for u in ["link.png", "up/secret.png", "up/media/../secret.png"] {
                let err = load(u).unwrap_err();
                assert!(matches!(err, ImageInputError::OutsideAllowedRoot { .. }), "{u}: {err}");
            }
            assert_eq!(load("ok.png").unwrap(), b"inside");
        }

        let tight = ImageLimits {
            max_bytes: 3,
            ..limits()
        };
        let err = load_image_url("sub/a b.png", Some(&root), &tight).unwrap_err();
        assert!(
            matches!(err, ImageInputError::TooManyBytes { max: 3, given: 6 }),
            "{err}"
        );
    }
}
