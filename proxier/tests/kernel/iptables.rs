//! The applier against the real kernel, for both iptables back ends, each test in network
//! namespaces it creates (`testkit::Netns`, deleted on drop, also on panic).
//!
//! How the tools reach the namespace: every command the proxier runs goes through a
//! [`Launcher`] with the prefix `ip netns exec <ns>` and the namespace's own `XTABLES_LOCKFILE`,
//! so no tool ever runs in the root namespace, and the code path is the production one apart
//! from that prefix (no `setns` on a runtime thread that a pool thread could escape).
//! What the kernel holds is read back independently (`ns.exec_ok([...save, "-t", table])`).

#[allow(dead_code)]
use std::net::IpAddr;
use std::time::{Duration, Instant};

use proxier::{
    ApplyError, Backend, CommandError, Dataplane, Evidence, FullSyncReason, IptablesApplier,
    IptablesDataplane, Launcher, NoObserver, NodeFacts, PartialRefusal, Rejected, RestoreError,
    SyncKind, SyncObserver, detect_backend, detect_backend_within,
};
use rulegen::render::iptables::chains::ChainName;
use rulegen::scenario::{self, Scenario};
use rulegen::sync::restore::saved_chains;
use rulegen::{
    Endpoint, IpFamily, LocalDetector, Model, Protocol, RenderConfig, Ruleset, ServicePort,
    ServicePortName, Table,
};
use testkit::netns::Netns;

fn launcher(ns: &Netns) -> Launcher {
    Launcher::netns(ns.name()).with_env("XTABLES_LOCKFILE", ns.lockfile())
}

fn applier(ns: &Netns, backend: Backend, family: IpFamily) -> IptablesApplier {
    IptablesApplier::new(backend, family)
        .with_launcher(launcher(ns))
        .with_timeout(Duration::from_secs(30))
}

/// The agent's iptables dataplane over [`applier`], the render configuration used as given.
fn dataplane(ns: &Netns, backend: Backend, family: IpFamily) -> IptablesDataplane {
    IptablesDataplane::new(applier(ns, backend, family)).with_node_facts(NodeFacts::given())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `n` ClusterIP services with two endpoints each (the first also a NodePort), plus one
/// without endpoints (a REJECT in filter).
fn model(family: IpFamily, n: usize) -> Model {
    let addr = |kind: &str, i: usize| match family {
        IpFamily::V4 => ip(&format!("10.{kind}.{i}")),
        IpFamily::V6 => ip(&format!(
            "fd00:10:{}::{:x}",
            if kind == "96.0" { "96" } else { "244" },
            i
        )),
    };
    let mut services: Vec<ServicePort> = (0..n)
        .map(|i| {
            let mut sp = ServicePort::cluster_ip(
                ServicePortName::new("ns1", format!("svc{i}"), "http"),
                Protocol::Tcp,
                addr("96.0", 10 + i),
                80,
            );
            for e in 0..2 {
                sp.endpoints
                    .push(Endpoint::ready(addr("244.1", 10 * (i + 1) + e), 8080));
            }
            if i == 0 {
                sp.node_port = Some(30080);
            }
            sp
        })
        .collect();
    services.push(ServicePort::cluster_ip(
        ServicePortName::new("ns2", "empty", ""),
        Protocol::Udp,
        addr("96.0", 200),
        53,
    ));
    Model { services }
}

fn config(family: IpFamily) -> RenderConfig {
    RenderConfig {
        family,
        node_name: "node-a".into(),
        local_detector: LocalDetector::Cidrs(vec![match family {
            IpFamily::V4 => "10.244.0.0/16".parse().unwrap(),
            IpFamily::V6 => "fd00:10:244::/56".parse().unwrap(),
        }]),
        ..RenderConfig::default()
    }
}

fn render(family: IpFamily, n: usize) -> Ruleset {
    let rs = rulegen::render(&model(family, n), &config(family)).unwrap();
    assert_eq!(rs.family, family);
    rs
}

/// What the namespace holds for the ruleset's tables: `<save> -t TABLE` per table in the
/// ruleset's order, `#` lines dropped (read with the harness, not with the code under test).
fn kernel_text(ns: &Netns, backend: Backend, family: IpFamily, rs: &Ruleset) -> String {
    let bin = backend.save(family);
    let mut all = String::new();
    for t in &rs.tables {
        let out = ns.exec_ok([bin.as_str(), "-t", t.name]);
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            all.push_str(line);
            all.push('\n');
        }
    }
    all
}

#[track_caller]
fn assert_holds(ns: &Netns, backend: Backend, family: IpFamily, expected: &str, rs: &Ruleset) {
    let got = kernel_text(ns, backend, family, rs);
    if got != expected {
        panic!(
            "[{backend} {family:?}] the kernel holds something else (- expected, + kernel):\n{}",
            similar::TextDiff::from_lines(expected, &got)
                .unified_diff()
                .context_radius(3)
                .header("expected", "kernel")
        );
    }
}

/// `rs` with one more chain in `table` holding `rules`.
fn with_chain(rs: &Ruleset, table: &str, chain: &str, rules: &str) -> Ruleset {
    let mut out = rs.clone();
    let t = out.tables.iter_mut().find(|t| t.name == table).unwrap();
    let names: Vec<&'static str> = t.builtins.iter().map(|b| b.name).collect();
    let mut nt = Table::new(t.name, &names);
    for (b, old) in nt.builtins.iter_mut().zip(&t.builtins) {
        b.rules = old.rules.clone();
    }
    for (name, rules) in t.chains() {
        nt.add_chain(*name, rules);
    }
    nt.add_chain(ChainName::new(chain), rules);
    nt.seal();
    *t = nt;
    out
}

fn rejected(err: &ApplyError) -> &Rejected {
    match err {
        ApplyError::Restore(RestoreError::Rejected(r)) => r,
        other => panic!("expected a rejected restore, got {other:?}"),
    }
}

/// The 1-based number of the only payload line of a full restore of `rs` (into a kernel whose
/// stale chains are none) that contains `needle`.
fn payload_line(rs: &Ruleset, needle: &str) -> usize {
    let mut payload = String::new();
    rs.write_full_restore(&Default::default(), &mut payload)
        .unwrap();
    let hits: Vec<usize> = payload
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "{needle:?} in payload: {hits:?}");
    hits[0]
}

