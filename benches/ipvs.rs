//! IPVS mode benchmarks at 1k, 10k and 50k Services × 10 endpoints: rendering the whole IPVS
//! dataplane (virtual servers, ipsets, iptables rules), and the netlink syncer's dump + diff +
//! apply against the in-memory IPVS peer, for a sync that changes nothing and for one that moves
//! one endpoint (the kernel's own cost is measured in the VM: `tests/ipvs_vm.rs`). Run with
//! `cargo bench --bench ipvs`; figures go in `benches/README.md`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use proxier::ipvs::{FakeIpvs, IpvsSyncConfig, IpvsSyncer};
use rulegen::render::ipvs::IpvsConfig;

mod support;

use support::{config, one_endpoint_changed, synthetic_model};

fn bench_ipvs(c: &mut Criterion) {
    let cfg = config();
    let ipvs = IpvsConfig::default();
    let mut group = c.benchmark_group("ipvs");
    for services in [1_000u32, 10_000, 50_000] {
        let model = synthetic_model(services, 10);
        let changed = one_endpoint_changed(&model, 1);
        let a = rulegen::render::ipvs::render(&model, &cfg, &ipvs).unwrap();
        let b = rulegen::render::ipvs::render(&changed, &cfg, &ipvs).unwrap();
        eprintln!(
            "ipvs/{services}: {} virtual servers, {} set members, {} bytes of iptables rules",
            a.table.virtual_servers.len(),
            a.sets.entry_count(),
            a.ruleset.to_save_text().len()
        );
        if services >= 10_000 {
            group.sample_size(10);
        }
        group.bench_function(format!("{services}x10/render"), |bench| {
            bench.iter(|| {
                black_box(rulegen::render::ipvs::render(black_box(&model), &cfg, &ipvs).unwrap())
            })
        });
        let mut syncer = IpvsSyncer::new(FakeIpvs::new(), IpvsSyncConfig::default());
        let started = Instant::now();
        syncer.sync(&a.table, Instant::now()).unwrap();
        eprintln!(
            "ipvs/{services}: first sync into the empty fake peer: {:?}",
            started.elapsed()
        );
        group.bench_function(format!("{services}x10/sync-no-change"), |bench| {
            bench.iter(|| {
                let r = syncer.sync(black_box(&a.table), Instant::now()).unwrap();
                assert_eq!(r.messages_sent, 0);
            })
        });
        let mut flip = false;
        group.bench_function(format!("{services}x10/sync-one-endpoint"), |bench| {
            bench.iter(|| {
                flip = !flip;
                let table = if flip { &b.table } else { &a.table };
                let r = syncer.sync(black_box(table), Instant::now()).unwrap();
                assert!(r.messages_sent > 0);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_ipvs);
criterion_main!(benches);
