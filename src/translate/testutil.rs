//! Helpers for the translate unit tests: YAML snippets in, model out.

use crate::objects::{self, Objects};
use crate::settings::Settings;
use crate::translate::{Translation, translate};
use crate::warning::Warning;

/// Parses `yaml` (one or many documents) into objects; panics on a parse error.
pub fn objects(yaml: &str) -> (Objects, Vec<Warning>) {
    let mut objects = Objects::default();
    let mut warnings = Vec::new();
    objects::parse_str(yaml, "test.yaml", &mut objects, &mut warnings).unwrap();
    (objects, warnings)
}

/// Settings for node `node-1`, IPv4.
pub fn settings() -> Settings {
    Settings {
        hostname: "node-1".to_string(),
        ..Settings::default()
    }
}

/// Parses and translates `yaml` for `node-1`; the warnings of both steps, in order.
pub fn run(yaml: &str) -> Translation {
    run_with(yaml, &settings())
}

/// Parses and translates `yaml` with `settings`.
pub fn run_with(yaml: &str, settings: &Settings) -> Translation {
    let (objects, mut warnings) = objects(yaml);
    let mut t = translate(&objects, settings);
    warnings.append(&mut t.warnings);
    t.warnings = warnings;
    t
}

/// The warnings as the lines stderr would show.
pub fn lines(t: &Translation) -> Vec<String> {
    t.warnings.iter().map(ToString::to_string).collect()
}
