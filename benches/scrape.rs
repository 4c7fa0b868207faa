//! What a metrics scrape costs, fresh and after 1,000 worker restarts: the
//! region folds each dead worker into one retired slot, so the two should
//! cost the same.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hashpress::metrics::snapshot::PoolConfig;
use hashpress::metrics::{Region, Route, Snapshot};

fn region_after_restarts(restarts: usize) -> &'static Region {
    let region = Region::create().expect("metrics region");
    region.set_supervisor_pid(std::process::id());
    // Two live workers, as in the default cluster.
    for w in 1..=2 {
        let i = region.claim(w).unwrap();
        region.set_pid(i, std::process::id());
    }
    for n in 0..restarts {
        let i = region.claim(1).unwrap();
        region.set_pid(i, std::process::id());
        let slot = region.slot(i);
        for status in [200, 400, 404, 503] {
            slot.record_request(
                Route::Hash,
                "POST",
                status,
                Duration::from_micros(n as u64 % 5000),
            );
        }
        region.release(i);
    }
    region
}

fn scrape(c: &mut Criterion) {
    let pool = || PoolConfig {
        threads: 2,
        queue_capacity: 64,
        io_threads: 2,
    };
    for restarts in [0usize, 1000] {
        let region = region_after_restarts(restarts);
        c.bench_function(&format!("region read, {restarts} restarts"), |b| {
            b.iter(|| region.read())
        });
        c.bench_function(&format!("prometheus scrape, {restarts} restarts"), |b| {
            b.iter(|| Snapshot::collect(region, pool()).to_prometheus())
        });
    }
}

criterion_group!(benches, scrape);
criterion_main!(benches);
