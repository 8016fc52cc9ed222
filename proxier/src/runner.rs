//! Upstream's bounded-frequency runner as an async loop: run a sync when triggered, at most once
//! per `min_interval` (start to start), at least once per `max_interval`, and after a failure
//! retry with exponential back-off until a run succeeds.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

/// First retry delay after a failed run, unless configured otherwise.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);

/// Paces runs of one function; see the module docs. Start it with [`Runner::run`].
#[derive(Debug)]
pub struct Runner {
    min_interval: Duration,
    max_interval: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    shared: Arc<Shared>,
}

/// A cloneable handle that asks for a run ([`Trigger::run`]).
#[derive(Debug, Clone)]
pub struct Trigger {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    dirty: AtomicBool,
    notify: Notify,
}

impl Trigger {
    /// Marks the state dirty: a run follows as soon as `min_interval` allows. Many calls before
    /// that run make one run. Never blocks.
    pub fn run(&self) {
        self.shared.dirty.store(true, Ordering::SeqCst);
        self.shared.notify.notify_one();
    }
}

impl Runner {
    /// A runner whose runs start at least `min_interval` apart (0: no limit) and at most
    /// `max_interval` apart once the first has run; back-off from 1 s up to `max_interval`.
    ///
    /// Panics if `max_interval` is zero; a `min_interval` above it is lowered to it.
    pub fn new(min_interval: Duration, max_interval: Duration) -> Self {
        assert!(!max_interval.is_zero(), "max_interval must be above zero");
        Runner {
            min_interval: min_interval.min(max_interval),
            max_interval,
            initial_backoff: DEFAULT_INITIAL_BACKOFF.min(max_interval),
            max_backoff: max_interval,
            shared: Arc::default(),
        }
    }

