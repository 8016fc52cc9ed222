//! The manifests in `deploy/`: every document parses into its Kubernetes API type with nothing
//! left over (a misspelled field fails), the RBAC rules grant exactly the API calls the agent
//! makes (checked against its source and against the requests it really sends), the ConfigMap's
//! configuration loads without a warning and means upstream's defaults, and the DaemonSets have
//! kubeadm's shape, upstream's ports, and flags the binary accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Probe, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use testkit::apiserver::ApiServer;

const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy-rs");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every API call the agent makes, as RBAC names it: (API group, resource, verb). The ClusterRole
/// in `deploy/rbac.yaml` must grant exactly these; the agent's source and its requests to a test
/// API server must need exactly these.
const AGENT_API_ACCESS: &[(&str, &str, &str)] = &[
    ("", "services", "list"),
    ("", "services", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
];

/// The API types the agent's source names in `Api::<K>` / `Api<K>`, and the resource each is.
const AGENT_KINDS: &[(&str, &str, &str)] = &[
    ("Service", "", "services"),
    ("EndpointSlice", "discovery.k8s.io", "endpointslices"),
    ("Node", "", "nodes"),
];

/// The files `deploy/` holds, and the kinds of their documents, in order.
const MANIFESTS: &[(&str, &[&str])] = &[
    ("configmap.yaml", &["ConfigMap"]),
    ("daemonset-unprivileged.yaml", &["DaemonSet"]),
    ("daemonset.yaml", &["DaemonSet"]),
    (
        "rbac.yaml",
        &["ServiceAccount", "ClusterRole", "ClusterRoleBinding"],
    ),
];

/// Upstream's default `--healthz-bind-address` port (/healthz, /livez).
const HEALTHZ_PORT: i32 = 10256;
/// Upstream's default `--metrics-bind-address`: node-local, so no container port.
const METRICS_PORT: i32 = 10249;

fn deploy_dir() -> PathBuf {
    Path::new(ROOT).join("deploy")
}

// ---------------------------------------------------------------------------------------------
// Reading the manifests
// ---------------------------------------------------------------------------------------------

/// One YAML document of a manifest file.
struct Doc {
    file: String,
    index: usize,
    value: Value,
}

impl Doc {
    fn name(&self) -> String {
        format!("deploy/{} (document {})", self.file, self.index + 1)
    }

    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    /// The document as `T`. Serialising it back must give the document again: a field the type
    /// does not have (misspelled, misplaced) would otherwise be dropped without a word.
    fn typed<T: DeserializeOwned + Serialize>(&self) -> T {
        self.try_typed().unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_typed<T: DeserializeOwned + Serialize>(&self) -> Result<T, String> {
        let t: T = serde_json::from_value(self.value.clone())
            .map_err(|e| format!("{}: not a valid {}: {e}", self.name(), self.kind()))?;
        let back = serde_json::to_value(&t).unwrap();
        match first_difference(&self.value, &back, "") {
            None => Ok(t),
            Some(diff) => Err(format!(
                "{}: {diff} does not survive parsing as a {} (unknown or misspelled field?)",
                self.name(),
                self.kind()
            )),
        }
    }
}

/// Splits a file into its documents (on `---` lines), skipping empty ones.
fn documents(file: &str, text: &str) -> Vec<Doc> {
    let mut chunks = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            chunks.push(String::new());
        } else {
            let last = chunks.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    chunks
        .iter()
        .map(|chunk| {
            serde_saphyr::from_str::<Value>(chunk)
                .unwrap_or_else(|e| panic!("deploy/{file}: invalid YAML: {e}"))
        })
        .filter(|v| !v.is_null())
        .enumerate()
        .map(|(index, value)| Doc {
            file: file.to_string(),
            index,
            value,
        })
        .collect()
}

/// Every document of every `*.yaml` file in `deploy/`, files in name order.
fn all_documents() -> Vec<Doc> {
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml") || n.ends_with(".json"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| documents(f, &read(&deploy_dir().join(f))))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where `got` (the typed round trip) differs from `want` (the document), as a path.
fn first_difference(want: &Value, got: &Value, path: &str) -> Option<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    None => return Some(p),
                    Some(gv) => {
                        if let Some(d) = first_difference(wv, gv, &p) {
                            return Some(d);
                        }
                    }
                }
            }
            g.keys()
                .find(|k| !w.contains_key(*k))
                .map(|k| format!("{path}.{k} (added)"))
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .find_map(|(i, (wv, gv))| first_difference(wv, gv, &format!("{path}[{i}]"))),
        _ if want == got => None,
        _ => Some(format!("{path} ({want} became {got})")),
    }
}

