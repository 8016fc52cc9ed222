//! `trace` on the node itself: with neither `--objects` nor `--ruleset`, the rules, sets and
//! virtual servers are read from this network namespace's kernel — whatever put them there —
//! and its interfaces' addresses are the node's.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, bail};
use proxier::ipvs::attrs::IP_VS_SVC_F_PERSISTENT;
use proxier::ipvs::entry::protocol_of;
use std::collections::{BTreeMap, BTreeSet};

use proxier::{Backend, Ipset, Iptables, IpvsHandle, IpvsSocket, Launcher, detect_backend};
use rulegen::IpFamily;
use rulegen::analysis::trace::virtual_servers::SavedVirtualServer;
use rulegen::analysis::trace::{SavedSets, SavedVirtualServers};

/// What the kernel holds, as the tracer reads it.
pub(super) struct LiveNode {
    /// `iptables-save` text of every table.
    pub rules: String,
    /// `ipset save`, when the rules match sets.
    pub sets: Option<SavedSets>,
    /// The IPVS table, when the kernel has IPVS and any virtual server.
    pub virtual_servers: Option<SavedVirtualServers>,
    /// The interfaces' addresses of the family.
    pub addresses: Vec<IpAddr>,
    /// Which tools the rules came from (`iptables-nft-save`), for the output's header.
    pub source: String,
    /// On the nft back end, where `rules` holds only the built-in chains' rules: what reads
    /// the other chains as a walk enters them, and the runtime to run it on.
    pub fetcher: Option<(ChainFetcher, tokio::runtime::Runtime)>,
}

/// The tables a trace walks.
const TABLES: [&str; 4] = ["raw", "mangle", "filter", "nat"];

/// A node's rules read a chain at a time: every chain's declaration, and the rules of the
/// chains read so far (the built-in ones first).
pub(super) struct ChainFetcher {
    ipt: Iptables,
    /// Per table (in [`TABLES`] order): its declarations by chain, and the rules read so far.
    tables: Vec<(&'static str, BTreeMap<String, String>, String)>,
    /// Chains whose rules are in `tables`, and the ones that do not exist.
    read: BTreeSet<(String, String)>,
}

impl ChainFetcher {
    fn new(ipt: Iptables, outlines: &[String]) -> ChainFetcher {
        let mut tables = Vec::new();
        let mut read = BTreeSet::new();
        for (table, outline) in TABLES.iter().zip(outlines) {
            let (mut decls, mut rules) = (BTreeMap::new(), String::new());
            for line in outline.lines() {
                if let Some(d) = line.strip_prefix(':') {
                    let mut w = d.split_whitespace();
                    if let Some(name) = w.clone().next() {
                        decls.insert(name.to_string(), line.to_string());
                    }
                    if let (Some(name), Some(policy)) = (w.next(), w.next())
                        && policy != "-"
                    {
                        read.insert((table.to_string(), name.to_string()));
                    }
                } else if line.starts_with("-A ") {
                    rules.push_str(line);
                    rules.push('\n');
                }
            }
            tables.push((*table, decls, rules));
        }
        ChainFetcher { ipt, tables, read }
    }

