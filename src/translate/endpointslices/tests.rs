use rulegen::{Endpoint, Protocol, ServicePort};

use crate::translate::testutil::{lines, run};

/// A Service `shop/web` with a TCP port `http` (80) and a UDP port `dns` (53).
const WEB: &str = "---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.12.34
  ports:
  - name: http
    port: 80
    targetPort: 8080
  - name: dns
    port: 53
    protocol: UDP
";

/// An EndpointSlice of `shop/web` named `name`; `body` holds `ports:` and `endpoints:`.
fn slice(name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\n{body}"
    )
}

const HTTP_PORT: &str = "ports:\n- name: http\n  port: 8080\n  protocol: TCP\n";

fn endpoint(ip: &str, node: &str) -> String {
    format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  nodeName: {node}\n")
}

fn port<'a>(ports: &'a [ServicePort], name: &str) -> &'a ServicePort {
    ports.iter().find(|p| p.name.port == name).unwrap()
}

fn addrs(sp: &ServicePort) -> Vec<String> {
    sp.endpoints.iter().map(Endpoint::addr_string).collect()
}

#[test]
fn slices_join_by_label_and_endpoints_are_sorted() {
    let yaml = format!(
        "{WEB}{}{}",
        slice(
            "web-b",
            &format!(
                "{HTTP_PORT}endpoints:\n{}",
                endpoint("10.244.2.7", "node-2")
            )
        ),
        slice(
            "web-a",
            &format!(
                "{HTTP_PORT}endpoints:\n{}{}",
                endpoint("10.244.10.3", "node-1"),
                endpoint("10.244.1.5", "node-1")
            )
        ),
    );
    let t = run(&yaml);
    assert!(t.warnings.is_empty(), "{:?}", lines(&t));
    let http = port(&t.model.services, "http");
    // Sorted as strings, as upstream sorts them ("10.244.10.3" < "10.244.2.7").
    assert_eq!(
        addrs(http),
        ["10.244.1.5:8080", "10.244.10.3:8080", "10.244.2.7:8080"]
    );
    assert_eq!(http.endpoints[0].node_name.as_deref(), Some("node-1"));
    // The UDP port has no slice port, so no endpoints.
    assert!(port(&t.model.services, "dns").endpoints.is_empty());
}

#[test]
fn ports_match_by_name_and_protocol() {
    // A TCP slice port named "dns" must not feed the UDP service port "dns".
    let body = format!(
        "ports:\n- name: dns\n  port: 5353\n  protocol: TCP\n- name: dns\n  port: 53\n  protocol: UDP\nendpoints:\n{}",
        endpoint("10.244.1.9", "node-1")
    );
    let t = run(&format!("{WEB}{}", slice("web-a", &body)));
    let dns = port(&t.model.services, "dns");
    assert_eq!(dns.protocol, Protocol::Udp);
    assert_eq!(addrs(dns), ["10.244.1.9:53"]);
}

#[test]
fn protocol_defaults_to_tcp() {
    let body = format!(
        "ports:\n- name: http\n  port: 8080\nendpoints:\n{}",
        endpoint("10.244.1.5", "node-1")
    );
    let t = run(&format!("{WEB}{}", slice("web-a", &body)));
    assert_eq!(addrs(port(&t.model.services, "http")), ["10.244.1.5:8080"]);
}

#[test]
fn duplicates_across_slices_count_once_and_ready_wins() {
    let not_ready = "endpoints:\n- addresses: [\"10.244.1.5\"]\n  conditions: {ready: false, serving: false}\n  nodeName: node-1\n";
    let yaml = format!(
        "{WEB}{}{}",
        slice("web-a", &format!("{HTTP_PORT}{not_ready}")),
        slice(
            "web-b",
            &format!(
                "{HTTP_PORT}endpoints:\n{}",
                endpoint("10.244.1.5", "node-1")
            )
        ),
    );
    let t = run(&yaml);
    let http = port(&t.model.services, "http");
    assert_eq!(addrs(http), ["10.244.1.5:8080"]);
    assert!(http.endpoints[0].ready);

    // The same the other way round: the ready copy in the first slice is kept.
    let yaml = format!(
        "{WEB}{}{}",
        slice(
            "web-a",
            &format!(
                "{HTTP_PORT}endpoints:\n{}",
                endpoint("10.244.1.5", "node-1")
            )
        ),
        slice("web-b", &format!("{HTTP_PORT}{not_ready}")),
    );
    let http = port(&run(&yaml).model.services, "http").clone();
    assert_eq!(http.endpoints.len(), 1);
    assert!(http.endpoints[0].ready);
}

