use std::collections::BTreeMap;

use super::*;
use crate::config::RenderConfig;
use crate::model::Model;
use crate::scenario::{self, Scenario};

/// A model of the kernel's tables as `iptables-restore --noflush` changes them: enough of its
/// semantics (declare = create or flush, `-A` appends, `-X` needs an empty unreferenced chain,
/// `-F`/`-C` fail on what is missing, a failing table changes nothing) to check payloads
/// without a kernel. The kernel tests check the same payloads against the real thing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Kernel {
    // table → chain → rule lines; built-in chains are those named in `builtins`.
    tables: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    builtins: BTreeMap<String, Vec<String>>,
}

impl Kernel {
    /// A kernel holding exactly `rs` (as after a full sync).
    fn holding(rs: &Ruleset) -> Self {
        let mut k = Kernel::default();
        k.restore(&rs.to_save_text()).expect("a full ruleset loads");
        k
    }

    fn restore(&mut self, payload: &str) -> Result<(), String> {
        let mut pending: Option<(String, BTreeMap<String, Vec<String>>)> = None;
        for line in payload.lines() {
            if let Some(t) = line.strip_prefix('*') {
                let chains = self.tables.get(t).cloned().unwrap_or_default();
                pending = Some((t.to_string(), chains));
                continue;
            }
            let (table, chains) = pending.as_mut().ok_or("rule outside a table")?;
            if line == "COMMIT" {
                self.tables.insert(table.clone(), std::mem::take(chains));
                pending = None;
            } else if let Some(decl) = line.strip_prefix(':') {
                let mut parts = decl.split(' ');
                let name = parts.next().unwrap().to_string();
                if parts.next() != Some("-") {
                    self.builtins
                        .entry(table.clone())
                        .or_default()
                        .push(name.clone());
                }
                chains.insert(name, Vec::new());
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest.split(' ').next().unwrap();
                chains
                    .get_mut(chain)
                    .ok_or(format!("-A to missing chain {chain}"))?
                    .push(line.to_string());
            } else if let Some(name) = line.strip_prefix("-X ") {
                let rules = chains.get(name).ok_or(format!("-X missing {name}"))?;
                if !rules.is_empty() {
                    return Err(format!("-X non-empty {name}"));
                }
                let jump = format!("-j {name}");
                if chains.values().flatten().any(|r| r.ends_with(&jump)) {
                    return Err(format!("-X referenced {name}"));
                }
                chains.remove(name);
            } else if let Some(name) = line.strip_prefix("-F ") {
                chains
                    .get_mut(name)
                    .ok_or(format!("-F missing {name}"))?
                    .clear();
            } else if let Some(rule) = line.strip_prefix("-C ") {
                let chain = rule.split(' ').next().unwrap();
                let want = format!("-A {rule}");
                if !chains.get(chain).is_some_and(|r| r.contains(&want)) {
                    return Err(format!("-C failed: {rule}"));
                }
            } else {
                return Err(format!("unexpected line {line:?}"));
            }
        }
        // Any rule that jumps to a missing chain would have failed in the kernel.
        for (t, chains) in &self.tables {
            for r in chains.values().flatten() {
                if let Some(target) = r.rsplit(" -j ").next()
                    && target.starts_with("KUBE-")
                    && !chains.contains_key(target.split(' ').next().unwrap())
                {
                    return Err(format!("{t}: jump to a missing chain: {r}"));
                }
            }
        }
        Ok(())
    }