/// The manifests, typed.
struct Manifests {
    daemonset: DaemonSet,
    unprivileged: DaemonSet,
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    binding: ClusterRoleBinding,
    config_map: ConfigMap,
}

fn manifests() -> Manifests {
    let docs = all_documents();
    let layout: Vec<(String, Vec<String>)> = MANIFESTS
        .iter()
        .map(|(f, kinds)| (f.to_string(), kinds.iter().map(|k| k.to_string()).collect()))
        .collect();
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    for d in &docs {
        match found.last_mut() {
            Some((f, kinds)) if *f == d.file => kinds.push(d.kind().to_string()),
            _ => found.push((d.file.clone(), vec![d.kind().to_string()])),
        }
    }
    assert_eq!(
        found, layout,
        "deploy/ holds other files or kinds than expected"
    );
    let one = |file: &str, kind: &str| -> &Doc {
        docs.iter()
            .find(|d| d.file == file && d.kind() == kind)
            .unwrap()
    };
    Manifests {
        daemonset: one("daemonset.yaml", "DaemonSet").typed(),
        unprivileged: one("daemonset-unprivileged.yaml", "DaemonSet").typed(),
        service_account: one("rbac.yaml", "ServiceAccount").typed(),
        cluster_role: one("rbac.yaml", "ClusterRole").typed(),
        binding: one("rbac.yaml", "ClusterRoleBinding").typed(),
        config_map: one("configmap.yaml", "ConfigMap").typed(),
    }
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template")
}

fn main_container(ds: &DaemonSet) -> &Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "one container");
    &spec.containers[0]
}

fn both(m: &Manifests) -> [(&str, &DaemonSet); 2] {
    [
        ("daemonset.yaml", &m.daemonset),
        ("daemonset-unprivileged.yaml", &m.unprivileged),
    ]
}

/// A container's command and args, `$(VAR)` references expanded from its `env` values (or
/// `NODE` for a field reference), as the kubelet would.
fn argv(c: &Container) -> Vec<String> {
    let env = c.env.as_deref().unwrap_or_default();
    c.command
        .iter()
        .chain(c.args.iter())
        .flatten()
        .map(|arg| {
            let mut out = arg.clone();
            while let Some(start) = out.find("$(") {
                let end = start + out[start..].find(')').expect("closed $(");
                let var = &out[start + 2..end];
                let e = env
                    .iter()
                    .find(|e| e.name == var)
                    .unwrap_or_else(|| panic!("{}: $({var}) is not in its env", c.name));
                let value = e.value.clone().unwrap_or_else(|| "NODE".into());
                out.replace_range(start..=end, &value);
            }
            out
        })
        .collect()
}

/// `--flag=value` or `--flag` (value "") from an argument list.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().find_map(|a| {
        let rest = a.strip_prefix(name)?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix('=')
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The manifests parse
// ---------------------------------------------------------------------------------------------

#[test]
fn every_manifest_parses_into_its_api_type() {
    // manifests() checks the layout and parses each document strictly.
    let m = manifests();
    for (file, ds) in both(&m) {
        assert_eq!(
            ds.metadata.namespace.as_deref(),
            Some("kube-system"),
            "{file}"
        );
        assert_eq!(ds.metadata.name.as_deref(), Some("kube-proxy"), "{file}");
    }
    assert_eq!(m.config_map.metadata.name.as_deref(), Some("kube-proxy"));
    assert_eq!(
        m.config_map.metadata.namespace.as_deref(),
        Some("kube-system")
    );
}

