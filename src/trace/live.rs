//! `trace` on the node itself: with neither `--objects` nor `--ruleset`, the rules, sets and
//! virtual servers are read from this network namespace's kernel — whatever put them there —
//! and its interfaces' addresses are the node's.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, bail};
use proxier::ipvs::attrs::IP_VS_SVC_F_PERSISTENT;
use proxier::ipvs::entry::protocol_of;
use proxier::{Family, Ipset, IpvsHandle, IpvsSocket, Launcher, detect_backend};
use rulegen::IpFamily;
use rulegen::trace::virtual_servers::SavedVirtualServer;
use rulegen::trace::{SavedSets, SavedVirtualServers};

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
}

/// Reads this namespace's rules, sets, virtual servers and addresses for `family`.
pub(super) fn read(family: IpFamily) -> anyhow::Result<LiveNode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let fam = match family {
        IpFamily::V4 => Family::V4,
        IpFamily::V6 => Family::V6,
    };
    let launcher = Launcher::host();
    let (rules, source, sets_text) = rt.block_on(async {
        let detection = detect_backend(&launcher, fam).await;
        // All tables at once: naming one (`-t raw`) would make the legacy kernel create it.
        let program = detection.backend.save(fam);
        let rules = launcher
            .run(&program, &[], None, proxier::DEFAULT_TIMEOUT)
            .await
            .with_context(|| format!("cannot read the rules with {program}"))?;
        let source = format!("live rules of this node ({})", detection.backend.save(fam));
        // IPVS mode's rules match sets; read them only then (`ipset` may not be installed).
        let sets = if rules.contains("--match-set") {
            Some(
                Ipset::new(launcher.clone(), proxier::DEFAULT_TIMEOUT)
                    .save()
                    .await
                    .context("the rules match ipsets, and `ipset save` failed")?,
            )
        } else {
            None
        };
        anyhow::Ok((rules, source, sets))
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
