//! Parallel compression of one large source or body, in any codec: its
//! blocks (`Codec::block_len` bytes: 128 KiB for gzip, 4 MiB zstd frames)
//! are compressed as separate pool jobs through a `BlockPipeline`, and their
//! output is sent in order as each completes.

use std::collections::VecDeque;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;

use super::AppState;
use super::body::BodyReader;
use super::compress::stream_error;
use super::file_job::Source;
use crate::block_pipeline::BlockPipeline;
use crate::cpu_pool::Lane;
use crate::error::ApiError;
use crate::kernel::{Block, BlockCutter, BlockInput, Codec};
use crate::metrics::{Direction, Op};
use crate::storage::Piece;

/// Inputs at or above this size are compressed in parallel unless the client
/// asks otherwise: below it the stream fits in a few blocks and the
/// serial encoder's single job is as fast.
pub const AUTO_PARALLEL_BYTES: u64 = 4 << 20;

/// A pipeline of the request's lane that counts what it compresses.
struct Pipeline {
    st: AppState,
    blocks: BlockPipeline<ApiError>,
}

impl Pipeline {
    fn new(st: &AppState, lane: Lane, codec: Codec) -> Pipeline {
        Pipeline {
            st: st.clone(),
            blocks: BlockPipeline::new(lane, codec, st.pool.threads()),
        }
    }

    /// The next block's compressed bytes, in order; `None` when none is in flight.
    async fn next(&mut self) -> Option<Result<Bytes, ApiError>> {
        let block = self.blocks.next().await?;
        Some(block.map(|b: Block| {
            let m = &self.st.metrics;
            m.add_bytes(Op::Compress, Direction::In, b.bytes_in);
            m.add_bytes(Op::Compress, Direction::Out, b.out.len() as u64);
            Bytes::from(b.out)
        }))
    }

    fn trailer(&self) -> Bytes {
        let t = self.blocks.trailer();
        self.st
            .metrics
            .add_bytes(Op::Compress, Direction::Out, t.len() as u64);
        Bytes::from(t)
    }
}

/// Streams a source, compressed.
pub fn file_body(st: &AppState, src: Source, codec: Codec) -> Body {
    Body::from_stream(file_stream(st, src, codec).map(|r| r.map_err(stream_error)))
}

/// A source, compressed: the codec's header, the blocks in order, the
/// trailer. Blocks are taken in order from the source, as one piece or
/// several (an object's ranges); each job reads its block and the
/// dictionary before it (a local file with `pread`, in the job; an
/// object's bytes were fetched already), so blocks need nothing from each
/// other but their position. After an error the stream ends.
pub fn file_stream(
    st: &AppState,
    src: Source,
    codec: Codec,
) -> impl futures_util::Stream<Item = Result<Bytes, ApiError>> + Send + 'static {
    struct State {
        src: Source,
        size: u64,
        /// Bytes handed to jobs so far.
        handed: u64,
        /// The last piece of the block before the next one: the next
        /// block's dictionary.
        prev: Option<Piece>,
        input_done: bool,
        pipe: Pipeline,
        finished: bool,
    }
    let state = State {
        size: src.size(),
        pipe: Pipeline::new(st, src.lane(), codec),
        src,
        handed: 0,
        prev: None,
        input_done: false,
        finished: false,
    };
    let stream = futures_util::stream::unfold(state, move |mut s| async move {
        if s.finished {
            return None;
        }
        while !s.pipe.blocks.full() && !s.input_done {
            let (block, dict) = match next_block(&mut s.src, codec, &mut s.prev).await {
                Ok(b) => b,
                Err(e) => {
                    s.finished = true;
                    return Some((Err(e), s));
                }
            };
            let len: u64 = block.iter().map(|p| p.len() as u64).sum();
            if len == 0 {
                s.input_done = true;
                // An empty source is still one (empty, final) block.
                if s.handed == 0 {
                    s.pipe.blocks.push(move || Ok(codec.block(&[], &[], true)));
                }
                break;
            }
            s.handed += len;
            let last = s.handed == s.size;
            let shown = s.src.shown_arc();
            s.pipe.blocks.push(move || {
                let split = dict.as_ref().map_or(0, Piece::len);
                let mut buf = vec![0u8; split + len as usize];
                let read = |piece: &Piece, out: &mut [u8]| {
                    piece
                        .read_into(out)
                        .map_err(|e| ApiError::from_storage(e, &shown, false))
                };
                if let Some(dict) = &dict {
                    read(dict, &mut buf[..split])?;
                }
                let mut at = split;
                for piece in &block {
                    read(piece, &mut buf[at..at + piece.len()])?;
                    at += piece.len();
                }
                Ok(codec.block(&buf[split..], &buf[..split], last))
            });
        }
        match s.pipe.next().await {
            Some(Ok(bytes)) => Some((Ok(bytes), s)),
            Some(Err(e)) => {
                s.finished = true;
                Some((Err(e), s))
            }
            None => {
                s.finished = true;
                // One version of the source, or a cut stream.
                if let Err(e) = s.src.check_unchanged() {
                    return Some((Err(e), s));
                }
                let t = s.pipe.trailer();
                Some((Ok(t), s))
            }
        }
    });
    let header = Bytes::from(codec.header());
    futures_util::stream::once(async move { Ok(header) }).chain(stream)
}

