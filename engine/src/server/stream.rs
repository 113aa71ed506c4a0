//! Running the `n` sequences of one request and merging their chunks into one channel. The
//! forwarding tasks stop (and so abort their sequences) as soon as the receiver is dropped,
//! e.g. when the client disconnects.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::error::ApiError;
use crate::io_struct::TokenizedRequest;
use crate::orchestrator::{Chunk, Engine, Permit, TextOptions};

/// A chunk of choice `index`, or that choice's error.
pub type Tagged = (usize, Result<Chunk, String>);

/// Submits `reqs` (each detokenized with `text`) and returns the merged chunk stream.
pub fn launch(
    engine: &Engine,
    reqs: Vec<TokenizedRequest>,
    text: &TextOptions,
    permit: Permit,
) -> Result<mpsc::Receiver<Tagged>, ApiError> {
    let (tx, rx) = mpsc::channel(64);
    let permit = Arc::new(permit);
    let mut streams = Vec::with_capacity(reqs.len());
    for req in reqs {
        streams.push(engine.submit(req, text)?);
    }
    for (i, mut seq) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        let permit = permit.clone();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    c = seq.next() => match c {
                        None => return,
                        Some(c) => if tx.send((i, c)).await.is_err() { return },
                    },
                }
            }
        });
    }
    Ok(rx)
}

/// What one choice produced, collected for a non-streaming answer.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// The text.
    pub text: String,
    /// One entry per generated token.
    pub samples: Vec<crate::executor::sampler::SampleOutput>,
    /// Why it ended.
    pub finish: Option<crate::io_struct::Finish>,
}

/// Collects all `n` choices; the first error becomes a 500.
pub async fn collect(mut rx: mpsc::Receiver<Tagged>, n: usize) -> Result<Vec<Collected>, ApiError> {
    let mut out = vec![Collected::default(); n];
    while let Some((i, c)) = rx.recv().await {
        let c = c.map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e))?;
        let slot = &mut out[i];
        slot.text.push_str(&c.text);
        slot.samples.extend(c.sample);
        if c.finish.is_some() {
            slot.finish = c.finish;
        }
    }
    Ok(out)
}
