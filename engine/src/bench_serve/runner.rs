//! Driving the load: requests arrive at a rate (Poisson arrivals, or all at once) and at most
//! `max_concurrency` are in flight; a progress bar counts finished requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::Client;
use super::metrics::Outcome;
use super::workload::WorkItem;
use crate::executor::sampler::Rng;

/// How requests are released.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadShape {
    /// Mean arrivals per second (exponential gaps); `None` sends all at once.
    pub request_rate: Option<f64>,
    /// Most requests in flight; `None` for no limit.
    pub max_concurrency: Option<usize>,
    /// Seed of the arrival gaps.
    pub seed: u64,
    /// Draw a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

/// The gaps before each request after the first, in seconds: exponential with mean
/// `1 / rate`, so arrivals form a Poisson process; all zero without a rate.
///
/// ```
/// use mllm_engine::bench_serve::arrival_gaps;
/// assert_eq!(arrival_gaps(3, None, 0), vec![0.0, 0.0, 0.0]);
/// let g = arrival_gaps(2000, Some(4.0), 1);
/// let mean = g.iter().sum::<f64>() / 2000.0;
/// assert!((mean - 0.25).abs() < 0.03 && g == arrival_gaps(2000, Some(4.0), 1));
/// ```
pub fn arrival_gaps(n: usize, rate: Option<f64>, seed: u64) -> Vec<f64> {
    let Some(rate) = rate.filter(|r| r.is_finite() && *r > 0.0) else {
        return vec![0.0; n];
    };
    // A stream apart from the workload's, which may use the same seed.
    let mut rng = Rng::from_seed(seed ^ 0x5EED_A881_7A15_0000);
    (0..n).map(|_| -(1.0 - rng.next_f64()).ln() / rate).collect()
}

/// Sends every item; returns the outcomes in workload order and the run's wall-clock seconds
/// (from the first send to the last answer).
pub async fn run_load(
    client: Arc<Client>,
    model: Arc<str>,
    items: Vec<WorkItem>,
    shape: LoadShape,
) -> (Vec<Outcome>, f64) {
    let n = items.len();
    let gaps = arrival_gaps(n, shape.request_rate, shape.seed);
    let limit = shape.max_concurrency.map(|c| Arc::new(Semaphore::new(c.max(1))));
    let bar = progress_bar(n, shape.progress);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, (item, gap)) in items.into_iter().zip(gaps).enumerate() {
        if i > 0 && gap > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        }
        let (client, model, limit, bar) = (client.clone(), model.clone(), limit.clone(), bar.clone());
        tasks.spawn(async move {
            // The permit is held until the answer is complete.
            let _permit = match &limit {
                Some(s) => s.clone().acquire_owned().await.ok(),
                None => None,
            };
            let outcome = client.send(&item, &model).await;
            bar.inc(1);
            (i, outcome)
        });
    }
    let mut outcomes: Vec<Outcome> = (0..n).map(|_| Err("not run".to_string())).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, outcome)) => outcomes[i] = outcome,
            // A panicking task's slot keeps its error; the others still count.
            Err(e) => tracing::warn!("a request task failed: {e}"),
        }
    }
    let duration = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    (outcomes, duration)
}

fn progress_bar(n: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} requests [{elapsed_precise}, eta {eta}]") {
        bar.set_style(style);
    }
    bar
}
