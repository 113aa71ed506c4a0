//! The ShareGPT workload: a JSON list of `{"conversations": [{"from": "human", "value": ...},
//! {"from": "gpt", "value": ...}, ...]}`. Each conversation's first human turn is the prompt;
//! the gpt turn after it sets the output length.
//!
//! The client has no tokenizer, so lengths are estimated as 1.3 tokens per whitespace-separated
//! word (rounded up); `output_len_override` replaces the estimate for every request. The
//! reported input tokens are the server's own count.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::workload::{Prompt, WorkItem};
use crate::executor::sampler::Rng;

/// Why a ShareGPT file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file cannot be read.
    #[error("cannot read the dataset {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not JSON.
    #[error("the dataset {path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Where and why parsing failed.
        source: serde_json::Error,
    },
    /// JSON, but not a list.
    #[error("the dataset {path} must be a JSON list of {{\"conversations\": [...]}} objects, got {got}")]
    NotAList {
        /// The file.
        path: PathBuf,
        /// The JSON type found.
        got: &'static str,
    },
    /// One entry has the wrong shape.
    #[error("entry {index} of {path} is not a ShareGPT conversation: {reason}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry's position (from 0).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Nothing usable after filtering.
    #[error("the dataset {path} has no usable conversation ({entries} entries; each needs a human turn followed by a gpt turn, each at least 4 estimated tokens, fitting the context of {max_total_len} tokens)")]
    Empty {
        /// The file.
        path: PathBuf,
        /// Entries in the file.
        entries: usize,
        /// The context limit applied.
        max_total_len: usize,
    },
}

/// How to turn a ShareGPT file into a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharegptOptions {
    /// Most requests to take.
    pub num_prompts: usize,
    /// Shuffle seed.
    pub seed: u64,
    /// Output length for every request instead of the gpt turn's estimate.
    pub output_len_override: Option<usize>,
    /// Skip conversations whose estimated prompt + output exceed this (the server's context).
    pub max_total_len: usize,
}

/// A prompt and its reference reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The first human turn.
    pub prompt: String,
    /// The gpt turn after it.
    pub reply: String,
}

#[derive(Deserialize)]
struct Entry {
    conversations: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    from: String,
    value: String,
}

/// Estimated tokens of `text`: 1.3 per whitespace-separated word, rounded up.
///
/// ```
/// use mllm_engine::bench_serve::estimate_tokens;
/// assert_eq!(estimate_tokens("one two three"), 4);
/// assert_eq!(estimate_tokens(""), 0);
/// ```
pub fn estimate_tokens(text: &str) -> usize {
    (text.split_whitespace().count() * 13).div_ceil(10)
}

/// Parses the file's text into prompt/reply pairs (entries without a human turn followed by a
/// gpt turn are skipped); returns the pairs and the number of entries.
///
/// ```
/// use mllm_engine::bench_serve::parse_sharegpt;
/// let text = r#"[{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}]"#;
/// let (pairs, entries) = parse_sharegpt(text, "d.json".as_ref()).unwrap();
/// assert_eq!((pairs[0].prompt.as_str(), pairs[0].reply.as_str(), entries), ("Hi", "Hello!", 1));
/// assert!(parse_sharegpt("{}", "d.json".as_ref()).is_err());
/// ```
pub fn parse_sharegpt(text: &str, path: &Path) -> Result<(Vec<Pair>, usize), DatasetError> {
    let value: Value = serde_json::from_str(text).map_err(|source| DatasetError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let Value::Array(list) = value else {
        return Err(DatasetError::NotAList {
            path: path.to_path_buf(),
            got: json_type(&value),
        });
    };
    let entries = list.len();
    let mut pairs = Vec::new();
    for (index, item) in list.into_iter().enumerate() {
        let entry: Entry = serde_json::from_value(item).map_err(|e| DatasetError::Entry {
            path: path.to_path_buf(),
            index,
            reason: e.to_string(),
        })?;
        let turns = &entry.conversations;
        let human = turns.iter().position(|t| t.from == "human" || t.from == "user");
        let Some(h) = human else { continue };
        if let Some(reply) = turns.get(h + 1).filter(|t| t.from == "gpt" || t.from == "assistant") {
            pairs.push(Pair {
                prompt: turns[h].value.clone(),
                reply: reply.value.clone(),
            });
        }
    }
    Ok((pairs, entries))
}

/// Reads `path` and builds up to `opts.num_prompts` requests, shuffled by `opts.seed`.
pub fn load_sharegpt(path: &Path, opts: &SharegptOptions) -> Result<Vec<WorkItem>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (pairs, entries) = parse_sharegpt(&text, path)?;
    let items = to_workload(pairs, opts);
    if items.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_path_buf(),
            entries,
            max_total_len: opts.max_total_len,
        });
    }
    Ok(items)
}

