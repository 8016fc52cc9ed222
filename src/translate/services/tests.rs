use std::net::IpAddr;

use rulegen::{Protocol, ServicePort, ServicePortName, SessionAffinity, TrafficPolicy};

use crate::translate::testutil::{lines, run};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A Service document; `spec` is indented under `spec:` by the caller's two spaces.
fn svc(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n{spec}"
    )
}

fn only_port(yaml: &str) -> ServicePort {
    let t = run(yaml);
    assert!(t.warnings.is_empty(), "{:?}", lines(&t));
    assert_eq!(t.model.services.len(), 1, "{:?}", t.model.services);
    t.model.services.into_iter().next().unwrap()
}

/// The model is empty and the one diagnostic line is exactly `want`.
fn skipped(yaml: &str, want: &str) {
    let t = run(yaml);
    assert!(t.model.services.is_empty(), "{:?}", t.model.services);
    assert_eq!(lines(&t), [want]);
}

const WEB: &str =
    "  clusterIP: 10.96.12.34\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n";

#[test]
fn cluster_ip_service_has_defaults() {
    let sp = only_port(&svc("web", WEB));
    assert_eq!(sp.name, ServicePortName::new("shop", "web", "http"));
    assert_eq!(sp.protocol, Protocol::Tcp);
    assert_eq!(sp.cluster_ips, [ip("10.96.12.34")]);
    assert_eq!(sp.port, 80);
    assert_eq!(sp.node_port, None);
    assert!(
        sp.external_ips.is_empty()
            && sp.load_balancer_ips.is_empty()
            && sp.load_balancer_source_ranges.is_empty()
    );
    assert_eq!(sp.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(sp.internal_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(sp.session_affinity, SessionAffinity::None);
    assert_eq!(sp.health_check_node_port, None);
    assert!(sp.endpoints.is_empty());
}

#[test]
fn external_name_is_skipped_with_a_note() {
    skipped(
        &svc(
            "ext",
            "  type: ExternalName\n  externalName: db.example.com\n",
        ),
        "note: skipping Service shop/ext: type ExternalName has no proxy rules (test.yaml:2)",
    );
}

#[test]
fn headless_services_are_skipped_with_a_note() {
    skipped(
        &svc(
            "db",
            "  clusterIP: None\n  clusterIPs: [None]\n  ports:\n  - port: 5432\n",
        ),
        "note: skipping Service shop/db: it is headless (clusterIP None) (test.yaml:2)",
    );
    skipped(
        &svc("db", "  clusterIP: \"\"\n  ports:\n  - port: 5432\n"),
        "note: skipping Service shop/db: it has no clusterIP (headless) (test.yaml:2)",
    );
    skipped(
        &svc("db", "  ports:\n  - port: 5432\n"),
        "note: skipping Service shop/db: it has no clusterIP (headless) (test.yaml:2)",
    );
}

#[test]
fn other_proxies_and_headless_label_are_skipped_with_a_note() {
    let labelled = |label: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  labels:\n    {label}\nspec:\n{WEB}"
        )
    };
    skipped(
        &labelled("service.kubernetes.io/service-proxy-name: cilium"),
        "note: skipping Service shop/web: it is labelled service.kubernetes.io/service-proxy-name=\"cilium\" (served by another proxy) (test.yaml:1)",
    );
    skipped(
        &labelled("service.kubernetes.io/headless: \"\""),
        "note: skipping Service shop/web: it is labelled service.kubernetes.io/headless (test.yaml:1)",
    );
}

#[test]
fn invalid_cluster_ip_skips_only_that_service() {
    let yaml = svc("bad", "  clusterIP: 1.2.3\n  ports:\n  - port: 80\n") + &svc("web", WEB);
    let t = run(&yaml);
    assert_eq!(
        lines(&t),
        [
            "warning: skipping Service shop/bad: invalid clusterIP \"1.2.3\": not an IP address (test.yaml:2)"
        ]
    );
    assert_eq!(t.model.services.len(), 1);
    assert_eq!(t.model.services[0].name.name, "web");
}

#[test]
fn cluster_ip_is_parsed_sloppily_and_canonicalised() {
    let sp = only_port(&svc(
        "web",
        "  clusterIP: 172.30.0.041\n  ports:\n  - port: 80\n",
    ));
    assert_eq!(sp.cluster_ips, [ip("172.30.0.41")]);
    assert_eq!(sp.name.port, "");
}

#[test]
fn dual_stack_keeps_both_cluster_ips() {
    let sp = only_port(&svc(
        "web",
        "  clusterIP: 10.96.12.34\n  clusterIPs: [10.96.12.34, \"fd00:10:96::1234\"]\n  ipFamilies: [IPv4, IPv6]\n  ports:\n  - port: 80\n",
    ));
    assert_eq!(sp.cluster_ips, [ip("10.96.12.34"), ip("fd00:10:96::1234")]);
}

