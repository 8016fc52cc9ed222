//! `explain SERVICE`: what this node's iptables rules (or, with `--proxy-mode ipvs`, its IPVS
//! virtual servers, ipsets and rules) do with one Service, for a person (aligned text) or a tool
//! (`--output json`). The analysis is `rulegen::analysis::explain` (`rulegen::analysis::explain::ipvs`), built from
//! the renderer's own decisions; this module finds the Service, resolves the flags as the dry
//! run does, and formats.

use std::process::ExitCode;

use anyhow::{Context, bail};
use rulegen::Model;
use rulegen::analysis::explain::PortExplanation;
use rulegen::analysis::explain::ipvs::IpvsExplanation;
use serde_json::Value;

pub use crate::cli::{ExplainArgs, OutputFormat};
use crate::commands::dryrun::load_model;
use crate::reports::explain as report;
use crate::settings::{Flags, ProxyMode, Settings};

/// What `explain` produced: stdout text and the warnings met on the way.
#[derive(Debug, Clone)]
pub struct ExplainOutput {
    /// What goes to stdout.
    pub text: String,
    /// Warnings for stderr.
    pub warnings: Vec<crate::Warning>,
}

/// Runs `explain` without printing anything: resolves the flags, loads and translates the objects,
/// finds the Service and formats its explanation.
pub fn render(outer: &Flags, args: &ExplainArgs) -> anyhow::Result<ExplainOutput> {
    if !outer.is_default() {
        bail!(
            "give the node flags after `explain SERVICE` (kube-proxy-rs explain NS/NAME --objects PATH …)"
        );
    }
    let flags = &args.flags;
    let output = args.output;
    let (settings, mut warnings) = Settings::from_flags(flags)?;
    let translation = if flags.objects.is_empty() {
        // No files: the cluster's objects, listed once as the agent would.
        crate::sources::api::fetch_translation(flags, &settings).context(
            "explain reads --objects PATH (a YAML/JSON file or a directory) or the API server \
             (--kubeconfig FILE, KUBECONFIG, or in a pod)",
        )?
    } else {
        load_model(&flags.objects, &settings)?
    };
    warnings.extend(translation.warnings);
    let ports = select(&translation.model, &args.service)?;
    let no_cluster_ip = || {
        anyhow::anyhow!(
            "{} has no {} cluster IP on this node's proxier (try --ip-family)",
            args.service,
            report::family_name(translation.config.family)
        )
    };
    let node = &translation.config.node_name;
    let text = match settings.mode {
        ProxyMode::Iptables => {
            let explained: Vec<PortExplanation> = ports
                .iter()
                .filter_map(|&i| {
                    rulegen::analysis::explain::explain_port(
                        &translation.model.services[i],
                        &translation.config,
                    )
                })
                .collect();
            if explained.is_empty() {
                return Err(no_cluster_ip());
            }
            match output {
                OutputFormat::Text => report::text(&explained, node),
                OutputFormat::Json => pretty(&report::json(&explained, node))?,
            }
        }
        ProxyMode::Ipvs => {
            // The same render the dry run prints, so explain reads what the node would hold.
            let render = rulegen::render::ipvs::render(
                &translation.model,
                &translation.config,
                &crate::commands::dryrun::ipvs_config(&settings),
            )
            .context("cannot render the IPVS dataplane")?;
            let explained: Vec<IpvsExplanation> = ports
                .iter()
                .filter_map(|&i| {
                    rulegen::analysis::explain::ipvs::explain_port(
                        &translation.model.services[i],
                        &translation.config,
                        &render,
                    )
                })
                .collect();
            if explained.is_empty() {
                return Err(no_cluster_ip());
            }
            match output {
                OutputFormat::Text => report::ipvs::text(&explained, node),
                OutputFormat::Json => pretty(&report::ipvs::json(&explained, node))?,
            }
        }
    };
    Ok(ExplainOutput { text, warnings })
}

/// Pretty JSON with a final newline.
fn pretty(v: &Value) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}

/// Runs `explain` and prints it; exit 1 (with close matches) when the Service is not found.
pub fn run(outer: &Flags, args: &ExplainArgs) -> ExitCode {
    crate::commands::dryrun::print_output(render(outer, args).map(|out| (out.text, out.warnings)))
}

