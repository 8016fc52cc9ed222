//! `kube-proxy-rs trace` against the real kernel (issue #8).
//!
//! For every golden case (every `golden/<case>/expected.iptables`, and `expected.ip6tables` as
//! a second, IPv6 variant) the case's ruleset is loaded with `iptables-restore -w` into a fresh
//! node namespace (legacy and nft back ends alternate between variants), packets are sampled
//! from the case's model (cluster IPs, node ports, external and load-balancer IPs, from a pod,
//! from the node and from outside, and destinations no service has: see
//! [`tracelab::plan`]), each is traced with `kube-proxy-rs trace --output json`, and the same
//! packet is sent through the lab (`testkit/src/tracelab.rs`) as new connections:
//!
//! - every place the kernel delivered it (the DNAT target, seen by the server that answered) is
//!   a new-connection outcome trace predicts, and every predicted outcome is reached within
//!   N tries, N from the smallest share s: (1 − s)^N ≤ 1e-9 ([`tracelab::tries_for`]);
//! - a REJECT prediction ⇔ the connection is refused at once (TCP: ICMP/RST; UDP: an ICMP error
//!   on the connected socket); a DROP prediction ⇔ no answer within 1 s;
//! - masquerade predicted ⇔ the server saw another source than the one the client bound;
//! - session affinity: the node's xt_recent lists are cleared before each try (so each is a new
//!   client), then a returning client must stick to one of trace's affinity paths.
//!
//! Left out, and said so in the report: SCTP ports (this kernel has no SCTP) and health-check
//! node ports (the agent's HTTP server answers them, not rules); the IPVS-only golden case
//! (no `expected.iptables`; this kernel has no IPVS).
//!
//! Negative controls show each comparison can fail: a DNAT target corrupted in the kernel's
//! ruleset (an unpredicted endpoint reached, a predicted one missed), a tampered ruleset given to
//! trace (`--ruleset`) while the kernel holds the real one (a DNAT port, a REJECT removed), and
//! the kernel's MASQUERADE rule removed (a predicted masquerade not done).
//!
//! `TRACE_KERNEL_VERBOSE=1` prints every packet with trace's prediction and the kernel's tally;
//! `TRACE_KERNEL_DIAG=1` adds the node's addresses, routes, conntrack and rules to a failure.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Instant;

use clap::Parser;
use rulegen::IpFamily;
use testkit::tracelab::{self, CaseModel, Key, Options, Origin, Proto, Report, Variant};

/// Variants run at once (each runs its own probes in parallel too).
const PARALLEL_VARIANTS: usize = 8;

fn run_all(variants: &[Variant]) -> Vec<Report> {
    let next = AtomicUsize::new(0);
    let reports = Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..PARALLEL_VARIANTS {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(v) = variants.get(k) else { break };
                    let r = tracelab::run_variant(v, load_case(v), &Options::default());
                    reports.lock().unwrap().push(r);
                }
            });
        }
    });
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by(|a, b| a.variant.cmp(&b.variant));
    reports
}

