//! `/metrics` over a real socket, scraped and parsed as Prometheus would: upstream's
//! `kubeproxy_*` names, types, help texts, labels and buckets, per proxy mode; histograms
//! well formed; counters moving as syncs happen (driven through the agent's own sync
//! reporting, [`SyncTelemetry`], on a real translation and render); and the real agent against
//! the in-process API server counting watch events and network programming latency.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube_proxy_rs::objects::Objects;
use kube_proxy_rs::settings::{ProxyMode, Settings};
use kube_proxy_rs::telemetry::metrics::{Change, Metrics, PROMETHEUS_TEXT};
use kube_proxy_rs::telemetry::service_health::ServiceHealthServer;
use kube_proxy_rs::telemetry::sync::SyncTelemetry;
use proxier::{SyncKind, SyncReport};
use rulegen::IpFamily;

/// `GET path` on `addr`: status, `Content-Type`, body.
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One parsed family.
#[derive(Debug, Default)]
struct Family {
    help: String,
    kind: String,
    samples: Vec<Sample>,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s.parse().unwrap_or_else(|e| panic!("bad value {s:?}: {e}")),
    }
}

/// Parses the text format strictly: every sample after its family's `# HELP` and `# TYPE`, in
/// one block per family; names and labels well formed; no series twice.
fn parse(text: &str) -> BTreeMap<String, Family> {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(valid_name(name), "{line}");
            assert!(!families.contains_key(name), "family {name} twice");
            families.entry(name.to_string()).or_default().help = help.to_string();
            current = Some(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(
                Some(name),
                current.as_deref(),
                "TYPE right after HELP: {line}"
            );
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            families.get_mut(name).unwrap().kind = kind.to_string();
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}').unwrap())),
            None => (series, BTreeMap::new()),
        };
        assert!(valid_name(name), "{line}");
        let family = current.as_deref().expect("a sample before any family");
        let kind = families[family].kind.clone();
        let allowed = match kind.as_str() {
            "histogram" => vec![
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ],
            _ => vec![family.to_string()],
        };
        assert!(
            allowed.iter().any(|a| a == name),
            "{name} in family {family}"
        );
        assert!(seen.insert(series.to_string()), "series twice: {series}");
        families.get_mut(family).unwrap().samples.push(Sample {
            name: name.to_string(),
            labels,
            value: parse_value(value),
        });
    }
    families
}

fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut last = String::new();
    while !s.is_empty() {
        let (name, rest) = s.split_once("=\"").unwrap();
        assert!(
            valid_name(name) && !name.starts_with("__"),
            "label {name:?}"
        );
        // Label pairs come sorted by name, `le` last (client_golang's order).
        assert!(
            name == "le" || *name > *last,
            "labels sorted: {name} after {last}"
        );
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("unterminated label value") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().unwrap().1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("bad escape \\{c}"),
                },
                (_, c) => value.push(c),
            }
        };
        assert!(
            out.insert(name.to_string(), value).is_none(),
            "label {name} twice"
        );
        last = name.to_string();
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    out
}

/// Checks each histogram: per series, `le` ascending and ending at +Inf, cumulative counts
/// never decreasing, +Inf equal to `_count`, and the bounds `want` gives for the family.
fn check_histograms(families: &BTreeMap<String, Family>, want: &dyn Fn(&str) -> Vec<f64>) {
    for (name, f) in families.iter().filter(|(_, f)| f.kind == "histogram") {
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<&Sample>> = BTreeMap::new();
        for s in &f.samples {
            let mut key = s.labels.clone();
            key.remove("le");
            series.entry(key).or_default().push(s);
        }
        assert!(!series.is_empty(), "{name} has series");
        for (labels, samples) in series {
            let buckets: Vec<&&Sample> = samples
                .iter()
                .filter(|s| s.name.ends_with("_bucket"))
                .collect();
            let bounds: Vec<f64> = buckets
                .iter()
                .map(|s| parse_value(&s.labels["le"]))
                .collect();
            assert_eq!(
                bounds.last(),
                Some(&f64::INFINITY),
                "{name}{labels:?} ends at +Inf"
            );
            assert_eq!(bounds[..bounds.len() - 1], want(name)[..], "{name} buckets");
            assert!(
                bounds.windows(2).all(|w| w[0] < w[1]),
                "{name}: le ascending"
            );
            assert!(
                buckets.windows(2).all(|w| w[0].value <= w[1].value),
                "{name}{labels:?}: cumulative counts never decrease"
            );
            let count = samples
                .iter()
                .find(|s| s.name.ends_with("_count"))
                .unwrap()
                .value;
            let sum = samples
                .iter()
                .find(|s| s.name.ends_with("_sum"))
                .unwrap()
                .value;
            assert_eq!(
                buckets.last().unwrap().value,
                count,
                "{name}: +Inf == _count"
            );
            assert!(
                sum >= 0.0 && (count > 0.0 || sum == 0.0),
                "{name}: sum {sum} count {count}"
            );
        }
    }
}

