//! Logging: `tracing` to stderr, with upstream's `-v` levels mapped onto tracing levels
//! (`RUST_LOG` overrides them).

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// The tracing filter for upstream's `-v N`: 0–1 info, 2–4 debug, 5+ trace.
pub fn filter_for(verbosity: u8) -> &'static str {
    match verbosity {
        0..=1 => "info",
        2..=4 => "debug",
        _ => "trace",
    }
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
    use super::*;

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(filter_for(0), "info");
        assert_eq!(filter_for(2), "debug");
        assert_eq!(filter_for(9), "trace");
    }
}