#[test]
fn a_misspelled_field_is_caught() {
    let docs = documents(
        "t.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  namespcae: b\n",
    );
    let e = docs[0].try_typed::<ServiceAccount>().unwrap_err();
    assert!(e.contains(".metadata.namespcae"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// RBAC
// ---------------------------------------------------------------------------------------------

type Access = (String, String, String);

fn agent_access() -> BTreeSet<Access> {
    AGENT_API_ACCESS
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

/// What the ClusterRole grants, one (group, resource, verb) per combination. Wildcards, names
/// and non-resource URLs are refused: the point is to grant exactly what is used.
fn granted(role: &ClusterRole) -> BTreeSet<Access> {
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none(), "resourceNames in {rule:?}");
        assert!(
            rule.non_resource_urls.is_none(),
            "nonResourceURLs in {rule:?}"
        );
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    for s in [g, r, v] {
                        assert!(!s.contains('*'), "a wildcard in {rule:?}");
                    }
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_what_the_agent_uses() {
    let m = manifests();
    assert_eq!(granted(&m.cluster_role), agent_access());

    let role = m.cluster_role.metadata.name.as_deref().unwrap();
    let r = &m.binding.role_ref;
    assert_eq!(
        (r.api_group.as_str(), r.kind.as_str(), r.name.as_str()),
        ("rbac.authorization.k8s.io", "ClusterRole", role)
    );
    let sa = &m.service_account.metadata;
    let subjects = m.binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.namespace);
    for (file, ds) in both(&m) {
        assert_eq!(ds.metadata.namespace, sa.namespace, "{file}");
        assert_eq!(
            pod_spec(ds).service_account_name,
            sa.name,
            "{file} runs as the ServiceAccount the role is bound to"
        );
        assert_ne!(pod_spec(ds).automount_service_account_token, Some(false));
    }
}

/// The type names in `Api::<X>` and `Api<X>` in `text`, with their line numbers. One-letter
/// names are generic parameters (`Api<K>`), not kinds.
fn api_kinds(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for pat in ["Api::<", "Api<"] {
            let mut rest = line;
            while let Some(i) = rest.find(pat) {
                let before = &rest[..i];
                rest = &rest[i + pat.len()..];
                if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                    continue; // e.g. `DynamicApi<`
                }
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let name = name.rsplit("::").next().unwrap_or_default().to_string();
                if name.len() > 1 {
                    out.push((n + 1, name));
                }
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_kind_the_agent_names_has_rbac() {
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    files.sort();
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    let mut events = Vec::new();
    for f in &files {
        let text = read(f);
        let rel = f.strip_prefix(ROOT).unwrap().display().to_string();
        for (line, kind) in api_kinds(&text) {
            if AGENT_KINDS.iter().any(|(k, _, _)| *k == kind) {
                used.insert(kind);
            } else {
                unknown.push(format!("{rel}:{line}: Api<{kind}>"));
            }
        }
        for (n, line) in text.lines().enumerate() {
            if line.contains("events::Recorder") || line.contains("Recorder::new") {
                events.push(format!("{rel}:{}", n + 1));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the agent uses kinds deploy/rbac.yaml does not grant; add them to AGENT_KINDS and \
         AGENT_API_ACCESS here and to the ClusterRole:\n{}",
        unknown.join("\n")
    );
    assert!(
        events.is_empty(),
        "the agent records Events now: grant create/patch on events (\"\" and events.k8s.io) \
         in deploy/rbac.yaml and AGENT_API_ACCESS:\n{}",
        events.join("\n")
    );
    let listed: BTreeSet<String> = AGENT_KINDS.iter().map(|(k, _, _)| k.to_string()).collect();
    assert_eq!(
        used, listed,
        "a kind in AGENT_KINDS is no longer used: drop it here and from deploy/rbac.yaml"
    );
    // The kinds and the access list name the same resources.
    let kinds: BTreeSet<(&str, &str)> = AGENT_KINDS.iter().map(|(_, g, r)| (*g, *r)).collect();
    let access: BTreeSet<(&str, &str)> =
        AGENT_API_ACCESS.iter().map(|(g, r, _)| (*g, *r)).collect();
    assert_eq!(kinds, access);
}

#[test]
fn api_kinds_finds_turbofish_and_annotations() {
    let src = "let a = Api::<Pod>::all(c);\nlet b: Api<k8s::Secret> = x;\nfn f<K>(api: Api<K>) {}\nDynamicApi<Foo>";
    assert_eq!(
        api_kinds(src),
        [(1, "Pod".to_string()), (2, "Secret".to_string())]
    );
}

/// A request line of the test API server (`GET /api/v1/nodes?watch=true&…`), as RBAC sees it.
fn request_access(line: &str) -> Access {
    let (method, uri) = line.split_once(' ').expect("METHOD URI");
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return ("(non-resource)".into(), path.into(), method.to_lowercase()),
    };
    let (resource, name) = match rest {
        [r] | ["namespaces", _, r] => (*r, None),
        [r, n] | ["namespaces", _, r, n] => (*r, Some(*n)),
        _ => panic!("unexpected request {line}"),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name, watch) {
        ("GET", _, true) => "watch",
        ("GET", None, false) => "list",
        ("GET", Some(_), false) => "get",
        ("POST", _, _) => "create",
        ("PUT", _, _) => "update",
        ("PATCH", _, _) => "patch",
        ("DELETE", Some(_), _) => "delete",
        ("DELETE", None, _) => "deletecollection",
        _ => panic!("unexpected request {line}"),
    };
    (group.into(), resource.into(), verb.into())
}

/// The agent's watches, run against the test API server: every request they send must be
/// granted, and every grant must be used.
#[tokio::test(flavor = "multi_thread")]
async fn the_agents_requests_are_exactly_what_rbac_grants() {
    let server = ApiServer::spawn().await;
    server.apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}));
    server.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]}}));
    server.apply(
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}]}),
    );

    let changed = Arc::new(tokio::sync::Notify::new());
    let stores = kube_proxy_rs::sources::api::start(server.client(), "node-a", changed);
    let ready = tokio::time::timeout(Duration::from_secs(30), stores.wait_until_ready()).await;

    // The watches follow the lists at once; wait until each granted access has been seen.
    let rbac = granted(&manifests().cluster_role);
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen: BTreeSet<Access> = server
            .requests()
            .iter()
            .map(|r| request_access(r))
            .filter(|a| a.0 != "(non-resource)")
            .collect();
        if rbac.is_subset(&seen) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let not_granted: Vec<_> = seen.difference(&rbac).collect();
    assert!(
        not_granted.is_empty(),
        "the agent sends requests deploy/rbac.yaml does not grant: {not_granted:?}\nrequests: {:#?}",
        server.requests()
    );
    assert!(
        matches!(ready, Ok(Ok(()))),
        "the agent's stores never became ready: {ready:?}"
    );
    let unused: Vec<_> = rbac.difference(&seen).collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
    assert_eq!(seen, agent_access());
}