const BAD_CHAIN: &str = "KUBE-SEP-BADBADBADBADBADB";

/// A rule on the legacy back end, as a node that used it before holds one.
const LEGACY_INPUT_RULE: [&str; 9] = [
    "iptables-legacy",
    "-w",
    "5",
    "-A",
    "INPUT",
    "-s",
    "192.0.2.1",
    "-j",
    "ACCEPT",
];

/// A node whose kernel holds the render of some Services, and the error of the full sync that
/// tried to add one bad rule.
struct Refused {
    ns: Netns,
    /// What the kernel held before the bad sync.
    rs: Ruleset,
    /// `rs` as `iptables-save` prints it.
    before: String,
    /// The refused ruleset.
    broken: Ruleset,
    err: ApplyError,
    _applier: IptablesApplier,
}

/// Full-syncs the render of `services` Services into a fresh namespace tagged `tag-<backend>`,
/// then full-syncs `next` (the render of that many Services; the same one when `None`) with
/// `bad_rule` in a new chain [`BAD_CHAIN`] of `table`, which must fail.
async fn refused_sync(
    tag: &str,
    backend: Backend,
    family: IpFamily,
    (services, next): (usize, Option<usize>),
    table: &str,
    bad_rule: &str,
) -> Refused {
    let ns = Netns::new(&format!("{tag}-{backend}"));
    let rs = render(family, services);
    let before = rs.to_save_text();
    let mut a = applier(&ns, backend, family);
    a.full_sync(&rs).await.unwrap();

    let next = next.map(|n| render(family, n));
    let broken = with_chain(next.as_ref().unwrap_or(&rs), table, BAD_CHAIN, bad_rule);
    let err = a.full_sync(&broken).await.unwrap_err();
    eprintln!("[{backend} {family:?}] {err}");
    Refused {
        ns,
        rs,
        before,
        broken,
        err,
        _applier: a,
    }
}

/// The rejection in `err`, and the payload line it was traced to.
fn rejected_line(err: &ApplyError) -> (&Rejected, &proxier::restore::FailedLine) {
    let r = rejected(err);
    let line = r
        .line
        .as_ref()
        .unwrap_or_else(|| panic!("no line in {err}"));
    (r, line)
}

// ---------------------------------------------------------------------------------------------

/// (a) + (b): a full sync leaves exactly the render in the kernel; a second one changes nothing
/// and adds no hook.
async fn full_sync_holds_the_render_and_is_idempotent(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let ns = Netns::new(&format!("full-{backend}"));
    let rs = render(family, 3);
    let expected = rs.to_save_text();
    let mut a = applier(&ns, backend, family);

    let first = a.full_sync(&rs).await.unwrap();
    assert_holds(&ns, backend, family, &expected, &rs);
    assert_eq!(first.hooks_inserted, rs.hooks().len());
    assert_eq!(first.hooks_checked, rs.hooks().len());
    assert!(first.hooks_inserted >= 8, "{first:?}");
    assert_eq!(first.stale_chains_deleted, 0);
    assert!(first.payload_bytes > 1000, "{first:?}");

    let second = a.full_sync(&rs).await.unwrap();
    assert_holds(&ns, backend, family, &expected, &rs);
    assert_eq!(second.hooks_inserted, 0, "{second:?}");
    assert_eq!(
        second.hooks_checked, 0,
        "all hooks seen in the save: {second:?}"
    );
    assert_eq!(second.stale_chains_deleted, 0);
    // Without the save, every hook is checked with `iptables -C`, and none is added.
    let checked = a.iptables().ensure_hooks(&rs.hooks(), None).await.unwrap();
    assert_eq!((checked.checked, checked.inserted), (rs.hooks().len(), 0));
    assert_holds(&ns, backend, family, &expected, &rs);
    eprintln!("[{backend} {family:?}] first sync {first:?}, second {second:?}");
}

/// (c): a smaller model's sync deletes the chains of the Services that went, and the kernel
/// then holds exactly the new render.
async fn a_smaller_model_deletes_stale_chains(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let ns = Netns::new(&format!("stale-{backend}"));
    let big = render(family, 4);
    let small = render(family, 1);
    let mut a = applier(&ns, backend, family);
    a.full_sync(&big).await.unwrap();
    assert_holds(&ns, backend, family, &big.to_save_text(), &big);

    let gone = small.stale_chains(&saved_chains(&big.to_save_text()));
    let gone_count: usize = gone.values().map(Vec::len).sum();
    assert!(gone_count >= 9, "3 services x (SVC + 2 SEP): {gone:?}");
    let report = a.full_sync(&small).await.unwrap();
    assert_eq!(report.stale_chains_deleted, gone_count);
    assert_eq!(report.hooks_inserted, 0);
    assert_holds(&ns, backend, family, &small.to_save_text(), &small);
    let nat = kernel_text(&ns, backend, family, &small);
    for c in gone.values().flatten() {
        assert!(!nat.contains(c.as_str()), "{c} still in the kernel");
    }
}

