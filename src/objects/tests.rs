use std::path::{Path, PathBuf};

use super::*;

fn parse(text: &str) -> Result<(Objects, Vec<String>), LoadError> {
    let mut objects = Objects::default();
    let mut warnings = Vec::new();
    parse_str(text, "objs.yaml", &mut objects, &mut warnings)?;
    Ok((objects, warnings.iter().map(ToString::to_string).collect()))
}

fn names<
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    list: &[Sourced<std::sync::Arc<T>>],
) -> Vec<String> {
    list.iter()
        .map(|s| {
            let m = s.object.metadata();
            format!(
                "{}/{}@{}",
                m.namespace.as_deref().unwrap_or(""),
                m.name.as_deref().unwrap_or(""),
                s.origin.line
            )
        })
        .collect()
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.12.34
  ports:
  - name: http
    port: 80
";

const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: [10.244.1.5]
";

const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: node-1
status:
  capacity:
    cpu: \"4\"
  addresses:
  - type: InternalIP
    address: 192.168.10.11
";

#[test]
fn multi_document_file_reads_each_kind_with_its_line() {
    let text = format!("# cluster dump\n---\n{SERVICE}---\n{SLICE}\n---\n{NODE}---\n");
    let (o, w) = parse(&text).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(names(&o.services), ["shop/web@3"]);
    assert_eq!(names(&o.endpoint_slices), ["shop/web-abc12@14"]);
    assert_eq!(names(&o.nodes), ["/node-1@29"]);
    assert_eq!(o.services[0].origin.to_string(), "objs.yaml:3");
}

#[test]
fn syntax_error_is_fatal_with_the_file_line() {
    // The bad line is in the second document: line numbers count from the top of the file.
    let text = format!(
        "{SERVICE}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: [web\n  namespace: shop\n"
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.file, "objs.yaml");
    assert!(matches!(e.line, Some(15..=16)), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("objs.yaml:{}: ", e.line.unwrap())),
        "{e}"
    );

    let e = parse("apiVersion: v1\nkind: Service\n metadata: {}\n").unwrap_err();
    assert!(e.to_string().starts_with("objs.yaml:3: "), "{e}");
}

#[test]
fn typed_error_skips_the_object_with_a_warning() {
    let bad = SERVICE
        .replace("port: 80", "port: \"abc\"")
        .replace("name: web\n", "name: bad\n");
    let text = format!("{bad}---\n{SERVICE}");
    let (o, w) = parse(&text).unwrap();
    assert_eq!(names(&o.services), ["shop/web@12"]);
    assert_eq!(
        w,
        ["warning: skipping Service shop/bad: spec.ports[0].port: invalid i32 (objs.yaml:10)"]
    );
}

#[test]
fn unknown_kinds_are_noted_and_skipped() {
    let text = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n{SERVICE}"
    );
    let (o, w) = parse(&text).unwrap();
    assert_eq!(o.services.len(), 1);
    assert_eq!(
        w,
        [
            "note: skipping Deployment shop/web: kube-proxy does not read this kind (objs.yaml:1)",
            "note: skipping Namespace shop: kube-proxy does not read this kind (objs.yaml:7)",
        ]
    );
}

#[test]
fn wrong_api_version_missing_kind_or_name_and_scalars_warn() {
    let text = "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata:\n  name: old\n  namespace: shop\n---\nmetadata:\n  name: what\n---\njust a string\n---\napiVersion: v1\nkind: Service\nmetadata:\n  namespace: shop\nspec: {}\n";
    let (o, w) = parse(text).unwrap();
    assert!(o.services.is_empty() && o.endpoint_slices.is_empty());
    assert_eq!(
        w,
        [
            "warning: skipping EndpointSlice shop/old: apiVersion \"discovery.k8s.io/v1beta1\" is not supported (objs.yaml:1)",
            "warning: skipping object what: it has no kind (objs.yaml:7)",
            "warning: skipping a document that is not a Kubernetes object (objs.yaml:10)",
            "warning: skipping Service shop/<unnamed>: metadata.name is missing (objs.yaml:12)",
        ]
    );
}

#[test]
fn namespace_defaults_to_default() {
    let (o, w) = parse(&SERVICE.replace("  namespace: shop\n", "")).unwrap();
    assert!(w.is_empty());
    assert_eq!(names(&o.services), ["default/web@1"]);
}