    /// The rules read so far, as `iptables-save` prints them, declaring only the chains read
    /// and those their rules jump to (a large node's 110,000 other declarations would only slow
    /// every walk down); tables without chains are left out.
    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        for (table, decls, rules) in &self.tables {
            if decls.is_empty() {
                continue;
            }
            let targets: BTreeSet<&str> = rules.lines().filter_map(jump_target).collect();
            out.push_str(&format!("*{table}\n"));
            for (name, line) in decls {
                if targets.contains(name.as_str())
                    || self.read.contains(&(table.to_string(), name.clone()))
                {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            out.push_str(rules);
            out.push_str("COMMIT\n");
        }
        out
    }

    /// Reads the rules of every chain `trace` entered that were not read yet; whether any was.
    pub(super) fn read_entered(
        &mut self,
        rt: &tokio::runtime::Runtime,
        trace: &rulegen::analysis::trace::Trace,
    ) -> anyhow::Result<bool> {
        let mut wanted = BTreeSet::new();
        let mut todo = vec![&trace.root];
        while let Some(node) = todo.pop() {
            for step in &node.steps {
                if let rulegen::analysis::trace::Step::Rule { table, text, .. } = step
                    && let Some(to) = jump_target(text)
                    && !self.read.contains(&(table.clone(), to.to_string()))
                {
                    wanted.insert((table.clone(), to.to_string()));
                }
            }
            if let rulegen::analysis::trace::End::Branches(b) = &node.end {
                todo.extend(b.iter().map(|b| &b.node));
            }
        }
        let mut any = false;
        for (table, chain) in wanted {
            let Some(entry) = self.tables.iter_mut().find(|t| t.0 == table) else {
                continue;
            };
            // Targets that are not chains of the table (ACCEPT, DNAT, …) are never declared.
            if !entry.1.contains_key(&chain) {
                self.read.insert((table, chain));
                continue;
            }
            let rules = rt
                .block_on(self.ipt.chain_rules(&table, &chain))
                .with_context(|| format!("cannot read chain {chain} of table {table}"))?;
            entry.2.push_str(&rules);
            self.read.insert((table, chain));
            any = true;
        }
        Ok(any)
    }
}

/// The chain or target a saved rule jumps or goes to.
fn jump_target(rule: &str) -> Option<&str> {
    rule.split_whitespace()
        .skip_while(|w| *w != "-j" && *w != "-g")
        .nth(1)
}

/// Reads this namespace's rules, sets, virtual servers and addresses for `family`.
pub(super) fn read(family: IpFamily) -> anyhow::Result<LiveNode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let fam = family;
    let launcher = Launcher::host();
    let (rules, source, sets_text, fetcher) = rt.block_on(async {
        let detection = detect_backend(&launcher, fam).await;
        let ipt = Iptables::new(detection.backend, fam).with_launcher(launcher.clone());
        let (rules, fetcher) = match detection.backend {
            // `iptables-nft-save` of a large node runs for minutes and may crash: read every
            // chain's name and the built-in chains' rules, and the rest as the walk needs it.
            Backend::Nft => {
                let outlines = ipt
                    .read_tables(&TABLES, &|_, builtin| builtin)
                    .await
                    .context("cannot read the rules with nft and iptables-nft")?;
                let fetcher = ChainFetcher::new(ipt, &outlines);
                (fetcher.text(), Some(fetcher))
            }
            // All tables at once: naming one (`-t raw`) would make the legacy kernel create it.
            Backend::Legacy => {
                let program = detection.backend.save(fam);
                let rules = launcher
                    .run(&program, &[], None, proxier::DEFAULT_TIMEOUT)
                    .await
                    .with_context(|| format!("cannot read the rules with {program}"))?;
                (rules, None)
            }
        };
        let source = format!(
            "live rules of this node ({})",
            match detection.backend {
                Backend::Nft => format!("nft and {}", detection.backend.iptables(fam)),
                Backend::Legacy => detection.backend.save(fam),
            }
        );
        // IPVS mode's rules match sets; read them only then (`ipset` may not be installed).
        let sets = if rules.contains("--match-set") || fetcher.is_some() {
            match Ipset::new(launcher.clone(), proxier::DEFAULT_TIMEOUT)
                .save()
                .await
            {
                Ok(s) => Some(s),
                Err(e) if rules.contains("--match-set") => {
                    return Err(anyhow::Error::new(e)
                        .context("the rules match ipsets, and `ipset save` failed"));
                }
                Err(_) => None,
            }
        } else {
            None
        };
        anyhow::Ok((rules, source, sets, fetcher))
    })?;
    if !rules.contains("*nat") {
        bail!("no nat table in this node's rules");
    }
    let sets = sets_text
        .map(|t| SavedSets::parse(&t).context("cannot read `ipset save`"))
        .transpose()?;
    let virtual_servers = ipvs_table(family);
    // kube-ipvs0's addresses are the virtual servers', known from the IPVS table.
    let addresses = proxier::local_addresses_except(proxier::IPVS_INTERFACE, family)
        .context("cannot list this node's addresses")?;
    Ok(LiveNode {
        rules,
        sets,
        virtual_servers,
        addresses,
        source,
        fetcher: fetcher.map(|f| (f, rt)),
    })
}

/// The kernel's IPVS table for `family`; `None` without IPVS (no module: iptables mode).
fn ipvs_table(family: IpFamily) -> Option<SavedVirtualServers> {
    // Asking for the IPVS netlink family would load the module: look only if it is loaded.
    if !std::path::Path::new("/proc/net/ip_vs").exists() {
        return None;
    }
    let mut socket = IpvsSocket::open().ok()?;
    let mut servers = Vec::new();
    for svc in socket.services().ok()? {
        let Some(proto) = protocol_of(svc.protocol) else {
            continue;
        };
        if matches!(family, IpFamily::V4) != svc.addr.is_ipv4() {
            continue;
        }
        let real_servers = socket
            .destinations(&svc)
            .unwrap_or_default()
            .iter()
            .map(|d| (SocketAddr::new(d.addr, d.port), d.weight))
            .collect();
        servers.push(SavedVirtualServer {
            proto: proto.as_str(),
            address: SocketAddr::new(svc.addr, svc.port),
            scheduler: svc.scheduler.clone(),
            persistence: (svc.flags & IP_VS_SVC_F_PERSISTENT != 0).then_some(svc.timeout),
            real_servers,
        });
    }
    (!servers.is_empty()).then_some(SavedVirtualServers { servers })
}