#[test]
fn duplicates_prefer_a_non_terminating_copy() {
    // A new pod reusing the IP of a terminating one: the running pod wins, in either order.
    let terminating = "endpoints:\n- addresses: [\"10.244.1.5\"]\n  conditions: {ready: true, serving: true, terminating: true}\n  nodeName: node-1\n";
    let running = format!(
        "{HTTP_PORT}endpoints:\n{}",
        endpoint("10.244.1.5", "node-2")
    );
    for (first, second) in [
        (format!("{HTTP_PORT}{terminating}"), running.clone()),
        (running.clone(), format!("{HTTP_PORT}{terminating}")),
    ] {
        let yaml = format!("{WEB}{}{}", slice("web-a", &first), slice("web-b", &second));
        let http = port(&run(&yaml).model.services, "http").clone();
        assert_eq!(http.endpoints.len(), 1);
        assert!(!http.endpoints[0].terminating);
        assert_eq!(http.endpoints[0].node_name.as_deref(), Some("node-2"));
    }
}

#[test]
fn duplicates_prefer_the_local_copy() {
    let yaml = format!(
        "{WEB}{}{}",
        slice(
            "web-a",
            &format!(
                "{HTTP_PORT}endpoints:\n{}",
                endpoint("10.244.1.5", "node-2")
            )
        ),
        slice(
            "web-b",
            &format!(
                "{HTTP_PORT}endpoints:\n{}",
                endpoint("10.244.1.5", "node-1")
            )
        ),
    );
    let http = port(&run(&yaml).model.services, "http").clone();
    assert_eq!(http.endpoints.len(), 1);
    assert_eq!(http.endpoints[0].node_name.as_deref(), Some("node-1"));
}

#[test]
fn slice_order_in_input_does_not_matter() {
    let a = slice(
        "web-a",
        &format!(
            "{HTTP_PORT}endpoints:\n{}",
            endpoint("10.244.1.5", "node-2")
        ),
    );
    let b = slice(
        "web-b",
        &format!(
            "{HTTP_PORT}endpoints:\n- addresses: [\"10.244.1.5\"]\n  conditions: {{ready: true}}\n  nodeName: node-3\n"
        ),
    );
    let forward = run(&format!("{WEB}{a}{b}")).model;
    let backward = run(&format!("{b}{WEB}{a}")).model;
    assert_eq!(forward, backward);
    // Equal rank: the copy from the slice first by name wins.
    assert_eq!(
        port(&forward.services, "http").endpoints[0]
            .node_name
            .as_deref(),
        Some("node-2")
    );
}

