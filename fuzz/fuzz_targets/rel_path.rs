//! `RelPath::parse` on arbitrary URL tails: never panics, and whatever it
//! accepts is a clean relative path (no `..`, no empty or `.` component, no
//! leading `/`, no NUL, no backslash, within the length limits).
#![no_main]

use hashpress::root::{MAX_NAME_BYTES, MAX_PATH_BYTES, RelPath};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rel) = RelPath::parse(text) else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str());
    assert!(!bytes.is_empty());
    assert!(bytes.len() <= MAX_PATH_BYTES);
    assert!(!bytes.contains(&0));
    assert!(!bytes.contains(&b'\\'));
    assert!(bytes[0] != b'/');
    for part in bytes.split(|&b| b == b'/') {
        assert!(!part.is_empty(), "empty component in {bytes:?}");
        assert!(part != b"." && part != b"..", "dot component in {bytes:?}");
        assert!(part.len() <= MAX_NAME_BYTES);
    }
    // Parsing is idempotent on what contains no '%' (a decoded '%' would be
    // decoded again, which is the point of decoding once).
    if !bytes.contains(&b'%') {
        let again = RelPath::parse(std::str::from_utf8(bytes).unwrap_or_default());
        if let Ok(again) = again {
            assert_eq!(again, rel);
        }
    }
    // Appending a suffix keeps the invariants or is refused.
    if let Ok(gz) = rel.with_suffix(".gz") {
        let (_, name) = gz.split_parent();
        assert!(name.len() <= MAX_NAME_BYTES);
    }
});
