//! Parallel gzip for one large source or body: blocks of `pgzip::BLOCK` bytes
//! are compressed as separate pool jobs, at most `window` at a time, and
//! their output is sent in order as each completes.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use axum::body::Body;
use bytes::Bytes;
use flate2::Crc;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use super::AppState;
use super::body::BodyReader;
use super::compress::stream_error;
use super::file_job::Source;
use crate::cpu_pool::Lane;
use crate::error::ApiError;
use crate::kernel::Level;
use crate::kernel::pgzip::{self, BLOCK, Block, DICT};
use crate::metrics::{Direction, Op};
use crate::storage::Piece;

/// Inputs at or above this size are compressed in parallel unless the client
/// asks otherwise: below it the stream fits in a few blocks and the
/// serial encoder's single job is as fast.
pub const AUTO_PARALLEL_BYTES: u64 = 4 << 20;

type BlockJob = Pin<Box<dyn Future<Output = Result<Block, ApiError>> + Send>>;

/// Blocks in flight, in input order.
struct Pipeline {
    st: AppState,
    /// The request's lane: its blocks are scheduled as one request's work.
    lane: Lane,
    level: Level,
    inflight: FuturesOrdered<BlockJob>,
    /// Most blocks compressing or waiting at once: enough to keep every pool
    /// thread busy, few enough that memory stays a handful of blocks.
    window: usize,
    crc: Crc,
}

impl Pipeline {
    fn new(st: &AppState, lane: Lane, level: Level) -> Pipeline {
        Pipeline {
            st: st.clone(),
            lane,
            level,
            inflight: FuturesOrdered::new(),
            window: st.pool.threads() + 1,
            crc: Crc::new(),
        }
    }

    fn full(&self) -> bool {
        self.inflight.len() >= self.window
    }

    fn push<F>(&mut self, job: F)
    where
        F: FnOnce() -> Result<Block, ApiError> + Send + 'static,
    {
        let lane = self.lane.clone();
        self.inflight
            .push_back(Box::pin(async move { lane.run(job).await? }));
    }

    /// The next block's compressed bytes, in order; `None` when none is in flight.
    async fn next(&mut self) -> Option<Result<Bytes, ApiError>> {
        let block = self.inflight.next().await?;
        Some(block.map(|b| {
            self.crc.combine(&b.crc);
            let m = &self.st.metrics;
            m.add_bytes(Op::Compress, Direction::In, b.crc.amount() as u64);
            m.add_bytes(Op::Compress, Direction::Out, b.deflated.len() as u64);
            Bytes::from(b.deflated)
        }))
    }

    fn trailer(&self) -> Bytes {
        self.lane.done();
        Bytes::copy_from_slice(&pgzip::trailer(&self.crc))
    }
}

/// Streams a source as one gzip member. Blocks are taken in order from the
/// source; each job reads its block and the 32 KiB before it (a local file
/// with `pread`, in the job; an object's bytes were fetched already), so
/// blocks need nothing from each other but their position.
pub fn file_body(st: &AppState, src: Source, level: Level) -> Body {
    struct State {
        src: Source,
        size: u64,
        /// Bytes handed to jobs so far.
        handed: u64,
        /// The block before the next one: the next block's dictionary.
        prev: Option<Piece>,
        input_done: bool,
        pipe: Pipeline,
        finished: bool,
    }
    let state = State {
        size: src.size(),
        pipe: Pipeline::new(st, src.lane(), level),
        src,
        handed: 0,
        prev: None,
        input_done: false,
        finished: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if s.finished {
            return None;
        }
        while !s.pipe.full() && !s.input_done {
            let block = match s.src.next(BLOCK).await {
                Ok(b) => b,
                Err(e) => {
                    s.finished = true;
                    return Some((Err(stream_error(e)), s));
                }
            };
            let Some(block) = block else {
                s.input_done = true;
                // An empty source is still one (empty, final) block.
                if s.handed == 0 {
                    let level = s.pipe.level;
                    s.pipe
                        .push(move || Ok(pgzip::compress_block(&[], &[], level, true)));
                }
                break;
            };
            s.handed += block.len() as u64;
            let last = s.handed == s.size;
            let dict = s.prev.replace(block.clone()).map(|p| p.tail(DICT));
            let (shown, level) = (s.src.shown_arc(), s.pipe.level);
            s.pipe.push(move || {
                let split = dict.as_ref().map_or(0, Piece::len);
                let mut buf = vec![0u8; split + block.len()];
                let read = |piece: &Piece, out: &mut [u8]| {
                    piece
                        .read_into(out)
                        .map_err(|e| ApiError::from_storage(e, &shown, false))
                };
                if let Some(dict) = &dict {
                    read(dict, &mut buf[..split])?;
                }
                read(&block, &mut buf[split..])?;
                Ok(pgzip::compress_block(
                    &buf[split..],
                    &buf[..split],
                    level,
                    last,
                ))
            });
        }
        match s.pipe.next().await {
            Some(Ok(bytes)) => Some((Ok(bytes), s)),
            Some(Err(e)) => {
                s.finished = true;
                Some((Err(stream_error(e)), s))
            }
            None => {
                s.finished = true;
                // One version of the source, or a cut stream.
                if let Err(e) = s.src.check_unchanged() {
                    return Some((Err(stream_error(e)), s));
                }
                let t = s.pipe.trailer();
                Some((Ok(t), s))
            }
        }
    });
    with_header(level, stream)
}