// ---------------------------------------------------------------------------------------------
// The ConfigMap
// ---------------------------------------------------------------------------------------------

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("kube-proxy-rs-deploy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn config_key(m: &Manifests, key: &str) -> String {
    m.config_map
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("the ConfigMap has no {key}"))
        .clone()
}

/// The ConfigMap's `config.conf` loads with the binary's `--config` without a single warning,
/// and renders exactly what upstream's defaults plus its clusterCIDR would.
#[test]
fn the_configmap_config_loads_cleanly_and_means_the_defaults() {
    let m = manifests();
    let text = config_key(&m, "config.conf");
    let scratch = Scratch::new("config");
    let conf = scratch.0.join("config.conf");
    std::fs::write(&conf, &text).unwrap();
    let objects = Path::new(ROOT).join("golden/example");
    let common = [
        "--dry-run",
        "--objects",
        objects.to_str().unwrap(),
        "--hostname-override",
        "node-a",
    ];

    let with_config = run(&[&common[..], &["--config", conf.to_str().unwrap()]].concat());
    let stderr = String::from_utf8_lossy(&with_config.stderr);
    assert!(with_config.status.success(), "{stderr}");
    assert_eq!(stderr, "", "the ConfigMap's config draws warnings");

    let with_flags = run(&[&common[..], &["--cluster-cidr", "10.244.0.0/16"]].concat());
    assert!(
        with_flags.status.success(),
        "{}",
        String::from_utf8_lossy(&with_flags.stderr)
    );
    assert!(!with_config.stdout.is_empty());
    assert!(
        with_config.stdout == with_flags.stdout,
        "config.conf does not render as --cluster-cidr 10.244.0.0/16 alone does"
    );

    // The documented defaults: health on 0.0.0.0:10256, metrics on 127.0.0.1:10249.
    let cfg: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(cfg["apiVersion"], "kubeproxy.config.k8s.io/v1alpha1");
    assert_eq!(cfg["kind"], "KubeProxyConfiguration");
    assert_eq!(
        cfg["healthzBindAddress"], "",
        "the default port, {HEALTHZ_PORT}"
    );
    assert_eq!(
        cfg["metricsBindAddress"], "",
        "the default, 127.0.0.1:{METRICS_PORT}"
    );
    assert_eq!(cfg["mode"], "", "the default mode (iptables)");
    assert_eq!(cfg["clusterCIDR"], "10.244.0.0/16");

    // clientConnection.kubeconfig names the ConfigMap's other key, where the pods mount it.
    let kubeconfig_path = cfg["clientConnection"]["kubeconfig"].as_str().unwrap();
    for (file, ds) in both(&m) {
        let mount = config_mount(ds, main_container(ds));
        assert_eq!(
            kubeconfig_path,
            format!("{mount}/kubeconfig.conf"),
            "{file}: clientConnection.kubeconfig is not where the ConfigMap is mounted"
        );
    }
}