/// Partial syncs: after a full sync they trust what it applied — no save, no hook checks — and
/// send only the chains that changed, still deleting the chains of Services that went and
/// adding new ones; after a failed sync the next one falls back to a full sync.
async fn partial_syncs_follow_changes_without_reading_back(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let ns = Netns::new(&format!("partial-{backend}"));
    let (big_model, small_model, cfg) = (model(family, 4), model(family, 2), config(family));
    let big = render(family, 4);
    let small = render(family, 2);
    let mut a = dataplane(&ns, backend, family);

    // No successful sync yet: the sync is full (it reads back and inserts hooks).
    let first = a.sync(&small_model, &cfg, &mut NoObserver).await.unwrap();
    assert_eq!(first.kind, SyncKind::Full, "{first:?}");
    assert_eq!(first.reason, Some(FullSyncReason::FirstSync), "{first:?}");
    assert_eq!(first.hooks_inserted, small.hooks().len(), "{first:?}");
    assert_holds(&ns, backend, family, &small.to_save_text(), &small);

    let grow = a.sync(&big_model, &cfg, &mut NoObserver).await.unwrap();
    assert_eq!(grow.kind, SyncKind::Partial, "{grow:?}");
    assert_eq!(
        (grow.save, grow.hooks_checked, grow.stale_chains_deleted),
        (Duration::ZERO, 0, 0),
        "{grow:?}"
    );
    // Two new services: SVC + 2 SEP each, and the dispatch chain that lists them.
    assert_eq!(grow.chains_written, 7, "{grow:?}");
    assert_holds(&ns, backend, family, &big.to_save_text(), &big);

    let same = a.sync(&big_model, &cfg, &mut NoObserver).await.unwrap();
    assert_eq!((same.kind, same.chains_written), (SyncKind::Partial, 0));
    assert!(same.payload_bytes < 2000, "only the checks: {same:?}");
    assert_holds(&ns, backend, family, &big.to_save_text(), &big);

    let shrink = a.sync(&small_model, &cfg, &mut NoObserver).await.unwrap();
    assert_eq!(
        shrink.stale_chains_deleted, 6,
        "2 services x (SVC + 2 SEP): {shrink:?}"
    );
    assert_holds(&ns, backend, family, &small.to_save_text(), &small);

    // A failed sync leaves the old rules, and the next sync reads the kernel again.
    let broken = with_chain(
        &big,
        "nat",
        BAD_CHAIN,
        &format!("-A {BAD_CHAIN} -j KUBE-NO-SUCH-CHAIN\n"),
    );
    assert!(a.applier_mut().try_partial_sync(&broken).await.is_err());
    assert!(!a.applier().can_sync_partially());
    assert_holds(&ns, backend, family, &small.to_save_text(), &small);
    let healed = a.sync(&big_model, &cfg, &mut NoObserver).await.unwrap();
    assert_eq!(healed.kind, SyncKind::Full, "{healed:?}");
    assert_eq!(
        healed.reason,
        Some(FullSyncReason::AfterFailure),
        "{healed:?}"
    );
    assert!(
        healed.save > Duration::ZERO,
        "after a failure the sync reads back: {healed:?}"
    );
    assert_holds(&ns, backend, family, &big.to_save_text(), &big);
}

/// Counts the chunks a full sync renders.
struct Chunks(usize);

impl SyncObserver for Chunks {
    fn chunk_rendered(&mut self, _rs: &Ruleset) {
        self.0 += 1;
    }
}

/// A full sync sent in many small chunks (each rendered keeping only its chains) leaves the
/// kernel holding exactly the full render: into an empty namespace, and over an older
/// ruleset whose stale chains go and whose live chains are replaced.
async fn a_chunked_full_sync_reaches_the_full_render(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let ns = Netns::new(&format!("chunk-{backend}"));
    let mut a = applier(&ns, backend, family);
    for n in [5, 2] {
        let model = model(family, n);
        let cfg = config(family);
        let full = rulegen::render(&model, &cfg).unwrap();
        let mut lean = Ruleset {
            family: full.family,
            tables: Vec::new(),
        };
        rulegen::render_into_with(&model, &cfg, &mut lean, &rulegen::Retain::Nothing).unwrap();
        let mut chunks = Chunks(0);
        let report = a
            .full_sync_chunked(&model, &cfg, &mut lean, 600, &mut chunks)
            .await
            .unwrap();
        let renders = chunks.0;
        assert!(renders >= 6, "{renders} chunks: {report:?}");
        assert_holds(&ns, backend, family, &full.to_save_text(), &full);
        // And a partial sync can follow it.
        let next = a.try_partial_sync(&full).await.unwrap().unwrap();
        assert_eq!((next.kind, next.chains_written), (SyncKind::Partial, 0));
    }
}

/// Someone flushes the tables behind the proxy's back (`-F` empties the built-in chains, `-X`
/// deletes the chains, as a firewall reload does): the next partial sync notices, in the same
/// restore, and a full sync puts everything back.
async fn a_flushed_table_is_restored_by_the_next_sync(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let ns = Netns::new(&format!("flush-{backend}"));
    let (m, cfg) = (model(family, 3), config(family));
    let rs = render(family, 3);
    let expected = rs.to_save_text();
    let mut a = dataplane(&ns, backend, family);
    a.sync(&m, &cfg, &mut NoObserver).await.unwrap();
    let ipt = backend.iptables(family);
    for (table, ops) in [
        ("nat", &["-F", "-X"][..]),
        ("filter", &["-F"][..]),
        ("mangle", &["-X"][..]),
        ("nat", &["-F"][..]),
    ] {
        for op in ops {
            ns.exec_ok([ipt.as_str(), "-w", "5", "-t", table, op]);
        }
        assert_ne!(kernel_text(&ns, backend, family, &rs), expected);
        let report = a.sync(&m, &cfg, &mut NoObserver).await.unwrap();
        assert_eq!(report.kind, SyncKind::Full, "{table} {ops:?}: {report:?}");
        match report.fallback() {
            Some(PartialRefusal::Flushed { table: t, .. }) => assert_eq!(t, table),
            other => panic!("{table} {ops:?}: refused for {other:?}"),
        }
        assert_holds(&ns, backend, family, &expected, &rs);
        // And the sync after that is partial again.
        let next = a.sync(&m, &cfg, &mut NoObserver).await.unwrap();
        assert_eq!(next.kind, SyncKind::Partial);
    }
}