#[test]
fn conditions_default_like_upstream() {
    let body = "endpoints:
- addresses: [\"10.244.1.1\"]
- addresses: [\"10.244.1.2\"]
  conditions: {ready: false}
- addresses: [\"10.244.1.3\"]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [\"10.244.1.4\"]
  conditions: {}
";
    let t = run(&format!(
        "{WEB}{}",
        slice("web-a", &format!("{HTTP_PORT}{body}"))
    ));
    let eps = &port(&t.model.services, "http").endpoints;
    let conds: Vec<(bool, bool, bool)> = eps
        .iter()
        .map(|e| (e.ready, e.serving, e.terminating))
        .collect();
    assert_eq!(
        conds,
        // A nil serving is true even when ready is false: upstream's reading, not the API docs'.
        [
            (true, true, false),
            (false, true, false),
            (false, true, true),
            (true, true, false)
        ]
    );
    assert!(
        eps.iter()
            .all(|e| e.node_name.is_none() && e.hints.is_none())
    );
}

#[test]
fn zone_hints_are_kept() {
    let body = "endpoints:
- addresses: [\"10.244.1.1\"]
  nodeName: node-1
  zone: zone-a
  hints:
    forZones:
    - name: zone-a
    - name: zone-b
    forNodes:
    - name: node-1
- addresses: [\"10.244.1.2\"]
  hints:
    forZones: []
";
    let t = run(&format!(
        "{WEB}{}",
        slice("web-a", &format!("{HTTP_PORT}{body}"))
    ));
    let eps = &port(&t.model.services, "http").endpoints;
    assert_eq!(
        eps[0].zone_hints(),
        Some(&["zone-a".to_string(), "zone-b".to_string()][..])
    );
    assert_eq!(eps[1].zone_hints(), None);
    assert_eq!(eps[0].node_hints(), Some(&["node-1".to_string()][..]));
    assert_eq!(eps[1].node_hints(), None);
    assert!(eps[1].hints.is_none(), "an empty forZones list is no hint");
}

#[test]
fn broken_slice_ports_are_skipped_with_warnings() {
    let body = format!(
        "ports:\n- port: 8080\n- name: http\n- name: http\n  port: 0\n- name: http\n  port: 70000\n- name: http\n  port: 8080\n  protocol: ICMP\n- name: http\n  port: 8443\nendpoints:\n{}",
        endpoint("10.244.1.5", "node-1")
    );
    let t = run(&format!("{WEB}{}", slice("web-a", &body)));
    assert_eq!(
        lines(&t),
        [
            "warning: EndpointSlice shop/web-a: skipping ports[0]: it has no name (test.yaml:17)",
            "warning: EndpointSlice shop/web-a: skipping ports[1]: it has no port number (test.yaml:17)",
            "warning: EndpointSlice shop/web-a: skipping ports[2]: it has no port number (test.yaml:17)",
            "warning: EndpointSlice shop/web-a: skipping ports[3]: port 70000 is out of range (1-65535) (test.yaml:17)",
            "warning: EndpointSlice shop/web-a: skipping ports[4]: unknown protocol \"ICMP\" (use TCP, UDP or SCTP) (test.yaml:17)",
        ]
    );
    assert_eq!(addrs(port(&t.model.services, "http")), ["10.244.1.5:8443"]);
}

#[test]
fn bad_endpoint_addresses_are_skipped_with_warnings() {
    let body = "endpoints:
- addresses: []
- addresses: [\"10.244.1\"]
- addresses: [\"127.0.0.1\"]
- addresses: [\"169.254.169.254\"]
- addresses: [\"0.0.0.0\"]
- addresses: [\"fe80::1\"]
- addresses: [\"010.244.001.007\", \"10.244.1.8\"]
";
    let t = run(&format!(
        "{WEB}{}",
        slice("web-a", &format!("{HTTP_PORT}{body}"))
    ));
    let at = "(test.yaml:17)";
    assert_eq!(
        lines(&t),
        [
            format!(
                "warning: EndpointSlice shop/web-a: skipping endpoints[0]: it has no addresses {at}"
            ),
            format!(
                "warning: EndpointSlice shop/web-a: skipping endpoints[1]: invalid address \"10.244.1\": not an IP address {at}"
            ),
            format!(
                "warning: EndpointSlice shop/web-a: skipping endpoints[2]: address \"127.0.0.1\" is loopback {at}"
            ),
            format!(
                "warning: EndpointSlice shop/web-a: skipping endpoints[3]: address \"169.254.169.254\" is link-local {at}"
            ),
            format!(
                "warning: EndpointSlice shop/web-a: skipping endpoints[4]: address \"0.0.0.0\" is unspecified {at}"
            ),
            format!(
                "warning: EndpointSlice shop/web-a: skipping endpoints[5]: address \"fe80::1\" is link-local {at}"
            ),
        ]
    );
    // Only the first address counts, parsed sloppily.
    assert_eq!(addrs(port(&t.model.services, "http")), ["10.244.1.7:8080"]);
}

#[test]
fn slices_without_service_label_or_with_skip_labels_are_skipped() {
    let ep = format!(
        "{HTTP_PORT}endpoints:\n{}",
        endpoint("10.244.1.5", "node-1")
    );
    let unlabelled = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: orphan\n  namespace: shop\naddressType: IPv4\n{ep}"
    );
    let labelled = |name: &str, label: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: web\n    {label}\naddressType: IPv4\n{ep}"
        )
    };
    let yaml = format!(
        "{WEB}{unlabelled}{}{}",
        labelled("other", "service.kubernetes.io/service-proxy-name: cilium"),
        labelled("hl", "service.kubernetes.io/headless: \"\"")
    );
    let t = run(&yaml);
    assert_eq!(
        lines(&t),
        [
            "warning: skipping EndpointSlice shop/orphan: it has no kubernetes.io/service-name label (test.yaml:17)",
            "note: skipping EndpointSlice shop/other: it is labelled service.kubernetes.io/service-proxy-name=\"cilium\" (served by another proxy) (test.yaml:32)",
            "note: skipping EndpointSlice shop/hl: it is labelled service.kubernetes.io/headless (test.yaml:50)",
        ]
    );
    assert!(port(&t.model.services, "http").endpoints.is_empty());
}

#[test]
fn fqdn_and_bad_address_types_are_ignored() {
    let ep = format!("{HTTP_PORT}endpoints:\n- addresses: [\"db.example.com\"]\n");
    let fqdn = slice("web-f", &ep).replace("addressType: IPv4", "addressType: FQDN");
    let bogus = slice("web-x", &ep).replace("addressType: IPv4", "addressType: IPv5");
    let t = run(&format!("{WEB}{fqdn}{bogus}"));
    assert_eq!(
        lines(&t),
        [
            "note: skipping EndpointSlice shop/web-f: addressType FQDN (test.yaml:17)",
            "warning: skipping EndpointSlice shop/web-x: invalid addressType \"IPv5\" (test.yaml:32)",
        ]
    );
    assert!(port(&t.model.services, "http").endpoints.is_empty());
}

#[test]
fn slices_join_only_within_their_namespace() {
    let other_ns = slice(
        "web-a",
        &format!(
            "{HTTP_PORT}endpoints:\n{}",
            endpoint("10.244.1.5", "node-1")
        ),
    )
    .replace("namespace: shop", "namespace: other");
    let t = run(&format!("{WEB}{other_ns}"));
    assert!(port(&t.model.services, "http").endpoints.is_empty());
    assert_eq!(
        lines(&t),
        [
            "note: EndpointSlice other/web-a belongs to Service other/web, which is not among the objects (test.yaml:17)"
        ]
    );
}

#[test]
fn slices_of_skipped_services_are_dropped_quietly() {
    let headless = WEB.replace("clusterIP: 10.96.12.34", "clusterIP: None");
    let t = run(&format!(
        "{headless}{}",
        slice(
            "web-a",
            &format!(
                "{HTTP_PORT}endpoints:\n{}",
                endpoint("10.244.1.5", "node-1")
            )
        )
    ));
    assert!(t.model.services.is_empty());
    assert_eq!(
        lines(&t),
        ["note: skipping Service shop/web: it is headless (clusterIP None) (test.yaml:2)"]
    );
}

#[test]
fn broken_slice_object_is_skipped_and_the_rest_kept() {
    let broken = slice(
        "web-a",
        "ports:\n- name: http\n  port: eighty\nendpoints: []\n",
    );
    let good = slice(
        "web-b",
        &format!(
            "{HTTP_PORT}endpoints:\n{}",
            endpoint("10.244.1.5", "node-1")
        ),
    );
    let t = run(&format!("{WEB}{broken}{good}"));
    assert_eq!(
        lines(&t),
        ["warning: skipping EndpointSlice shop/web-a: ports[0].port: invalid i32 (test.yaml:27)"]
    );
    assert_eq!(addrs(port(&t.model.services, "http")), ["10.244.1.5:8080"]);
}

#[test]
fn ipv6_endpoints_keep_brackets_in_their_key() {
    let body =
        "ports:\n- name: http\n  port: 8080\nendpoints:\n- addresses: [\"fd00:10:244:1::5\"]\n";
    let six = slice("web-6", body).replace("addressType: IPv4", "addressType: IPv6");
    let t = run(&format!("{WEB}{six}"));
    assert_eq!(
        addrs(port(&t.model.services, "http")),
        ["[fd00:10:244:1::5]:8080"]
    );
}

/// A slice, slice port or endpoint carrying a name the API would refuse is skipped with a
/// warning; the rest of the Service's endpoints stay.
#[test]
fn names_the_api_would_refuse_skip_what_carries_them() {
    let good = slice(
        "web-a",
        &format!(
            "{HTTP_PORT}endpoints:\n{}",
            endpoint("10.244.1.5", "node-1")
        ),
    );
    let cases = [
        (
            slice(
                "\"web\\n-A INPUT -j ACCEPT\"",
                &format!(
                    "{HTTP_PORT}endpoints:\n{}",
                    endpoint("10.244.1.6", "node-1")
                ),
            ),
            "invalid name",
        ),
        (
            slice(
                "web-b",
                "ports:\n- name: \"h\\nttp\"\n  port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [\"10.244.1.6\"]\n",
            ),
            "invalid name",
        ),
        (
            slice(
                "web-b",
                &format!(
                    "{HTTP_PORT}endpoints:\n{}",
                    endpoint("10.244.1.6", "\"node\\n1\"")
                ),
            ),
            "invalid nodeName",
        ),
        (
            slice(
                "web-b",
                &format!(
                    "{HTTP_PORT}endpoints:\n- addresses: [\"10.244.1.6\"]\n  hints:\n    forZones: [{{name: \"a b\"}}]\n"
                ),
            ),
            "invalid hints.forZones[].name",
        ),
        (
            slice(
                "web-b",
                &format!(
                    "{HTTP_PORT}endpoints:\n- addresses: [\"10.244.1.6\"]\n  zone: \"z\\r\"\n"
                ),
            ),
            "invalid zone",
        ),
    ];
    for (bad, want) in cases {
        let t = run(&format!("{WEB}{good}{bad}"));
        let l = lines(&t);
        assert_eq!(
            addrs(port(&t.model.services, "http")),
            ["10.244.1.5:8080"],
            "{l:?}"
        );
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(
            l[0].starts_with("warning: ") && l[0].contains(want) && !l[0].contains('\n'),
            "{l:?}"
        );
    }
    let bad_label = format!(
        "{WEB}{}",
        good.replace("service-name: web", "service-name: \"we b\"")
    );
    let t = run(&bad_label);
    assert!(
        lines(&t)[0].contains("invalid kubernetes.io/service-name label"),
        "{:?}",
        lines(&t)
    );
}
