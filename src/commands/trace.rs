//! `trace`: where one packet goes through this node's rules, rule by rule, with every random
//! branch and its share. The walk is `rulegen::analysis::trace`, over `iptables-save` text — the dry run's
//! render of `--objects`, or a saved ruleset from any node (`--ruleset FILE`, with `--ipsets` and
//! `--ipvs` for an IPVS node), or with neither the node's own kernel (`live`) — so it shows what
//! the rules do, not what the model meant.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use ipnet::IpNet;
use rulegen::analysis::trace::{
    NodeContext, Origin, Packet, SavedRuleset, SavedSets, SavedVirtualServers,
};

pub use crate::cli::{FromArg, ProtoArg, TraceArgs};
use crate::commands::dryrun::{ipvs_config, load_model};
use crate::commands::explain::OutputFormat;
use crate::reports::trace as report;
use crate::settings::{Flags, ProxyMode, Settings};

mod live;

/// The source port a trace uses when `--src` gives none.
pub const DEFAULT_SOURCE_PORT: u16 = 40000;

/// What `trace` produced: stdout text and the warnings met on the way.
#[derive(Debug, Clone)]
pub struct TraceOutput {
    /// What goes to stdout.
    pub text: String,
    /// Warnings for stderr.
    pub warnings: Vec<crate::Warning>,
}

/// `IP`, `IP:PORT`, `[IPv6]:PORT` or a bare IPv6 address.
fn parse_endpoint(s: &str, what: &str, default_port: Option<u16>) -> anyhow::Result<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        // No connection goes to port 0, nor comes from it (binding port 0 picks another).
        if sa.port() == 0 {
            bail!("{what} {s:?}: port 0 is not a port a connection uses (1 to 65535)");
        }
        return Ok(sa);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return match default_port {
            Some(p) => Ok(SocketAddr::new(ip, p)),
            None => bail!("{what} {s:?} needs a port: IP:PORT ([IPv6]:PORT)"),
        };
    }
    if let Some((_, port)) = s.rsplit_once(':')
        && port.parse::<u16>().is_err()
    {
        bail!("{what} {s:?}: port {port:?} is not a number from 1 to 65535");
    }
    bail!("{what} {s:?} is not an address (IP:PORT or [IPv6]:PORT)")
}

