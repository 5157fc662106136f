//! Flags and latency sampling shared by the database benchmarks.

use std::time::{Duration, Instant};

/// Latencies of one measured operation, in milliseconds.
pub struct Timing {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Runs `f` `runs` times; latencies in milliseconds.
pub async fn time<F, Fut>(runs: usize, mut f: F) -> Timing
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut took: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f().await;
        took.push(start.elapsed());
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(took[((took.len() as f64 * q) as usize).min(took.len() - 1)]);
    Timing {
        p50: at(0.5),
        p99: at(0.99),
        max: ms(*took.last().unwrap()),
    }
}

/// Reads `--name N` flags into `numbers` (a flag without a number keeps its default;
/// others, like the `--bench` cargo passes, are ignored); true when `--json` is given.
pub fn read_flags(numbers: &mut [(&str, &mut usize)]) -> bool {
    let mut json = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--json" {
            json = true;
        } else if let Some((_, value)) = numbers
            .iter_mut()
            .find(|(name, _)| arg == format!("--{name}"))
            && let Some(n) = it.next().and_then(|s| s.parse().ok())
        {
            **value = n;
        }
    }
    json
}