#[test]
fn trace_predictions_hold_in_the_kernel_for_every_golden_case() {
    testkit::needs_root!();
    let start = Instant::now();
    let variants = tracelab::variants();
    assert!(
        variants.len() >= 30,
        "expected every golden case, found {} variants",
        variants.len()
    );
    let reports = run_all(&variants);
    assert_eq!(reports.len(), variants.len());

    let mut summary = String::new();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    let mut verdicts = std::collections::BTreeMap::<String, usize>::new();
    let (mut probes, mut conns) = (0, 0);
    let mut left_out = Vec::new();
    let mut problems = Vec::new();
    for r in &reports {
        summary.push_str(&format!(
            "  {:40} {:6} {:3} packets {:5} connections ({} with affinity) {:>6.2?}{}\n",
            r.variant,
            r.backend,
            r.probes,
            r.connections,
            r.affinity_probes,
            r.took,
            if r.disagreements.is_empty() && r.errors.is_empty() {
                ""
            } else {
                "  <-- FAILED"
            }
        ));
        probes += r.probes;
        conns += r.connections;
        for (k, n) in &r.kinds {
            *kinds.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &r.verdicts {
            *verdicts.entry(k.clone()).or_default() += n;
        }
        left_out.extend(r.left_out.iter().cloned());
        if std::env::var_os("TRACE_KERNEL_VERBOSE").is_some() {
            let _ = writeln!(
                std::io::stderr(),
                "== {} ({})\n{}",
                r.variant,
                r.backend,
                r.lines.join("\n")
            );
        }
        problems.extend(r.errors.iter().map(|e| format!("ERROR {e}")));
        problems.extend(r.disagreements.iter().cloned());
    }
    summary.push_str(&format!(
        "{} variants of {} cases, {probes} packets, {conns} connections, {:.1?}\n",
        reports.len(),
        variants
            .iter()
            .map(|v| &v.dir)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        start.elapsed()
    ));
    summary.push_str(&format!("packets per kind: {kinds:#?}\n"));
    summary.push_str(&format!("predicted outcomes checked: {verdicts:?}\n"));
    summary.push_str(&format!("left out:\n  {}\n", left_out.join("\n  ")));
    // To the process's stderr: libtest would capture eprintln! of a passing test.
    let _ = writeln!(std::io::stderr(), "\n{summary}");

    // Every kind of packet the issue names was sampled somewhere, and every verdict was checked.
    for kind in [
        "cluster IP from pod",
        "cluster IP from node",
        "cluster IP from external",
        "cluster IP, hairpin from endpoint",
        "node port from external",
        "node port from node",
        "node port on loopback from node",
        "external IP from external",
        "external IP from pod",
        "load balancer from pod",
        "load balancer, source outside the ranges from external",
        "no service: other protocol from pod",
        "no service: unused port on the node from external",
    ] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) > 0,
            "no packet of kind {kind:?}\n{summary}"
        );
    }
    assert!(
        kinds
            .keys()
            .any(|k| k.starts_with("load balancer, source in")),
        "no packet from inside a source range\n{summary}"
    );
    for v in [
        "delivered (forwarded)",
        "delivered (node)",
        "rejected",
        "dropped",
    ] {
        assert!(
            verdicts.get(v).copied().unwrap_or(0) > 0,
            "no {v} prediction checked\n{summary}"
        );
    }
    assert!(
        reports.iter().any(|r| r.affinity_probes > 0),
        "no session-affinity packet\n{summary}"
    );
    // Golden cases without an iptables ruleset (IPVS mode only: this kernel has no IPVS).
    let mut dirs: Vec<_> = std::fs::read_dir("golden")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.join("expected.iptables").exists())
        .collect();
    dirs.sort();
    for d in dirs {
        let f = testkit::golden::flags(&d);
        assert!(
            f.windows(2).any(|w| w == ["--proxy-mode", "ipvs"]),
            "{} has no expected.iptables but is not an IPVS-only case",
            d.display()
        );
        let _ = writeln!(
            std::io::stderr(),
            "left out: {} (IPVS mode only: no expected.iptables, and this kernel has no IPVS)",
            d.display()
        );
    }
    // What is left out is SCTP and health-check node ports only, and it is listed.
    for l in &left_out {
        assert!(
            l.contains("SCTP is not sampled") || l.contains("health-check node port"),
            "unexpected left-out item: {l}"
        );
    }
    assert!(
        left_out.iter().any(|l| l.starts_with("clusterip-sctp:")),
        "the SCTP case's port should be listed as left out\n{summary}"
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\n{summary}",
        problems.len(),
        problems.join("\n\n")
    );
}

/// The TCP Service port of `golden/example` with the most ready endpoints (at least two).
fn victim(model: &CaseModel) -> rulegen::ServicePort {
    model
        .services
        .iter()
        .filter(|s| s.protocol == rulegen::Protocol::Tcp && !s.cluster_ips.is_empty())
        .max_by_key(|s| s.endpoints.iter().filter(|e| e.ready).count())
        .filter(|s| s.endpoints.iter().filter(|e| e.ready).count() >= 2)
        .expect("a TCP Service with two ready endpoints")
        .clone()
}

fn example() -> Variant {
    tracelab::variants()
        .into_iter()
        .find(|v| v.name == "example")
        .expect("golden/example")
}