/// (d) in nat: the error names the payload line, its chain and its Service comment; the filter
/// table (identical) was committed before, nat kept every previous rule.
async fn a_rejected_nat_rule_is_named_and_nothing_changes(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let bad_rule = format!(
        "-A {BAD_CHAIN} -p tcp -m comment --comment \"ns9/broken:http\" -m tcp --dport 99999 -j ACCEPT\n"
    );
    let t = refused_sync("badnat", backend, family, (3, None), "nat", &bad_rule).await;
    let (ns, rs, before, broken, err) = (&t.ns, &t.rs, &t.before, &t.broken, &t.err);
    let (r, line) = rejected_line(err);
    assert_eq!(line.number, payload_line(broken, "--dport 99999"), "{err}");
    assert_eq!(line.text, bad_rule.trim_end());
    assert_eq!(line.table.as_deref(), Some("nat"));
    assert_eq!(line.chain.as_deref(), Some(BAD_CHAIN));
    assert_eq!(line.comment.as_deref(), Some("ns9/broken:http"));
    assert!(
        line.context.contains(&format!(">{:>7}: ", line.number)),
        "{}",
        line.context
    );
    assert_eq!(r.committed, ["mangle", "filter"]);
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("line {}", line.number))
            && msg.contains("ns9/broken:http")
            && msg.contains("99999"),
        "{msg}"
    );
    assert_eq!(err.failed_line(), Some(line));
    assert_holds(ns, backend, family, before, rs);
}

/// (d) in filter, with a different nat in the same payload: nothing at all changes, because
/// the failing table stops the restore before the later ones (mangle, committed first, holds
/// only the canary, which was already there).
async fn a_rejected_filter_rule_leaves_both_tables(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let bad_rule = format!(
        "-A {BAD_CHAIN} -p tcp -m comment --comment \"ns9/broken:http\" -m tcp --dport 99999 -j ACCEPT\n"
    );
    let t = refused_sync("badfil", backend, family, (3, Some(1)), "filter", &bad_rule).await;
    let (r, line) = rejected_line(&t.err);
    assert_eq!(line.table.as_deref(), Some("filter"));
    assert_eq!(line.chain.as_deref(), Some(BAD_CHAIN));
    assert_eq!(r.committed, ["mangle"], "{}", t.err);
    assert_holds(&t.ns, backend, family, &t.before, &t.rs);
}

/// (d), rejected by the kernel rather than the parser (REJECT is a filter-only target): legacy
/// blames the table's COMMIT ("line N failed"), nft the rule itself.
async fn a_rule_the_kernel_rejects_is_traced(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let bad_rule = format!("-A {BAD_CHAIN} -m comment --comment \"ns9/broken:http\" -j REJECT\n");
    let t = refused_sync("kern", backend, family, (2, None), "nat", &bad_rule).await;
    let (ns, rs, before, broken, err) = (&t.ns, &t.rs, &t.before, &t.broken, &t.err);
    let (r, line) = rejected_line(err);
    assert_eq!(line.table.as_deref(), Some("nat"), "{err}");
    match backend {
        Backend::Legacy => {
            assert!(r.stderr.contains("failed"), "{}", r.stderr);
            assert_eq!(line.text, "COMMIT", "{err}");
            assert_eq!(line.chain, None);
        }
        Backend::Nft => {
            assert_eq!(
                line.number,
                payload_line(broken, "broken:http\" -j REJECT"),
                "{err}"
            );
            assert_eq!(line.chain.as_deref(), Some(BAD_CHAIN));
            assert_eq!(line.comment.as_deref(), Some("ns9/broken:http"));
        }
    }
    assert_holds(ns, backend, family, before, rs);
}

/// (d), a jump to a chain that does not exist: legacy fails on the rule, nft on the COMMIT;
/// both are traced to the jumping rule.
async fn a_jump_to_a_missing_chain_names_the_jump(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let bad_rule = format!(
        "-A {BAD_CHAIN} -m comment --comment \"ns9/broken:http\" -j KUBE-SEP-MISSINGMISSINGM\n"
    );
    let t = refused_sync("jump", backend, family, (2, None), "nat", &bad_rule).await;
    let (ns, rs, before, broken, err) = (&t.ns, &t.rs, &t.before, &t.broken, &t.err);
    let line = err
        .failed_line()
        .unwrap_or_else(|| panic!("no line in {err}"));
    assert_eq!(line.number, payload_line(broken, "MISSINGMISSING"), "{err}");
    assert_eq!(line.chain.as_deref(), Some(BAD_CHAIN), "{err}");
    assert_eq!(line.comment.as_deref(), Some("ns9/broken:http"), "{err}");
    assert_holds(ns, backend, family, before, rs);
}

/// Hooks: a deleted hook is put back at its place; rules and chains that are not ours stay
/// where they are; a rule in the middle of our hooks does not make any hook move or repeat.
async fn hooks_are_repaired_in_place_and_foreign_rules_stay(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let ns = Netns::new(&format!("hooks-{backend}"));
    let ipt = backend.iptables(family);
    let src = match family {
        IpFamily::V4 => "192.0.2.1",
        IpFamily::V6 => "2001:db8::1",
    };
    // Someone else's rules, there before us.
    ns.exec_ok([
        &ipt, "-w", "5", "-t", "filter", "-A", "INPUT", "-s", src, "-j", "ACCEPT",
    ]);
    ns.exec_ok([&ipt, "-w", "5", "-t", "nat", "-N", "MY-CHAIN"]);
    ns.exec_ok([
        &ipt, "-w", "5", "-t", "nat", "-A", "MY-CHAIN", "-s", src, "-j", "RETURN",
    ]);

    let rs = render(family, 2);
    let mut a = applier(&ns, backend, family);
    a.full_sync(&rs).await.unwrap();
    let input_hooks: Vec<String> = rs
        .table("filter")
        .unwrap()
        .chain_rules("INPUT")
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert!(input_hooks.len() >= 3, "{input_hooks:?}");
    let input = |ns: &Netns| -> Vec<String> {
        ns.exec_ok([&ipt, "-w", "5", "-t", "filter", "-S", "INPUT"])
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(String::from)
            .collect()
    };
    let foreign = input(&ns).last().unwrap().clone();
    assert!(foreign.contains(src), "{foreign}");
    let mut want = input_hooks.clone();
    want.push(foreign.clone());
    assert_eq!(
        input(&ns),
        want,
        "hooks first, in order, then the rule that was there"
    );

    // Delete the second hook and put a foreign rule right where it was.
    let second =
        rulegen::sync::restore::split_args(input_hooks[1].strip_prefix("-A INPUT ").unwrap());
    let mut del = vec![
        ipt.clone(),
        "-w".into(),
        "5".into(),
        "-t".into(),
        "filter".into(),
    ];
    del.extend(["-D".into(), "INPUT".into()]);
    del.extend(second.iter().cloned());
    ns.exec_ok(&del);
    ns.exec_ok([
        &ipt, "-w", "5", "-t", "filter", "-I", "INPUT", "2", "-s", src, "-j", "DROP",
    ]);
    let report = a.full_sync(&rs).await.unwrap();
    assert_eq!(report.hooks_inserted, 1, "{report:?}");
    assert_eq!(
        report.hooks_checked,
        input_hooks.len(),
        "only INPUT: {report:?}"
    );
    let got = input(&ns);
    let ours: Vec<&String> = got.iter().filter(|r| input_hooks.contains(r)).collect();
    assert_eq!(ours, input_hooks.iter().collect::<Vec<_>>(), "{got:#?}");
    assert_eq!(got.len(), input_hooks.len() + 2, "{got:#?}");
    assert_eq!(got.last(), Some(&foreign));

    // The foreign chain survives a sync that deletes stale chains.
    a.full_sync(&render(family, 1)).await.unwrap();
    let nat = ns.exec_ok([&ipt, "-w", "5", "-t", "nat", "-S", "MY-CHAIN"]);
    assert!(nat.contains(&format!("-A MY-CHAIN -s {src}")), "{nat}");
    assert_eq!(
        a.full_sync(&render(family, 1))
            .await
            .unwrap()
            .hooks_inserted,
        0
    );
}