/// The pieces of the source's next block (empty at the end), up to the
/// codec's block length, and the dictionary before it; `prev` is updated.
async fn next_block(
    src: &mut Source,
    codec: Codec,
    prev: &mut Option<Piece>,
) -> Result<(Vec<Piece>, Option<Piece>), ApiError> {
    let want = codec.block_len();
    let mut pieces = Vec::new();
    let mut got = 0;
    while got < want {
        let Some(p) = src.next(want - got).await? else {
            break;
        };
        got += p.len();
        pieces.push(p);
    }
    let dict = match pieces.last() {
        Some(last) if codec.dict_len() > 0 => {
            prev.replace(last.clone()).map(|p| p.tail(codec.dict_len()))
        }
        _ => None,
    };
    Ok((pieces, dict))
}

/// Streams a request body, compressed, in blocks compressed in parallel as
/// they fill. The body is read while blocks compress, not only when the
/// window has room: the HTTP thread and the client share the cores with the
/// pool threads, and a body read in bursts after each block is sent leaves a
/// pool thread idle at every block boundary (it finishes its block while the
/// next one is still being received). Once the window is full, one cut
/// block more is held back and reading pauses, so a fast sender meets TCP
/// backpressure, not a growing queue.
pub fn body_body(st: &AppState, lane: Lane, body: BodyReader, codec: Codec) -> Body {
    struct State {
        body: BodyReader,
        pipe: Pipeline,
        /// Input collected for the next block; `None` once the body ended.
        cutter: Option<BlockCutter>,
        /// Blocks cut while the window was full, pushed as room frees up:
        /// while any is held, the body is not read.
        held: VecDeque<BlockInput>,
        finished: bool,
        /// Compressed blocks ready to send, in order.
        ready: VecDeque<Bytes>,
    }
    impl State {
        fn push_held(&mut self) {
            while !self.pipe.blocks.full()
                && let Some(b) = self.held.pop_front()
            {
                self.pipe.blocks.push(move || Ok(b.compress()));
            }
        }

        /// Takes a chunk of the body (`None`: its end) into blocks.
        fn take(&mut self, chunk: Option<Bytes>) {
            let Some(chunk) = chunk else {
                if let Some(b) = self.cutter.take().and_then(BlockCutter::end) {
                    self.held.push_back(b);
                }
                return;
            };
            let cutter = self.cutter.as_mut().expect("read only while open");
            let mut rest = &chunk[..];
            while let Some(b) = cutter.fill(&mut rest) {
                self.held.push_back(b);
            }
        }

        fn reading(&self) -> bool {
            self.cutter.is_some() && self.held.is_empty()
        }
    }
    let state = State {
        body,
        pipe: Pipeline::new(st, lane, codec),
        cutter: Some(BlockCutter::new(codec)),
        held: VecDeque::new(),
        finished: false,
        ready: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if s.finished {
            return None;
        }
        loop {
            if let Some(b) = s.ready.pop_front() {
                return Some((Ok(b), s));
            }
            s.push_held();
            let done = if !s.reading() {
                // Nothing to read for now: wait for the oldest block.
                Some(s.pipe.next().await)
            } else if !s.pipe.blocks.full() {
                None
            } else {
                // Both futures may be dropped unfinished: a body frame not
                // yet taken stays in the body, a block not yet taken in the
                // pipeline.
                tokio::select! {
                    biased;
                    b = s.pipe.next() => Some(b),
                    c = s.body.next() => match c {
                        Ok(c) => {
                            s.take(c);
                            continue;
                        }
                        Err(e) => {
                            s.finished = true;
                            return Some((Err(stream_error(e)), s));
                        }
                    },
                }
            };
            match done {
                None => match s.body.next().await {
                    Ok(c) => s.take(c),
                    Err(e) => {
                        s.finished = true;
                        return Some((Err(stream_error(e)), s));
                    }
                },
                Some(Some(Ok(b))) => s.ready.push_back(b),
                Some(Some(Err(e))) => {
                    s.finished = true;
                    return Some((Err(stream_error(e)), s));
                }
                Some(None) if s.cutter.is_none() && s.held.is_empty() => {
                    s.finished = true;
                    let t = s.pipe.trailer();
                    return Some((Ok(t), s));
                }
                Some(None) => {}
            }
        }
    });
    with_header(codec, stream)
}

/// The codec's header (gzip's 10 bytes; nothing for zstd), then the
/// blocks' stream (which ends with the trailer).
fn with_header<S>(codec: Codec, blocks: S) -> Body
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let header = Bytes::from(codec.header());
    Body::from_stream(futures_util::stream::once(async move { Ok(header) }).chain(blocks))
}