/// The indices of the service ports `query` (`ns/name` or `ns/name:port`) names, or an error
/// that lists the closest Services or the Service's ports.
pub fn select(model: &Model, query: &str) -> anyhow::Result<Vec<usize>> {
    let (ns, rest) = query
        .split_once('/')
        .with_context(|| format!("{query:?}: name the Service as NAMESPACE/NAME[:PORT]"))?;
    let (name, port) = match rest.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (rest, None),
    };
    let of_service: Vec<usize> = (0..model.services.len())
        .filter(|&i| {
            let n = &model.services[i].name;
            n.namespace == ns && n.name == name
        })
        .collect();
    if of_service.is_empty() {
        let mut names: Vec<String> = model
            .services
            .iter()
            .map(|sp| format!("{}/{}", sp.name.namespace, sp.name.name))
            .collect();
        names.dedup();
        let want = format!("{ns}/{name}");
        let mut close: Vec<(usize, &String)> = names
            .iter()
            .map(|n| (distance(n, &want), n))
            .filter(|(d, n)| {
                let short = n.split_once('/').map_or(n.as_str(), |(_, s)| s);
                *d <= 3 || distance(short, name) <= 2 || (!name.is_empty() && short.contains(name))
            })
            .collect();
        close.sort();
        let list: Vec<&str> = close.iter().take(5).map(|(_, n)| n.as_str()).collect();
        if list.is_empty() {
            bail!("Service {want} not found (no Service with a similar name either)");
        }
        bail!(
            "Service {want} not found; did you mean: {}",
            list.join(", ")
        );
    }
    let Some(port) = port else {
        return Ok(of_service);
    };
    let chosen: Vec<usize> = of_service
        .iter()
        .copied()
        .filter(|&i| {
            let sp = &model.services[i];
            sp.name.port == port || port.parse::<u16>().is_ok_and(|p| p == sp.port)
        })
        .collect();
    if chosen.is_empty() {
        let ports: Vec<String> = of_service
            .iter()
            .map(|&i| {
                let sp = &model.services[i];
                match sp.name.port.as_str() {
                    "" => format!("{} ({})", sp.port, sp.protocol),
                    n => format!("{n} ({} {})", sp.port, sp.protocol),
                }
            })
            .collect();
        bail!(
            "Service {ns}/{name} has no port {port:?}; its ports: {}",
            ports.join(", ")
        );
    }
    Ok(chosen)
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rulegen::{Protocol, ServicePort, ServicePortName};

    fn model() -> Model {
        let sp = |ns: &str, n: &str, p: &str, port| {
            ServicePort::cluster_ip(
                ServicePortName::new(ns, n, p),
                Protocol::Tcp,
                "10.96.0.1".parse().unwrap(),
                port,
            )
        };
        Model {
            services: vec![
                sp("default", "frontend", "http", 80),
                sp("default", "frontend", "metrics", 9090),
                sp("kube-system", "kube-dns", "dns", 53),
            ],
        }
    }

    #[test]
    fn selects_by_name_port_name_and_number() {
        let m = model();
        assert_eq!(select(&m, "default/frontend").unwrap(), vec![0, 1]);
        assert_eq!(select(&m, "default/frontend:metrics").unwrap(), vec![1]);
        assert_eq!(select(&m, "default/frontend:80").unwrap(), vec![0]);
    }

    #[test]
    fn not_found_lists_close_matches() {
        let m = model();
        let e = select(&m, "default/frontnd").unwrap_err().to_string();
        assert!(e.contains("did you mean: default/frontend"), "{e}");
        let e = select(&m, "default/kube-dns").unwrap_err().to_string();
        assert!(e.contains("kube-system/kube-dns"), "{e}");
        let e = select(&m, "default/frontend:grpc").unwrap_err().to_string();
        assert!(e.contains("http (80 tcp)"), "{e}");
        assert!(select(&m, "frontend").is_err());
    }

    #[test]
    fn output_flag_is_found_among_the_node_flags() {
        #[derive(clap::Parser)]
        struct Explain {
            #[command(flatten)]
            args: ExplainArgs,
        }
        let parsed = <Explain as clap::Parser>::try_parse_from([
            "explain",
            "--objects",
            "x",
            "ns/web",
            "--output=json",
            "--masquerade-all",
        ])
        .unwrap();
        assert_eq!(parsed.args.output, OutputFormat::Json);
        assert_eq!(parsed.args.flags.objects, [std::path::PathBuf::from("x")]);
        assert_eq!(
            parsed.args.flags.configuration.iptables.masquerade_all,
            Some(true)
        );
    }
}
