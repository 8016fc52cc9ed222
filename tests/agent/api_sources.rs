//! `explain` and `trace` reading a cluster: without `--objects`, `--kubeconfig` points them at
//! an API server (here the in-process test server on loopback, holding `golden/example`'s
//! objects), and they must print what they print for the same objects read from files.

use kube_proxy_rs::objects::load_paths;
use testkit::apiserver::ApiServer;
use testkit::cli::{root, run};

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_and_trace_read_the_api_server_like_the_files() {
    let server = ApiServer::spawn().await;
    let mut warnings = Vec::new();
    let objects = load_paths(&[root().join("golden/example/objects.yaml")], &mut warnings).unwrap();
    assert!(!objects.services.is_empty() && !objects.endpoint_slices.is_empty());
    for s in &objects.services {
        server.apply(&*s.object);
    }
    for s in &objects.endpoint_slices {
        server.apply(&*s.object);
    }
    for n in &objects.nodes {
        server.apply(&*n.object);
    }
    let dir = testkit::TempDir::new("api-sources");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let node = "--hostname-override node-a --cluster-cidr 10.244.0.0/16";
    let files = format!("--objects golden/example/objects.yaml {node}");
    let api = format!("--kubeconfig {} {node}", kubeconfig.display());
    let commands = [
        "explain shop/checkout".to_string(),
        "explain kube-system/kube-dns --proxy-mode ipvs".to_string(),
        "trace --src 203.0.113.7 --dst 192.168.0.10:31443".to_string(),
        "trace --src 10.244.1.9 --dst 10.96.0.10:53 --proto udp --proxy-mode ipvs".to_string(),
    ];
    let results = tokio::task::spawn_blocking(move || {
        commands
            .iter()
            .map(|c| {
                let from_files = run(words(&format!("{c} {files}")));
                let from_api = run(words(&format!("{c} {api}")));
                (c.clone(), from_files, from_api)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (c, files, api) in results {
        assert!(files.success(), "{c} from files: {}", files.stderr);
        assert!(api.success(), "{c} from the API server: {}", api.stderr);
        assert!(!api.stdout.is_empty());
        assert_eq!(
            api.stdout, files.stdout,
            "{c}: the API server's objects explain differently"
        );
    }
}

#[test]
fn without_objects_or_a_reachable_api_server_explain_says_where_it_reads() {
    let dir = testkit::TempDir::new("api-sources-none");
    let r = run(words(&format!(
        "explain shop/checkout --kubeconfig {}/missing --hostname-override node-a",
        dir.path().display()
    )));
    assert!(!r.success() && r.stdout.is_empty());
    assert!(
        r.stderr.contains("--objects PATH") && r.stderr.contains("cannot read kubeconfig"),
        "{}",
        r.stderr
    );
}