/// The sync policy: the first sync is full, then partial ones until the full-sync period is
/// over (zero here: no hour's wait) or a sync fails; each full one says why.
async fn the_policy_decides_each_syncs_kind(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let ns = Netns::new(&format!("policy-{backend}"));
    let (m, cfg) = (model(family, 2), config(family));
    let mut a = dataplane(&ns, backend, family);
    let mut kinds = Vec::new();
    let mut sync = async |a: &mut IptablesDataplane| {
        let r = a.sync(&m, &cfg, &mut NoObserver).await.unwrap();
        kinds.push((r.kind, r.reason));
    };
    sync(&mut a).await;
    sync(&mut a).await;
    let mut a = a.with_full_sync_period(Duration::ZERO);
    sync(&mut a).await;
    a.forget_applied();
    sync(&mut a).await;
    assert_eq!(
        kinds,
        [
            (SyncKind::Full, Some(FullSyncReason::FirstSync)),
            (SyncKind::Partial, None),
            (SyncKind::Full, Some(FullSyncReason::Periodic)),
            (SyncKind::Full, Some(FullSyncReason::AfterFailure)),
        ]
    );
    // A failed sync (a render the kernel refuses) makes the next one full.
    let mut a = a.with_full_sync_period(Duration::from_secs(3600));
    let broken = with_chain(
        &render(family, 2),
        "nat",
        BAD_CHAIN,
        &format!("-A {BAD_CHAIN} -j KUBE-NO-SUCH-CHAIN\n"),
    );
    assert!(a.applier_mut().full_sync(&broken).await.is_err());
    assert_eq!(a.full_sync_due(), Some(FullSyncReason::AfterFailure));
    let r = a.sync(&m, &cfg, &mut NoObserver).await.unwrap();
    assert_eq!(
        (r.kind, r.reason),
        (SyncKind::Full, Some(FullSyncReason::AfterFailure))
    );
    assert_holds(
        &ns,
        backend,
        family,
        &render(family, 2).to_save_text(),
        &render(family, 2),
    );
}

/// `clean_up` after a sync leaves no `KUBE-*` chain of kube-proxy's and no hook of the
/// dataplane's family in any table the render wrote, says which tables it cleaned, leaves someone else's rule and
/// chain alone, and the sync after it starts again from a first sync.
async fn clean_up_removes_our_chains_and_hooks_only(backend: Backend, family: IpFamily) {
    testkit::needs_root!();
    let ns = Netns::new(&format!("clean-{backend}"));
    let ipt = backend.iptables(family);
    let src = match family {
        IpFamily::V4 => "192.0.2.1",
        IpFamily::V6 => "2001:db8::1",
    };
    ns.exec_ok([
        &ipt, "-w", "5", "-t", "filter", "-A", "INPUT", "-s", src, "-j", "ACCEPT",
    ]);
    ns.exec_ok([&ipt, "-w", "5", "-t", "nat", "-N", "MY-CHAIN"]);
    ns.exec_ok([
        &ipt, "-w", "5", "-t", "nat", "-A", "MY-CHAIN", "-s", src, "-j", "RETURN",
    ]);
    let (m, cfg) = (model(family, 3), config(family));
    let rs = render(family, 3);
    let mut a = dataplane(&ns, backend, family);
    a.sync(&m, &cfg, &mut NoObserver).await.unwrap();
    assert!(kernel_text(&ns, backend, family, &rs).contains(":KUBE-SERVICES"));

    let report = a.clean_up().await;
    assert!(report.succeeded(), "{:?}", report.failures);
    let cleaned: Vec<(IpFamily, &str)> =
        report.tables.iter().map(|t| (t.family, t.table)).collect();
    let written: Vec<(IpFamily, &str)> = rs.tables.iter().map(|t| (family, t.name)).collect();
    assert_eq!(cleaned, written, "{report:?}");
    let after = kernel_text(&ns, backend, family, &rs);
    // `KUBE-FIREWALL` (the IPv4 render writes it) is shared with kubelet: left, as upstream does.
    let ours: Vec<&str> = after
        .lines()
        .filter(|l| l.contains("KUBE-") && !l.contains("KUBE-FIREWALL"))
        .collect();
    assert!(ours.is_empty(), "left behind: {ours:?}\n{after}");
    assert!(
        after.contains(&format!("-A INPUT -s {src}")),
        "the foreign rule went:\n{after}"
    );
    assert!(
        after.contains(&format!("-A MY-CHAIN -s {src}")),
        "the foreign chain went:\n{after}"
    );

    // Nothing left to remove: a second clean-up changes nothing.
    let again = a.clean_up().await;
    assert!(again.succeeded() && again.tables.is_empty(), "{again:?}");
    assert_eq!(kernel_text(&ns, backend, family, &rs), after);
    // The next sync writes everything again, as a first one.
    let r = a.sync(&m, &cfg, &mut NoObserver).await.unwrap();
    assert_eq!(
        (r.kind, r.reason),
        (SyncKind::Full, Some(FullSyncReason::FirstSync))
    );
    let shared = |h: &&rulegen::sync::restore::Hook| h.args.iter().any(|a| a == "KUBE-FIREWALL");
    let removed = rs.hooks().iter().filter(|h| !shared(h)).count();
    assert_eq!(r.hooks_inserted, removed);
    assert!(kernel_text(&ns, backend, family, &rs).contains(":KUBE-SERVICES"));
}