#[test]
fn kubectl_list_is_opened() {
    let indent = |s: &str| {
        s.lines()
            .enumerate()
            .map(|(i, l)| {
                if i == 0 {
                    format!("- {l}\n")
                } else {
                    format!("  {l}\n")
                }
            })
            .collect::<String>()
    };
    let text = format!(
        "apiVersion: v1\nitems:\n{}{}{}kind: List\nmetadata:\n  resourceVersion: \"\"\n",
        indent(SERVICE),
        indent(SLICE),
        indent("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  namespace: shop\n")
    );
    let (o, w) = parse(&text).unwrap();
    assert_eq!(names(&o.services), ["shop/web@3"]);
    assert_eq!(names(&o.endpoint_slices), ["shop/web-abc12@13"]);
    assert_eq!(
        w,
        ["note: skipping ConfigMap shop/cfg: kube-proxy does not read this kind (objs.yaml:26)"]
    );
}

#[test]
fn typed_list_items_may_omit_kind_and_a_bad_item_is_skipped() {
    let text = "apiVersion: v1
kind: ServiceList
items:
- metadata: {name: a, namespace: shop}
  spec:
    clusterIP: 10.96.0.1
    ports: [{port: 80}]
- metadata: {name: b, namespace: shop}
  spec:
    clusterIP: 10.96.0.2
    ports: [{port: eighty}]
";
    let (o, w) = parse(text).unwrap();
    assert_eq!(names(&o.services), ["shop/a@4"]);
    assert_eq!(w.len(), 1);
    assert!(
        w[0].starts_with(
            "warning: skipping Service shop/b: spec.ports[0].port: invalid type: string \"eighty\""
        ),
        "{w:?}"
    );
    assert!(w[0].ends_with("(objs.yaml:8)"), "{w:?}");
}

#[test]
fn kubectl_json_list_is_read() {
    let text = r#"{
    "apiVersion": "v1",
    "items": [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.12.34", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        },
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-1"},
            "status": {"capacity": {"cpu": "4", "memory": "8Gi"}}
        }
    ],
    "kind": "List",
    "metadata": {"resourceVersion": ""}
}
"#;
    let (o, w) = parse(text).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(names(&o.services), ["shop/web@4"]);
    assert_eq!(names(&o.nodes), ["/node-1@10"]);
}

#[test]
fn empty_and_comment_only_input_is_fine() {
    let (o, w) = parse("").unwrap();
    assert_eq!((o, w.len()), (Objects::default(), 0));
    let (o, _) = parse("# nothing\n---\n---\n# still nothing\n").unwrap();
    assert_eq!(o, Objects::default());
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "kube-proxy-rs-objects-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(paths: &[&Path]) -> Result<(Objects, Vec<String>), LoadError> {
    let mut warnings = Vec::new();
    let o = load_paths(paths, &mut warnings)?;
    Ok((o, warnings.iter().map(ToString::to_string).collect()))
}

#[test]
fn directory_files_are_read_in_name_order_and_others_ignored() {
    let dir = Scratch::new("dir");
    dir.write("b-node.yml", NODE.as_bytes());
    dir.write("a-service.yaml", SERVICE.as_bytes());
    dir.write("c-slice.json", br#"{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s", "namespace": "shop"}, "addressType": "IPv4", "endpoints": []}"#);
    dir.write("README.md", b"not: [yaml");
    dir.write(".hidden.yaml", b"not: [yaml");
    std::fs::create_dir(dir.0.join("sub.yaml")).unwrap();
    let (o, w) = load(&[&dir.0]).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(o.services.len(), 1);
    assert_eq!(o.nodes.len(), 1);
    assert_eq!(o.endpoint_slices.len(), 1);
    assert!(o.services[0].origin.file.ends_with("a-service.yaml"));
}

#[test]
fn missing_broken_and_non_utf8_files_are_errors_naming_the_file() {
    let dir = Scratch::new("err");
    let missing = dir.0.join("missing.yaml");
    let e = load(&[&missing]).unwrap_err();
    assert_eq!(e.line, None);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: ", missing.display())),
        "{e}"
    );

    let broken = dir.write(
        "broken.yaml",
        b"apiVersion: v1\nkind: Service\nmetadata: {name: web\n",
    );
    let e = load(&[&broken]).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("{}:", broken.display())),
        "{e}"
    );
    assert!(e.line.is_some(), "{e}");

    let latin1 = dir.write(
        "latin1.yaml",
        b"apiVersion: v1\nkind: Service\nmetadata:\n  name: caf\xe9\n",
    );
    let e = load(&[&latin1]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}:4: not valid UTF-8", latin1.display())
    );
}

#[test]
fn empty_directory_warns() {
    let dir = Scratch::new("empty");
    let (o, w) = load(&[&dir.0]).unwrap();
    assert_eq!(o, Objects::default());
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("directory has no *.yaml"), "{w:?}");
}
