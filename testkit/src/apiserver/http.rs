//! HTTP front end: URL routing, list / get / watch / create / update / delete handlers, and the
//! chunked watch stream. Every error is answered with a `Status` body; nothing here panics on a
//! bad request.

use super::Inner;
use super::select::Selector;
use super::store::{ApiError, Change, EventType, Key, Kind, WriteMode};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::{Instant, Interval};

/// The body of every response: a whole JSON document or a watch stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest request body accepted (the real server's limit is 3 MiB for etcd objects).
const MAX_BODY: usize = 3 << 20;
/// Watch duration when the client gives no `timeoutSeconds` (the real server picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: u64 = 1800;

/// Where a request points: a kind, optionally a namespace and an object name.
struct Route {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

/// Answers one HTTP request against the server's store.
pub async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let query = parse_query(req.uri().query().unwrap_or(""));
    let path = req.uri().path().to_string();
    inner.log_request(req.method(), req.uri());
    let resp = match path.as_str() {
        "/version" => Ok(json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kube-proxy-rs-test",
                    "platform": "linux/amd64"}),
        )),
        "/healthz" | "/livez" | "/readyz" => Ok(text_response(StatusCode::OK, "ok")),
        _ => match route(&path) {
            Some(r) => dispatch(&inner, req, r, &query).await,
            None => Err(ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            )),
        },
    };
    Ok(resp.unwrap_or_else(|e| error_response(&e)))
}

async fn dispatch(
    inner: &Arc<Inner>,
    req: Request<Incoming>,
    r: Route,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let ns = r.namespace.as_deref();
    let method = req.method().clone();
    match (method, r.name.as_deref()) {
        (Method::GET, None) if matches!(q.get("watch").map(String::as_str), Some("1" | "true")) => {
            watch(inner, r.kind, ns, q)
        }
        (Method::GET, None) => list(inner, r.kind, ns, q),
        (Method::GET, Some(name)) => {
            let key = (ns.unwrap_or("").to_string(), name.to_string());
            let store = inner.store();
            let obj = store
                .get(r.kind, &key)
                .ok_or_else(|| ApiError::not_found(r.kind, name))?;
            Ok(json_response(StatusCode::OK, obj))
        }
        (Method::POST, None) if ns.is_some() || !r.kind.namespaced() => {
            let body = read_json(req).await?;
            let obj = inner.store().write(r.kind, ns, body, WriteMode::Create)?;
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        (Method::PUT, Some(name)) => {
            let name = name.to_string();
            let body = read_json(req).await?;
            if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            let obj = inner.store().write(r.kind, ns, body, WriteMode::Update)?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::DELETE, Some(name)) => {
            let key = (ns.unwrap_or("").to_string(), name.to_string());
            let obj = inner.store().delete(r.kind, &key)?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (m, _) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({m})"),
        )),
    }
}

/// `/api/v1/...` or `/apis/discovery.k8s.io/v1/...`, then `[namespaces/NS/]PLURAL[/NAME]`.
fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (api_version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => ("discovery.k8s.io/v1", rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => return None,
    };
    let kind = Kind::from_url(api_version, plural)?;
    // Cluster-scoped kinds have no namespaced URL; namespaced objects have no cluster-wide one.
    if namespace.is_some() != kind.namespaced() && (namespace.is_some() || name.is_some()) {
        return None;
    }
    Some(Route {
        kind,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    })
}

