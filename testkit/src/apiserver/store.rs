//! The data model of the test API server: the three resource kinds, the objects, the global
//! resourceVersion counter and a bounded, compactable history of changes (etcd's role).
//!
//! Everything here is synchronous and runs under the server's one `Mutex<Store>`. Each write
//! bumps the global resourceVersion, appends a [`Change`] to the history and broadcasts it to the
//! open watches *while the lock is held*, so a watch that snapshots the history and subscribes
//! under the same lock sees every change exactly once.

use super::select::Selector;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

/// The resource kinds served. Objects are kept as their JSON (`serde_json::Value`), with
/// `apiVersion` and `kind` set, exactly as they would be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Services.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlices.
    EndpointSlice,
    /// `v1` Nodes (cluster-scoped).
    Node,
}

impl Kind {
    /// Every kind the server holds.
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    /// The `kind` field's value.
    pub fn kind(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }

    /// `apiVersion` of objects and lists (group/version).
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Service | Kind::Node => "v1",
        }
    }

    /// API group ("" for core), as reported in `Status.details.group`.
    pub fn group(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::Service | Kind::Node => "",
        }
    }

    /// The resource name used in URLs and in `Status.details.kind`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
        }
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node)
    }

    /// Looks a kind up by `apiVersion` (as in the URL) and plural resource name.
    pub fn from_url(api_version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.plural() == plural)
    }

    /// Looks a kind up by the `kind` field of an object.
    pub fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.kind() == kind)
    }
}

/// `(namespace, name)`; the namespace is "" for cluster-scoped objects (Nodes).
pub type Key = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// What a watch event says happened.
pub enum EventType {
    /// The object was created.
    Added,
    /// The object changed.
    Modified,
    /// The object was deleted.
    Deleted,
}

impl EventType {
    /// The event's `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One entry of the history. For `Deleted`, `object` is the last state with its
/// resourceVersion set to the deletion's (as etcd3 and the watch cache report it).
#[derive(Debug)]
pub struct Change {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// The object's kind.
    pub kind: Kind,
    /// What happened.
    pub ty: EventType,
    /// The object's namespace and name.
    pub key: Key,
    /// The object after the change (for `Deleted`, before it).
    pub object: Value,
    /// The object before this change (None for `Added`).
    pub prev: Option<Value>,
}

impl Change {
    /// The watch event a watcher with this namespace and selector sees for this change, if any.
    /// Like the real watch cache, a MODIFIED that makes an object (stop) match the selector is
    /// turned into ADDED (DELETED, carrying the previous content and the new resourceVersion).
    pub fn view(&self, namespace: Option<&str>, sel: &Selector) -> Option<(EventType, Value)> {
        if namespace.is_some_and(|ns| ns != self.key.0) {
            return None;
        }
        let now = self.ty != EventType::Deleted && sel.matches(&self.object);
        let before = match (&self.ty, &self.prev) {
            (EventType::Deleted, _) => sel.matches(&self.object),
            (_, Some(prev)) => sel.matches(prev),
            (_, None) => false,
        };
        match (before, now) {
            (true, true) => Some((EventType::Modified, self.object.clone())),
            (false, true) => Some((EventType::Added, self.object.clone())),
            (true, false) if self.ty == EventType::Deleted => {
                Some((EventType::Deleted, self.object.clone()))
            }
            (true, false) => {
                let mut gone = self.prev.clone().unwrap_or_default();
                set_meta(&mut gone, "resourceVersion", json!(self.rv.to_string()));
                Some((EventType::Deleted, gone))
            }
            (false, false) => None,
        }
    }
}

/// An API error, rendered as a `Status` object by [`ApiError::status`].
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status code.
    pub code: u16,
    /// `Status.reason` (`NotFound`, `Conflict`, …).
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `(kind, name)` for `Status.details`.
    pub details: Option<(Kind, String)>,
}

impl ApiError {
    /// An error with this code, reason and message.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    /// A 400 `BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    /// A 404 `NotFound` for `kind` `name`.
    pub fn not_found(kind: Kind, name: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.plural()),
        );
        e.details = Some((kind, name.to_string()));
        e
    }
    /// A 410 `Expired` (a version older than the history).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    /// The `Status` object the real API server sends for this error.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some((kind, name)) = &self.details {
            let mut d = json!({"name": name, "kind": kind.plural()});
            if !kind.group().is_empty() {
                d["group"] = json!(kind.group());
            }
            s["details"] = d;
        }
        s
    }
}

/// How a write treats an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// POST: 409 AlreadyExists if present.
    Create,
    /// PUT: 404 if absent; 409 Conflict if the body's resourceVersion is set and stale.
    Update,
    /// In-process `apply`: create or replace, no concurrency check.
    Upsert,
}

