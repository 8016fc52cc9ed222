//! YAML decoding shared by object files and the config file: serde-saphyr with limits sized for
//! whole-cluster dumps, and errors reduced to a line number, a field path and a one-line reason.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_saphyr::MessageFormatter;

/// Why a YAML text or value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line in the decoded text, when the parser knows it.
    pub line: Option<u64>,
    /// 1-based column of that line, when the parser knows it.
    pub column: Option<u64>,
    /// Dotted path of the offending field (`spec.ports[0].port`), when known.
    pub path: Option<String>,
    /// The reason, on one line.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{path}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for YamlError {}

/// Parser options: no snippets (we print `file:line` ourselves) and budgets large enough for a
/// `kubectl get -o yaml` dump of a big cluster (the defaults stop at 250k nodes).
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_events: 200_000_000,
            max_nodes: 100_000_000,
            max_total_scalar_bytes: 4 << 30,
        },
    }
}

/// Parses one YAML document into `T` without field paths: the fast path for a first pass,
/// whose errors are the syntax errors of text that is not YAML at all.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| from_saphyr(&e, None))
}

/// Decodes one YAML document into `T`, reporting the line and field path of the first error.
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    decode_reporting_unknown(text, |_| {})
}

/// Like [`decode`], and calls `unknown` with the path of every field `T` does not know.
pub fn decode_reporting_unknown<T: DeserializeOwned>(
    text: &str,
    mut unknown: impl FnMut(String),
) -> Result<T, YamlError> {
    // The field path is smuggled out beside the error: saphyr's error type has no room for it,
    // and the closure must return saphyr's own error so saphyr stops reading there.
    let mut failed_path = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        let mut on_ignored =
            |path: serde_ignored::Path<'_>| unknown(clean_ignored_path(&path.to_string()));
        let de = serde_ignored::Deserializer::new(de, &mut on_ignored);
        serde_path_to_error::deserialize(de).map_err(|e| {
            failed_path = Some(e.path().to_string());
            e.into_inner()
        })
    });
    result.map_err(|e| from_saphyr(&e, failed_path))
}

/// Decodes a generic value (one item of a `List`) into `T`, reporting the field path of an error.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, YamlError> {
    serde_path_to_error::deserialize(value).map_err(|e| YamlError {
        line: None,
        column: None,
        path: non_empty_path(e.path().to_string()),
        message: one_line(&e.into_inner().to_string()),
    })
}

fn from_saphyr(e: &serde_saphyr::Error, path: Option<String>) -> YamlError {
    let line = e.location().map(|l| l.line()).filter(|&l| l > 0);
    let column = e.location().map(|l| l.column()).filter(|&c| c > 0);
    let message = serde_saphyr::DefaultMessageFormatter.format_message(e.without_snippet());
    YamlError {
        line,
        column,
        path: path.and_then(non_empty_path),
        message: one_line(&message),
    }
}

/// `serde_path_to_error` prints `.` for the root; that says nothing to a user.
fn non_empty_path(path: String) -> Option<String> {
    (!path.is_empty() && path != ".").then_some(path)
}

/// `serde_ignored` marks `Option` layers with `?`; users know the field as `iptables.masqueradeBit`.
fn clean_ignored_path(path: &str) -> String {
    path.split('.')
        .filter(|s| *s != "?")
        .collect::<Vec<_>>()
        .join(".")
}

/// Control characters from the input must not reach the terminal, and a diagnostic is one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Port {
        port: i32,
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Doc {
        ports: Vec<Port>,
        opt: Option<Port>,
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse::<serde_json::Value>("a: b\nc: [1, 2\nd: e\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(!e.message.contains('\n'));
    }

    #[test]
    fn type_error_has_line_and_path() {
        let e = decode::<Doc>("ports:\n- port: 80\n- port: abc\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.path.as_deref(), Some("ports[1].port"));
        assert_eq!(e.to_string(), format!("ports[1].port: {}", e.message));
    }

    #[test]
    fn unknown_fields_are_reported_with_clean_paths() {
        let mut unknown = Vec::new();
        let d: Doc =
            decode_reporting_unknown("ports: []\nextra: 1\nopt:\n  port: 1\n  typo: 2\n", |p| {
                unknown.push(p)
            })
            .unwrap();
        assert!(d.ports.is_empty());
        assert_eq!(unknown, ["extra", "opt.typo"]);
    }

    #[test]
    fn value_decoding_reports_path() {
        let v = serde_json::json!({"ports": [{"port": "x"}]});
        let e = from_value::<Doc>(v).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("ports[0].port"));
        assert_eq!(e.line, None);
    }

    #[test]
    fn empty_document_is_none() {
        assert_eq!(
            parse::<Option<serde_json::Value>>("# only a comment\n").unwrap(),
            None
        );
        assert_eq!(parse::<Option<serde_json::Value>>("").unwrap(), None);
    }
}