fn upstream_buckets(name: &str) -> Vec<f64> {
    if name == "kubeproxy_network_programming_duration_seconds" {
        let mut b = vec![0.25, 0.5];
        b.extend((1..=59).map(f64::from));
        b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
        b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
        b
    } else {
        (0..15).map(|i| 0.001 * 2f64.powi(i)).collect()
    }
}

/// Upstream's families for a mode: name → (type, help, label names besides `le`).
fn upstream_families(
    mode: ProxyMode,
) -> BTreeMap<&'static str, (&'static str, &'static str, Vec<&'static str>)> {
    let mut f = BTreeMap::from([
        (
            "kubeproxy_sync_proxy_rules_duration_seconds",
            (
                "histogram",
                "SyncProxyRules latency in seconds",
                vec!["ip_family"],
            ),
        ),
        (
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            (
                "gauge",
                "The last time proxy rules were successfully synced",
                vec!["ip_family"],
            ),
        ),
        (
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            (
                "gauge",
                "The last time a sync of proxy rules was queued",
                vec!["ip_family"],
            ),
        ),
        (
            "kubeproxy_network_programming_duration_seconds",
            (
                "histogram",
                "In Cluster Network Programming Latency in seconds",
                vec!["ip_family"],
            ),
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            ("gauge", "Pending proxy rules Endpoint changes", vec![]),
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            ("counter", "Cumulative proxy rules Endpoint changes", vec![]),
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            ("gauge", "Pending proxy rules Service changes", vec![]),
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_total",
            ("counter", "Cumulative proxy rules Service changes", vec![]),
        ),
        (
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            (
                "counter",
                "Cumulative proxy iptables restore failures",
                vec!["ip_family"],
            ),
        ),
        (
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            (
                "gauge",
                "Number of services with a Local traffic policy and no endpoints",
                vec!["ip_family", "traffic_policy"],
            ),
        ),
        (
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            (
                "histogram",
                "ReconcileConntrackFlowsLatency latency in seconds",
                vec!["ip_family"],
            ),
        ),
        (
            "kubeproxy_conntrack_reconciler_deleted_entries_total",
            (
                "counter",
                "Cumulative conntrack flows deleted by conntrack reconciler",
                vec!["ip_family"],
            ),
        ),
    ]);
    if mode == ProxyMode::Iptables {
        f.extend([
            (
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                (
                    "histogram",
                    "SyncProxyRules latency in seconds for full resyncs",
                    vec!["ip_family"],
                ),
            ),
            (
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                (
                    "histogram",
                    "SyncProxyRules latency in seconds for partial resyncs",
                    vec!["ip_family"],
                ),
            ),
            (
                "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
                (
                    "counter",
                    "Cumulative proxy iptables partial restore failures",
                    vec!["ip_family"],
                ),
            ),
            (
                "kubeproxy_sync_proxy_rules_iptables_total",
                (
                    "gauge",
                    "Total number of iptables rules owned by kube-proxy",
                    vec!["ip_family", "table"],
                ),
            ),
            (
                "kubeproxy_sync_proxy_rules_iptables_last",
                (
                    "gauge",
                    "Number of iptables rules written by kube-proxy in last sync",
                    vec!["ip_family", "table"],
                ),
            ),
        ]);
    }
    f
}