/// Objects, resourceVersion counter and history.
pub struct Store {
    rv: u64,
    next_uid: u64,
    objects: HashMap<Kind, BTreeMap<Key, Value>>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Changes with rv <= `compacted` are gone: watching from, or a consistent read at, a
    /// resourceVersion below this answers 410 Expired.
    compacted: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

/// First resourceVersion handed out (a non-zero start, so "0" is never a real version).
const INITIAL_RV: u64 = 100;

impl Store {
    /// An empty store keeping `history_limit` changes for watches and paged lists.
    pub fn new(history_limit: usize) -> Self {
        Store {
            rv: INITIAL_RV,
            next_uid: 1,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: INITIAL_RV,
            tx: broadcast::channel(4096).0,
        }
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Every change from now on (what watches follow).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// Drops the whole history: any watch or continue token from before now gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// The stored object of `kind` at `key`, if any.
    pub fn get(&self, kind: Kind, key: &Key) -> Option<&Value> {
        self.objects.get(&kind)?.get(key)
    }

    /// All objects of `kind` as of resourceVersion `at` (None: now), sorted by key. Rebuilt by
    /// undoing the newer history, so a paged list is one consistent snapshot, as with etcd.
    pub fn snapshot(&self, kind: Kind, at: Option<u64>) -> Result<BTreeMap<Key, Value>, ApiError> {
        let mut objs = self.objects.get(&kind).cloned().unwrap_or_default();
        let Some(at) = at.filter(|&at| at < self.rv) else {
            return Ok(objs);
        };
        if at < self.compacted {
            return Err(self.too_old(at));
        }
        for c in self.history.iter().rev().take_while(|c| c.rv > at) {
            if c.kind != kind {
                continue;
            }
            match &c.prev {
                Some(prev) => objs.insert(c.key.clone(), prev.clone()),
                None => objs.remove(&c.key),
            };
        }
        Ok(objs)
    }

    /// The changes of `kind` after resourceVersion `since`, or 410 if they were compacted away.
    pub fn changes_since(&self, kind: Kind, since: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if since < self.compacted {
            return Err(self.too_old(since));
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.rv > since && c.kind == kind)
            .cloned()
            .collect())
    }

    fn too_old(&self, rv: u64) -> ApiError {
        // The real server's wording (storage/cacher and etcd3 "required revision has been compacted").
        ApiError::expired(format!(
            "too old resource version: {rv} ({})",
            self.compacted
        ))
    }

    /// Creates or updates `obj` of `kind`. `namespace` is the one from the URL, if any; for
    /// namespaced kinds without one the object's own or "default" is used. Returns the stored
    /// object.
    pub fn write(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        mut obj: Value,
        mode: WriteMode,
    ) -> Result<Value, ApiError> {
        let key = admit(kind, namespace, &mut obj)?;
        let prev = self.get(kind, &key).cloned();
        let name = &key.1;
        match (&prev, mode) {
            (Some(_), WriteMode::Create) => {
                let mut e = ApiError::new(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", kind.plural()),
                );
                e.details = Some((kind, name.clone()));
                return Err(e);
            }
            (None, WriteMode::Update) => return Err(ApiError::not_found(kind, name)),
            (Some(prev), WriteMode::Update) => {
                let given = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
                if !given.is_empty() && Some(given) != prev["metadata"]["resourceVersion"].as_str()
                {
                    let mut e = ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                             modified; please apply your changes to the latest version and try again",
                            kind.plural()
                        ),
                    );
                    e.details = Some((kind, name.clone()));
                    return Err(e);
                }
            }
            _ => {}
        }
        // Server-owned metadata: uid and creationTimestamp survive updates.
        let (uid, created) = match &prev {
            Some(p) => (
                p["metadata"]["uid"].clone(),
                p["metadata"]["creationTimestamp"].clone(),
            ),
            None => {
                self.next_uid += 1;
                let uid = format!("00000000-0000-4000-8000-{:012x}", self.next_uid);
                let now = k8s_openapi::jiff::Timestamp::now().as_second();
                let ts = k8s_openapi::jiff::Timestamp::from_second(now).unwrap_or_default();
                (json!(uid), json!(ts.to_string()))
            }
        };
        self.rv += 1;
        set_meta(&mut obj, "uid", uid);
        set_meta(&mut obj, "creationTimestamp", created);
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        self.objects
            .entry(kind)
            .or_default()
            .insert(key.clone(), obj.clone());
        let ty = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(kind, ty, key, obj.clone(), prev);
        Ok(obj)
    }

    /// Deletes an object; returns it as the DELETED event carries it.
    pub fn delete(&mut self, kind: Kind, key: &Key) -> Result<Value, ApiError> {
        let Some(prev) = self.objects.get_mut(&kind).and_then(|m| m.remove(key)) else {
            return Err(ApiError::not_found(kind, &key.1));
        };
        self.rv += 1;
        let mut gone = prev.clone();
        set_meta(&mut gone, "resourceVersion", json!(self.rv.to_string()));
        self.record(
            kind,
            EventType::Deleted,
            key.clone(),
            gone.clone(),
            Some(prev),
        );
        Ok(gone)
    }

    fn record(&mut self, kind: Kind, ty: EventType, key: Key, object: Value, prev: Option<Value>) {
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            ty,
            key,
            object,
            prev,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine; a lagging receiver ends its watch (see the watch stream).
        let _ = self.tx.send(change);
    }
}

/// Validates an incoming object against the URL and fills in `apiVersion`, `kind` and
/// `metadata.namespace`. Returns its key.
fn admit(kind: Kind, url_ns: Option<&str>, obj: &mut Value) -> Result<Key, ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    };
    for (field, want) in [("kind", kind.kind()), ("apiVersion", kind.api_version())] {
        match map.get(field).and_then(Value::as_str) {
            None | Some("") => {
                map.insert(field.into(), json!(want));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({got}) does not match the expected {field} ({want})"
                )));
            }
        }
    }
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() || name.contains('/') || name.len() > 253 {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: metadata.name: Required value or invalid",
                kind.kind()
            ),
        ));
    }
    let body_ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ns = if !kind.namespaced() {
        meta.remove("namespace");
        String::new()
    } else {
        let ns = match (url_ns, body_ns.as_str()) {
            (Some(u), b) if b.is_empty() || b == u => u.to_string(),
            (Some(_), _) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (None, "") => "default".to_string(),
            (None, b) => b.to_string(),
        };
        meta.insert("namespace".into(), json!(ns));
        ns
    };
    Ok((ns, name))
}

/// Sets `metadata.<field>`, creating `metadata` if needed.
pub fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(field.to_string(), value);
        }
    }
}