fn selector(q: &HashMap<String, String>) -> Result<Selector, ApiError> {
    Selector::parse(
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
    )
    .map_err(ApiError::bad_request)
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

/// List: selectors, `limit` + `continue` (consistent snapshot per paged list), and
/// `resourceVersion` + `resourceVersionMatch=Exact` (a read at that version).
fn list(
    inner: &Inner,
    kind: Kind,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let sel = selector(q)?;
    let limit = match q.get("limit").map(String::as_str) {
        None | Some("") => 0,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?,
    };
    // Continue token: "RV/NAMESPACE/NAME" of the last key returned.
    let mut after: Option<Key> = None;
    let mut at = None;
    if let Some(token) = q.get("continue").filter(|t| !t.is_empty()) {
        let mut parts = token.splitn(3, '/');
        let (Some(rv), Some(tns), Some(tname)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ApiError::bad_request(
                "continue key is not valid: incorrect encoded start resourceVersion",
            ));
        };
        at = Some(parse_rv(rv)?);
        after = Some((tns.to_string(), tname.to_string()));
    } else if q.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
        at = Some(parse_rv(
            q.get("resourceVersion").map_or("", String::as_str),
        )?);
    } else if let Some(rv) = q.get("resourceVersion").filter(|v| !v.is_empty()) {
        parse_rv(rv)?; // NotOlderThan / legacy "0": served from the latest state.
    }
    let store = inner.store();
    let snapshot = store.snapshot(kind, at).map_err(|e| {
        if after.is_some() {
            ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            )
        } else {
            e
        }
    })?;
    let list_rv = at.unwrap_or(store.rv()).min(store.rv());
    drop(store);

    let mut items = Vec::new();
    let mut token = None;
    let candidates = snapshot
        .iter()
        .filter(|(key, _)| after.as_ref().is_none_or(|a| *key > a))
        .filter(|(key, obj)| ns.is_none_or(|ns| key.0 == ns) && sel.matches(obj));
    let mut last: Option<&Key> = None;
    for (key, obj) in candidates {
        if let Some(last) = last.filter(|_| limit > 0 && items.len() == limit) {
            token = Some(format!("{list_rv}/{}/{}", last.0, last.1));
            break;
        }
        items.push(obj);
        last = Some(key);
    }
    // The real server leaves kind/apiVersion out of list items.
    let items: Vec<Value> = items
        .into_iter()
        .map(|obj| {
            let mut o = obj.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if let Some(t) = token {
        meta["continue"] = json!(t);
    }
    let body = json!({
        "kind": format!("{}List", kind.kind()),
        "apiVersion": kind.api_version(),
        "metadata": meta,
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// What one watch delivers: kind, namespace and selector.
struct WatchFilter {
    kind: Kind,
    namespace: Option<String>,
    sel: Selector,
}

impl WatchFilter {
    fn line(&self, change: &Change) -> Option<Bytes> {
        if change.kind != self.kind {
            return None;
        }
        let (ty, obj) = change.view(self.namespace.as_deref(), &self.sel)?;
        Some(event_line(ty.as_str(), &obj))
    }
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// State of one open watch stream.
struct WatchStream {
    inner: Arc<Inner>,
    filter: WatchFilter,
    pending: VecDeque<Bytes>,
    rx: broadcast::Receiver<Arc<Change>>,
    closer: tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
    bookmarks: Option<Interval>,
    done: bool,
}

/// Watch: `resourceVersion=N` replays the retained changes after N then streams live ones;
/// absent or "0" (or `sendInitialEvents=true`) starts with ADDED for every current object.
/// A compacted N gets one ERROR event with a 410 Expired `Status`, then the stream ends.
fn watch(
    inner: &Arc<Inner>,
    kind: Kind,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let filter = WatchFilter {
        kind,
        namespace: ns.map(str::to_string),
        sel: selector(q)?,
    };
    let rv = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") => 0,
        Some(v) => parse_rv(v)?,
    };
    let timeout = match q.get("timeoutSeconds").map(String::as_str) {
        None | Some("") | Some("0") => DEFAULT_WATCH_TIMEOUT,
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t:?}")))?,
    };
    let want_bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let initial_events = q.get("sendInitialEvents").map(String::as_str) == Some("true");
    let period = inner.bookmark_interval();

    let mut pending = VecDeque::new();
    let mut done = false;
    let store = inner.store();
    // Subscribe under the store lock: nothing is missed or sent twice between history and live.
    let rx = store.subscribe();
    if rv == 0 || initial_events {
        let snap = store.snapshot(kind, None).unwrap_or_default();
        for (key, obj) in &snap {
            if filter.namespace.as_ref().is_none_or(|ns| *ns == key.0) && filter.sel.matches(obj) {
                pending.push_back(event_line(EventType::Added.as_str(), obj));
            }
        }
        if initial_events {
            pending.push_back(event_line(
                "BOOKMARK",
                &json!({
                    "kind": kind.kind(), "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": store.rv().to_string(),
                                 "annotations": {"k8s.io/initial-events-end": "true"}},
                }),
            ));
        }
    } else {
        match store.changes_since(kind, rv) {
            Ok(changes) => pending.extend(changes.iter().filter_map(|c| filter.line(c))),
            Err(e) => {
                pending.push_back(event_line("ERROR", &e.status()));
                done = true;
            }
        }
    }
    drop(store);

    let start = Instant::now();
    let stream = WatchStream {
        inner: inner.clone(),
        filter,
        pending,
        rx,
        closer: inner.closer.subscribe(),
        deadline: start + Duration::from_secs(timeout),
        bookmarks: want_bookmarks.then(|| tokio::time::interval_at(start + period, period)),
        done,
    };
    let body = StreamBody::new(futures::stream::unfold(stream, next_frame));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.boxed_unsync())
        .unwrap_or_else(|_| Response::new(empty())))
}

/// Produces the next chunk of a watch: queued lines first, then waits for a change, a bookmark
/// tick, the timeout, or `close_watches()`.
async fn next_frame(
    mut st: WatchStream,
) -> Option<(Result<Frame<Bytes>, Infallible>, WatchStream)> {
    loop {
        if let Some(line) = st.pending.pop_front() {
            return Some((Ok(Frame::data(line)), st));
        }
        if st.done {
            return None;
        }
        let tick = async {
            match st.bookmarks.as_mut() {
                Some(i) => i.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(st.deadline) => st.done = true,
            _ = st.closer.changed() => st.done = true,
            r = st.rx.recv() => match r {
                Ok(change) => st.pending.extend(st.filter.line(&change)),
                // Lagged (or server gone): end the watch; the client resumes from its last RV.
                Err(_) => st.done = true,
            },
            _ = tick => {
                // Under the store lock, drain what was already broadcast, so the bookmark's
                // resourceVersion never runs ahead of an undelivered event.
                let store = st.inner.store();
                while let Ok(change) = st.rx.try_recv() {
                    st.pending.extend(st.filter.line(&change));
                }
                let rv = store.rv();
                drop(store);
                let kind = st.filter.kind;
                st.pending.push_back(event_line("BOOKMARK", &json!({
                    "kind": kind.kind(), "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()},
                })));
            }
        }
    }
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::new(413, "RequestEntityTooLarge", format!("reading body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("the body of the request was not valid JSON: {e}"))
    })
}

/// `a=b&c=d` with `%XX` and `+` decoding; empty pairs (kube-rs sends `?&watch=...`) are skipped.
fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed_unsync()
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .unwrap_or_else(|_| Response::new(empty()))
}

fn text_response(status: StatusCode, s: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(s.as_bytes())).boxed_unsync());
    *r.status_mut() = status;
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.status())
}