/// Checks every family is upstream's (name, type, `[ALPHA] help`, label names) and every
/// expected one is there.
fn check_families(families: &BTreeMap<String, Family>, mode: ProxyMode, family_label: &str) {
    let want = upstream_families(mode);
    let got: BTreeSet<&str> = families.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = want.keys().copied().collect();
    assert_eq!(got, expected, "families for {mode:?}");
    for (name, f) in families {
        let (kind, help, labels) = &want[name.as_str()];
        assert_eq!(f.kind, *kind, "{name}");
        assert_eq!(f.help, format!("[ALPHA] {help}"), "{name}");
        for s in &f.samples {
            let names: Vec<&str> = s
                .labels
                .keys()
                .map(String::as_str)
                .filter(|l| *l != "le")
                .collect();
            assert_eq!(names, *labels, "{name}: labels of {s:?}");
            if let Some(v) = s.labels.get("ip_family") {
                assert_eq!(v, family_label);
            }
        }
    }
}

fn value(
    families: &BTreeMap<String, Family>,
    name: &str,
    series: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    families[name]
        .samples
        .iter()
        .find(|s| s.name == series && s.labels == want)
        .unwrap_or_else(|| panic!("no {series}{want:?}"))
        .value
}

/// The series named as its family `name` (a counter's or gauge's), with `labels`.
fn gauge(families: &BTreeMap<String, Family>, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(families, name, name, labels)
}

/// [`gauge`] without labels.
fn plain(families: &BTreeMap<String, Family>, name: &str) -> f64 {
    gauge(families, name, &[])
}

/// How many observations histogram `name` of IP family `family` holds (its `_count`).
fn observations(families: &BTreeMap<String, Family>, name: &str, family: &str) -> f64 {
    value(
        families,
        name,
        &format!("{name}_count"),
        &[("ip_family", family)],
    )
}

/// The changes queued and not synced yet.
const PENDING: [&str; 2] = [
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
    "kubeproxy_sync_proxy_rules_service_changes_pending",
];