/// The rules, sets and virtual servers to walk, and the node facts from the objects.
struct Loaded {
    rules: SavedRuleset,
    /// The live node's chains not read yet, read as the walk enters them (nft back end).
    fetcher: Option<(live::ChainFetcher, tokio::runtime::Runtime)>,
    sets: Option<SavedSets>,
    virtual_servers: Option<SavedVirtualServers>,
    node_ips: Vec<IpAddr>,
    cluster_cidrs: Vec<IpNet>,
    source: String,
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Runs `trace` without printing anything.
pub fn render(outer: &Flags, args: &TraceArgs) -> anyhow::Result<TraceOutput> {
    if !outer.is_default() {
        bail!(
            "give the node flags after `trace` (kube-proxy-rs trace --src … --dst … --objects PATH …)"
        );
    }
    let src = parse_endpoint(
        args.src.as_deref().context("trace needs --src IP[:PORT]")?,
        "--src",
        Some(DEFAULT_SOURCE_PORT),
    )?;
    let dst = parse_endpoint(
        args.dst.as_deref().context("trace needs --dst IP:PORT")?,
        "--dst",
        None,
    )?;
    if src.is_ipv4() != dst.is_ipv4() {
        bail!("--src {src} and --dst {dst} are of different address families");
    }
    let mut flags = args.flags.clone();
    if dst.is_ipv6() {
        // An IPv6 packet is traced through the IPv6 rules.
        flags.ip_family = rulegen::IpFamily::V6;
    }
    let (settings, mut warnings) = Settings::from_flags(&flags)?;
    let mut loaded = load(&flags, &settings, args, &mut warnings)?;
    let mut local: Vec<IpNet> = loaded.node_ips.iter().map(|ip| IpNet::from(*ip)).collect();
    for a in &args.local_address {
        let ip: IpAddr = a
            .trim()
            .parse()
            .with_context(|| format!("--local-address {a:?} is not an IP address"))?;
        local.push(IpNet::from(ip));
    }
    local.sort();
    local.dedup();
    let node = NodeContext {
        local_addresses: local.clone(),
        sets: loaded.sets,
        virtual_servers: loaded.virtual_servers,
    };
    let origin = match args.from {
        Some(FromArg::Pod) => Origin::Pod,
        Some(FromArg::Node) => Origin::Node,
        Some(FromArg::External) => Origin::External,
        None if node.is_local(src.ip()) => Origin::Node,
        None if loaded.cluster_cidrs.iter().any(|n| n.contains(&src.ip())) => Origin::Pod,
        None => Origin::External,
    };
    let packet = Packet {
        proto: match args.proto {
            ProtoArg::Tcp => "tcp",
            ProtoArg::Udp => "udp",
            ProtoArg::Sctp => "sctp",
        },
        src,
        dst,
        origin,
        in_interface: args.in_interface.clone(),
    };
    let mut trace = rulegen::analysis::trace::trace(&loaded.rules, &packet, &node);
    // Walk again while the walk enters chains not read yet; each round reads at least one
    // more, and a path is only as deep as the chains it jumps through.
    if let Some((fetcher, rt)) = &mut loaded.fetcher {
        while fetcher.read_entered(rt, &trace)? {
            loaded.rules =
                SavedRuleset::parse(&fetcher.text()).context("cannot read this node's rules")?;
            trace = rulegen::analysis::trace::trace(&loaded.rules, &packet, &node);
        }
    }
    let text = match args.output {
        OutputFormat::Text => report::text(&trace, &local, &loaded.source),
        OutputFormat::Json => {
            let mut s =
                serde_json::to_string_pretty(&report::to_json(&trace, &local, &loaded.source))?;
            s.push('\n');
            s
        }
    };
    Ok(TraceOutput { text, warnings })
}

fn load(
    cli: &Flags,
    settings: &Settings,
    args: &TraceArgs,
    warnings: &mut Vec<crate::Warning>,
) -> anyhow::Result<Loaded> {
    let family = match settings.family {
        rulegen::IpFamily::V4 => "IPv4",
        rulegen::IpFamily::V6 => "IPv6",
    };
    let mut node_ips = Vec::new();
    let mut rendered = None;
    let mut source = String::new();
    // Objects from files, or from the API server when one is named; else the live kernel.
    let from_api =
        cli.objects.is_empty() && (settings.kubeconfig.is_some() || cli.master.is_some());
    if !cli.objects.is_empty() || from_api {
        let translation = if from_api {
            crate::sources::api::fetch_translation(cli, settings)
                .context("cannot list the objects from the API server")?
        } else {
            load_model(&cli.objects, settings)?
        };
        warnings.extend(translation.warnings.iter().cloned());
        node_ips = translation.config.node_ips.clone();
        source = format!(
            "rules rendered for node {} ({} mode, {family})",
            translation.config.node_name,
            match settings.mode {
                ProxyMode::Iptables => "iptables",
                ProxyMode::Ipvs => "IPVS",
            }
        );
        rendered = Some(match settings.mode {
            ProxyMode::Iptables => (
                rulegen::render(&translation.model, &translation.config)
                    .context("cannot render the ruleset")?
                    .to_save_text(),
                None,
                None,
            ),
            ProxyMode::Ipvs => {
                let r = rulegen::render::ipvs::render(
                    &translation.model,
                    &translation.config,
                    &ipvs_config(settings),
                )
                .context("cannot render the IPVS dataplane")?;
                (
                    r.ruleset.to_save_text(),
                    Some(r.sets.to_save_text()),
                    Some(r.table.to_ipvsadm_text()),
                )
            }
        });
    }
    if rendered.is_none() && args.ruleset.is_none() {
        if args.ipsets.is_some() || args.ipvs.is_some() {
            bail!("--ipsets and --ipvs go with --ruleset");
        }
        // Neither objects nor a file: this node's own kernel.
        let node = live::read(settings.family)?;
        let rules = SavedRuleset::parse(&node.rules).context("cannot read this node's rules")?;
        return Ok(Loaded {
            rules,
            fetcher: node.fetcher,
            sets: node.sets,
            virtual_servers: node.virtual_servers,
            node_ips: node.addresses,
            cluster_cidrs: settings.cluster_cidrs.clone(),
            source: node.source,
        });
    }
    let (rules_text, sets_text, vs_text) = match &args.ruleset {
        Some(path) => {
            source = format!("rules from {}", path.display());
            let sets = args
                .ipsets
                .as_ref()
                .map(|p| read(p, "--ipsets"))
                .transpose()?;
            let vs = args.ipvs.as_ref().map(|p| read(p, "--ipvs")).transpose()?;
            (read(path, "--ruleset")?, sets, vs)
        }
        None => {
            if args.ipsets.is_some() || args.ipvs.is_some() {
                bail!("--ipsets and --ipvs go with --ruleset (with --objects they are rendered)");
            }
            rendered.expect("objects given when there is no ruleset")
        }
    };
    let rules = SavedRuleset::parse(&rules_text).context("cannot read the ruleset")?;
    let sets = sets_text
        .map(|t| SavedSets::parse(&t).context("cannot read the ipsets"))
        .transpose()?;
    let virtual_servers = vs_text
        .map(|t| SavedVirtualServers::parse(&t).context("cannot read the IPVS virtual servers"))
        .transpose()?;
    Ok(Loaded {
        rules,
        fetcher: None,
        sets,
        virtual_servers,
        node_ips,
        cluster_cidrs: settings.cluster_cidrs.clone(),
        source,
    })
}

/// Runs `trace` and prints it.
pub fn run(outer: &Flags, args: &TraceArgs) -> ExitCode {
    crate::commands::dryrun::print_output(render(outer, args).map(|out| (out.text, out.warnings)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::trace::percent;

    #[test]
    fn own_flags_are_taken_from_anywhere_among_the_node_flags() {
        #[derive(clap::Parser)]
        struct Trace {
            #[command(flatten)]
            args: TraceArgs,
        }
        let parsed = <Trace as clap::Parser>::try_parse_from([
            "trace",
            "--objects",
            "x.yaml",
            "--dst",
            "10.0.0.1:80",
            "--hostname-override",
            "n",
            "--from=pod",
        ])
        .unwrap();
        let args = parsed.args;
        assert_eq!(args.dst.as_deref(), Some("10.0.0.1:80"));
        assert_eq!(args.from, Some(FromArg::Pod));
        assert_eq!(args.flags.objects, [PathBuf::from("x.yaml")]);
        assert_eq!(
            args.flags.configuration.hostname_override.as_deref(),
            Some("n")
        );
    }

    #[test]
    fn endpoints_parse_with_and_without_ports() {
        assert_eq!(
            parse_endpoint("10.0.0.1", "--src", Some(40000)).unwrap(),
            "10.0.0.1:40000".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("fd00::1", "--src", Some(1)).unwrap(),
            "[fd00::1]:1".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("[fd00::1]:53", "--dst", None).unwrap(),
            "[fd00::1]:53".parse().unwrap()
        );
        let e = parse_endpoint("10.0.0.1", "--dst", None).unwrap_err();
        assert!(e.to_string().contains("needs a port"), "{e}");
        let e = parse_endpoint("10.0.0.1:99999", "--dst", None).unwrap_err();
        assert!(e.to_string().contains("not a number"), "{e}");
        assert!(parse_endpoint("ten.0.0.1:80", "--dst", None).is_err());
    }

    #[test]
    fn percentages_are_short() {
        assert_eq!(percent(1.0 / 3.0), "33.33%");
        assert_eq!(percent(0.5), "50%");
        assert_eq!(percent(1.0), "100%");
    }
}
