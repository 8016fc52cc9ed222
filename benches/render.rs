//! Rendering benchmarks: the full iptables ruleset for 1k, 10k and 50k Services × 10 endpoints.
//! Run with `cargo bench --bench render`; figures go in `benches/README.md`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use rulegen::{
    Endpoint, LocalDetector, Model, Protocol, RenderConfig, ServicePort, ServicePortName,
};

/// A kube-proxy-shaped cluster: every 10th Service is a NodePort, endpoints spread over 3 nodes.
fn synthetic_model(services: u32, endpoints_per_service: u32) -> Model {
    let mut out = Vec::with_capacity(services as usize);
    for s in 0..services {
        let cluster_ip = IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + s)); // 10.96.0.0/12
        let mut sp = ServicePort::cluster_ip(
            ServicePortName::new(format!("ns{}", s % 100), format!("svc{s}"), "http"),
            Protocol::Tcp,
            cluster_ip,
            80,
        );
        if s % 10 == 0 {
            sp.node_port = Some(30000 + (s / 10 % 2768) as u16);
        }
        for e in 0..endpoints_per_service {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + s * endpoints_per_service + e)); // 10.244/16+
            sp.endpoints.push(Endpoint {
                node_name: Some(format!("node{}", e % 3)),
                ..Endpoint::ready(ip, 8080)
            });
        }
        out.push(sp);
    }
    // The translator hands the renderer a model sorted by service-port name; so does this.
    out.sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
    Model { services: out }
}

fn config() -> RenderConfig {
    RenderConfig {
        node_name: "node0".into(),
        local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
        ..RenderConfig::default()
    }
}

/// Stands in for the pipe to `iptables-restore`: takes the text, keeps only its length.
struct ByteCount(usize);

impl std::fmt::Write for ByteCount {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += black_box(s).len();
        Ok(())
    }
}

fn bench_render(c: &mut Criterion) {
    let cfg = config();
    let mut group = c.benchmark_group("render");
    for services in [1_000u32, 10_000, 50_000] {
        let model = synthetic_model(services, 10);
        let text = rulegen::render(&model, &cfg).unwrap().to_save_text();
        eprintln!(
            "render/{services}: payload {} bytes, {} lines",
            text.len(),
            text.lines().count()
        );
        if services >= 10_000 {
            group.sample_size(10);
        }
        group.bench_function(format!("{services}x10/render"), |b| {
            b.iter(|| black_box(rulegen::render(black_box(&model), &cfg).unwrap()))
        });
        let mut spare = rulegen::render(&model, &cfg).unwrap();
        group.bench_function(format!("{services}x10/render-reusing-buffers"), |b| {
            b.iter(|| {
                rulegen::render_into(black_box(&model), &cfg, &mut spare).unwrap();
                black_box(&spare);
            })
        });
        group.bench_function(format!("{services}x10/render+write"), |b| {
            b.iter(|| {
                let rs = rulegen::render(black_box(&model), &cfg).unwrap();
                let mut sink = ByteCount(0);
                rs.write_save_text(&mut sink).unwrap();
                black_box(sink.0)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_render);
criterion_main!(benches);
