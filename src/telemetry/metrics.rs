//! Prometheus metrics with upstream's names, types, help texts, labels and buckets
//! (`pkg/proxy/metrics/metrics.go`, 1.33+: the `ip_family` label included), served in the text
//! format on `--metrics-bind-address` (`/metrics`, plus `/healthz` and `/proxyMode` as
//! upstream's metrics server has them).
//!
//! Which families exist follows upstream's `RegisterMetrics(mode)`: the common ones in both
//! modes; full/partial sync durations, partial restore failures and rule counts in iptables
//! mode only; restore failures in both. Series with only the `ip_family` label start at zero
//! for this node's family, so a scrape sees every family from the start; series with another
//! label (`table`, `traffic_policy`, `code`) appear once they have a value, as upstream's.
//!
//! [`Metrics`] is fed by the agent ([`sync::SyncTelemetry`]), the watchers
//! ([`Metrics::service_changed`], [`Metrics::endpoint_slice_changed`]), the health servers
//! and, later, the conntrack reconciler ([`Metrics::conntrack_reconciled`]).

pub mod changes;
pub mod exposition;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rulegen::IpFamily;

use crate::settings::ProxyMode;
use crate::telemetry::http;
use exposition::{Family, Histogram, Kind, Samples, exponential_buckets, linear_buckets};

/// What a watch event did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Added or changed.
    Applied,
    /// Deleted.
    Deleted,
    /// Listed again when a watch restarted (maybe unchanged).
    Listed,
}

/// The metrics of one proxier (one address family, one mode).
pub struct Metrics {
    mode: ProxyMode,
    family: &'static str,
    // Trigger times older than this are ignored (upstream's `trackerStartTime`).
    started: SystemTime,
    inner: Mutex<Inner>,
}

struct Inner {
    sync_duration: Histogram,
    sync_full_duration: Histogram,
    sync_partial_duration: Histogram,
    last_timestamp: f64,
    last_queued_timestamp: f64,
    network_programming: Histogram,
    endpoint_changes_pending: u64,
    endpoint_changes_total: u64,
    service_changes_pending: BTreeSet<String>,
    service_changes_total: u64,
    restore_failures: u64,
    partial_restore_failures: u64,
    // Reads of the node's tables that failed, by why (`timeout`, `failed`, `not_started`).
    read_failures: BTreeMap<&'static str, u64>,
    iptables_total: BTreeMap<&'static str, u64>,
    iptables_last: BTreeMap<&'static str, u64>,
    no_local_endpoints: Option<(u64, u64)>,
    healthz: BTreeMap<u16, u64>,
    livez: BTreeMap<u16, u64>,
    conntrack_duration: Histogram,
    conntrack_deleted: u64,
    // Trigger times of EndpointSlice changes not yet synced, per Service.
    trigger_times: BTreeMap<String, Vec<SystemTime>>,
}

/// `ExponentialBuckets(0.001, 2, 15)`: the sync (and conntrack reconcile) durations.
pub fn sync_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 15)
}

/// The network programming latency buckets: 0.25 s, 0.5 s, 1–59 s, 60–115 s, 2–5 min.
pub fn network_programming_buckets() -> Vec<f64> {
    let mut b = linear_buckets(0.25, 0.25, 2);
    b.extend(linear_buckets(1.0, 1.0, 59));
    b.extend(linear_buckets(60.0, 5.0, 12));
    b.extend(linear_buckets(120.0, 30.0, 7));
    b
}

