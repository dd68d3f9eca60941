//! A bound on how hard the client pushes one Headscale server: every authenticated
//! request costs the server a bcrypt comparison (~60 ms of CPU, reference trap 19),
//! so both the number of requests in flight and the rate at which they start are
//! capped.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

#[derive(Debug)]
pub struct Limiter {
    in_flight: Semaphore,
    min_interval: Duration,
    /// The earliest moment the next request may start.
    next_start: Mutex<Instant>,
}

/// Held while a request is in flight.
pub struct Permit<'a> {
    _permit: Option<SemaphorePermit<'a>>,
}

impl Limiter {
    /// At most `max_in_flight` requests at once (at least 1), starts spaced at least
    /// `min_interval` apart.
    pub fn new(max_in_flight: usize, min_interval: Duration) -> Limiter {
        Limiter {
            in_flight: Semaphore::new(max_in_flight.max(1)),
            min_interval,
            next_start: Mutex::new(Instant::now()),
        }
    }

    /// Waits for a free slot and for this request's turn.
    pub async fn acquire(&self) -> Permit<'_> {
        // The semaphore is never closed, so acquire cannot fail; if it ever did, going
        // ahead unthrottled would be better than failing the call.
        let permit = self.in_flight.acquire().await.ok();
        if !self.min_interval.is_zero() {
            let start = {
                let mut next = self
                    .next_start
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let start = (*next).max(Instant::now());
                *next = start + self.min_interval;
                start
            };
            tokio::time::sleep_until(start).await;
        }
        Permit { _permit: permit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn spaces_request_starts() {
        let limiter = Arc::new(Limiter::new(10, Duration::from_millis(100)));
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..5 {
            let _p = limiter.acquire().await;
            starts.push(t0.elapsed());
        }
        let want: Vec<_> = (0..5).map(|i| Duration::from_millis(100 * i)).collect();
        assert_eq!(starts, want);
    }

    #[tokio::test(start_paused = true)]
    async fn caps_requests_in_flight() {
        let limiter = Arc::new(Limiter::new(2, Duration::ZERO));
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (limiter, now, peak) = (limiter.clone(), now.clone(), peak.clone());
                tokio::spawn(async move {
                    let _p = limiter.acquire().await;
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        let t0 = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(t0.elapsed(), Duration::from_millis(200));
    }
}