#[test]
fn bad_port_numbers_skip_the_service() {
    for (port, want) in [
        ("0", "ports[0]: port 0 is out of range (1-65535)"),
        ("65536", "ports[0]: port 65536 is out of range (1-65535)"),
        ("-80", "ports[0]: port -80 is out of range (1-65535)"),
    ] {
        skipped(
            &svc(
                "web",
                &format!("  clusterIP: 10.96.12.34\n  ports:\n  - port: {port}\n"),
            ),
            &format!("warning: skipping Service shop/web: {want} (test.yaml:2)"),
        );
    }
    // A missing port number decodes as 0 and is caught the same way.
    skipped(
        &svc(
            "web",
            "  clusterIP: 10.96.12.34\n  ports:\n  - name: http\n    targetPort: 80\n",
        ),
        "warning: skipping Service shop/web: port \"http\": port 0 is out of range (1-65535) (test.yaml:2)",
    );
}

#[test]
fn node_ports_out_of_range_skip_and_zero_means_none() {
    skipped(
        &svc(
            "web",
            "  type: NodePort\n  clusterIP: 10.96.12.34\n  ports:\n  - name: http\n    port: 80\n    nodePort: 70000\n",
        ),
        "warning: skipping Service shop/web: port \"http\": nodePort 70000 is out of range (1-65535) (test.yaml:2)",
    );
    let sp = only_port(&svc(
        "web",
        "  type: NodePort\n  clusterIP: 10.96.12.34\n  ports:\n  - port: 80\n    nodePort: 0\n",
    ));
    assert_eq!(sp.node_port, None);
    let sp = only_port(&svc(
        "web",
        "  type: NodePort\n  clusterIP: 10.96.12.34\n  ports:\n  - port: 80\n    nodePort: 30080\n",
    ));
    assert_eq!(sp.node_port, Some(30080));
}

#[test]
fn protocols() {
    let yaml = svc(
        "dns",
        "  clusterIP: 10.96.0.10\n  ports:\n  - name: dns\n    port: 53\n    protocol: UDP\n  - name: dns-tcp\n    port: 53\n    protocol: TCP\n  - name: sig\n    port: 2905\n    protocol: SCTP\n",
    );
    let t = run(&yaml);
    assert!(t.warnings.is_empty());
    let got: Vec<(String, Protocol)> = t
        .model
        .services
        .iter()
        .map(|p| (p.name.port.clone(), p.protocol))
        .collect();
    assert_eq!(
        got,
        [
            ("dns".into(), Protocol::Udp),
            ("dns-tcp".into(), Protocol::Tcp),
            ("sig".into(), Protocol::Sctp)
        ]
    );
    skipped(
        &svc(
            "web",
            "  clusterIP: 10.96.12.34\n  ports:\n  - name: http\n    port: 80\n    protocol: HTTP\n",
        ),
        "warning: skipping Service shop/web: port \"http\": unknown protocol \"HTTP\" (use TCP, UDP or SCTP) (test.yaml:2)",
    );
    // The API is case-sensitive.
    skipped(
        &svc(
            "web",
            "  clusterIP: 10.96.12.34\n  ports:\n  - port: 80\n    protocol: tcp\n",
        ),
        "warning: skipping Service shop/web: ports[0]: unknown protocol \"tcp\" (use TCP, UDP or SCTP) (test.yaml:2)",
    );
}

#[test]
fn duplicate_port_name_and_protocol_skips() {
    skipped(
        &svc(
            "web",
            "  clusterIP: 10.96.12.34\n  ports:\n  - name: http\n    port: 80\n  - name: http\n    port: 8080\n",
        ),
        "warning: skipping Service shop/web: port \"http\": a second tcp port with the same name (test.yaml:2)",
    );
}

#[test]
fn multi_port_service_gives_one_service_port_each() {
    let t = run(&svc(
        "web",
        "  clusterIP: 10.96.12.34\n  ports:\n  - name: https\n    port: 443\n  - name: http\n    port: 80\n",
    ));
    let names: Vec<String> = t
        .model
        .services
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    // Sorted by name, whatever order spec.ports lists them in.
    assert_eq!(names, ["shop/web:http", "shop/web:https"]);
}

#[test]
fn external_ips_are_kept_and_invalid_ones_skip() {
    let sp = only_port(&svc(
        "web",
        "  clusterIP: 10.96.12.34\n  externalIPs: [192.0.2.010, \"2001:db8::10\"]\n  ports:\n  - port: 80\n",
    ));
    assert_eq!(sp.external_ips, [ip("192.0.2.10"), ip("2001:db8::10")]);
    skipped(
        &svc(
            "web",
            "  clusterIP: 10.96.12.34\n  externalIPs: [192.0.2.300]\n  ports:\n  - port: 80\n",
        ),
        "warning: skipping Service shop/web: invalid externalIP \"192.0.2.300\": not an IP address (test.yaml:2)",
    );
}