/// Negative control: one DNAT target of a Service is changed in the ruleset the kernel gets (to
/// another Service's endpoint). The comparison must see the kernel reach an endpoint trace does
/// not predict, and miss the one it does.
#[test]
fn a_corrupted_dnat_target_in_the_kernel_is_caught() {
    testkit::needs_root!();
    let v = example();
    let model = load_case(&v);
    let victim = victim(&model);
    let old = victim.endpoints[1].addr_string();
    let new = model
        .services
        .iter()
        .filter(|s| s.name != victim.name && s.protocol == victim.protocol)
        .flat_map(|s| s.endpoints.iter())
        .map(|e| e.addr_string())
        .find(|a| *a != old)
        .expect("another Service's endpoint");
    let from = format!("--to-destination {old}");
    let to = format!("--to-destination {new}");
    let text = std::fs::read_to_string(&v.ruleset).unwrap();
    assert!(text.contains(&from), "{from} is in the ruleset");
    let cluster = SocketAddr::new(victim.cluster_ips[0], victim.port);
    let opts = Options {
        kernel_ruleset: Some(Box::new(move |t: &str| t.replace(&from, &to))),
        probe_filter: Some(Box::new(move |p| {
            p.dst == cluster && p.origin == Origin::Pod && p.proto == Proto::Tcp
        })),
        ..Options::default()
    };
    let r = tracelab::run_variant(&v, model.clone(), &opts);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.probes, 1, "one packet: {cluster} from a pod");
    let all = r.disagreements.join("\n");
    let _ = writeln!(
        std::io::stderr(),
        "negative control (corrupted DNAT), caught:\n{all}"
    );
    assert!(
        all.contains(&format!("answered by {new}"))
            && all.contains("trace predicts no such new-connection outcome")
            && all.contains(&format!("trace predicts delivered to {old}"))
            && all.contains("never did it"),
        "the corrupted DNAT ({old} -> {new}) was not caught:\n{all}"
    );
}

/// Negative control: trace walks a tampered copy of the ruleset (`--ruleset`) while the kernel
/// holds the real one: one endpoint's DNAT port changed, and the REJECT of a Service without
/// endpoints removed. Both must show as disagreements; an untouched packet must still agree.
#[test]
fn a_tampered_ruleset_given_to_trace_is_caught() {
    testkit::needs_root!();
    let v = example();
    let model = load_case(&v);
    let text = std::fs::read_to_string(&v.ruleset).unwrap();
    // (1) A DNAT port.
    let victim = victim(&model);
    let ep = &victim.endpoints[0];
    let old = ep.addr_string();
    let bumped = SocketAddr::new(ep.ip, ep.port + 1).to_string();
    let mut tampered = text.replace(
        &format!("--to-destination {old}"),
        &format!("--to-destination {bumped}"),
    );
    assert_ne!(tampered, text);
    // (2) The REJECT of a Service without endpoints.
    let rejected = model
        .services
        .iter()
        .find(|s| s.endpoints.iter().all(|e| !e.ready) && !s.cluster_ips.is_empty())
        .expect("a Service without ready endpoints")
        .clone();
    let reject_dst = SocketAddr::new(rejected.cluster_ips[0], rejected.port);
    let before = tampered.lines().count();
    tampered = tampered
        .lines()
        .filter(|l| !(l.contains("-j REJECT") && l.contains(&format!("-d {}/32", reject_dst.ip()))))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        tampered.lines().count() < before,
        "a REJECT rule was removed"
    );
    // (3) Untouched: another Service's cluster IP.
    let untouched = model
        .services
        .iter()
        .filter(|s| s.protocol == rulegen::Protocol::Tcp && !s.cluster_ips.is_empty())
        .filter(|s| s.endpoints.iter().any(|e| e.ready))
        .map(|s| SocketAddr::new(s.cluster_ips[0], s.port))
        .find(|d| d.ip() != victim.cluster_ips[0] && d.ip() != rejected.cluster_ips[0])
        .expect("another Service");

    let tmp = testkit::TempDir::new("trace-tampered");
    let path = tmp.path().join("tampered.iptables");
    std::fs::write(&path, &tampered).unwrap();
    let victim_dst = SocketAddr::new(victim.cluster_ips[0], victim.port);
    let wanted = [victim_dst, reject_dst, untouched];
    let opts = Options {
        trace_ruleset: Some(path),
        probe_filter: Some(Box::new(move |p| {
            wanted.contains(&p.dst) && p.origin == Origin::Pod && p.proto == Proto::Tcp
        })),
        ..Options::default()
    };
    let r = tracelab::run_variant(&v, model.clone(), &opts);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.probes, 3, "three packets from a pod");
    let find = |dst: SocketAddr| {
        r.disagreements
            .iter()
            .find(|d| d.contains(&format!("-> {dst} from pod")))
            .cloned()
    };
    let _ = writeln!(
        std::io::stderr(),
        "negative control (tampered --ruleset), caught:\n{}",
        r.disagreements.join("\n")
    );
    let dnat = find(victim_dst).expect("the changed DNAT port shows");
    assert!(
        dnat.contains(&format!("trace predicts delivered to {bumped}"))
            && dnat.contains(&format!("answered by {old}")),
        "{dnat}"
    );
    let reject = find(reject_dst).expect("the removed REJECT shows");
    assert!(
        reject.contains(&format!("{}", Key::Rejected)) && reject.contains("refused"),
        "{reject}"
    );
    assert!(
        find(untouched).is_none(),
        "an untouched packet disagrees:\n{}",
        r.disagreements.join("\n")
    );
}