macro_rules! per_backend_and_family {
    ($($name:ident),* $(,)?) => {
        mod legacy_v4 { $( #[tokio::test] async fn $name() { super::$name(super::Backend::Legacy, super::IpFamily::V4).await } )* }
        mod nft_v4 { $( #[tokio::test] async fn $name() { super::$name(super::Backend::Nft, super::IpFamily::V4).await } )* }
        mod legacy_v6 { $( #[tokio::test] async fn $name() { super::$name(super::Backend::Legacy, super::IpFamily::V6).await } )* }
        mod nft_v6 { $( #[tokio::test] async fn $name() { super::$name(super::Backend::Nft, super::IpFamily::V6).await } )* }
    };
}

per_backend_and_family!(
    full_sync_holds_the_render_and_is_idempotent,
    partial_syncs_follow_changes_without_reading_back,
    the_policy_decides_each_syncs_kind,
    a_flushed_table_is_restored_by_the_next_sync,
    a_chunked_full_sync_reaches_the_full_render,
    a_smaller_model_deletes_stale_chains,
    a_rejected_nat_rule_is_named_and_nothing_changes,
    a_rejected_filter_rule_leaves_both_tables,
    a_rule_the_kernel_rejects_is_traced,
    a_jump_to_a_missing_chain_names_the_jump,
    hooks_are_repaired_in_place_and_foreign_rules_stay,
    clean_up_removes_our_chains_and_hooks_only,
);

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_ruleset_of_the_other_family_is_refused() {
    let mut a = IptablesApplier::new(Backend::Nft, IpFamily::V6)
        .with_launcher(Launcher::host().with_prefix(["kprs-must-not-run"]));
    let err = a.full_sync(&render(IpFamily::V4, 1)).await.unwrap_err();
    assert!(matches!(err, ApplyError::FamilyMismatch { .. }), "{err:?}");
}

/// A lean render (only some chains' rules kept) is refused by a full sync before any tool
/// runs: sending it would empty every chain it did not keep.
#[tokio::test]
async fn a_full_sync_refuses_a_lean_render() {
    let mut a = IptablesApplier::new(Backend::Nft, IpFamily::V4)
        .with_launcher(Launcher::host().with_prefix(["kprs-must-not-run"]));
    let mut lean = Ruleset {
        family: IpFamily::V4,
        tables: Vec::new(),
    };
    rulegen::render_into_with(
        &model(IpFamily::V4, 2),
        &config(IpFamily::V4),
        &mut lean,
        &rulegen::Retain::Nothing,
    )
    .unwrap();
    let err = a.full_sync(&lean).await.unwrap_err();
    assert!(
        matches!(err, ApplyError::IncompleteRender("mangle")),
        "{err:?}"
    );
    assert!(!a.can_sync_partially());
}

/// (e): kubelet's marker chains decide; failing that, the back end with more rules; a tie is nft.
#[tokio::test]
async fn detect_backend_follows_kubelet_then_rule_counts() {
    testkit::needs_root!();
    struct Case {
        tag: &'static str,
        setup: &'static [&'static [&'static str]],
        family: IpFamily,
        want: Backend,
        reason: &'static str,
    }
    let cases = [
        Case {
            tag: "nft-canary",
            setup: &[&["iptables-nft", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"]],
            family: IpFamily::V4,
            want: Backend::Nft,
            reason: "KUBE-KUBELET-CANARY",
        },
        Case {
            tag: "legacy-canary",
            setup: &[
                &[
                    "iptables-legacy",
                    "-w",
                    "5",
                    "-t",
                    "mangle",
                    "-N",
                    "KUBE-KUBELET-CANARY",
                ],
                // Fewer rules than nft would need to win on counts: the canary decides.
            ],
            family: IpFamily::V4,
            want: Backend::Legacy,
            reason: "KUBE-KUBELET-CANARY",
        },
        Case {
            tag: "legacy-hint6",
            setup: &[&[
                "ip6tables-legacy",
                "-w",
                "5",
                "-t",
                "mangle",
                "-N",
                "KUBE-IPTABLES-HINT",
            ]],
            family: IpFamily::V6,
            want: Backend::Legacy,
            reason: "KUBE-IPTABLES-HINT",
        },
        Case {
            // The IPv6 hint says nothing about IPv4: empty both ways, a tie.
            tag: "legacy-hint6-v4",
            setup: &[&[
                "ip6tables-legacy",
                "-w",
                "5",
                "-t",
                "mangle",
                "-N",
                "KUBE-IPTABLES-HINT",
            ]],
            family: IpFamily::V4,
            want: Backend::Nft,
            reason: "tie",
        },
        Case {
            tag: "legacy-rules",
            setup: &[
                &LEGACY_INPUT_RULE,
                &[
                    "iptables-legacy",
                    "-w",
                    "5",
                    "-A",
                    "INPUT",
                    "-s",
                    "192.0.2.2",
                    "-j",
                    "ACCEPT",
                ],
            ],
            family: IpFamily::V4,
            want: Backend::Legacy,
            reason: "legacy holds 2 rule(s) and chain(s), nft 0",
        },
        Case {
            tag: "nft-rules",
            setup: &[&[
                "iptables-nft",
                "-A",
                "INPUT",
                "-s",
                "192.0.2.1",
                "-j",
                "ACCEPT",
            ]],
            family: IpFamily::V4,
            want: Backend::Nft,
            reason: "legacy holds 0 rule(s) and chain(s), nft 1",
        },
        Case {
            tag: "empty",
            setup: &[],
            family: IpFamily::V4,
            want: Backend::Nft,
            reason: "tie",
        },
    ];
    for c in &cases {
        let ns = Netns::new(c.tag);
        for cmd in c.setup {
            ns.exec_ok(*cmd);
        }
        let before = tables_present(&ns);
        let d = detect_backend(&launcher(&ns), c.family).await;
        assert_eq!(d.backend, c.want, "{}: {}", c.tag, d.reason);
        assert!(d.reason.contains(c.reason), "{}: {}", c.tag, d.reason);
        assert_eq!(
            tables_present(&ns),
            before,
            "{}: detection created tables",
            c.tag
        );
        eprintln!("{}: {:?} because {}", c.tag, d.backend, d.reason);
    }
}

/// Which tables exist in the namespace, per back end (legacy: `/proc/net/ip*_tables_names`;
/// nft: the `*table` lines of a plain save, which lists only existing tables).
fn tables_present(ns: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for f in ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"] {
        let mut names: Vec<String> = ns
            .exec_ok(["cat", f])
            .lines()
            .map(|l| format!("legacy {f} {l}"))
            .collect();
        names.sort();
        out.extend(names);
    }
    for bin in ["iptables-nft-save", "ip6tables-nft-save"] {
        out.extend(
            ns.exec_ok([bin])
                .lines()
                .filter(|l| l.starts_with('*'))
                .map(|l| format!("{bin} {l}")),
        );
    }
    out
}

/// The legacy tools wait for the namespace's own xtables lock (`-w 5`) and then fail cleanly,
/// leaving the rules alone: proof that the applier uses `XTABLES_LOCKFILE` and the lock wait.
#[tokio::test]
async fn a_held_xtables_lock_fails_the_legacy_sync_after_the_wait() {
    use std::os::fd::AsRawFd;
    testkit::needs_root!();
    let ns = Netns::new("lock");
    let rs = render(IpFamily::V4, 1);
    let mut a = applier(&ns, Backend::Legacy, IpFamily::V4);
    a.full_sync(&rs).await.unwrap();

    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(ns.lockfile())
        .unwrap();
    // SAFETY: flock on a file descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let started = Instant::now();
    let err = a.full_sync(&render(IpFamily::V4, 2)).await.unwrap_err();
    let waited = started.elapsed();
    drop(lock);
    assert!(
        waited >= Duration::from_secs(4),
        "gave up after {waited:?}: {err}"
    );
    assert!(err.to_string().contains("xtables lock"), "{err}");
    assert_holds(&ns, Backend::Legacy, IpFamily::V4, &rs.to_save_text(), &rs);
}

// ---------------------------------------------------------------------------------------------

const STEPS: usize = 300;

/// Issue 5's invariant: a seeded random walk of 300 model changes (Services and endpoints
/// added, changed and removed; ports, policies, node ports and affinity toggled), each applied
/// as a partial sync; after every step the namespace's `iptables-save` equals the full render
/// of the current model, byte for byte.
async fn walk(backend: Backend, seed: u64) {
    testkit::needs_root!();
    let ns = Netns::new(&format!("walk-{backend}"));
    let cfg = RenderConfig {
        node_name: scenario::NODE.into(),
        local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
        ..RenderConfig::default()
    };
    let mut dataplane = IptablesDataplane::new(
        IptablesApplier::new(backend, IpFamily::V4)
            .with_launcher(Launcher::netns(ns.name()).with_env("XTABLES_LOCKFILE", ns.lockfile()))
            .with_timeout(Duration::from_secs(30)),
    )
    .with_node_facts(NodeFacts::given());
    let mut s = Scenario::new(seed);
    let mut partial_bytes = 0;
    let mut full_bytes = 0;
    let mut partial_time = Duration::ZERO;
    let started = Instant::now();
    dataplane
        .sync(&s.model, &cfg, &mut NoObserver)
        .await
        .unwrap();
    for step in 0..STEPS {
        let what = s.step();
        let rs = rulegen::render(&s.model, &cfg).unwrap();
        let report = dataplane
            .sync(&s.model, &cfg, &mut NoObserver)
            .await
            .unwrap_or_else(|e| panic!("[{backend}] step {step} ({what}): {e}"));
        assert_eq!(
            report.kind,
            SyncKind::Partial,
            "[{backend}] step {step} ({what}): {report:?}"
        );
        let expected = rs.to_save_text();
        let got = kernel_text(&ns, backend, IpFamily::V4, &rs);
        if got != expected {
            panic!(
                "[{backend}] seed {seed} step {step} ({what}): the kernel differs from the full \
                 render (- render, + kernel):\n{}",
                similar::TextDiff::from_lines(&expected, &got)
                    .unified_diff()
                    .context_radius(3)
                    .header("render", "kernel")
            );
        }
        partial_bytes += report.payload_bytes;
        full_bytes += expected.len();
        partial_time += report.restore;
    }
    eprintln!(
        "[{backend}] {STEPS} partial syncs in {:?} (restores {partial_time:?}); {} services at \
         the end; payloads {partial_bytes} bytes vs {full_bytes} for full restores",
        started.elapsed(),
        s.model.services.len()
    );
    assert!(partial_bytes < full_bytes / 2);
}

#[tokio::test]
async fn partial_syncs_keep_the_kernel_equal_to_the_full_render_legacy() {
    walk(Backend::Legacy, 5).await;
}

#[tokio::test]
async fn partial_syncs_keep_the_kernel_equal_to_the_full_render_nft() {
    walk(Backend::Nft, 5).await;
}

/// A directory of stand-in tools put first on `PATH`: each named tool is a shell script.
struct StandIns(std::path::PathBuf);

impl StandIns {
    fn new(tag: &str, tools: &[(&str, &str)]) -> StandIns {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kprs-standin-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, script) in tools {
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        StandIns(dir)
    }

    /// `launcher(ns)` with these tools found first.
    fn launcher(&self, ns: &Netns) -> Launcher {
        let path = format!(
            "{}:{}",
            self.0.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        launcher(ns).with_env("PATH", path)
    }
}

impl Drop for StandIns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A read that crashes or hangs is never taken for an empty back end: unless a kubelet chain
/// decides, detection says it could not decide and falls back to nft, naming the failure.
#[tokio::test]
async fn detection_never_decides_from_a_failed_read() {
    testkit::needs_root!();
    const CRASH: &str = "kill -SEGV $$";
    const HANG: &str = "exec sleep 30";
    struct Case {
        tag: &'static str,
        tools: &'static [(&'static str, &'static str)],
        legacy_rules: bool,
        nft_canary: bool,
        want: (Backend, Evidence),
        reason: &'static str,
    }
    #[rustfmt::skip]
    let cases = [
        // Legacy holds rules, but nft could not be read: not "nft holds 0".
        Case { tag: "nft-crash", tools: &[("nft", CRASH)], legacy_rules: true, nft_canary: false, want: (Backend::Nft, Evidence::Fallback), reason: "SIGSEGV" },
        Case { tag: "legacy-save-crash", tools: &[("iptables-legacy-save", CRASH)], legacy_rules: false, nft_canary: false, want: (Backend::Nft, Evidence::Fallback), reason: "iptables-legacy-save" },
        Case { tag: "nft-hang", tools: &[("nft", HANG)], legacy_rules: true, nft_canary: false, want: (Backend::Nft, Evidence::Fallback), reason: "did not finish" },
        // A kubelet chain is evidence enough: the broken legacy save does not matter.
        Case { tag: "canary-wins", tools: &[("iptables-legacy-save", CRASH)], legacy_rules: false, nft_canary: true, want: (Backend::Nft, Evidence::KubeletChain), reason: "KUBE-KUBELET-CANARY" },
        // The save tools detection no longer needs on nft may be broken at will.
        Case { tag: "nft-save-crash", tools: &[("iptables-nft-save", CRASH)], legacy_rules: true, nft_canary: false, want: (Backend::Legacy, Evidence::RuleCount), reason: "legacy has more" },
    ];
    for c in &cases {
        let ns = Netns::new(c.tag);
        if c.legacy_rules {
            ns.exec_ok(LEGACY_INPUT_RULE);
        }
        if c.nft_canary {
            ns.exec_ok(["iptables-nft", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"]);
        }
        let tools = StandIns::new(c.tag, c.tools);
        let started = Instant::now();
        let d =
            detect_backend_within(&tools.launcher(&ns), IpFamily::V4, Duration::from_secs(3)).await;
        assert_eq!((d.backend, d.evidence), c.want, "{}: {}", c.tag, d.reason);
        assert!(d.reason.contains(c.reason), "{}: {}", c.tag, d.reason);
        eprintln!(
            "{}: {:?} in {:?} because {}",
            c.tag,
            d.backend,
            started.elapsed(),
            d.reason
        );
    }
}

/// A full sync on the nft back end never runs `iptables-nft-save` (a crashing stand-in is
/// never noticed), and on legacy a save that hangs fails the sync cleanly, naming the tool and
/// its time limit, with nothing changed.
#[tokio::test]
async fn full_syncs_do_not_depend_on_whole_table_saves() {
    testkit::needs_root!();
    let rs = render(IpFamily::V4, 3);
    let expected = rs.to_save_text();

    let ns = Netns::new("nosave-nft");
    let tools = StandIns::new("nosave-nft", &[("iptables-nft-save", "kill -SEGV $$")]);
    let mut a = IptablesApplier::new(Backend::Nft, IpFamily::V4)
        .with_launcher(tools.launcher(&ns))
        .with_timeout(Duration::from_secs(30));
    a.full_sync(&rs).await.unwrap();
    // A second full sync reads what the first wrote (stale chains, hooks) the same way.
    let stale = with_chain(&rs, "nat", "KUBE-SVC-STALESTALESTALE1", "");
    a.full_sync(&stale).await.unwrap();
    let report = a.full_sync(&rs).await.unwrap();
    assert_eq!(report.stale_chains_deleted, 1, "{report:?}");
    assert_eq!(report.hooks_inserted, 0, "{report:?}");
    assert_holds(&ns, Backend::Nft, IpFamily::V4, &expected, &rs);

    let ns = Netns::new("nosave-leg");
    let tools = StandIns::new("nosave-leg", &[("iptables-legacy-save", "exec sleep 30")]);
    let mut a = IptablesApplier::new(Backend::Legacy, IpFamily::V4)
        .with_launcher(tools.launcher(&ns))
        .with_timeout(Duration::from_secs(2));
    let e = a.full_sync(&rs).await.unwrap_err();
    match &e {
        ApplyError::Save {
            source: CommandError::Timeout { timeout, .. },
            ..
        } => assert_eq!(*timeout, Duration::from_secs(2)),
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("iptables-legacy-save") && msg.contains("nothing changed"),
        "{msg}"
    );
    let nat = ns.exec_ok(["iptables-legacy-save", "-t", "nat"]);
    assert!(!nat.contains("KUBE-SERVICES"), "{nat}");
}

/// A node with iptables-nft but no `nft` tool: full syncs read the tables with the save tool,
/// as before, rather than fail.
#[tokio::test]
async fn without_the_nft_tool_full_syncs_fall_back_to_the_save() {
    testkit::needs_root!();
    let ns = Netns::new("no-nft-tool");
    let dir = std::env::temp_dir().join(format!("kprs-no-nft-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for tool in [
        "ip",
        "iptables-nft",
        "iptables-nft-restore",
        "iptables-nft-save",
    ] {
        let real = String::from_utf8(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        std::os::unix::fs::symlink(real.trim(), dir.join(tool)).unwrap();
    }
    let mut a = IptablesApplier::new(Backend::Nft, IpFamily::V4)
        .with_launcher(launcher(&ns).with_env("PATH", dir.display().to_string()))
        .with_timeout(Duration::from_secs(30));
    let rs = render(IpFamily::V4, 3);
    a.full_sync(&rs).await.unwrap();
    let report = a.full_sync(&rs).await.unwrap();
    assert_eq!(report.hooks_inserted, 0, "{report:?}");
    assert_holds(&ns, Backend::Nft, IpFamily::V4, &rs.to_save_text(), &rs);
    let _ = std::fs::remove_dir_all(&dir);
}
