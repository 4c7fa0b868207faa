//! Parallel compression of one stream on the CPU pool: the blocks of a
//! codec's parallel mode (`kernel::Codec::block`) are compressed as jobs of
//! the request's lane, at most `window` at a time, and come back in input
//! order, joined for the codec's trailer. The server's parallel endpoints
//! and `hashpress compress` both feed it; what they read and where the
//! output goes is theirs.

use std::future::Future;
use std::pin::Pin;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use crate::cpu_pool::{Lane, PoolError};
use crate::kernel::{Block, Codec, Joined};

type BlockJob<E> = Pin<Box<dyn Future<Output = Result<Block, E>> + Send>>;

/// Blocks in flight, in input order.
pub struct BlockPipeline<E> {
    /// The request's lane: its blocks are scheduled as one request's work.
    lane: Lane,
    codec: Codec,
    inflight: FuturesOrdered<BlockJob<E>>,
    /// Most blocks compressing or waiting at once: enough to keep every pool
    /// thread busy, few enough that memory stays a handful of blocks.
    window: usize,
    joined: Joined,
}

impl<E: From<PoolError> + Send + 'static> BlockPipeline<E> {
    /// A pipeline keeping every one of `threads` pool threads busy.
    pub fn new(lane: Lane, codec: Codec, threads: usize) -> BlockPipeline<E> {
        BlockPipeline {
            lane,
            codec,
            inflight: FuturesOrdered::new(),
            window: threads + 1,
            joined: Joined::default(),
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The window is full: take a block out before pushing another.
    pub fn full(&self) -> bool {
        self.inflight.len() >= self.window
    }

    /// Queues the job that compresses the next block.
    pub fn push<F>(&mut self, job: F)
    where
        F: FnOnce() -> Result<Block, E> + Send + 'static,
    {
        let lane = self.lane.clone();
        self.inflight
            .push_back(Box::pin(async move { lane.run(job).await? }));
    }

    /// The next block, in order; `None` when none is in flight.
    pub async fn next(&mut self) -> Option<Result<Block, E>> {
        let block = self.inflight.next().await?;
        if let Ok(b) = &block {
            self.joined.add(b);
        }
        Some(block)
    }

    /// What goes before the first block.
    pub fn header(&self) -> Vec<u8> {
        self.codec.header()
    }

    /// After the last block: the stream's end, and the lane's work is done.
    pub fn trailer(&self) -> Vec<u8> {
        self.lane.done();
        self.codec.trailer(&self.joined.crc)
    }
}