/// Filters (too short, too long), shuffles and truncates the pairs.
pub fn to_workload(pairs: Vec<Pair>, opts: &SharegptOptions) -> Vec<WorkItem> {
    let mut items: Vec<WorkItem> = pairs
        .into_iter()
        .filter_map(|p| {
            let input_len = estimate_tokens(&p.prompt);
            let output_len = opts.output_len_override.unwrap_or_else(|| estimate_tokens(&p.reply));
            // Like SGLang: very short turns say little about serving speed.
            let too_short = input_len < 4 || (opts.output_len_override.is_none() && output_len < 4);
            (!too_short && output_len > 0 && input_len + output_len <= opts.max_total_len).then_some(WorkItem {
                prompt: Prompt::Text(p.prompt),
                input_len,
                output_len,
            })
        })
        .collect();
    let mut rng = Rng::from_seed(opts.seed);
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
    items.truncate(opts.num_prompts);
    items
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(prompt: &str, reply: &str) -> String {
        format!(
            r#"{{"id": "x", "conversations": [{{"from": "system", "value": "be nice"}}, {{"from": "human", "value": "{prompt}"}}, {{"from": "gpt", "value": "{reply}"}}]}}"#
        )
    }

    fn opts() -> SharegptOptions {
        SharegptOptions {
            num_prompts: 10,
            seed: 0,
            output_len_override: None,
            max_total_len: 2048,
        }
    }

    #[test]
    fn first_human_turn_and_following_reply() {
        let text = format!(
            "[{}, {}, {}]",
            conv("a b c d e", "f g h i j k"),
            r#"{"conversations": [{"from": "gpt", "value": "only a reply"}]}"#,
            conv("w x y z", "one two three four")
        );
        let (pairs, entries) = parse_sharegpt(&text, "d.json".as_ref()).unwrap();
        assert_eq!(entries, 3);
        assert_eq!(pairs.len(), 2);
        assert_eq!(
            (pairs[0].prompt.as_str(), pairs[0].reply.as_str()),
            ("a b c d e", "f g h i j k")
        );
        let items = to_workload(pairs, &opts());
        assert_eq!(items.len(), 2);
        let first = items
            .iter()
            .find(|i| i.prompt == Prompt::Text("a b c d e".into()))
            .unwrap();
        assert_eq!((first.input_len, first.output_len), (7, 8));
    }

    #[test]
    fn filters_short_and_long_and_overrides_output() {
        let pairs = vec![
            Pair {
                prompt: "hi".into(),
                reply: "a b c d".into(),
            },
            Pair {
                prompt: "a b c d".into(),
                reply: "x y z w v".into(),
            },
            Pair {
                prompt: "word ".repeat(100),
                reply: "x y z w".into(),
            },
        ];
        let mut o = opts();
        o.max_total_len = 50;
        let items = to_workload(pairs.clone(), &o);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].output_len, 7);
        o.output_len_override = Some(3);
        assert!(to_workload(pairs, &o).iter().all(|i| i.output_len == 3));
    }

    #[test]
    fn shuffle_is_seeded_and_truncates() {
        let pairs: Vec<Pair> = (0..20)
            .map(|i| Pair {
                prompt: format!("prompt number {i} here"),
                reply: "a reply of some words".into(),
            })
            .collect();
        let mut o = opts();
        o.num_prompts = 5;
        let a = to_workload(pairs.clone(), &o);
        assert_eq!(a, to_workload(pairs.clone(), &o));
        assert_eq!(a.len(), 5);
        o.seed = 1;
        assert_ne!(a, to_workload(pairs, &o));
    }

    #[test]
    fn malformed_files_name_the_problem() {
        let p: &Path = "bad.json".as_ref();
        let err = parse_sharegpt("[{", p).unwrap_err().to_string();
        assert!(
            err.contains("bad.json is not valid JSON") && err.contains("line 1"),
            "{err}"
        );
        let err = parse_sharegpt(r#"{"conversations": []}"#, p).unwrap_err().to_string();
        assert!(
            err.contains("must be a JSON list") && err.contains("an object"),
            "{err}"
        );
        let err = parse_sharegpt(r#"[{"conversations": []}, {"turns": []}]"#, p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("entry 1") && err.contains("conversations"), "{err}");
        let err = parse_sharegpt(r#"[{"conversations": [{"from": "human", "value": 3}]}]"#, p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("entry 0") && err.contains("invalid type"), "{err}");
    }

    #[test]
    fn missing_or_empty_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let err = load_sharegpt(&missing, &opts()).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read the dataset") && err.contains("nope.json"),
            "{err}"
        );
        let empty = dir.path().join("empty.json");
        std::fs::write(&empty, "[]").unwrap();
        let err = load_sharegpt(&empty, &opts()).unwrap_err().to_string();
        assert!(err.contains("no usable conversation (0 entries"), "{err}");
    }
}
