//! Non-fatal diagnostics: an input was skipped or adjusted, and the run goes on.

use std::fmt;

/// How serious a [`Warning`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Expected and harmless (an ExternalName Service, a kind kube-proxy does not read).
    Note,
    /// The input looks wrong (an invalid IP, a broken object) and was skipped or adjusted.
    Warning,
}

/// One diagnostic line for stderr, e.g. `warning: skipping Service ns/name: invalid clusterIP "1.2.3"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Warning {
    /// Note or warning.
    pub level: Level,
    /// The text after the `note: `/`warning: ` prefix.
    pub message: String,
}

impl Warning {
    /// A `warning:` line.
    pub fn warn(message: impl Into<String>) -> Self {
        Warning {
            level: Level::Warning,
            message: message.into(),
        }
    }

    /// A `note:` line.
    pub fn note(message: impl Into<String>) -> Self {
        Warning {
            level: Level::Note,
            message: message.into(),
        }
    }

    /// Whether this is a real warning rather than a note.
    pub fn is_warning(&self) -> bool {
        self.level == Level::Warning
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.level {
            Level::Note => "note",
            Level::Warning => "warning",
        };
        write!(f, "{prefix}: {}", self.message)
    }
}