/// `kubeconfig.conf` reaches the API server with the pod's service-account credentials.
#[test]
fn the_configmap_kubeconfig_uses_the_service_account() {
    let m = manifests();
    let kc = kube::config::Kubeconfig::from_yaml(&config_key(&m, "kubeconfig.conf"))
        .expect("kubeconfig.conf parses");
    let ctx = kc.current_context.as_deref().expect("a current context");
    let context = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx)
        .and_then(|c| c.context.as_ref())
        .expect("the current context exists");
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .expect("its cluster exists");
    assert_eq!(
        cluster.certificate_authority.as_deref(),
        Some("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    );
    assert!(
        cluster
            .server
            .as_deref()
            .is_some_and(|s| s.starts_with("https://")),
        "{:?}",
        cluster.server
    );
    let user = context.user.as_deref().expect("a user");
    let auth = kc
        .auth_infos
        .iter()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.as_ref())
        .expect("its user exists");
    assert_eq!(
        auth.token_file.as_deref(),
        Some("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
}

// ---------------------------------------------------------------------------------------------
// The DaemonSets
// ---------------------------------------------------------------------------------------------

/// Where `c` mounts the volume that holds the ConfigMap.
fn config_mount(ds: &DaemonSet, c: &Container) -> String {
    let spec = pod_spec(ds);
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.config_map
                .as_ref()
                .is_some_and(|cm| cm.name == "kube-proxy")
        })
        .expect("a volume of the kube-proxy ConfigMap");
    c.volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .unwrap_or_else(|| panic!("{} does not mount {}", c.name, volume.name))
        .mount_path
        .clone()
}

