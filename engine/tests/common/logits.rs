//! Comparing logit rows: log-softmax, KL divergence, greedy pick, and differences as fractions
//! of the reference's logit range (the GPU parity tests' measure).

/// `log softmax(row)` in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// KL(p ‖ q) of the softmaxes of two logit rows.
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// The first index of the row's maximum.
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// Max minus min of a row.
pub fn range(v: &[f32]) -> f32 {
    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    hi - lo
}

/// Max and mean |a - b| as fractions of `want`'s range.
pub fn range_diff(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let r = range(want).max(1e-6);
    let d: Vec<f32> = got.iter().zip(want).map(|(a, b)| (a - b).abs()).collect();
    let max = d.iter().copied().fold(0.0, f32::max);
    (max / r, d.iter().sum::<f32>() / d.len() as f32 / r)
}

/// The worst (max, mean) [`range_diff`] over many rows, and where the max is.
#[derive(Default)]
pub struct Worst {
    pub max: f32,
    pub mean: f32,
    pub at: String,
}

impl Worst {
    pub fn add(&mut self, at: impl FnOnce() -> String, got: &[f32], want: &[f32]) {
        let (max, mean) = range_diff(got, want);
        if max > self.max {
            self.max = max;
            self.at = at();
        }
        self.mean = self.mean.max(mean);
    }

    pub fn report(&self, what: &str) {
        eprintln!(
            "{what}: max diff {:.3}% (at {}), worst mean {:.3}% of the logit range",
            100.0 * self.max,
            self.at,
            100.0 * self.mean
        );
    }

    /// Within `max_frac` (max) and `mean_frac` (mean) of the logit range.
    pub fn within(&self, max_frac: f32, mean_frac: f32) -> bool {
        self.max <= max_frac && self.mean <= mean_frac
    }
}

/// `Err` when greedy tokens `got` leave `want` (HF's) at a step where HF's top-2 logit gap
/// (`gaps[i]`) exceeds `max_frac` of `logit_range`; a divergence on a near-tie is printed and
/// accepted (bf16 rounding may flip it).
pub fn check_greedy(
    what: &str,
    got: &[u32],
    want: &[u32],
    gaps: &[f32],
    logit_range: f32,
    max_frac: f32,
) -> Result<(), String> {
    let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) else {
        return Ok(());
    };
    let gap = gaps[i];
    if gap > max_frac * logit_range {
        return Err(format!(
            "{what}: greedy diverges from HF at step {i} ({got:?} vs {want:?}); HF's top-2 gap there is {gap}"
        ));
    }
    eprintln!("{what}: diverges at step {i} on a bf16 near-tie (HF top-2 gap {gap}, logit range {logit_range})");
    Ok(())
}
