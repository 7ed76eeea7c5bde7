//! Timing helpers shared by the benchmarks: medians of repeated runs, and ratios.

use std::time::{Duration, Instant};

/// The median time of `n` runs of `f`, after `warmup` untimed runs.
pub fn median(warmup: usize, n: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
