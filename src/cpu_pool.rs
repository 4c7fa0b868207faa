//! A fixed set of threads for CPU-heavy work, fed through one bounded queue.
//!
//! Work is submitted in short jobs (one chunk of a file or body each), never
//! as "the whole request": a job never waits on a client, so a slow client
//! cannot pin a thread, and a request whose client has gone simply stops
//! submitting jobs. Admission happens at a request's first job: if the queue
//! is full the request is refused at once (`try_run`), while jobs of requests
//! already admitted wait for room (`run`), so admitted work is never dropped.

use std::sync::{Arc, Mutex};
use std::thread;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Slot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// The queue is full: shed the request (503).
    Overloaded,
    /// The pool has shut down, or the job panicked.
    Failed,
}

/// Handle to the pool; cheap to clone.
#[derive(Clone)]
pub struct CpuPool {
    /// Bounded queue: its capacity is the `--pool-queue` limit.
    tx: mpsc::Sender<Job>,
    /// Where queue depth, busy threads and rejections are counted; shared
    /// with the threads and the metrics endpoint.
    stats: &'static Slot,
    threads: usize,
    queue: usize,
}

impl CpuPool {
    /// Starts `threads` threads behind a queue of `queue` jobs (both at least 1).
    pub fn new(threads: usize, queue: usize, stats: &'static Slot) -> CpuPool {
        let threads = threads.max(1);
        let queue = queue.max(1);
        let (tx, rx) = mpsc::channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            thread::Builder::new()
                .name(format!("hashpress-cpu-{i}"))
                .spawn(move || worker_loop(&rx, stats))
                .expect("spawning a pool thread");
        }
        CpuPool {
            tx,
            stats,
            threads,
            queue,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue
    }

    pub fn stats(&self) -> &'static Slot {
        self.stats
    }

    /// Admission: queues `f` if there is room now, else fails at once with
    /// `Overloaded` (and counts the rejection).
    pub async fn try_run<F, R>(&self, f: F) -> Result<R, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (job, rx) = wrap(f);
        match self.tx.try_send(job) {
            Ok(()) => {
                self.stats.pool_enqueued();
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.add_pool_rejected();
                return Err(PoolError::Overloaded);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(PoolError::Failed),
        }
        rx.await.map_err(|_| PoolError::Failed)
    }

    /// Continuation: waits for room in the queue, then for the result.
    pub async fn run<F, R>(&self, f: F) -> Result<R, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit(f).await?.wait().await
    }

    /// Continuation that overlaps with its caller: waits for room in the
    /// queue, queues `f` and returns at once, so the caller can go on (read
    /// the next part of a body) while the job runs. Dropping the returned
    /// handle before the job starts skips the job.
    pub async fn submit<F, R>(&self, f: F) -> Result<Pending<R>, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (job, rx) = wrap(f);
        self.tx.send(job).await.map_err(|_| PoolError::Failed)?;
        self.stats.pool_enqueued();
        Ok(Pending(rx))
    }
}

/// The result of a job queued by `CpuPool::submit`, still to come.
pub struct Pending<R>(oneshot::Receiver<R>);

impl<R> Pending<R> {
    pub async fn wait(self) -> Result<R, PoolError> {
        self.0.await.map_err(|_| PoolError::Failed)
    }
}

fn wrap<F, R>(f: F) -> (Job, oneshot::Receiver<R>)
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        // The requester is gone (client disconnected): skip the work.
        if tx.is_closed() {
            return;
        }
        let _ = tx.send(f());
    });
    (job, rx)
}

fn worker_loop(rx: &Mutex<mpsc::Receiver<Job>>, stats: &Slot) {
    loop {
        // One thread at a time waits on the queue; the lock is released as
        // soon as it holds a job, so the others take the next ones.
        let job = {
            let mut guard = match rx.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.blocking_recv()
        };
        let Some(job) = job else { return };
        stats.pool_started();
        // A panicking job must not take the thread with it; its requester sees
        // the dropped sender as `PoolError::Failed`.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        stats.pool_finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn pool(threads: usize, queue: usize) -> CpuPool {
        CpuPool::new(threads, queue, Box::leak(Slot::new_boxed()))
    }

    #[tokio::test]
    async fn runs_jobs_and_returns_results() {
        let pool = pool(2, 4);
        let r = pool.try_run(|| 21 * 2).await;
        assert_eq!(r, Ok(42));
        assert_eq!(pool.run(|| "x".repeat(3)).await.unwrap(), "xxx");
    }

    /// A submitted job runs while its submitter goes on, and a handle
    /// dropped before its job starts means the job is skipped.
    #[tokio::test]
    async fn submit_overlaps_and_dropping_skips() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let pool = pool(1, 4);
        let gate = Arc::new(Barrier::new(2));
        let g = Arc::clone(&gate);
        let first = pool.submit(move || g.wait()).await.unwrap();
        // The submitter is free while the first job waits at the gate.
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        let skipped = pool
            .submit(move || r.store(true, Ordering::SeqCst))
            .await
            .unwrap();
        drop(skipped);
        gate.wait();
        first.wait().await.unwrap();
        // The pool has one thread: once this job ran, the skipped one had its turn.
        assert_eq!(pool.run(|| 5).await, Ok(5));
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn sheds_when_full_and_recovers() {
        let pool = pool(1, 1);
        let gate = Arc::new(Barrier::new(2));
        // Occupy the thread...
        let g = Arc::clone(&gate);
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move { pool.try_run(move || g.wait()).await }
        });
        while pool.stats().pool_busy() == 0 {
            tokio::task::yield_now().await;
        }
        // ...fill the queue...
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.try_run(|| 1).await }
        });
        while pool.stats().pool_queued() == 0 {
            tokio::task::yield_now().await;
        }
        // ...and the next request is refused at once.
        assert_eq!(pool.try_run(|| 2).await, Err(PoolError::Overloaded));
        assert_eq!(pool.stats().pool_rejected(), 1);
        gate.wait();
        busy.await.unwrap().unwrap();
        assert_eq!(queued.await.unwrap(), Ok(1));
        assert_eq!(pool.try_run(|| 3).await, Ok(3));
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let pool = pool(1, 2);
        let r: Result<(), _> = pool.try_run(|| panic!("boom")).await;
        assert_eq!(r, Err(PoolError::Failed));
        assert_eq!(pool.try_run(|| 7).await, Ok(7));
    }
}