/// The host path volume mounted at `path` in `c`: (hostPath type, read-only).
fn host_mount(ds: &DaemonSet, c: &Container, path: &str) -> (Option<String>, bool) {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == path)
        .unwrap_or_else(|| panic!("{} does not mount {path}", c.name));
    let v = pod_spec(ds)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == m.name)
        .unwrap_or_else(|| panic!("no volume {}", m.name));
    let hp = v
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("{} is not a hostPath", v.name));
    assert_eq!(hp.path, path, "{} mounts the host's own path", v.name);
    (hp.type_.clone(), m.read_only == Some(true))
}

#[test]
fn the_daemonsets_have_kubeadms_shape() {
    let m = manifests();
    for (file, ds) in both(&m) {
        let spec = ds.spec.as_ref().unwrap();
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|md| md.labels.clone());
        assert_eq!(
            spec.selector.match_labels, labels,
            "{file}: the selector matches the pods"
        );
        assert_eq!(
            spec.selector.match_labels,
            Some(BTreeMap::from([("k8s-app".into(), "kube-proxy".into())])),
            "{file}: kubeadm's selector, so it replaces kubeadm's DaemonSet in place"
        );
        let pod = pod_spec(ds);
        assert_eq!(pod.host_network, Some(true), "{file}");
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical"),
            "{file}"
        );
        let tolerations = pod.tolerations.as_deref().unwrap_or_default();
        assert!(
            tolerations
                .iter()
                .any(|t| t.operator.as_deref() == Some("Exists")
                    && t.key.is_none()
                    && t.effect.is_none()),
            "{file}: tolerates every taint"
        );
        assert_eq!(
            pod.node_selector,
            Some(BTreeMap::from([(
                "kubernetes.io/os".into(),
                "linux".into()
            )])),
            "{file}"
        );

        let c = main_container(ds);
        assert_eq!(
            host_mount(ds, c, "/run/xtables.lock"),
            (Some("FileOrCreate".into()), false),
            "{file}: the host's xtables lock, writable"
        );
        assert_eq!(
            host_mount(ds, c, "/lib/modules"),
            (None, true),
            "{file}: the host's modules, read-only"
        );
        let env = c.env.as_deref().unwrap_or_default();
        let node_name = env
            .iter()
            .find(|e| e.name == "NODE_NAME")
            .expect("NODE_NAME");
        assert_eq!(
            node_name
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("spec.nodeName"),
            "{file}"
        );
        let mount = config_mount(ds, c);
        assert_eq!(
            c.command.as_deref().unwrap_or_default(),
            [
                "kube-proxy-rs".to_string(),
                format!("--config={mount}/config.conf"),
                "--hostname-override=$(NODE_NAME)".to_string(),
            ],
            "{file}: kubeadm's command, with our binary"
        );
        assert!(c.args.is_none(), "{file}");
        let args = argv(c);
        assert_eq!(flag(&args, "--hostname-override"), Some("NODE"));
        let config = flag(&args, "--config").expect("--config");
        let key = config
            .strip_prefix(&format!("{mount}/"))
            .expect("--config is in the ConfigMap's mount");
        config_key(&m, key);
    }
    assert_eq!(
        main_container(&m.daemonset)
            .security_context
            .as_ref()
            .and_then(|s| s.privileged),
        Some(true),
        "daemonset.yaml is privileged, as kubeadm's"
    );
}

