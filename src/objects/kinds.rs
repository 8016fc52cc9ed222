//! Sorts decoded documents by kind: Services, EndpointSlices and Nodes are kept, `*List`
//! documents are opened, anything else is noted and dropped.

use k8s_openapi::Resource;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use super::documents::Document;
use super::toplevel::TopLevel;
use super::{LoadError, Objects, Origin, Sourced};
use crate::warning::Warning;
use crate::yaml::{self, YamlError};

/// Namespaced objects written without a namespace land in `default`, as `kubectl apply` would.
const DEFAULT_NAMESPACE: &str = "default";

/// The identifying fields every object has, read before its kind is known.
struct Head {
    api_version: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

impl Head {
    fn of(map: &Map<String, Value>) -> Head {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let meta = map.get("metadata");
        Head {
            api_version: text(map.get("apiVersion")),
            kind: text(map.get("kind")),
            namespace: text(meta.and_then(|m| m.get("namespace"))),
            name: text(meta.and_then(|m| m.get("name"))),
        }
    }

    /// `Kind ns/name` (or `Kind name` for cluster-scoped objects), for diagnostics.
    fn describe(&self) -> String {
        let kind = self.kind.as_deref().unwrap_or("object");
        let name = self.name.as_deref().unwrap_or("<unnamed>");
        match &self.namespace {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        }
    }
}

/// Where an object's fields are: a whole document (its text is kept so a decoding error can
/// be located exactly) or one item of a List (errors point at the item).
enum Source<'a> {
    Document(&'a Document<'a>, Value),
    Item(Value),
}

/// Reads one non-empty document of `file`.
pub(super) fn read_document(
    doc: &Document<'_>,
    file: &str,
    objects: &mut Objects,
    warnings: &mut Vec<Warning>,
) -> Result<(), LoadError> {
    let top = yaml::parse::<Option<TopLevel>>(doc.text).map_err(|e| LoadError {
        file: file.to_string(),
        line: Some(e.line.map_or(doc.content_line(), |l| doc.file_line(l))),
        reason: e.to_string(),
    })?;
    let origin = Origin {
        file: file.to_string(),
        line: doc.content_line(),
    };
    let (mut fields, items) = match top {
        None | Some(TopLevel::Null) => return Ok(()),
        Some(TopLevel::Object { fields, items }) => (fields, items),
        Some(TopLevel::Other) => {
            warnings.push(Warning::warn(format!(
                "skipping a document that is not a Kubernetes object ({origin})"
            )));
            return Ok(());
        }
    };
    let head = Head::of(&fields);
    match items {
        Some(items) if head.kind.as_deref().is_some_and(|k| k.ends_with("List")) => {
            read_list(doc, &head, items, file, objects, warnings);
        }
        items => {
            // A sequence called `items` in something that is not a List is just a field.
            if let Some(items) = items {
                fields.insert(
                    "items".to_string(),
                    Value::Array(items.into_iter().map(|i| i.value).collect()),
                );
            }
            route(
                head,
                Source::Document(doc, Value::Object(fields)),
                origin,
                objects,
                warnings,
            );
        }
    }
    Ok(())
}

fn read_list(
    doc: &Document<'_>,
    list: &Head,
    items: Vec<Spanned<Value>>,
    file: &str,
    objects: &mut Objects,
    warnings: &mut Vec<Warning>,
) {
    // `ServiceList` items may leave out their kind and apiVersion; plain `List` items may not.
    let item_kind = list
        .kind
        .as_deref()
        .and_then(|k| k.strip_suffix("List"))
        .filter(|k| !k.is_empty());
    for item in items {
        let origin = Origin {
            file: file.to_string(),
            line: doc.file_line(item.referenced.line()),
        };
        let Value::Object(mut map) = item.value else {
            warnings.push(Warning::warn(format!(
                "skipping an item of {} that is not a Kubernetes object ({origin})",
                list.describe()
            )));
            continue;
        };
        if let Some(kind) = item_kind {
            map.entry("kind").or_insert_with(|| Value::from(kind));
            if let Some(api_version) = &list.api_version {
                map.entry("apiVersion")
                    .or_insert_with(|| Value::from(api_version.as_str()));
            }
        }
        let head = Head::of(&map);
        route(
            head,
            Source::Item(Value::Object(map)),
            origin,
            objects,
            warnings,
        );
    }
}

