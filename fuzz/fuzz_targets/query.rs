//! Query-string parsing (`alg`, `format`, `level`) on arbitrary input: never panics,
//! and every accepted value is one the kernels support.
#![no_main]

use hashpress::http::query::Query;
use hashpress::kernel::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for allowed in [&["alg"][..], &["format", "level"][..], &[][..]] {
        let Ok(q) = Query::parse(Some(raw), allowed) else {
            continue;
        };
        if let Ok(algs) = q.algorithms() {
            let list = algs.as_slice();
            assert!(!list.is_empty());
            for a in list {
                assert_eq!(hashpress::kernel::Algorithm::from_name(a.name()), Some(*a));
            }
        }
        match q.codec() {
            Ok(Codec::Gzip(level)) => assert!((1..=9).contains(&level.get()), "{level}"),
            Ok(Codec::Zstd(level)) => assert!((1..=19).contains(&level.get()), "{level:?}"),
            Err(_) => {}
        }
    }
});
