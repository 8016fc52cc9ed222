//! Logging: `tracing` to stderr, with upstream's `-v` levels mapped onto tracing levels for our
//! own crates (`RUST_LOG` overrides them).

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// The crates whose level `-v` raises; everything else (kube, hyper, rustls, …) stays at warn,
/// as `-v` only ever meant the proxy's own messages upstream.
const OWN_CRATES: [&str; 3] = ["kube_proxy_rs", "rulegen", "proxier"];

/// The tracing filter for upstream's `-v N`: our crates at info for 0–1, debug for 2–4, trace
/// for 5+; other crates at warn.
pub fn filter_for(verbosity: u8) -> String {
    let level = match verbosity {
        0..=1 => "info",
        2..=4 => "debug",
        _ => "trace",
    };
    std::iter::once("warn".to_string())
        .chain(OWN_CRATES.iter().map(|c| format!("{c}={level}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Installs the global subscriber once, in `format` (`--logging-format`); later calls are
/// no-ops.
pub fn init_with(verbosity: u8, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter_for(verbosity)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        // One JSON object per line, fields flattened, as log shippers expect.
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        // Colours only on a terminal: a DaemonSet's log (and a test's capture) stays plain.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(
            filter_for(0),
            "warn,kube_proxy_rs=info,rulegen=info,proxier=info"
        );
        assert_eq!(
            filter_for(2),
            "warn,kube_proxy_rs=debug,rulegen=debug,proxier=debug"
        );
        assert_eq!(
            filter_for(9),
            "warn,kube_proxy_rs=trace,rulegen=trace,proxier=trace"
        );
    }

    /// `-v 2` used to flood the log with kube's, hyper's and rustls's debug lines.
    #[test]
    fn verbosity_raises_only_our_crates() {
        let subscriber = tracing_subscriber::registry().with(EnvFilter::new(filter_for(5)));
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(target: "kube_proxy_rs::commands::agent::run", Level::TRACE));
            assert!(tracing::enabled!(target: "rulegen::render", Level::DEBUG));
            assert!(tracing::enabled!(target: "proxier::sync", Level::DEBUG));
            // A callsite's target is a constant, hence one line per crate.
            assert!(!tracing::enabled!(target: "kube_client::client", Level::DEBUG));
            assert!(!tracing::enabled!(target: "kube_client::client", Level::INFO));
            assert!(tracing::enabled!(target: "kube_client::client", Level::WARN));
            assert!(!tracing::enabled!(target: "hyper_util::client", Level::DEBUG));
            assert!(!tracing::enabled!(target: "rustls::conn", Level::TRACE));
        });
    }
}