fn route(
    mut head: Head,
    source: Source<'_>,
    origin: Origin,
    objects: &mut Objects,
    warnings: &mut Vec<Warning>,
) {
    if matches!(head.kind.as_deref(), Some("Service" | "EndpointSlice")) && head.namespace.is_none()
    {
        head.namespace = Some(DEFAULT_NAMESPACE.to_string());
    }
    let Some(kind) = head.kind.as_deref() else {
        warnings.push(Warning::warn(format!(
            "skipping {}: it has no kind ({origin})",
            head.describe()
        )));
        return;
    };
    let api_version = head.api_version.as_deref().unwrap_or("");
    match kind {
        "Service" if api_version == Service::API_VERSION => {
            if let Some(o) = decode::<Service>(&head, source, origin, warnings, true) {
                objects.services.push(o.shared());
            }
        }
        "EndpointSlice" if api_version == EndpointSlice::API_VERSION => {
            if let Some(o) = decode::<EndpointSlice>(&head, source, origin, warnings, true) {
                objects.endpoint_slices.push(o.shared());
            }
        }
        "Node" if api_version == Node::API_VERSION => {
            if let Some(o) = decode::<Node>(&head, source, origin, warnings, false) {
                objects.nodes.push(o.shared());
            }
        }
        "Service" | "EndpointSlice" | "Node" => {
            // e.g. discovery.k8s.io/v1beta1, which the apiserver no longer serves.
            warnings.push(Warning::warn(format!(
                "skipping {}: apiVersion {api_version:?} is not supported ({origin})",
                head.describe()
            )));
        }
        _ => {
            warnings.push(Warning::note(format!(
                "skipping {}: kube-proxy does not read this kind ({origin})",
                head.describe()
            )));
        }
    }
}

/// Typed access to the one field every kind we keep has.
trait HasMetadata {
    fn meta_mut(&mut self) -> &mut ObjectMeta;
}

impl HasMetadata for Service {
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl HasMetadata for EndpointSlice {
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl HasMetadata for Node {
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn decode<T: DeserializeOwned + HasMetadata>(
    head: &Head,
    source: Source<'_>,
    origin: Origin,
    warnings: &mut Vec<Warning>,
    namespaced: bool,
) -> Option<Sourced<T>> {
    let result: Result<T, (YamlError, u64)> = match source {
        // The parsed value decodes fast; only when it fails is the text decoded again, which
        // gives the error's exact line (and accepts what saphyr's typed decoding is lenient
        // about, such as a quoted number for an integer field).
        Source::Document(doc, value) => yaml::from_value(value).or_else(|_| {
            yaml::decode(doc.text).map_err(|e| {
                let line = e.line.map_or(origin.line, |l| doc.file_line(l));
                (e, line)
            })
        }),
        Source::Item(value) => yaml::from_value(value).map_err(|e| (e, origin.line)),
    };
    let mut object = match result {
        Ok(o) => o,
        Err((e, line)) => {
            let at = Origin {
                file: origin.file.clone(),
                line,
            };
            warnings.push(Warning::warn(format!(
                "skipping {}: {e} ({at})",
                head.describe()
            )));
            return None;
        }
    };
    let meta = object.meta_mut();
    if meta.name.as_deref().unwrap_or("").is_empty() {
        warnings.push(Warning::warn(format!(
            "skipping {}: metadata.name is missing ({origin})",
            head.describe()
        )));
        return None;
    }
    if namespaced && meta.namespace.as_deref().unwrap_or("").is_empty() {
        meta.namespace = Some(DEFAULT_NAMESPACE.to_string());
    }
    Some(Sourced { object, origin })
}