/// Upstream's `ip_family` label value (`v1.IPFamily`).
pub fn family_label(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    /// Empty metrics for a proxier of `mode` and `family`, starting now.
    pub fn new(mode: ProxyMode, family: IpFamily) -> Arc<Metrics> {
        Arc::new(Metrics {
            mode,
            family: family_label(family),
            started: SystemTime::now(),
            inner: Mutex::new(Inner {
                sync_duration: Histogram::new(sync_buckets()),
                sync_full_duration: Histogram::new(sync_buckets()),
                sync_partial_duration: Histogram::new(sync_buckets()),
                last_timestamp: 0.0,
                last_queued_timestamp: 0.0,
                network_programming: Histogram::new(network_programming_buckets()),
                endpoint_changes_pending: 0,
                endpoint_changes_total: 0,
                service_changes_pending: BTreeSet::new(),
                service_changes_total: 0,
                restore_failures: 0,
                partial_restore_failures: 0,
                read_failures: BTreeMap::new(),
                iptables_total: BTreeMap::new(),
                iptables_last: BTreeMap::new(),
                no_local_endpoints: None,
                healthz: BTreeMap::new(),
                livez: BTreeMap::new(),
                conntrack_duration: Histogram::new(sync_buckets()),
                conntrack_deleted: 0,
                trigger_times: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain numbers behind: keep serving them.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The proxy mode the families follow.
    pub fn mode(&self) -> ProxyMode {
        self.mode
    }

    /// A Service was added, changed or deleted (upstream's `ServiceChangeTracker.Update`):
    /// `…_service_changes_total` counts it, `…_service_changes_pending` counts the Services
    /// changed since the last sync started. A Service listed again (a watch restarted) counts
    /// only in the total: upstream's tracker sees no difference then.
    pub fn service_changed(&self, namespace: &str, name: &str, change: Change) {
        let mut m = self.lock();
        m.service_changes_total += 1;
        if change != Change::Listed {
            m.service_changes_pending
                .insert(format!("{namespace}/{name}"));
        }
    }

    /// An EndpointSlice of Service `namespace/service` was added, changed or removed
    /// (upstream's `EndpointsChangeTracker.EndpointSliceUpdate`). Its
    /// `endpoints.kubernetes.io/last-change-trigger-time`, when later than the agent's start,
    /// is kept for the network programming latency of the next successful sync; a deletion
    /// forgets the Service's pending trigger times instead (the annotation then dates from the
    /// last update, not the deletion). A slice listed again counts only in the total (its
    /// trigger time was reported when it changed).
    pub fn endpoint_slice_changed(
        &self,
        namespace: &str,
        service: &str,
        trigger_time: Option<SystemTime>,
        change: Change,
    ) {
        let mut m = self.lock();
        m.endpoint_changes_total += 1;
        let key = format!("{namespace}/{service}");
        match change {
            Change::Listed => {}
            Change::Deleted => {
                m.endpoint_changes_pending += 1;
                m.trigger_times.remove(&key);
            }
            Change::Applied => {
                m.endpoint_changes_pending += 1;
                if let Some(t) = trigger_time.filter(|t| *t > self.started) {
                    m.trigger_times.entry(key).or_default().push(t);
                }
            }
        }
    }

    /// A sync was queued (upstream's `Proxier.Sync`): `…_last_queued_timestamp_seconds`.
    pub fn sync_queued(&self) {
        self.lock().last_queued_timestamp = unix_seconds(SystemTime::now());
    }

    /// A sync starts with the changes seen so far: the pending gauges drop to zero and the
    /// trigger times it will report are handed over.
    pub fn checkout_changes(&self) -> Vec<SystemTime> {
        let mut m = self.lock();
        m.endpoint_changes_pending = 0;
        m.service_changes_pending.clear();
        std::mem::take(&mut m.trigger_times)
            .into_values()
            .flatten()
            .collect()
    }

    /// A sync ended after `elapsed`; `partial` says which kind it was in iptables mode
    /// (`None` in IPVS mode, which has neither full nor partial histograms).
    pub fn sync_took(&self, elapsed: Duration, partial: Option<bool>) {
        let secs = elapsed.as_secs_f64();
        let mut m = self.lock();
        m.sync_duration.observe(secs);
        match partial {
            Some(true) => m.sync_partial_duration.observe(secs),
            Some(false) => m.sync_full_duration.observe(secs),
            None => {}
        }
    }

    /// A sync succeeded at `now`: `…_last_timestamp_seconds`, and the network programming
    /// latency of each change it carried (`trigger_times`, from [`Self::checkout_changes`]).
    pub fn sync_succeeded(&self, now: SystemTime, trigger_times: &[SystemTime]) {
        let mut m = self.lock();
        m.last_timestamp = unix_seconds(now);
        for t in trigger_times {
            let latency = now.duration_since(*t).unwrap_or_default();
            m.network_programming.observe(latency.as_secs_f64());
        }
    }

    /// `iptables-restore` failed: in a partial sync (`…_partial_restore_failures_total`) or a
    /// full one (`…_restore_failures_total`; IPVS mode's restores count here too).
    pub fn restore_failed(&self, partial: bool) {
        let mut m = self.lock();
        if partial {
            m.partial_restore_failures += 1;
        } else {
            m.restore_failures += 1;
        }
    }

    /// Reading the node's tables before a full sync failed (`timeout`: the tool was killed
    /// at its time limit; `failed`: it exited unsuccessfully or died; `not_started`).
    pub fn read_failed(&self, reason: &'static str) {
        *self.lock().read_failures.entry(reason).or_default() += 1;
    }

    /// The rules the proxy owns in `table` (`filter`, `nat`) and how many the last sync wrote.
    pub fn set_iptables_rules(&self, table: &'static str, total: u64, last: u64) {
        let mut m = self.lock();
        m.iptables_total.insert(table, total);
        m.iptables_last.insert(table, last);
    }

    /// Services with a Local traffic policy and no local endpoints (while having some
    /// elsewhere): internal and external.
    pub fn set_no_local_endpoints(&self, internal: u64, external: u64) {
        self.lock().no_local_endpoints = Some((internal, external));
    }

    /// `/healthz` answered with `code`.
    pub fn healthz_answered(&self, code: u16) {
        *self.lock().healthz.entry(code).or_default() += 1;
    }

    /// `/livez` answered with `code`.
    pub fn livez_answered(&self, code: u16) {
        *self.lock().livez.entry(code).or_default() += 1;
    }

    /// One conntrack reconcile (upstream's `CleanStaleEntries`, for this proxier's family) took
    /// `elapsed` and deleted `deleted` flows:
    /// `kubeproxy_conntrack_reconciler_sync_duration_seconds` and
    /// `kubeproxy_conntrack_reconciler_deleted_entries_total`.
    pub fn conntrack_reconciled(&self, elapsed: Duration, deleted: u64) {
        let mut m = self.lock();
        m.conntrack_duration.observe(elapsed.as_secs_f64());
        m.conntrack_deleted += deleted;
    }

    /// The whole exposition, as `/metrics` serves it.
    pub fn render(&self) -> String {
        let m = self.lock();
        let fam = || vec![("ip_family", self.family.to_string())];
        let value = |v: f64| Samples::Values(vec![(fam(), v)]);
        let plain = |v: f64| Samples::Values(vec![(Vec::new(), v)]);
        let hist = |h| Samples::Histograms(vec![(fam(), h)]);
        let by = |label: &'static str, values: Vec<(String, u64)>, with_family: bool| {
            Samples::Values(
                values
                    .into_iter()
                    .map(|(l, v)| {
                        let mut labels = if with_family { fam() } else { Vec::new() };
                        labels.push((label, l));
                        (labels, v as f64)
                    })
                    .collect(),
            )
        };
        let codes = |c: &BTreeMap<u16, u64>| c.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let tables =
            |t: &BTreeMap<&'static str, u64>| t.iter().map(|(k, v)| (k.to_string(), *v)).collect();

        let mut families = vec![
            Family {
                name: "kubeproxy_sync_proxy_rules_duration_seconds",
                help: "SyncProxyRules latency in seconds",
                kind: Kind::Histogram,
                samples: hist(&m.sync_duration),
            },
            Family {
                name: "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                help: "The last time a sync of proxy rules was queued",
                kind: Kind::Gauge,
                samples: value(m.last_queued_timestamp),
            },
            Family {
                name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                help: "The last time proxy rules were successfully synced",
                kind: Kind::Gauge,
                samples: value(m.last_timestamp),
            },
            Family {
                name: "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                help: "Pending proxy rules Endpoint changes",
                kind: Kind::Gauge,
                samples: plain(m.endpoint_changes_pending as f64),
            },
            Family {
                name: "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                help: "Cumulative proxy rules Endpoint changes",
                kind: Kind::Counter,
                samples: plain(m.endpoint_changes_total as f64),
            },
            Family {
                name: "kubeproxy_sync_proxy_rules_service_changes_pending",
                help: "Pending proxy rules Service changes",
                kind: Kind::Gauge,
                samples: plain(m.service_changes_pending.len() as f64),
            },
            Family {
                name: "kubeproxy_sync_proxy_rules_service_changes_total",
                help: "Cumulative proxy rules Service changes",
                kind: Kind::Counter,
                samples: plain(m.service_changes_total as f64),
            },
            Family {
                name: "kubeproxy_proxy_healthz_total",
                help: "Cumulative proxy healthz HTTP status",
                kind: Kind::Counter,
                samples: by("code", codes(&m.healthz), false),
            },
            Family {
                name: "kubeproxy_proxy_livez_total",
                help: "Cumulative proxy livez HTTP status",
                kind: Kind::Counter,
                samples: by("code", codes(&m.livez), false),
            },
            Family {
                name: "kubeproxy_network_programming_duration_seconds",
                help: "In Cluster Network Programming Latency in seconds",
                kind: Kind::Histogram,
                samples: hist(&m.network_programming),
            },
            Family {
                name: "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                help: "Number of services with a Local traffic policy and no endpoints",
                kind: Kind::Gauge,
                samples: by(
                    "traffic_policy",
                    m.no_local_endpoints
                        .map(|(i, e)| {
                            vec![("external".to_string(), e), ("internal".to_string(), i)]
                        })
                        .unwrap_or_default(),
                    true,
                ),
            },
            Family {
                name: "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                help: "ReconcileConntrackFlowsLatency latency in seconds",
                kind: Kind::Histogram,
                samples: hist(&m.conntrack_duration),
            },
            Family {
                name: "kubeproxy_conntrack_reconciler_deleted_entries_total",
                help: "Cumulative conntrack flows deleted by conntrack reconciler",
                kind: Kind::Counter,
                samples: value(m.conntrack_deleted as f64),
            },
            Family {
                name: "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                help: "Cumulative proxy iptables restore failures",
                kind: Kind::Counter,
                samples: value(m.restore_failures as f64),
            },
        ];
        if self.mode == ProxyMode::Iptables {
            families.extend([
                Family {
                    name: "kubeproxy_sync_full_proxy_rules_duration_seconds",
                    help: "SyncProxyRules latency in seconds for full resyncs",
                    kind: Kind::Histogram,
                    samples: hist(&m.sync_full_duration),
                },
                Family {
                    name: "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                    help: "SyncProxyRules latency in seconds for partial resyncs",
                    kind: Kind::Histogram,
                    samples: hist(&m.sync_partial_duration),
                },
                Family {
                    // Ours: upstream has no such read step that can fail on its own.
                    name: "kubeproxy_rs_sync_proxy_rules_iptables_read_failures_total",
                    help: "Cumulative failures to read the node's iptables tables before a full sync, by reason",
                    kind: Kind::Counter,
                    samples: by("reason", tables(&m.read_failures), true),
                },
                Family {
                    name: "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
                    help: "Cumulative proxy iptables partial restore failures",
                    kind: Kind::Counter,
                    samples: value(m.partial_restore_failures as f64),
                },
                Family {
                    name: "kubeproxy_sync_proxy_rules_iptables_total",
                    help: "Total number of iptables rules owned by kube-proxy",
                    kind: Kind::Gauge,
                    samples: by("table", tables(&m.iptables_total), true),
                },
                Family {
                    name: "kubeproxy_sync_proxy_rules_iptables_last",
                    help: "Number of iptables rules written by kube-proxy in last sync",
                    kind: Kind::Gauge,
                    samples: by("table", tables(&m.iptables_last), true),
                },
            ]);
        }
        exposition::write(families)
    }

    /// The HTTP handler of the metrics server: `/metrics`, `/healthz` (and `/healthz/ping`),
    /// `/proxyMode`; 404 for anything else.
    pub fn handler(
        self: &Arc<Self>,
    ) -> impl Fn(&str, Option<&str>) -> (u16, &'static str, String) + Send + Sync + use<> {
        let metrics = self.clone();
        move |path, query| match path {
            "/metrics" => (200, PROMETHEUS_TEXT, metrics.render()),
            // component-base's healthz with its one `ping` check.
            "/healthz"
                if query.is_some_and(|q| {
                    q.split('&')
                        .any(|p| p == "verbose" || p.starts_with("verbose="))
                }) =>
            {
                (200, http::TEXT, "[+]ping ok\nhealthz check passed\n".into())
            }
            "/healthz" | "/healthz/ping" => (200, http::TEXT, "ok".into()),
            "/proxyMode" => (
                200,
                http::TEXT,
                match metrics.mode {
                    ProxyMode::Iptables => "iptables",
                    ProxyMode::Ipvs => "ipvs",
                }
                .into(),
            ),
            _ => (404, http::TEXT, "404 page not found\n".into()),
        }
    }

    /// Serves [`Self::handler`] on `addr` (retrying the bind every 5 s if it fails); returns the
    /// bound address when the first bind succeeded. Call inside the runtime.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> Option<SocketAddr> {
        let handle = self.handler();
        http::serve_retrying(
            "metrics",
            addr,
            Arc::new(move |req| {
                let (status, content_type, body) = handle(req.uri().path(), req.uri().query());
                http::reply(status, content_type, body)
            }),
        )
    }
}

/// The `Content-Type` of the text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