const LB: &str = "  type: LoadBalancer\n  clusterIP: 10.96.12.34\n  ports:\n  - name: http\n    port: 80\n    nodePort: 31080\n";

fn lb_with_status(status: &str) -> String {
    svc("web", LB) + "status:\n  loadBalancer:\n    ingress:\n" + status
}

#[test]
fn load_balancer_ingress_by_ip_mode() {
    let sp = only_port(&lb_with_status(
        "    - ip: 203.0.113.10\n    - ip: 203.0.113.11\n      ipMode: VIP\n    - ip: 203.0.113.12\n      ipMode: Proxy\n    - hostname: lb.example.com\n",
    ));
    assert_eq!(
        sp.load_balancer_ips,
        [ip("203.0.113.10"), ip("203.0.113.11")]
    );
    assert_eq!(sp.node_port, Some(31080));
}

#[test]
fn ip_mode_proxy_only_gives_no_load_balancer_ips() {
    let sp = only_port(&lb_with_status(
        "    - ip: 203.0.113.12\n      ipMode: Proxy\n",
    ));
    assert!(sp.load_balancer_ips.is_empty());
}

#[test]
fn invalid_load_balancer_ingress_ip_skips() {
    skipped(
        &lb_with_status("    - ip: 203.0.113\n"),
        "warning: skipping Service shop/web: invalid loadBalancer ingress IP \"203.0.113\": not an IP address (test.yaml:2)",
    );
}

#[test]
fn source_ranges_are_trimmed_and_canonicalised() {
    let sp = only_port(&svc(
        "web",
        &format!(
            "{LB}  loadBalancerSourceRanges: [\" 203.0.113.0/25\", \"172.30.0.041/24 \", \"2001:db8::1/64\"]\n"
        ),
    ));
    let got: Vec<String> = sp
        .load_balancer_source_ranges
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, ["203.0.113.0/25", "172.30.0.0/24", "2001:db8::/64"]);
    skipped(
        &svc(
            "web",
            &format!("{LB}  loadBalancerSourceRanges: [203.0.113.0]\n"),
        ),
        "warning: skipping Service shop/web: invalid loadBalancerSourceRange \"203.0.113.0\": not a CIDR (test.yaml:2)",
    );
}

