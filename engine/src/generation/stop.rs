//! Stop strings over streamed text.

/// Watches streamed text for stop strings. Text that might be the start of a stop string is
/// held back until it is clear either way, so a stop string never reaches the output.
///
/// ```
/// use mllm_engine::generation::StopMatcher;
/// let mut m = StopMatcher::new(vec!["\nUser:".into()]);
/// assert_eq!(m.push("Paris."), ("Paris.".to_string(), false));
/// assert_eq!(m.push("\nUs"), (String::new(), false)); // maybe a stop string: held back
/// assert_eq!(m.push("er: hi"), (String::new(), true)); // it was
/// assert_eq!(m.matched(), Some("\nUser:"));
/// let mut m = StopMatcher::new(vec!["\nUser:".into()]);
/// assert_eq!(m.push("a\nU"), ("a".to_string(), false));
/// assert_eq!(m.push("nits"), ("\nUnits".to_string(), false)); // it was not
/// ```
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    matched: Option<String>,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Self::default()
        }
    }

    /// Adds a piece of text; returns the text now safe to emit and whether a stop string was
    /// found (the text before it is emitted, the rest dropped). After a stop, returns nothing.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.matched.is_some() {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, _)| at);
        if let Some((at, stop)) = first {
            self.matched = Some(stop.clone());
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        let keep = self.held_back_len();
        let out = self.pending[..self.pending.len() - keep].to_string();
        self.pending.drain(..self.pending.len() - keep);
        (out, false)
    }

    /// The stop string that ended the text, if any.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// The held-back text, at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn held_back_len(&self) -> usize {
        let p = &self.pending;
        p.char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&p[i..])))
            .map_or(0, |i| p.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    #[test]
    fn stop_inside_one_piece_and_multibyte_text() {
        let mut m = StopMatcher::new(vec!["é!".into(), String::new()]);
        assert_eq!(m.push("café"), ("caf".to_string(), false));
        assert_eq!(m.push("s"), ("és".to_string(), false));
        assert_eq!(m.push("x é! y"), ("x ".to_string(), true));
        assert_eq!(m.push("more"), (String::new(), true));
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("abc"), ("abc".to_string(), false));
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("the EN"), ("the ".to_string(), false));
        assert_eq!(m.flush(), "EN");
    }
}
