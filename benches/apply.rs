//! Applying into a real kernel (issue 5): N Services × 10 endpoints (default 10,000) loaded by
//! a full sync, then one-endpoint changes applied by partial syncs, on each iptables back end.
//! Needs root; every tool runs inside a network namespace this benchmark creates and deletes.
//!
//! ```sh
//! cargo bench --bench apply                                  # 10,000 Services, nft and legacy
//! KPRS_BENCH_SERVICES=1000 KPRS_BENCH_BACKENDS=nft cargo bench --bench apply
//! KPRS_BENCH_KEEP=1 KPRS_BENCH_BACKENDS=nft cargo bench --bench apply   # keep the namespace
//! ```
//!
//! Every sync goes through the agent's path ([`IptablesDataplane`]: the first one full, sent in
//! the back end's chunks, then partial ones). Prints the full-sync time (save + restore +
//! hooks), then for each of the partial syncs its
//! diff time, payload bytes and restore time; figures go in `benches/README.md`.

use std::process::Command;
use std::time::{Duration, Instant};

use proxier::{
    Backend, Dataplane, IptablesApplier, IptablesDataplane, Launcher, NoObserver, NodeFacts,
    SyncKind,
};
use rulegen::AppliedState;

mod support;

use support::{config, one_endpoint_changed, synthetic_model};

const CHANGES: u32 = 10;

/// A network namespace of this benchmark's own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("kprs-bench-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed (root is needed)");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // KPRS_BENCH_KEEP=1 leaves the loaded namespace for a closer look (delete it by hand).
        if std::env::var("KPRS_BENCH_KEEP").as_deref() == Ok("1") {
            eprintln!("kept namespace {}", self.0);
            return;
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run harness=false mains
    // with it, so a bare run is a smoke test that must not take minutes.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("apply: run with `cargo bench --bench apply` (needs root)");
        return;
    }
    let services: u32 = std::env::var("KPRS_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let backends = std::env::var("KPRS_BENCH_BACKENDS").unwrap_or_else(|_| "nft,legacy".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = config();
    let model = synthetic_model(services, 10);
    let rs = rulegen::render(&model, &cfg).unwrap();
    for name in backends.split(',') {
        let backend = match name {
            "nft" => Backend::Nft,
            "legacy" => Backend::Legacy,
            other => panic!("unknown back end {other:?}"),
        };
        let ns = Netns::new(name);
        let applier = IptablesApplier::new(backend, rulegen::IpFamily::V4)
            .with_launcher(Launcher::netns(&ns.0))
            .with_timeout(Duration::from_secs(1800));
        let mut dataplane = IptablesDataplane::new(applier).with_node_facts(NodeFacts::given());
        runtime.block_on(async {
            let full = dataplane.sync(&model, &cfg, &mut NoObserver).await.unwrap();
            assert_eq!(full.kind, SyncKind::Full);
            println!(
                "apply/{services}x10/{name}: full sync {:.2?} (save {:.2?}, restore {:.2?}, hooks {:.2?}), payload {} bytes",
                full.total(),
                full.save,
                full.restore,
                full.hooks,
                full.payload_bytes
            );
            let mut applied = AppliedState::of(&rs);
            let mut restores = Vec::new();
            for round in 1..=CHANGES {
                let changed = one_endpoint_changed(&model, round);
                let next = rulegen::render(&changed, &cfg).unwrap();
                let t = Instant::now();
                let bytes = next.partial_payload(&applied).unwrap().payload.len();
                let diff = t.elapsed();
                drop(next);
                let report = dataplane
                    .sync(&changed, &cfg, &mut NoObserver)
                    .await
                    .unwrap();
                assert_eq!(report.kind, SyncKind::Partial);
                println!(
                    "apply/{services}x10/{name}: one endpoint changed: diff {diff:.2?}, payload {bytes} bytes, restore {:.2?}",
                    report.restore
                );
                restores.push(report.restore);
                // Back to the loaded model, so every round changes one endpoint of `rs`.
                dataplane.sync(&model, &cfg, &mut NoObserver).await.unwrap();
                applied = AppliedState::of(&rs);
            }
            restores.sort();
            println!(
                "apply/{services}x10/{name}: partial restore median {:.2?}, max {:.2?} over {CHANGES} changes",
                restores[restores.len() / 2],
                restores[restores.len() - 1]
            );
        });
    }
}
