//! Client-side rate limiting of API requests (`--kube-api-qps`, `--kube-api-burst`), as
//! client-go's token bucket does it for upstream kube-proxy: a request may start at once while
//! tokens remain (up to `burst`), and otherwise waits for the bucket to refill at `qps`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// Upstream's defaults.
pub const DEFAULT_QPS: f64 = 5.0;
/// Upstream's default burst.
pub const DEFAULT_BURST: u32 = 10;

/// A token bucket: `burst` tokens, refilled at `qps` per second.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(qps: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            qps: qps.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token for a request starting at `now`; returns how long it must wait first.
    /// Tokens may go negative: later requests queue behind earlier ones.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.qps)
        }
    }
}

/// A tower layer that delays each request by the bucket's answer.
#[derive(Clone, Debug)]
pub struct RateLimitLayer(Arc<Mutex<TokenBucket>>);

impl RateLimitLayer {
    /// `qps` requests per second with bursts of `burst`.
    pub fn new(qps: f64, burst: u32) -> Self {
        RateLimitLayer(Arc::new(Mutex::new(TokenBucket::new(
            qps,
            burst,
            Instant::now(),
        ))))
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            bucket: self.0.clone(),
        }
    }
}

/// A service whose requests start no faster than the bucket allows.
#[derive(Debug)]
pub struct RateLimited<S> {
    inner: S,
    bucket: Arc<Mutex<TokenBucket>>,
}

impl<S, Req> tower::Service<Req> for RateLimited<S>
where
    S: tower::Service<Req>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let wait = self
            .bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserve(Instant::now());
        // The HTTP client's futures are lazy: nothing is sent until this one is polled.
        let response = self.inner.call(req);
        Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            response.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_qps() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3, t0);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        // Empty: the 4th waits half a second (2 QPS), the 5th a second.
        assert_eq!(b.reserve(t0), Duration::from_millis(500));
        assert_eq!(b.reserve(t0), Duration::from_millis(1000));
        // After 10 s idle the bucket is full again, not fuller.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(b.reserve(later), Duration::ZERO);
        }
        assert!(b.reserve(later) > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_are_delayed() {
        use tower::{Layer, Service};
        let layer = RateLimitLayer::new(1.0, 2);
        let mut svc = layer.layer(tower::service_fn(|_: ()| async {
            Ok::<_, ()>(Instant::now())
        }));
        let start = Instant::now();
        let mut done = Vec::new();
        for _ in 0..4 {
            done.push(svc.call(()).await.unwrap() - start);
        }
        assert_eq!(done[0], Duration::ZERO);
        assert_eq!(done[1], Duration::ZERO);
        assert!(done[2] >= Duration::from_millis(999), "{done:?}");
        assert!(done[3] >= Duration::from_millis(1999), "{done:?}");
    }
}
