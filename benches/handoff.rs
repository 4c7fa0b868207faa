//! Where should a 64 KiB chunk be hashed? Inline on the I/O thread, handed to
//! tokio's `spawn_blocking`, or to our `CpuPool` (long-lived threads behind a
//! bounded queue). The answer decides `POST /hash` (inline) and file work
//! (pool, in 1 MiB jobs).

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hashpress::cpu_pool::{CpuPool, PoolLimits};
use hashpress::kernel::{AlgorithmList, MultiHasher};
use hashpress::metrics::Slot;

fn handoff(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pool = CpuPool::new(
        PoolLimits {
            threads: 1,
            queue: 64,
            max_wait: std::time::Duration::from_secs(1),
            priority: hashpress::cpu_pool::PoolPriority::Low,
        },
        Box::leak(Slot::new_boxed()),
    );
    let chunk: Arc<Vec<u8>> = Arc::new((0..65536u32).map(|i| i as u8).collect());
    let algs = AlgorithmList::default_list();
    let hash = |data: &[u8], algs: &AlgorithmList| {
        let mut h = MultiHasher::new(algs);
        h.update(data);
        h.finish()
    };
    let mut g = c.benchmark_group("sha256 of 64 KiB");
    g.throughput(Throughput::Bytes(65536));
    g.bench_function("inline", |b| {
        b.iter(|| rt.block_on(async { hash(&chunk, &algs) }))
    });
    g.bench_function("spawn_blocking", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (data, algs) = (chunk.clone(), algs.clone());
                tokio::task::spawn_blocking(move || hash(&data, &algs))
                    .await
                    .unwrap()
            })
        })
    });
    g.bench_function("cpu_pool", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (data, algs) = (chunk.clone(), algs.clone());
                pool.run(move || hash(&data, &algs)).await.unwrap()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, handoff);
criterion_main!(benches);
