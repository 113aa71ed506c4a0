//! A thin wrapper over `indicatif` so fetch steps can show byte progress,
//! or nothing at all (tests, `progress: false`).

use indicatif::{ProgressBar, ProgressStyle};

/// A byte progress bar that may be hidden.
pub(crate) struct Progress(ProgressBar);

impl Progress {
    /// A bar of `total` bytes labelled `msg`; hidden unless `show`.
    pub(crate) fn bytes(show: bool, total: u64, msg: &str) -> Self {
        if !show {
            return Self::hidden();
        }
        let bar = ProgressBar::new(total);
        let template = "{msg:28} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(msg.to_string());
        Self(bar)
    }

    /// A bar that draws nothing.
    pub(crate) fn hidden() -> Self {
        Self(ProgressBar::hidden())
    }

    /// Advances by `n` bytes.
    pub(crate) fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    /// Sets the position, clamped to the total.
    pub(crate) fn set(&self, pos: u64) {
        self.0.set_position(self.0.length().map_or(pos, |len| pos.min(len)));
    }

    /// Completes the bar and leaves it on screen.
    pub(crate) fn finish(&self) {
        self.0.finish();
    }
}