/// Streams a request body as one gzip member, compressing blocks in
/// parallel as they fill. Reading the body pauses while the window is
/// full, so a fast sender meets TCP backpressure, not a growing queue.
pub fn body_body(st: &AppState, lane: Lane, body: BodyReader, level: Level) -> Body {
    struct State {
        body: BodyReader,
        pipe: Pipeline,
        /// Input collected for the next block.
        pending: Vec<u8>,
        /// The last `DICT` bytes before `pending`.
        dict: Bytes,
        body_done: bool,
        finished: bool,
        /// Compressed blocks ready to send, in order.
        ready: VecDeque<Bytes>,
    }
    let state = State {
        body,
        pipe: Pipeline::new(st, lane, level),
        pending: Vec::with_capacity(BLOCK),
        dict: Bytes::new(),
        body_done: false,
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
            // Fill and dispatch blocks while there is room in the window.
            while !s.body_done && !s.pipe.full() {
                match s.body.next().await {
                    Err(e) => {
                        s.finished = true;
                        return Some((Err(stream_error(e)), s));
                    }
                    Ok(None) => {
                        s.body_done = true;
                        let input = std::mem::take(&mut s.pending);
                        let (dict, level) = (s.dict.clone(), s.pipe.level);
                        s.pipe
                            .push(move || Ok(pgzip::compress_block(&input, &dict, level, true)));
                    }
                    Ok(Some(mut chunk)) => {
                        while !chunk.is_empty() {
                            let take = (BLOCK - s.pending.len()).min(chunk.len());
                            s.pending.extend_from_slice(&chunk.split_to(take));
                            if s.pending.len() == BLOCK {
                                let input =
                                    std::mem::replace(&mut s.pending, Vec::with_capacity(BLOCK));
                                let dict = s.dict.clone();
                                s.dict = Bytes::copy_from_slice(&input[BLOCK - DICT..]);
                                let level = s.pipe.level;
                                s.pipe.push(move || {
                                    Ok(pgzip::compress_block(&input, &dict, level, false))
                                });
                            }
                        }
                    }
                }
            }
            match s.pipe.next().await {
                Some(Ok(b)) => s.ready.push_back(b),
                Some(Err(e)) => {
                    s.finished = true;
                    return Some((Err(stream_error(e)), s));
                }
                None if s.body_done => {
                    s.finished = true;
                    let t = s.pipe.trailer();
                    return Some((Ok(t), s));
                }
                None => {}
            }
        }
    });
    with_header(level, stream)
}

/// The gzip header, then the blocks' stream (which ends with the trailer).
fn with_header<S>(level: Level, blocks: S) -> Body
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let header = Bytes::copy_from_slice(&pgzip::header(level));
    Body::from_stream(futures_util::stream::once(async move { Ok(header) }).chain(blocks))
}