#[test]
fn the_unprivileged_variant_differs_only_in_privileges() {
    let m = manifests();
    let plain = pod_spec(&m.daemonset);
    let unpriv = pod_spec(&m.unprivileged);

    // The long-running container: capabilities, not privileged.
    let c = main_container(&m.unprivileged);
    let sc = c.security_context.as_ref().expect("a securityContext");
    assert_ne!(sc.privileged, Some(true));
    let caps: BTreeSet<&str> = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(caps, BTreeSet::from(["NET_ADMIN", "NET_RAW"]));

    // The init container: privileged, the same binary and config, --init-only.
    let inits = unpriv.init_containers.as_deref().unwrap_or_default();
    assert_eq!(inits.len(), 1);
    let init = &inits[0];
    assert_eq!(init.image, c.image);
    assert_eq!(
        init.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let (init_args, main_args) = (argv(init), argv(c));
    assert_eq!(init_args[0], main_args[0]);
    assert_eq!(flag(&init_args, "--init-only"), Some(""));
    assert_eq!(flag(&init_args, "--config"), flag(&main_args, "--config"));
    assert_eq!(
        config_mount(&m.unprivileged, init),
        config_mount(&m.unprivileged, c)
    );

    // Everything else is daemonset.yaml.
    let strip = |spec: &PodSpec| {
        let mut v = serde_json::to_value(spec).unwrap();
        v.as_object_mut().unwrap().remove("initContainers");
        v["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("securityContext");
        v
    };
    assert_eq!(strip(plain), strip(unpriv));
    let meta = |ds: &DaemonSet| {
        let mut v = serde_json::to_value(ds).unwrap();
        v.as_object_mut().unwrap().remove("spec");
        v
    };
    assert_eq!(meta(&m.daemonset), meta(&m.unprivileged));
}

/// The probe suggested (commented out) in a DaemonSet file, uncommented and parsed.
fn suggested_probe(text: &str) -> Probe {
    let mut lines = text.lines().skip_while(|l| l.trim() != "# livenessProbe:");
    let first = lines.next().expect("a suggested livenessProbe");
    let indent = first.find('#').unwrap();
    let mut yaml = String::new();
    for l in std::iter::once(first).chain(lines.take_while(|l| l.trim_start().starts_with("#   ")))
    {
        yaml.push_str(&l[indent + 2..]);
        yaml.push('\n');
    }
    let doc = documents("probe", &yaml).remove(0);
    let probe = Doc {
        value: doc.value["livenessProbe"].clone(),
        ..doc
    };
    probe.typed()
}

#[test]
fn probes_and_ports_are_upstreams_defaults() {
    let m = manifests();
    let check_probe = |what: &str, p: &Probe| {
        let get = p.http_get.as_ref().expect("an HTTP probe");
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(HEALTHZ_PORT),
            "{what}"
        );
        assert!(
            matches!(get.path.as_deref(), Some("/livez" | "/healthz")),
            "{what}: {:?}",
            get.path
        );
    };
    for (file, ds) in both(&m) {
        let c = main_container(ds);
        for p in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
        {
            check_probe(file, p);
        }
        for port in c.ports.iter().flatten() {
            assert_eq!(
                port.container_port, HEALTHZ_PORT,
                "{file}: only healthz is reachable off the node by default ({METRICS_PORT} is on 127.0.0.1)"
            );
        }
        let text = read(&deploy_dir().join(file));
        let probe = suggested_probe(&text);
        check_probe(&format!("{file} (suggested)"), &probe);
        assert_eq!(
            probe.http_get.as_ref().unwrap().path.as_deref(),
            Some("/livez"),
            "liveness is /livez: upstream's /healthz also fails while the node is being deleted"
        );
    }
}

/// Every flag a manifest passes, the binary knows: each container's arguments followed by
/// `--help` print the help (an unknown flag would be an error first). Nothing is run.
#[test]
fn the_binary_accepts_every_flag_the_manifests_pass() {
    let m = manifests();
    for (file, ds) in both(&m) {
        let spec = pod_spec(ds);
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            let args = argv(c);
            assert_eq!(args[0], "kube-proxy-rs", "{file}: {}", c.name);
            let mut with_help: Vec<&str> = args[1..].iter().map(String::as_str).collect();
            with_help.push("--help");
            let out = run(&with_help);
            assert!(
                out.status.success(),
                "{file}: {}: kube-proxy-rs {} fails:\n{}",
                c.name,
                args[1..].join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