    /// The tables as `iptables-save` prints them (built-ins first, then sorted chains), in
    /// `order`.
    fn save(&self, order: &[&str]) -> String {
        let mut out = String::new();
        for t in order {
            let chains = &self.tables[*t];
            let builtins = &self.builtins[*t];
            out.push_str(&format!("*{t}\n"));
            for b in builtins {
                out.push_str(&format!(":{b} ACCEPT [0:0]\n"));
            }
            for name in chains.keys().filter(|n| !builtins.contains(n)) {
                out.push_str(&format!(":{name} - [0:0]\n"));
            }
            for b in builtins {
                for r in &chains[b] {
                    out.push_str(r);
                    out.push('\n');
                }
            }
            for (name, rules) in chains.iter().filter(|(n, _)| !builtins.contains(n)) {
                for r in rules {
                    out.push_str(r);
                    out.push('\n');
                }
                let _ = name;
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

fn cfg() -> RenderConfig {
    RenderConfig {
        node_name: scenario::NODE.to_string(),
        local_detector: crate::LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
        ..RenderConfig::default()
    }
}

fn render(m: &Model) -> Ruleset {
    crate::render(m, &cfg()).unwrap()
}

fn tables(rs: &Ruleset) -> Vec<&'static str> {
    rs.tables.iter().map(|t| t.name).collect()
}

#[test]
fn fingerprints_tell_versions_of_a_chain_apart() {
    let a = "-A KUBE-SVC-X -m comment --comment \"ns/a:p -> 10.244.0.1:8080\" -j KUBE-SEP-Y\n";
    assert_eq!(fingerprint(a), fingerprint(a));
    let b = a.replace("10.244.0.1", "10.244.0.2");
    assert_ne!(fingerprint(a), fingerprint(&b));
    assert_ne!(fingerprint(""), fingerprint("\n"));
    assert_ne!(fingerprint("a"), fingerprint("a\0"), "length is mixed in");
    // Every single-byte change of a long chain changes the fingerprint.
    let base = a.repeat(5);
    let fp = fingerprint(&base);
    for i in 0..base.len() {
        let mut bytes = base.clone().into_bytes();
        bytes[i] ^= 1;
        let changed = String::from_utf8(bytes).unwrap();
        assert_ne!(fingerprint(&changed), fp, "byte {i}");
    }
}

#[test]
fn nothing_changed_sends_only_the_checks() {
    let mut s = Scenario::new(1);
    for _ in 0..20 {
        s.step();
    }
    let rs = render(&s.model);
    let applied = AppliedState::of(&rs);
    let p = rs.partial_payload(&applied).unwrap();
    assert_eq!((p.chains_written, p.chains_deleted), (0, 0));
    let text = p.payload.to_text();
    assert!(
        text.lines().all(|l| l.starts_with('*')
            || l == "COMMIT"
            || l == "-F KUBE-PROXY-CANARY"
            || l.starts_with("-C ")),
        "{text}"
    );
    assert_eq!(text.matches("-F KUBE-PROXY-CANARY").count(), 3, "{text}");
    assert!(text.contains(
        "-C PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
    ));
    // And the kernel model accepts it and is unchanged.
    let mut k = Kernel::holding(&rs);
    let before = k.clone();
    k.restore(&text).unwrap();
    assert_eq!(k, before);
}

#[test]
fn one_endpoint_change_writes_only_its_service_chains() {
    let mut s = Scenario::new(2);
    while s.model.services.len() < 30 {
        s.step();
    }
    let i = s
        .model
        .services
        .iter()
        .position(|sp| !sp.endpoints.is_empty())
        .unwrap();
    let old = render(&s.model);
    let applied = AppliedState::of(&old);
    s.model.services[i].endpoints[0].ip = "10.244.99.99".parse().unwrap();
    let new = render(&s.model);
    let p = new.partial_payload(&applied).unwrap();
    let text = p.payload.to_text();
    // The service's endpoint-selection chain and the new SEP; the old SEP goes.
    assert!(
        p.chains_written >= 2 && p.chains_written <= 3,
        "{p}\n{text}"
    );
    assert_eq!(p.chains_deleted, 1, "{text}");
    assert!(
        !text.contains(":KUBE-SERVICES "),
        "dispatch chains untouched"
    );
    assert!(text.len() * 5 < old.to_save_text().len(), "{p}");
}

#[test]
fn a_changed_hook_needs_a_full_sync() {
    let rs = render(&Model::default());
    let applied = AppliedState::of(&rs);
    let other = crate::render(
        &Model::default(),
        &RenderConfig {
            masquerade_bit: 15,
            ..cfg()
        },
    )
    .unwrap();
    // The mark is in KUBE-MARK-MASQ and KUBE-POSTROUTING, not in a hook: still partial.
    assert!(other.partial_payload(&applied).is_ok());
    let mut hooked = rs.clone();
    hooked.tables[1].builtins[0]
        .rules
        .push_str("-A INPUT -j EXTRA\n");
    assert_eq!(
        hooked.partial_payload(&applied),
        Err(NeedsFullSync::Hooks("filter"))
    );
    let v6 = crate::render(
        &Model::default(),
        &RenderConfig {
            family: IpFamily::V6,
            ..cfg()
        },
    )
    .unwrap();
    assert_eq!(v6.partial_payload(&applied), Err(NeedsFullSync::Family));
}

#[test]
fn a_flushed_table_fails_the_partial_restore() {
    let rs = render(&Scenario::new(3).model);
    let applied = AppliedState::of(&rs);
    let text = rs.partial_payload(&applied).unwrap().payload.to_text();
    // Chains deleted (a firewall reload): the canary check fails.
    let mut k = Kernel::holding(&rs);
    k.tables.get_mut("nat").unwrap().remove("KUBE-PROXY-CANARY");
    assert!(k.restore(&text).unwrap_err().contains("-F missing"));
    // Built-in chains flushed (`iptables -t nat -F`): the hook check fails.
    let mut k = Kernel::holding(&rs);
    for c in k.tables.get_mut("nat").unwrap().values_mut() {
        c.clear();
    }
    assert!(k.restore(&text).unwrap_err().contains("-C failed"));
}

/// The pure half of issue 5's invariant: after every step of a random walk, applying the
/// partial payload to a kernel holding the previous ruleset gives exactly the full render.
#[test]
fn partial_syncs_track_full_renders_over_a_random_walk() {
    for seed in [11, 12, 13] {
        let mut s = Scenario::new(seed);
        let mut rs = render(&s.model);
        let order = tables(&rs);
        let mut kernel = Kernel::holding(&rs);
        let mut applied = AppliedState::of(&rs);
        let mut partial_bytes = 0;
        let mut full_bytes = 0;
        for step in 0..300 {
            let what = s.step();
            rs = render(&s.model);
            let p = rs.partial_payload(&applied).unwrap();
            let text = p.payload.to_text();
            kernel
                .restore(&text)
                .unwrap_or_else(|e| panic!("seed {seed} step {step} ({what}): {e}\n{text}"));
            let full = rs.to_save_text();
            assert_eq!(
                kernel.save(&order),
                full,
                "seed {seed} step {step} ({what})\npayload:\n{text}"
            );
            partial_bytes += text.len();
            full_bytes += full.len();
            applied = AppliedState::of(&rs);
        }
        assert!(
            partial_bytes * 3 < full_bytes,
            "{partial_bytes} vs {full_bytes}"
        );
    }
}

fn render_retaining(m: &Model, retain: &crate::Retain) -> Ruleset {
    let mut rs = Ruleset {
        family: IpFamily::V4,
        tables: Vec::new(),
    };
    crate::render_into_with(m, &cfg(), &mut rs, retain).unwrap();
    rs
}

/// A partial sync rendered lean (only changed chains keep their text) sends exactly what the
/// full render's diff sends, and remembers the same fingerprints.
#[test]
fn lean_renders_give_the_same_partial_payloads() {
    let mut s = Scenario::new(21);
    let mut applied = std::sync::Arc::new(AppliedState::of(&render(&s.model)));
    for step in 0..150 {
        let what = s.step();
        let full = render(&s.model);
        let lean = render_retaining(&s.model, &crate::Retain::Changed(applied.clone()));
        let plan = lean.partial_payload(&applied).unwrap();
        // The lean render kept the text of exactly the chains the partial sync writes.
        let kept: usize = lean
            .tables
            .iter()
            .map(|t| t.chain_entries().filter(|e| e.rules.is_some()).count())
            .sum();
        assert_eq!(kept, plan.chains_written, "step {step} ({what})");
        let a = full.partial_payload(&applied).unwrap().payload.to_text();
        let b = plan.payload.to_text();
        assert_eq!(a, b, "step {step} ({what})");
        assert_eq!(AppliedState::of(&lean), AppliedState::of(&full));
        applied = std::sync::Arc::new(AppliedState::of(&lean));
    }
    // A lean render diffed against fingerprints it was not rendered for is refused, not
    // silently written with empty chains.
    let stale = std::sync::Arc::new(AppliedState::of(&render(&Model::default())));
    let lean = render_retaining(&s.model, &crate::Retain::Changed(applied));
    assert!(matches!(
        lean.partial_payload(&stale),
        Err(NeedsFullSync::NotRetained(..))
    ));
}

/// A full sync sent in chunks, each rendered keeping only its chains, leaves the kernel
/// holding the full render — from an empty node, and from a node holding an older ruleset
/// (whose chains every chunk's jumps must still find).
#[test]
fn chunked_full_syncs_reach_the_full_render() {
    let mut s = Scenario::new(31);
    for _ in 0..60 {
        s.step();
    }
    let older = render(&s.model);
    for _ in 0..60 {
        s.step();
    }
    let full = render(&s.model);
    let order = tables(&full);
    let plan = crate::sync::retain::plan_chunks(
        &render_retaining(&s.model, &crate::Retain::Nothing),
        2000,
    );
    assert!(plan.len() > 5, "{plan:?}");
    for start in [Kernel::default(), Kernel::holding(&older)] {
        let mut k = start;
        for t in &order {
            // The empty node still has its built-in chains.
            if !k.tables.contains_key(*t) {
                let tbl = full.table(t).unwrap();
                let mut decl = format!("*{t}\n");
                for b in &tbl.builtins {
                    decl.push_str(&format!(":{} ACCEPT [0:0]\n", b.name));
                }
                decl.push_str("COMMIT\n");
                k.restore(&decl).unwrap();
            }
        }
        let stale = full.stale_chains(&crate::sync::restore::saved_chains(&k.save(&order)));
        for (i, chunk) in plan.iter().enumerate() {
            let rs = render_retaining(&s.model, &crate::Retain::Chunk(chunk.clone()));
            // Stale chains go with the last chunk of their table.
            let last = plan[i + 1..].iter().all(|c| c.table != chunk.table);
            let mut mine = crate::sync::restore::StaleChains::new();
            if last && let Some(gone) = stale.get(chunk.table) {
                mine.insert(chunk.table.to_string(), gone.clone());
            }
            let text = rs.full_payload(&mine).to_text();
            k.restore(&text)
                .unwrap_or_else(|e| panic!("chunk {i} {chunk:?}: {e}\n{text}"));
        }
        // Then the hooks, as the agent ensures them after the restore (a node that had them
        // keeps them).
        for t in &full.tables {
            for b in &t.builtins {
                let has = k.tables[t.name][b.name].clone();
                for rule in b.rules.lines() {
                    if !has.iter().any(|r| r == rule) {
                        k.restore(&format!("*{}\n{rule}\nCOMMIT\n", t.name))
                            .unwrap();
                    }
                }
            }
        }
        assert_eq!(k.save(&order), full.to_save_text());
    }
}
