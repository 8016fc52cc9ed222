//! `trace` benchmarks: reading a node's `iptables-save` text back (1k, 10k, 50k Services × 10
//! endpoints) and walking one packet through it — to the Service whose rule sits last in
//! `KUBE-SERVICES`, the longest walk. Run with `cargo bench --bench trace`; figures go in
//! `benches/README.md`.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use rulegen::analysis::trace::{NodeContext, Origin, Packet, SavedRuleset, trace};

// Shared with the other benches; this one does not change endpoints.
#[allow(dead_code)]
mod support;

use support::{config, synthetic_model};

fn bench_trace(c: &mut Criterion) {
    let cfg = config();
    let mut group = c.benchmark_group("trace");
    for services in [1_000u32, 10_000, 50_000] {
        let model = synthetic_model(services, 10);
        let text = rulegen::render(&model, &cfg).unwrap().to_save_text();
        let rules = SavedRuleset::parse(&text).unwrap();
        // The last cluster-IP rule of KUBE-SERVICES is the longest scan.
        let last = rules.chain("nat", "KUBE-SERVICES").unwrap().rules.len() - 2;
        let dst = rules.chain("nat", "KUBE-SERVICES").unwrap().rules[last]
            .text
            .split_whitespace()
            .skip_while(|w| *w != "-d")
            .nth(1)
            .unwrap()
            .trim_end_matches("/32")
            .to_string();
        let packet = Packet {
            proto: "tcp",
            src: "10.244.250.1:40000".parse().unwrap(),
            dst: SocketAddr::new(dst.parse().unwrap(), 80),
            origin: Origin::Pod,
            in_interface: None,
        };
        let node = NodeContext::default();
        let t = trace(&rules, &packet, &node);
        assert_eq!(t.leaves().len(), 10, "ten endpoints, ten ways");
        if services >= 10_000 {
            group.sample_size(10);
        }
        group.bench_function(format!("{services}x10/parse"), |b| {
            b.iter(|| black_box(SavedRuleset::parse(black_box(&text)).unwrap()))
        });
        group.bench_function(format!("{services}x10/walk-last-service"), |b| {
            b.iter(|| black_box(trace(black_box(&rules), &packet, &node)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_trace);
criterion_main!(benches);
