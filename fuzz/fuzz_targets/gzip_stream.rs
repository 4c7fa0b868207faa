//! The streaming gzip framing: input cut into arbitrary pieces and fed to one
//! gzip `Encode` must come back intact through an independent decoder, with
//! the byte counts right. This covers the serial single-member stream;
//! `pgzip.rs` covers the parallel one.
#![no_main]

use std::io::Read;

use hashpress::kernel::{Codec, Level};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let level = Level::new(u32::from(ctl % 9) + 1).expect("1..=9 is valid");
    // The low bits of the control byte choose the piece size: 1..=64 bytes.
    let piece = usize::from(ctl >> 2).max(1);
    let mut gz = Codec::Gzip(level).encoder();
    let mut out = Vec::new();
    for chunk in rest.chunks(piece) {
        out.extend(gz.encode(chunk, false));
    }
    assert_eq!(gz.bytes_in(), rest.len() as u64);
    out.extend(gz.encode(&[], true));
    let mut back = Vec::new();
    flate2::read::GzDecoder::new(&out[..])
        .read_to_end(&mut back)
        .expect("our gzip decodes");
    assert_eq!(back, rest);
});