    /// The same runner with another back-off: the first retry waits `initial`, each further one
    /// twice as long as the last, never more than `max` (a zero `initial` is raised to 1 ms).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial.max(Duration::from_millis(1));
        self.max_backoff = max.max(self.initial_backoff);
        self
    }

    /// A handle that triggers runs; clone it freely.
    pub fn trigger(&self) -> Trigger {
        Trigger {
            shared: self.shared.clone(),
        }
    }

    /// Runs `f` until `shutdown` completes (pass e.g. `token.cancelled()` or a signal future):
    /// - nothing runs before the first trigger (so a caller can wait for its state to be
    ///   complete, as upstream waits for its informers);
    /// - a trigger runs `f` at once if the last run started `min_interval` ago, else then;
    ///   triggers that arrive during a run cause one more run after it;
    /// - once a run has happened, another starts at most `max_interval` after it, triggered or not;
    /// - when `f` fails, it runs again after the back-off (1 s, 2 s, 4 s, … up to the maximum),
    ///   also if triggered sooner, until a run succeeds; the error is logged.
    ///
    /// Shutdown stops the waiting at once; a run in progress is let finish (it may be an
    /// `iptables-restore` midway through its tables), then `run` returns. Rules are never touched
    /// by the runner itself.
    pub async fn run<F, Fut, E>(self, shutdown: impl Future<Output = ()>, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut last_start: Option<Instant> = None;
        let mut retry_at: Option<Instant> = None;
        let mut backoff = self.initial_backoff;
        let mut failures: u32 = 0;
        loop {
            // Created before the flag is read: a trigger from here on wakes it.
            let notified = self.shared.notify.notified();
            let dirty = self.shared.dirty.load(Ordering::SeqCst);
            let deadline = match (retry_at, last_start) {
                (Some(at), _) => Some(at),
                (None, None) => dirty.then(Instant::now),
                (None, Some(last)) if dirty => Some(last + self.min_interval),
                (None, Some(last)) => Some(last + self.max_interval),
            };
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = sleep_until_some(deadline) => {}
                () = notified => continue,
            }

            self.shared.dirty.store(false, Ordering::SeqCst);
            let started = Instant::now();
            last_start = Some(started);
            match f().await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "sync succeeded after failing");
                    }
                    retry_at = None;
                    backoff = self.initial_backoff;
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    let at = (Instant::now() + backoff).max(started + self.min_interval);
                    tracing::warn!(
                        error = format!("{e:#}"),
                        failures,
                        retry_in = ?at.saturating_duration_since(Instant::now()),
                        "sync failed; will retry"
                    );
                    retry_at = Some(at);
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio::time::sleep;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    /// A runner on a task: each run sleeps `work`, records its start (seconds since the test
    /// began, in ms) and fails while `fail(n)` says so for the n-th run (0-based).
    struct Harness {
        t0: Instant,
        trigger: Trigger,
        starts: Arc<Mutex<Vec<u64>>>,
        ends: Arc<Mutex<Vec<u64>>>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    impl Harness {
        fn start(
            runner: Runner,
            work: Duration,
            fail: impl Fn(usize) -> bool + Send + Sync + 'static,
        ) -> Harness {
            let t0 = Instant::now();
            let trigger = runner.trigger();
            let starts = Arc::new(Mutex::new(Vec::new()));
            let ends = Arc::new(Mutex::new(Vec::new()));
            let (stop, stopped) = oneshot::channel::<()>();
            let (s, e) = (starts.clone(), ends.clone());
            let fail = Arc::new(fail);
            let task = tokio::spawn(async move {
                runner
                    .run(
                        async move {
                            let _ = stopped.await;
                        },
                        move || {
                            let (s, e, fail) = (s.clone(), e.clone(), fail.clone());
                            async move {
                                let n = {
                                    let mut s = s.lock().unwrap();
                                    s.push(ms(t0));
                                    s.len() - 1
                                };
                                sleep(work).await;
                                e.lock().unwrap().push(ms(t0));
                                if fail(n) {
                                    Err(format!("run {n} failed"))
                                } else {
                                    Ok(())
                                }
                            }
                        },
                    )
                    .await
            });
            Harness {
                t0,
                trigger,
                starts,
                ends,
                stop: Some(stop),
                task,
            }
        }

        /// Sleeps until `secs` (as f64 seconds) after the start.
        async fn at(&self, secs: f64) {
            sleep_until(self.t0 + Duration::from_secs_f64(secs)).await;
        }

        fn starts(&self) -> Vec<u64> {
            self.starts.lock().unwrap().clone()
        }

        async fn stop(mut self) -> (Vec<u64>, u64) {
            let _ = self.stop.take().unwrap().send(());
            (&mut self.task).await.unwrap();
            (self.starts(), ms(self.t0))
        }
    }

    fn ms(t0: Instant) -> u64 {
        t0.elapsed().as_millis() as u64
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_runs_before_the_first_trigger() {
        let h = Harness::start(Runner::new(MIN, MAX), Duration::ZERO, |_| false);
        h.at(600.0).await;
        assert_eq!(h.starts(), Vec::<u64>::new());
        h.trigger.run();
        h.at(600.001).await;
        assert_eq!(h.starts(), [600_000]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_makes_two_runs_min_interval_apart_start_to_start() {
        let h = Harness::start(Runner::new(MIN, MAX), Duration::from_millis(300), |_| false);
        h.trigger.run();
        for i in 1..10 {
            h.at(i as f64 / 10.0).await;
            h.trigger.run();
        }
        h.at(100.0).await;
        // 0 s; then 1 s after the first start (not after its end at 0.3 s); then periodic.
        assert_eq!(h.stop().await.0, [0, 1_000, 61_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_during_a_run_runs_again_after_it() {
        let h = Harness::start(Runner::new(MIN, MAX), Duration::from_secs(2), |_| false);
        h.trigger.run();
        h.at(0.5).await;
        h.trigger.run();
        h.at(10.0).await;
        assert_eq!(h.stop().await.0, [0, 2_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_triggers_it_runs_every_max_interval() {
        let h = Harness::start(Runner::new(MIN, MAX), Duration::from_millis(500), |_| false);
        h.at(5.0).await;
        h.trigger.run();
        h.at(200.0).await;
        assert_eq!(h.stop().await.0, [5_000, 65_000, 125_000, 185_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_min_interval_runs_each_trigger_at_once() {
        let h = Harness::start(Runner::new(Duration::ZERO, MAX), Duration::ZERO, |_| false);
        for i in 0..3 {
            h.at(i as f64 * 0.01).await;
            h.trigger.run();
        }
        h.at(1.0).await;
        assert_eq!(h.stop().await.0, [0, 10, 20]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_up_to_max_interval() {
        let h = Harness::start(Runner::new(MIN, MAX), Duration::ZERO, |n| n < 8);
        h.trigger.run();
        // Triggers during the back-off do not make it shorter.
        h.at(2.0).await;
        h.trigger.run();
        h.at(300.0).await;
        // Fails at 0, 1, 3, 7, 15, 31, 63, 123 (waits 1, 2, 4, …, 32, then capped at 60),
        // succeeds at 183, then runs every 60 s again.
        assert_eq!(
            h.stop().await.0,
            [
                0, 1_000, 3_000, 7_000, 15_000, 31_000, 63_000, 123_000, 183_000, 243_000
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_restarts_after_a_success_and_honours_its_cap() {
        let runner =
            Runner::new(MIN, MAX).with_backoff(Duration::from_secs(2), Duration::from_secs(5));
        // Runs 0..=3 fail, 4 succeeds, 5 and 6 fail.
        let h = Harness::start(runner, Duration::ZERO, |n| n != 4 && n < 7);
        h.trigger.run();
        h.at(20.0).await;
        h.trigger.run();
        h.at(30.0).await;
        // 0 F, 2 F, 6 F, 11 F (capped at 5), 16 ok; trigger at 20 → 20 F, 22 F, 26 ok.
        assert_eq!(
            h.stop().await.0,
            [0, 2_000, 6_000, 11_000, 16_000, 20_000, 22_000, 26_000]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_still_waits_for_min_interval() {
        // A back-off shorter than min_interval: the retry waits for min_interval (start to start).
        let runner = Runner::new(Duration::from_secs(5), MAX)
            .with_backoff(Duration::from_millis(100), Duration::from_millis(100));
        let h = Harness::start(runner, Duration::from_secs(1), |n| n == 0);
        h.trigger.run();
        h.at(10.0).await;
        assert_eq!(h.stop().await.0, [0, 5_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_while_waiting_returns_at_once_without_running() {
        let h = Harness::start(Runner::new(MIN, MAX), Duration::ZERO, |_| false);
        h.trigger.run();
        h.at(5.0).await;
        let (starts, stopped_at) = h.stop().await;
        assert_eq!(starts, [0]);
        assert_eq!(stopped_at, 5_000);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_a_run_lets_it_finish() {
        let h = Harness::start(Runner::new(MIN, MAX), Duration::from_secs(10), |_| false);
        h.trigger.run();
        h.at(1.0).await;
        h.trigger.run();
        let ends = h.ends.clone();
        let (starts, stopped_at) = h.stop().await;
        // The run in progress completed, and the pending trigger did not start another.
        assert_eq!(starts, [0]);
        assert_eq!(*ends.lock().unwrap(), [10_000]);
        assert_eq!(stopped_at, 10_000);
    }
}
