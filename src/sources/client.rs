//! The API client every command that reads the API server uses, built as the agent's: kubeconfig
//! (or in-cluster), `--master`, and upstream's client-side rate limit.

use anyhow::Context;

use super::ratelimit;
use crate::settings::Settings;

/// The API client the agent uses: kubeconfig (or in-cluster), `--master`, qps and burst.
pub async fn connect(
    cli: &crate::settings::Flags,
    settings: &Settings,
) -> anyhow::Result<kube::Client> {
    // `clientConnection.kubeconfig` (kubeadm's file) or `--kubeconfig`: with kubeadm the API
    // server is reached directly, never through the `kubernetes` Service this agent programs.
    let mut config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig: pass --kubeconfig, set KUBECONFIG, or run in a pod")?,
    };
    if let Some(master) = &cli.master {
        config.cluster_url = master
            .parse()
            .with_context(|| format!("--master {master:?} is not a URL"))?;
    }
    let qps = settings.kube_api_qps.unwrap_or(ratelimit::DEFAULT_QPS);
    let burst = settings.kube_api_burst.unwrap_or(ratelimit::DEFAULT_BURST);
    Ok(kube::client::ClientBuilder::try_from(config)
        .context("cannot build the API client")?
        .with_layer(&ratelimit::RateLimitLayer::new(qps, burst))
        .build())
}