/// Negative control: the kernel's ruleset loses its MASQUERADE rule, so the node's own packets to
/// a cluster IP keep their source where trace (on the real rules) predicts a masquerade.
#[test]
fn a_masquerade_the_kernel_does_not_do_is_caught() {
    testkit::needs_root!();
    let v = example();
    let model = load_case(&v);
    let target = victim(&model);
    let dst = SocketAddr::new(target.cluster_ips[0], target.port);
    let text = std::fs::read_to_string(&v.ruleset).unwrap();
    assert!(text.contains("-j MASQUERADE"));
    let opts = Options {
        kernel_ruleset: Some(Box::new(|t: &str| {
            t.lines()
                .filter(|l| !l.contains("-j MASQUERADE"))
                .map(|l| format!("{l}\n"))
                .collect()
        })),
        probe_filter: Some(Box::new(move |p| {
            p.dst == dst && p.origin == Origin::Node && p.proto == Proto::Tcp
        })),
        ..Options::default()
    };
    let r = tracelab::run_variant(&v, model.clone(), &opts);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.probes, 1, "one packet: {dst} from the node");
    let all = r.disagreements.join("\n");
    let _ = writeln!(
        std::io::stderr(),
        "negative control (no MASQUERADE in the kernel), caught:\n{all}"
    );
    assert!(
        all.contains("trace says the source is masqueraded, the kernel kept it"),
        "the missing masquerade was not caught:\n{all}"
    );
}

/// What the library makes of a case: the same objects and flags the binary reads, through
/// the binary's own crate.
fn load_case(v: &Variant) -> CaseModel {
    let mut argv = vec![
        "kube-proxy-rs".to_string(),
        "--objects".to_string(),
        testkit::golden::objects_path(&v.dir).display().to_string(),
    ];
    argv.extend(v.flags.iter().cloned());
    let cli = kube_proxy_rs::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{}: flags {argv:?}: {e}", v.name));
    let (settings, _) = kube_proxy_rs::settings::Settings::from_cli(&cli)
        .unwrap_or_else(|e| panic!("{}: settings: {e:#}", v.name));
    assert_eq!(
        settings.mode,
        kube_proxy_rs::settings::ProxyMode::Iptables,
        "{}: a case with expected.iptables renders in iptables mode",
        v.name
    );
    let t = kube_proxy_rs::commands::dryrun::load_model(&cli.objects, &settings)
        .unwrap_or_else(|e| panic!("{}: objects: {e:#}", v.name));
    let fam = |ip: &IpAddr| ip.is_ipv4() == (v.family == IpFamily::V4);
    let mut services = t.model.services.clone();
    for sp in &mut services {
        sp.cluster_ips.retain(fam);
        sp.external_ips.retain(fam);
        sp.load_balancer_ips.retain(fam);
        sp.load_balancer_source_ranges.retain(|n| fam(&n.addr()));
        sp.endpoints.retain(|e| fam(&e.ip));
    }
    CaseModel {
        services,
        node_ips: t.config.node_ips.iter().copied().filter(fam).collect(),
        detector: t.config.local_detector.clone(),
        cluster_cidrs: settings
            .cluster_cidrs
            .iter()
            .copied()
            .filter(|n| fam(&n.addr()))
            .collect(),
        localhost_nodeports: settings.localhost_nodeports,
    }
}
