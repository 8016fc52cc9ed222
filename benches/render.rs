//! Rendering and diffing benchmarks: the full iptables ruleset for 1k, 10k and 50k Services × 10
//! endpoints, and the partial payload after one endpoint changed. Run with
//! `cargo bench --bench render`; figures go in `benches/README.md`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rulegen::AppliedState;

mod support;

use support::{config, one_endpoint_changed, synthetic_model};

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

/// Issue 5: the diff of a partial sync after one endpoint changed — the fingerprint walk over
/// every chain plus the payload it yields — and remembering the new fingerprints.
fn bench_partial(c: &mut Criterion) {
    let cfg = config();
    let mut group = c.benchmark_group("partial");
    for services in [1_000u32, 10_000, 50_000] {
        let model = synthetic_model(services, 10);
        let old = rulegen::render(&model, &cfg).unwrap();
        let applied = AppliedState::of(&old);
        let new = rulegen::render(&one_endpoint_changed(&model, 1), &cfg).unwrap();
        let plan = new.partial_payload(&applied).unwrap();
        let full = new.full_payload(&Default::default()).len();
        eprintln!(
            "partial/{services}: {plan}; full payload {full} bytes; partial/full = {:.4}%",
            100.0 * plan.payload.len() as f64 / full as f64
        );
        if services >= 10_000 {
            group.sample_size(10);
        }
        group.bench_function(format!("{services}x10/diff"), |b| {
            b.iter(|| black_box(new.partial_payload(black_box(&applied)).unwrap()))
        });
        group.bench_function(format!("{services}x10/fingerprint"), |b| {
            b.iter(|| black_box(AppliedState::of(black_box(&new))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_render, bench_partial);
criterion_main!(benches);
