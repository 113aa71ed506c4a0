//! Text helpers shared by the streaming parsers.

/// Length in bytes of the longest suffix of `text` that is a proper,
/// non-empty prefix of `tag`: the bytes a stream must hold back because the
/// next delta may complete the tag.
pub(crate) fn partial_tag_len(text: &str, tag: &str) -> usize {
    let longest = text.len().min(tag.len().saturating_sub(1));
    (1..=longest)
        .rev()
        .find(|&k| text.is_char_boundary(text.len() - k) && tag.is_char_boundary(k) && text.ends_with(&tag[..k]))
        .unwrap_or(0)
}

/// Streams one channel (content or reasoning) trimmed at both ends, exactly
/// as `str::trim` would trim the concatenation: leading whitespace is
/// dropped, a trailing whitespace run is held until non-whitespace follows,
/// and [`Trimmer`] drops whatever is held at the end.
#[derive(Debug, Default)]
pub(crate) struct Trimmer {
    started: bool,
    pending: String,
}

impl Trimmer {
    /// The text to emit for `piece`; empty when everything is held or dropped.
    pub(crate) fn push(&mut self, piece: &str) -> String {
        let piece = if self.started { piece } else { piece.trim_start() };
        if piece.is_empty() {
            return String::new();
        }
        self.started = true;
        let body = piece.trim_end();
        let tail = &piece[body.len()..];
        if body.is_empty() {
            self.pending.push_str(tail);
            return String::new();
        }
        let mut out = std::mem::take(&mut self.pending);
        out.push_str(body);
        self.pending.push_str(tail);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_partial_tag_len_finds_longest_prefix() {
        assert_eq!(partial_tag_len("abc<thi", "<think>"), 4);
        assert_eq!(partial_tag_len("abc<", "<think>"), 1);
        assert_eq!(partial_tag_len("abc", "<think>"), 0);
        assert_eq!(partial_tag_len("<think>", "<think>"), 0);
        assert_eq!(partial_tag_len("é<", "</a>"), 1);
    }

    #[test]
    fn parsers_trimmer_matches_trim() {
        let pieces = ["  ", "\na", " b ", "\n", " ", "c", "  \n"];
        let mut t = Trimmer::default();
        let out: String = pieces.iter().map(|p| t.push(p)).collect();
        assert_eq!(out, pieces.concat().trim());
    }
}
