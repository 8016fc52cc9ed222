//! Label and field selectors, as the API server parses them from `labelSelector` and
//! `fieldSelector` (k8s.io/apimachinery/pkg/labels and /fields).
//!
//! Labels: comma-joined requirements `key`, `!key`, `key=value`, `key==value`, `key!=value`,
//! `key in (a,b)`, `key notin (a,b)`. `!=` and `notin` also match objects without the label.
//! Fields: `metadata.name` and `metadata.namespace` with `=`, `==` or `!=`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Exists,
    NotExists,
    In(Vec<String>),
    NotIn(Vec<String>),
}

/// A parsed label + field selector. The default selects everything.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    labels: Vec<(String, Op)>,
    /// `(JSON pointer, wanted value, equal?)`.
    fields: Vec<(&'static str, String, bool)>,
}

impl Selector {
    /// Parses a request's `labelSelector` and `fieldSelector`; an unsupported one is an error.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, String> {
        let mut sel = Selector::default();
        for term in split_terms(labels.unwrap_or("")) {
            sel.labels.push(parse_label_term(term)?);
        }
        for term in fields
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let (field, value, eq) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, true)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            let pointer = match field.trim() {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                other => return Err(format!("field label not supported: {other}")),
            };
            sel.fields.push((pointer, value.trim().to_string(), eq));
        }
        Ok(sel)
    }

    /// Whether `obj` matches every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label_ok = self.labels.iter().all(|(key, op)| {
            let v = labels.get(key).and_then(Value::as_str);
            match op {
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
            }
        });
        label_ok
            && self.fields.iter().all(|(ptr, want, eq)| {
                let got = obj.pointer(ptr).and_then(Value::as_str).unwrap_or("");
                (got == want) == *eq
            })
    }
}

/// Splits on commas outside parentheses (`a in (x,y),!b` is two terms).
fn split_terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_label_term(term: &str) -> Result<(String, Op), String> {
    let bad = || format!("unable to parse requirement: invalid label selector term '{term}'");
    let (key, op) = if let Some(key) = term.strip_prefix('!') {
        (key, Op::NotExists)
    } else if let Some((key, v)) = term.split_once("!=") {
        (key, Op::NotIn(vec![check_value(v.trim()).ok_or_else(bad)?]))
    } else if let Some((key, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        (key, Op::In(vec![check_value(v.trim()).ok_or_else(bad)?]))
    } else if let Some(open) = term.find('(') {
        // `key in (a,b)` / `key notin (a,b)`
        let inner = term[open + 1..].strip_suffix(')').ok_or_else(bad)?;
        let values = inner
            .split(',')
            .map(|v| check_value(v.trim()).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()?;
        let mut head = term[..open].split_whitespace();
        let (Some(key), Some(word), None) = (head.next(), head.next(), head.next()) else {
            return Err(bad());
        };
        match word {
            "in" => (key, Op::In(values)),
            "notin" => (key, Op::NotIn(values)),
            _ => return Err(bad()),
        }
    } else {
        (term, Op::Exists)
    };
    let key = key.trim();
    let key_ok = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if !key_ok {
        return Err(bad());
    }
    Ok((key.to_string(), op))
}

/// A label value: empty or up to 63 of `[A-Za-z0-9._-]`.
fn check_value(v: &str) -> Option<String> {
    let ok = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    ok.then(|| v.to_string())
}