const OBJECTS: &str = r#"
[
 {"apiVersion": "v1", "kind": "Service",
  "metadata": {"name": "lb", "namespace": "shop"},
  "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
           "externalTrafficPolicy": "Local", "healthCheckNodePort": 32100,
           "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]},
  "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}},
 {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
  "metadata": {"name": "lb-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "lb"}},
  "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
  "endpoints": [{"addresses": ["10.244.2.5"], "nodeName": "node-b", "conditions": {"ready": true}}]},
 {"apiVersion": "v1", "kind": "Service",
  "metadata": {"name": "local", "namespace": "shop"},
  "spec": {"clusterIP": "10.96.0.21", "clusterIPs": ["10.96.0.21"], "internalTrafficPolicy": "Local",
           "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
 {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
  "metadata": {"name": "local-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "local"}},
  "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
  "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "node-a", "conditions": {"ready": true}}]}
]"#;

fn objects() -> Objects {
    let all: Vec<serde_json::Value> = serde_json::from_str(OBJECTS).unwrap();
    let (mut services, mut slices) = (Vec::new(), Vec::new());
    for o in all {
        match o["kind"].as_str().unwrap() {
            "Service" => services.push(serde_json::from_value(o).unwrap()),
            _ => slices.push(serde_json::from_value(o).unwrap()),
        }
    }
    Objects::from_parts(services, slices, Vec::new())
}

/// A runtime, and in it the metrics of `mode` and `family` served on an ephemeral port of
/// 127.0.0.1 (at the address returned).
fn serve(mode: ProxyMode, family: IpFamily) -> (tokio::runtime::Runtime, Arc<Metrics>, SocketAddr) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (metrics, addr) = {
        let _enter = rt.enter();
        let metrics = Metrics::new(mode, family);
        let addr = metrics
            .serve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("bound on an ephemeral port");
        (metrics, addr)
    };
    (rt, metrics, addr)
}

/// One successful iptables-mode sync of `objects`, reported as the agent reports it.
async fn sync_once(t: &mut SyncTelemetry, settings: &Settings, kind: SyncKind) {
    t.begin();
    t.attempt(kind);
    let translation = kube_proxy_rs::translate(&objects(), settings);
    t.translated(&translation);
    let rs = rulegen::render(&translation.model, &translation.config).unwrap();
    t.rule_counts().observe(&rs);
    let report = SyncReport {
        kind,
        ..SyncReport::default()
    };
    t.applied(&report, &rs);
    t.finish(true, Duration::from_millis(3)).await;
}

#[test]
fn iptables_mode_metrics_parse_as_upstreams_and_move_with_syncs() {
    let (rt, metrics, addr) = serve(ProxyMode::Iptables, IpFamily::V4);
    let _enter = rt.enter();

    // Before any sync: every family parses; the ip_family-only series start at zero.
    let (status, content_type, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(content_type, PROMETHEUS_TEXT);
    let fresh = parse(&body);
    let fresh_families: BTreeSet<&str> = fresh.keys().map(String::as_str).collect();
    assert!(fresh_families.contains("kubeproxy_sync_proxy_rules_duration_seconds"));
    assert!(
        !fresh_families.contains("kubeproxy_sync_proxy_rules_iptables_total"),
        "rule counts appear once known"
    );
    assert_eq!(
        observations(
            &fresh,
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "IPv4"
        ),
        0.0
    );

    // Two syncs (full, then partial) of a node with a Local LoadBalancer whose endpoints are
    // elsewhere and a Local internal-policy Service whose endpoint is here.
    let settings = Settings {
        hostname: "node-a".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Settings::default()
    };
    let services = ServiceHealthServer::new(Some(Vec::new()), None);
    let mut telemetry = SyncTelemetry::new(metrics.clone(), None, services);
    let queue = telemetry.queue();
    queue.queued();
    metrics.service_changed("shop", "lb", Change::Applied);
    metrics.endpoint_slice_changed("shop", "lb", Some(SystemTime::now()), Change::Applied);
    let pending = parse(&get(addr, "/metrics").2);
    for name in PENDING {
        assert_eq!(plain(&pending, name), 1.0, "{name}");
    }
    rt.block_on(sync_once(&mut telemetry, &settings, SyncKind::Full));
    let one = parse(&get(addr, "/metrics").2);
    metrics.endpoint_slice_changed("shop", "lb", Some(SystemTime::now()), Change::Applied);
    rt.block_on(sync_once(&mut telemetry, &settings, SyncKind::Partial));
    metrics.restore_failed(true);
    metrics.conntrack_reconciled(Duration::from_millis(7), 3);
    let two = parse(&get(addr, "/metrics").2);

    for scrape in [&one, &two] {
        check_families(scrape, ProxyMode::Iptables, "IPv4");
        check_histograms(scrape, &upstream_buckets);
    }
    let ip4 = [("ip_family", "IPv4")];
    // Observations after one sync and after two: each sync (full, then partial) and each
    // endpoint change's programming latency observed once, and one conntrack cleanup.
    let scrapes = [&one, &two];
    for (syncs, name, want) in [
        (1, "kubeproxy_sync_proxy_rules_duration_seconds", 1.0),
        (1, "kubeproxy_sync_full_proxy_rules_duration_seconds", 1.0),
        (
            1,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            0.0,
        ),
        (2, "kubeproxy_sync_proxy_rules_duration_seconds", 2.0),
        (
            2,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            1.0,
        ),
        (1, "kubeproxy_network_programming_duration_seconds", 1.0),
        (2, "kubeproxy_network_programming_duration_seconds", 2.0),
        (
            2,
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            1.0,
        ),
    ] {
        assert_eq!(
            observations(scrapes[syncs - 1], name, "IPv4"),
            want,
            "{name} after {syncs} sync(s)"
        );
    }
    assert_eq!(
        value(
            &two,
            "kubeproxy_network_programming_duration_seconds",
            "kubeproxy_network_programming_duration_seconds_bucket",
            &[("ip_family", "IPv4"), ("le", "0.25")]
        ),
        2.0,
        "both changes were programmed within 250 ms"
    );
    for name in PENDING {
        assert_eq!(plain(&one, name), 0.0, "{name}");
    }
    assert!(
        plain(&two, "kubeproxy_sync_proxy_rules_endpoint_changes_total")
            > plain(&one, "kubeproxy_sync_proxy_rules_endpoint_changes_total")
    );
    let last = |f: &BTreeMap<String, Family>| {
        gauge(f, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", &ip4)
    };
    assert!(last(&one) > 1.6e9 && last(&two) >= last(&one));
    let queued = gauge(
        &one,
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        &ip4,
    );
    assert!(queued > 1.6e9 && queued <= last(&one));
    // The rendered rules, counted per table; the partial sync wrote none (same render).
    let rules = |f: &BTreeMap<String, Family>, name: &str, table: &str| {
        gauge(f, name, &[("ip_family", "IPv4"), ("table", table)])
    };
    let nat = rules(&one, "kubeproxy_sync_proxy_rules_iptables_total", "nat");
    assert!(nat > 5.0, "{nat}");
    assert_eq!(
        rules(&one, "kubeproxy_sync_proxy_rules_iptables_last", "nat"),
        nat
    );
    assert_eq!(
        rules(&two, "kubeproxy_sync_proxy_rules_iptables_total", "nat"),
        nat
    );
    assert!(rules(&two, "kubeproxy_sync_proxy_rules_iptables_total", "filter") > 0.0);
    // The LoadBalancer has no local endpoint (external); the internal-policy Service has one.
    let no_local = |policy: &str| {
        gauge(
            &two,
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            &[("ip_family", "IPv4"), ("traffic_policy", policy)],
        )
    };
    assert_eq!((no_local("internal"), no_local("external")), (0.0, 1.0));
    // One partial restore failed; the conntrack reconciler deleted three flows.
    for (name, want) in [
        (
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
            1.0,
        ),
        (
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            0.0,
        ),
        ("kubeproxy_conntrack_reconciler_deleted_entries_total", 3.0),
    ] {
        assert_eq!(gauge(&two, name, &ip4), want, "{name}");
    }

    // The health-check node port of the LoadBalancer was opened (and answers 503: no local
    // endpoints) — the telemetry synced it after the successful sync.
    let open = telemetry.service_health().open();
    assert_eq!(
        open,
        vec![(("shop".to_string(), "lb".to_string()), 32100, 0)]
    );
}

#[test]
fn ipvs_mode_has_upstreams_ipvs_families() {
    let (rt, metrics, addr) = serve(ProxyMode::Ipvs, IpFamily::V6);
    let _enter = rt.enter();
    metrics.sync_took(Duration::from_millis(40), None);
    metrics.restore_failed(false);
    metrics.set_no_local_endpoints(2, 1);
    metrics.sync_succeeded(SystemTime::now(), &[]);
    let scrape = parse(&get(addr, "/metrics").2);
    check_families(&scrape, ProxyMode::Ipvs, "IPv6");
    check_histograms(&scrape, &upstream_buckets);
    assert_eq!(
        observations(
            &scrape,
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "IPv6"
        ),
        1.0
    );
    // 40 ms: above the 32 ms bucket, within the 64 ms one.
    for (le, want) in [("0.032", 0.0), ("0.064", 1.0)] {
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
                &[("ip_family", "IPv6"), ("le", le)]
            ),
            want,
            "le {le}"
        );
    }
    assert_eq!(
        gauge(
            &scrape,
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            &[("ip_family", "IPv6")]
        ),
        1.0
    );
}

#[test]
fn the_metrics_server_also_answers_healthz_and_proxy_mode() {
    let (rt, _metrics, addr) = serve(ProxyMode::Ipvs, IpFamily::V4);
    let _enter = rt.enter();
    let text = "text/plain; charset=utf-8";
    assert_eq!(get(addr, "/healthz"), (200, text.into(), "ok".into()));
    assert_eq!(get(addr, "/healthz/ping"), (200, text.into(), "ok".into()));
    assert_eq!(
        get(addr, "/healthz?verbose"),
        (
            200,
            text.into(),
            "[+]ping ok\nhealthz check passed\n".into()
        )
    );
    assert_eq!(get(addr, "/proxyMode"), (200, text.into(), "ipvs".into()));
    assert_eq!(get(addr, "/nope").0, 404);
}

/// `GET /metrics` on the agent's default metrics address, from inside the namespace the
/// calling thread is in (async: the API server shares the thread's runtime).
async fn scrape_here() -> Option<BTreeMap<String, Family>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect("127.0.0.1:10249")
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.ok()?;
    let (_, body) = raw.split_once("\r\n\r\n")?;
    Some(parse(body))
}

/// A condition on a scrape.
type Check = dyn Fn(&BTreeMap<String, Family>) -> bool;

#[test]
fn the_agent_counts_api_changes_and_network_programming_latency() {
    testkit::needs_root!();
    let node = Arc::new(testkit::Netns::new("apim"));
    let tmp = testkit::TempDir::new("apim");
    let (kubeconfig, log) = (tmp.path().join("kubeconfig"), tmp.path().join("agent.log"));
    let node2 = node.clone();
    testkit::agent::in_netns(&node, move || async move {
        let server = testkit::apiserver::ApiServer::spawn().await;
        server.write_kubeconfig(&kubeconfig).unwrap();
        let agent = testkit::agent::AgentProcess::start_in_lab(
            &node2,
            ("--kubeconfig", &kubeconfig),
            &[],
            &[],
            &log,
        );
        let wait = |what: &'static str, cond: Box<Check>| {
            let agent = &agent;
            async move {
                let start = std::time::Instant::now();
                loop {
                    if let Some(f) = scrape_here().await.filter(|f| cond(f)) {
                        return f;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "{what}\n{}",
                        agent.log()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let ip4 = [("ip_family", "IPv4")];
        let synced = |f: &BTreeMap<String, Family>| {
            gauge(
                f,
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                &[("ip_family", "IPv4")],
            )
        };
        let first = wait("first sync", Box::new(move |f| synced(f) > 0.0)).await;
        check_families(&first, ProxyMode::Iptables, "IPv4");
        assert_eq!(
            plain(&first, "kubeproxy_sync_proxy_rules_service_changes_total"),
            0.0
        );

        // A Service and its slice, changed now: counted as they arrive, and programmed.
        let now = k8s_openapi::jiff::Timestamp::try_from(SystemTime::now())
            .unwrap()
            .to_string();
        server.apply(&serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        }));
        server.apply(&serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.11"], "nodeName": "node-a", "conditions": {"ready": true}}]
        }));
        let count = |f: &BTreeMap<String, Family>| {
            observations(f, "kubeproxy_network_programming_duration_seconds", "IPv4")
        };
        let second = wait("the change programmed", Box::new(move |f| count(f) >= 1.0)).await;
        check_histograms(&second, &upstream_buckets);
        assert_eq!(
            plain(&second, "kubeproxy_sync_proxy_rules_service_changes_total"),
            1.0
        );
        assert_eq!(
            plain(&second, "kubeproxy_sync_proxy_rules_endpoint_changes_total"),
            1.0
        );
        assert_eq!(
            plain(
                &second,
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending"
            ),
            0.0
        );
        assert_eq!(count(&second), 1.0, "one trigger time, one observation");
        assert!(
            value(
                &second,
                "kubeproxy_network_programming_duration_seconds",
                "kubeproxy_network_programming_duration_seconds_bucket",
                &[("ip_family", "IPv4"), ("le", "5")]
            ) == 1.0,
            "programmed within 5 s"
        );
        assert!(
            gauge(
                &second,
                "kubeproxy_sync_proxy_rules_iptables_total",
                &[("ip_family", "IPv4"), ("table", "nat")]
            ) > 0.0
        );
        let queued = gauge(
            &second,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            &ip4,
        );
        assert!(
            queued
                >= gauge(
                    &first,
                    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                    &ip4
                )
        );

        // The slice is deleted: one more endpoint change, no latency (upstream ignores
        // a deletion's trigger time).
        server.delete(testkit::apiserver::Kind::EndpointSlice, "shop", "web-1");
        let third = wait(
            "the deletion counted",
            Box::new(|f| plain(f, "kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 2.0),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let third = scrape_here().await.unwrap_or(third);
        assert_eq!(count(&third), 1.0);
        assert!(
            observations(
                &third,
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "IPv4"
            ) >= 3.0
        );
    });
    drop(node);
}
