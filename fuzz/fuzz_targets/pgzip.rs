//! The parallel-gzip framing: input cut into blocks of any sizes, each
//! deflated alone with the (up to 32 KiB) input before it as dictionary,
//! joined with header and trailer, must be one gzip member that an
//! independent decoder turns back into the input.
#![no_main]

use std::io::Read;

use flate2::Crc;
use hashpress::kernel::Level;
use hashpress::kernel::gzip::{compress_block, header, trailer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let level = Level::new(u32::from(ctl % 9) + 1).expect("1..=9 is valid");
    // Block size from the control byte: 1..=64 bytes, then scaled, so small
    // inputs still cross block boundaries; at most 4 blocks per input, since
    // each block builds a deflate state (the slow part under the sanitizer).
    let block = (usize::from(ctl >> 2).max(1)) * if ctl & 1 == 1 { 97 } else { 1 };
    let block = block.max(rest.len().div_ceil(4));
    let mut out = header(level).to_vec();
    let mut crc = Crc::new();
    let n = rest.len().div_ceil(block).max(1);
    for i in 0..n {
        let start = (i * block).min(rest.len());
        let end = ((i + 1) * block).min(rest.len());
        let (deflated, c) = compress_block(&rest[start..end], &rest[..start], level, i + 1 == n);
        out.extend_from_slice(&deflated);
        crc.combine(&c);
    }
    out.extend_from_slice(&trailer(&crc));
    let mut back = Vec::new();
    flate2::read::GzDecoder::new(&out[..])
        .read_to_end(&mut back)
        .expect("parallel gzip decodes");
    assert_eq!(back, rest);
});
