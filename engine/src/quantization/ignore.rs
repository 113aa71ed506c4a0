//! Layer-name patterns as compressed-tensors writes them in `ignore` and `targets`: an exact,
//! prefixed layer name (`model.layers.0.mlp.down_proj`, `lm_head`) or `re:<regex>`, matched like
//! Python's `re.match` (anchored at the start of the name, not at its end).

use regex::Regex;

use super::QuantError;

/// One layer-name pattern.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// The whole name must equal this.
    Exact(String),
    /// `re:<regex>`: the regex must match at the start of the name.
    Regex {
        /// The pattern as written (with `re:`), for messages.
        source: String,
        /// The compiled regex, anchored with `^(?:…)`.
        regex: Regex,
    },
}

impl Pattern {
    /// Parses `re:<regex>` or an exact name.
    ///
    /// ```
    /// use mllm_engine::quantization::ignore::Pattern;
    /// let p = Pattern::parse("re:.*mlp\\.down_proj$").unwrap();
    /// assert!(p.matches("model.layers.3.mlp.down_proj"));
    /// assert!(!p.matches("model.layers.3.mlp.down_proj_x"));
    /// assert!(Pattern::parse("lm_head").unwrap().matches("lm_head"));
    /// assert!(!Pattern::parse("lm_head").unwrap().matches("model.lm_head"));
    /// assert!(Pattern::parse("re:(").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, QuantError> {
        match text.strip_prefix("re:") {
            Some(re) => {
                let regex = Regex::new(&format!("^(?:{re})")).map_err(|e| QuantError::BadPattern {
                    pattern: text.to_string(),
                    reason: e.to_string(),
                })?;
                Ok(Self::Regex {
                    source: text.to_string(),
                    regex,
                })
            }
            None => Ok(Self::Exact(text.to_string())),
        }
    }

    /// Whether `name` (a prefixed layer name) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(s) => s == name,
            Self::Regex { regex, .. } => regex.is_match(name),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Exact(s) => s,
            Self::Regex { source, .. } => source,
        }
    }
}

/// A list of patterns; a name matches the list if it matches any of them.
#[derive(Debug, Clone, Default)]
pub struct PatternList(Vec<Pattern>);

impl PatternList {
    /// Parses every entry (see [`Pattern::parse`]).
    ///
    /// ```
    /// use mllm_engine::quantization::ignore::PatternList;
    /// let ignore = PatternList::parse(["lm_head", "re:.*\\.layers\\.0\\."]).unwrap();
    /// assert!(ignore.matches("lm_head"));
    /// assert!(ignore.matches("model.layers.0.self_attn.q_proj"));
    /// assert!(!ignore.matches("model.layers.10.self_attn.q_proj"));
    /// ```
    pub fn parse<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Result<Self, QuantError> {
        entries
            .into_iter()
            .map(|e| Pattern::parse(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether any pattern matches `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.first_match(name).is_some()
    }

    /// The first pattern matching `name`.
    pub fn first_match(&self, name: &str) -> Option<&Pattern> {
        self.0.iter().find(|p| p.matches(name))
    }

    /// The patterns as written, in order.
    pub fn entries(&self) -> Vec<&str> {
        self.0.iter().map(Pattern::as_str).collect()
    }

    /// Appends the patterns of `other`.
    pub fn extend(&mut self, other: PatternList) {
        self.0.extend(other.0);
    }
}

/// The one decision of a fused layer whose parts (`q_proj`, `k_proj`, `v_proj`) are decided
/// separately: every part must agree, else [`QuantError::MixedFusedLayer`] names each part's
/// decision. `decide` returns a value and a description of it for the message.
pub fn fused_decision<T: PartialEq>(
    prefix: &str,
    parts: &[&str],
    mut decide: impl FnMut(&str) -> Result<(T, String), QuantError>,
) -> Result<T, QuantError> {
    let mut decided: Vec<(String, T, String)> = Vec::with_capacity(parts.len());
    for part in parts {
        let name = format!("{prefix}.{part}");
        let (value, what) = decide(&name)?;
        decided.push((name, value, what));
    }
    let mixed = decided.windows(2).any(|w| w[0].1 != w[1].1);
    if mixed {
        return Err(QuantError::MixedFusedLayer {
            layer: format!("{prefix}.{{{}}}", parts.join(",")),
            parts: decided.iter().map(|(n, _, w)| format!("{n}: {w}")).collect(),
        });
    }
    decided
        .into_iter()
        .next()
        .map(|(_, v, _)| v)
        .ok_or_else(|| QuantError::Invalid(format!("layer `{prefix}` has no parts")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_is_anchored_at_start_only() {
        let p = Pattern::parse("re:model\\.layers\\.1").unwrap();
        assert!(p.matches("model.layers.1.mlp.up_proj"));
        assert!(p.matches("model.layers.12.mlp.up_proj")); // re.match semantics
        assert!(!p.matches("x.model.layers.1.mlp.up_proj"));
        let alt = Pattern::parse("re:a|b").unwrap();
        assert!(
            alt.matches("b.c") && !alt.matches("c.b"),
            "alternation stays inside the anchor"
        );
    }

    #[test]
    fn fused_parts_must_agree() {
        let ignore = PatternList::parse(["model.layers.0.self_attn.k_proj"]).unwrap();
        let decide = |n: &str| {
            let q = !ignore.matches(n);
            Ok((q, if q { "w8a8".to_string() } else { "ignored".to_string() }))
        };
        let err = fused_decision("model.layers.0.self_attn", &["q_proj", "k_proj", "v_proj"], decide).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("model.layers.0.self_attn.{q_proj,k_proj,v_proj}"), "{msg}");
        assert!(msg.contains("model.layers.0.self_attn.k_proj: ignored"), "{msg}");
        assert!(fused_decision("model.layers.1.self_attn", &["q_proj", "k_proj", "v_proj"], decide).unwrap());
    }
}