#[test]
fn traffic_policies() {
    let sp = only_port(&svc(
        "web",
        &format!(
            "{LB}  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n"
        ),
    ));
    assert_eq!(sp.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(sp.internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(sp.health_check_node_port, Some(32000));
    let sp = only_port(&svc(
        "web",
        &format!("{LB}  externalTrafficPolicy: Cluster\n  internalTrafficPolicy: Cluster\n"),
    ));
    assert_eq!(sp.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(sp.internal_traffic_policy, TrafficPolicy::Cluster);
}

#[test]
fn external_policy_counts_only_for_externally_accessible_types() {
    // Upstream's ExternalPolicyLocal: a plain ClusterIP Service is never eTP=Local...
    let sp = only_port(&svc(
        "web",
        &format!("  externalTrafficPolicy: Local\n{WEB}"),
    ));
    assert_eq!(sp.external_traffic_policy, TrafficPolicy::Cluster);
    // ...unless it has external IPs.
    let sp = only_port(&svc(
        "web",
        &format!("  externalTrafficPolicy: Local\n  externalIPs: [192.0.2.10]\n{WEB}"),
    ));
    assert_eq!(sp.external_traffic_policy, TrafficPolicy::Local);
    let sp = only_port(&svc(
        "web",
        "  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.12.34\n  ports:\n  - port: 80\n    nodePort: 30080\n",
    ));
    assert_eq!(sp.external_traffic_policy, TrafficPolicy::Local);
}

#[test]
fn health_check_node_port_only_for_local_load_balancers() {
    // NodePort + Local: upstream's NeedsHealthCheck is false, so no health check port.
    let sp = only_port(&svc(
        "web",
        "  type: NodePort\n  clusterIP: 10.96.12.34\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  ports:\n  - port: 80\n    nodePort: 30080\n",
    ));
    assert_eq!(sp.health_check_node_port, None);
    skipped(
        &svc(
            "web",
            &format!("{LB}  externalTrafficPolicy: Local\n  healthCheckNodePort: 99999\n"),
        ),
        "warning: skipping Service shop/web: healthCheckNodePort 99999 is out of range (1-65535) (test.yaml:2)",
    );
}

#[test]
fn session_affinity_timeouts() {
    let sp = only_port(&svc("web", &format!("  sessionAffinity: ClientIP\n{WEB}")));
    assert_eq!(
        sp.session_affinity,
        SessionAffinity::ClientIp {
            timeout_seconds: 10800
        }
    );
    let sp = only_port(&svc(
        "web",
        &format!(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 600\n{WEB}"
        ),
    ));
    assert_eq!(
        sp.session_affinity,
        SessionAffinity::ClientIp {
            timeout_seconds: 600
        }
    );
    // The config is ignored without ClientIP affinity.
    let sp = only_port(&svc(
        "web",
        &format!(
            "  sessionAffinity: None\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 0\n{WEB}"
        ),
    ));
    assert_eq!(sp.session_affinity, SessionAffinity::None);
    for bad in [0, 86401, -5] {
        skipped(
            &svc(
                "web",
                &format!(
                    "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {bad}\n{WEB}"
                ),
            ),
            &format!(
                "warning: skipping Service shop/web: sessionAffinityConfig.clientIP.timeoutSeconds {bad} is out of range (1-86400) (test.yaml:2)"
            ),
        );
    }
}

#[test]
fn service_without_spec_is_skipped() {
    skipped(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n",
        "warning: skipping Service shop/web: it has no spec (test.yaml:1)",
    );
}

#[test]
fn duplicate_service_keeps_the_first() {
    let yaml = svc("web", WEB) + &svc("web", "  clusterIP: 10.96.99.99\n  ports:\n  - port: 80\n");
    let t = run(&yaml);
    assert_eq!(
        lines(&t),
        [
            "warning: skipping Service shop/web: it appears more than once; the first one is used (test.yaml:14)"
        ]
    );
    assert_eq!(t.model.services.len(), 1);
    assert_eq!(t.model.services[0].cluster_ips, [ip("10.96.12.34")]);
}

#[test]
fn model_does_not_depend_on_input_order() {
    let docs = [
        svc(
            "b",
            "  clusterIP: 10.96.0.2\n  ports:\n  - name: x\n    port: 80\n  - name: a\n    port: 81\n",
        ),
        svc(
            "a",
            "  clusterIP: 10.96.0.1\n  ports:\n  - port: 80\n    protocol: UDP\n  - name: z\n    port: 80\n",
        ),
        svc("c", "  clusterIP: 10.96.0.3\n  ports:\n  - port: 53\n"),
    ];
    let forward = run(&docs.concat()).model;
    let backward = run(&docs.iter().rev().cloned().collect::<String>()).model;
    assert_eq!(forward, backward);
    let names: Vec<String> = forward
        .services
        .iter()
        .map(|p| format!("{}/{}", p.name, p.protocol))
        .collect();
    assert_eq!(
        names,
        [
            "shop/a/udp",
            "shop/a:z/tcp",
            "shop/b:a/tcp",
            "shop/b:x/tcp",
            "shop/c/tcp"
        ]
    );
}

/// Names reach rule comments: one the API server would refuse (a newline above all) skips
/// the Service with a warning that prints the name escaped, on one line.
#[test]
fn names_the_api_would_refuse_skip_the_service() {
    let injected = "a\n-I INPUT 1 -s 203.0.113.66/32 -j ACCEPT\n-A KUBE-SERVICES -p tcp -m comment --comment \"z";
    for (namespace, name, port, field) in [
        ("shop", injected, "http", "name"),
        ("sh\nop", "web", "http", "namespace"),
        ("shop", "web", "ht\ntp", "ports[0].name"),
        ("shop", "Web", "http", "name"),
        ("shop", "web", "http_2", "ports[0].name"),
        ("shop", &"w".repeat(64), "http", "name"),
        ("-shop", "web", "http", "namespace"),
    ] {
        let yaml = format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name:?}\n  namespace: {namespace:?}\nspec:\n  clusterIP: 10.96.12.34\n  ports:\n  - name: {port:?}\n    port: 80\n"
        );
        let t = run(&yaml);
        assert!(
            t.model.services.is_empty(),
            "{name:?}: {:?}",
            t.model.services
        );
        let l = lines(&t);
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(
            l[0].starts_with("warning: skipping Service ")
                && l[0].contains(&format!("invalid {field} "))
                && !l[0].contains('\n'),
            "{l:?}"
        );
    }
    // Valid at the limits: a 63-character name and a name starting with a digit (KEP-5311).
    let t = run(&svc(&"w".repeat(63), WEB));
    assert_eq!(t.model.services.len(), 1, "{:?}", lines(&t));
    let t = run(&svc("1web", WEB));
    assert_eq!(t.model.services.len(), 1, "{:?}", lines(&t));
}
