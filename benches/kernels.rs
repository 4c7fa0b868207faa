//! Criterion benches of the pure kernels: each digest alone, all six in one
//! pass, and gzip at levels 1, 6 and 9. `bench/run` runs these and puts them
//! beside `openssl speed`, `b3sum`, `gzip` and `pigz` in docs/benchmarks.md.
//!
//!     cargo bench --bench kernels

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hashpress::kernel::{AlgorithmList, Format, MultiHasher};

/// Bytes fed per iteration: big enough to amortise setup, small enough to stay in cache.
const HASH_INPUT: usize = 1 << 20;
/// Bytes compressed per iteration, fed in 64 KiB pieces like the server does.
const GZIP_INPUT: usize = 4 << 20;
const PIECE: usize = 64 << 10;

/// Deterministic pseudo-random bytes (xorshift64*), so runs compare.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic English-like text: words drawn with a skewed distribution,
/// so deflate sees a realistic ratio (about 3:1 at level 6).
fn text_bytes(len: usize) -> Vec<u8> {
    const SYLLABLES: [&str; 24] = [
        "ka", "to", "ri", "sen", "ma", "lo", "ve", "dan", "pi", "ter", "su", "mon", "el", "ra",
        "qua", "bi", "nor", "ex", "li", "tha", "gru", "o", "fen", "is",
    ];
    let noise = random_bytes(len);
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0;
    while out.len() < len {
        // Skewed word choice: small ids are far more frequent.
        let r = noise[i % noise.len()] as usize;
        let id = (r * r) >> 6; // 0..1016, squared for a long tail
        let n = 1 + id % 3;
        for k in 0..n {
            out.extend_from_slice(SYLLABLES[(id / (k + 1) + k * 7) % SYLLABLES.len()].as_bytes());
        }
        out.push(if i % 13 == 12 { b'\n' } else { b' ' });
        i += 1;
    }
    out.truncate(len);
    out
}

fn digests(c: &mut Criterion) {
    let data = random_bytes(HASH_INPUT);
    let mut group = c.benchmark_group("digest");
    group.throughput(Throughput::Bytes(HASH_INPUT as u64));
    for alg in [
        "sha256",
        "sha512",
        "sha1",
        "md5",
        "blake3",
        "crc32c",
        "crc64nvme",
        "xxh3",
        "sha256,sha512,sha1,md5,blake3,crc32c",
    ] {
        let algs = AlgorithmList::parse(alg).expect("valid algorithm list");
        let name = if alg.contains(',') { "all6" } else { alg };
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut hasher = MultiHasher::new(&algs);
                hasher.update(black_box(&data));
                black_box(hasher.finish())
            })
        });
    }
    group.finish();
}

/// Issue 11: four digests of one stream on one thread, or split in two
/// sets on two threads (8 MiB batches shared by both, one join per batch,
/// as one pool job per set and batch would be). A bench, not in the
/// server: on this 2-core machine shared with compiles it did not pay (see
/// the commit that added it).
///
///     cargo bench --bench kernels -- multi_digest
fn multi_digest(c: &mut Criterion) {
    const TOTAL: usize = 64 << 20;
    const BATCH: usize = 8 << 20;
    let data = random_bytes(TOTAL);
    let mut group = c.benchmark_group("multi_digest");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(10);
    let all = AlgorithmList::parse("sha256,sha512,blake3,md5").expect("valid list");
    group.bench_function("one_thread", |b| {
        b.iter(|| {
            let mut h = MultiHasher::new(&all);
            for piece in data.chunks(PIECE) {
                h.update(black_box(piece));
            }
            black_box(h.finish())
        })
    });
    // Balanced by cost per byte: SHA-512 + BLAKE3 against MD5 + SHA-256.
    let sets =
        ["sha512,blake3", "md5,sha256"].map(|l| AlgorithmList::parse(l).expect("valid list"));
    group.bench_function("two_threads", |b| {
        b.iter(|| {
            let mut hs: Vec<MultiHasher> = sets.iter().map(MultiHasher::new).collect();
            for batch in data.chunks(BATCH) {
                std::thread::scope(|s| {
                    for h in &mut hs {
                        s.spawn(move || {
                            for piece in batch.chunks(PIECE) {
                                h.update(black_box(piece));
                            }
                        });
                    }
                });
            }
            black_box(hs.into_iter().map(MultiHasher::finish).collect::<Vec<_>>())
        })
    });
    group.finish();
}

/// The gzip input: the first GZIP_INPUT bytes of $HASHPRESS_BENCH_TEXT when set (bench/run
/// passes a slice of its benchmark text, so the figures compare with `gzip` on that file),
/// else generated text.
fn gzip_input() -> Vec<u8> {
    match std::env::var_os("HASHPRESS_BENCH_TEXT") {
        Some(path) => {
            let mut data = std::fs::read(path).expect("read HASHPRESS_BENCH_TEXT");
            data.truncate(GZIP_INPUT);
            data
        }
        None => text_bytes(GZIP_INPUT),
    }
}

fn gzip(c: &mut Criterion) {
    let data = gzip_input();
    let bytes = data.len() as u64;
    let mut group = c.benchmark_group("gzip");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    for level in ["1", "6", "9"] {
        let codec = Format::Gzip.codec(Some(level)).expect("level 1..9");
        group.bench_function(format!("level{level}"), |b| {
            b.iter(|| {
                let mut gz = codec.encoder();
                let mut out = 0usize;
                for piece in data.chunks(PIECE) {
                    out += gz.encode(black_box(piece), false).len();
                }
                out += gz.encode(&[], true).len();
                black_box(out)
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = digests, multi_digest, gzip
}
criterion_main!(benches);
