//! The accept gate: a worker that holds well more connections than the
//! workers accepting beside it pauses its accepts for a moment, so that the
//! next connections on the shared socket go to the others.
//!
//! Every worker accepts from the one socket the supervisor bound, and the
//! kernel hands a new connection to whichever worker asks first; keep-alive
//! clients then stay where they landed, and a worker restarted after a crash
//! finds every client already on the survivors. Three ways to place
//! connections by load were weighed:
//! - `SO_REUSEPORT`, one socket per worker: the kernel hashes connections
//!   evenly, but blindly (a busy worker gets as many as an idle one), and a
//!   worker that exits resets the connections still waiting in its own
//!   accept queue, so every restart and reload would need a hand-over of
//!   that queue (or a BPF steering program) to keep its no-reset guarantee.
//! - `EPOLLEXCLUSIVE`: wakes one waiter instead of all, which evens wake-ups,
//!   not connections, and tokio registers the socket itself (no flag to set).
//! - this gate: the counts are already in the shared metrics region, nothing
//!   changes at reload (no new socket, nothing to hand over), and it looks at
//!   the load itself. A paused worker does not call accept(2); the others,
//!   woken by the same arrival, take the connection.
//!
//! Only peers that say they are accepting count (a mark each refreshes while
//! it accepts), so a draining, starting or stuck worker never makes the
//! others wait: at least one worker is always at or under the mean.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::{Region, Slot};

/// How long one pause lasts before the counts are read again.
const PAUSE: Duration = Duration::from_millis(5);
/// How often a worker refreshes its "accepting" mark, and how long a mark
/// stays valid: a peer silent for longer no longer counts.
const MARK_EVERY: Duration = Duration::from_millis(100);
const MARK_VALID_MS: u64 = 500;

/// This worker's place in the region, to compare itself with its peers.
#[derive(Clone, Copy)]
pub struct AcceptGate {
    region: &'static Region,
    slot: usize,
}

impl std::fmt::Debug for AcceptGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptGate")
            .field("slot", &self.slot)
            .finish()
    }
}

impl AcceptGate {
    pub fn new(region: &'static Region, slot: usize) -> AcceptGate {
        AcceptGate { region, slot }
    }

    fn mine(&self) -> &'static Slot {
        self.region.slot(self.slot)
    }

    /// Marks this worker as accepting, for a while; `keep_marking` renews it.
    pub fn mark_accepting(&self) {
        self.mine()
            .set_accepting_until(unix_ms().saturating_add(MARK_VALID_MS));
    }

    /// This worker stops accepting (it drains): peers stop waiting for it.
    pub fn unmark(&self) {
        self.mine().set_accepting_until(0);
    }

    /// Renews the mark until the task is dropped.
    pub async fn keep_marking(self) {
        let mut every = tokio::time::interval(MARK_EVERY);
        loop {
            every.tick().await;
            self.mark_accepting();
        }
    }

    /// Returns once this worker may accept: at once unless it holds well
    /// more than its share of the connections of the accepting workers.
    pub async fn wait(&self) {
        while self.over_share() {
            tokio::time::sleep(PAUSE).await;
        }
    }

    fn over_share(&self) -> bool {
        let now = unix_ms();
        let peers = self
            .region
            .peers(self.slot)
            .filter(|s| s.accepting_until() > now)
            .map(|s| s.connections_open());
        over_share(self.mine().connections_open(), peers)
    }
}

/// True when `mine` is well above the mean of `mine` and `peers`: by more
/// than one connection, and by more than a tenth of the mean. Never true
/// without peers, and never true of every worker at once.
pub fn over_share(mine: u64, peers: impl Iterator<Item = u64>) -> bool {
    let (n, sum) = peers.fold((0u64, 0u64), |(n, s), c| (n + 1, s + c));
    if n == 0 {
        return false;
    }
    let mean = (sum + mine) as f64 / (n + 1) as f64;
    mine as f64 > mean + (mean / 10.0).max(1.0)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over(mine: u64, peers: &[u64]) -> bool {
        over_share(mine, peers.iter().copied())
    }

    #[test]
    fn pauses_only_well_above_the_mean() {
        assert!(!over(50, &[]), "alone: always accepts");
        assert!(!over(2, &[0]), "one over the mean is noise");
        assert!(over(3, &[0]));
        assert!(!over(9, &[7]));
        assert!(over(10, &[6]));
        assert!(!over(108, &[92]), "within a tenth of the mean");
        assert!(over(112, &[88]));
        assert!(over(16, &[0, 8]));
        // Whatever the counts, someone accepts.
        for a in 0..20 {
            for b in 0..20 {
                assert!(!(over(a, &[b]) && over(b, &[a])), "{a} {b}");
            }
        }
    }

    #[test]
    fn only_accepting_peers_count() {
        let r = Region::create().unwrap();
        let (a, b) = (r.claim(1).unwrap(), r.claim(2).unwrap());
        r.set_pid(a, 10);
        r.set_pid(b, 11);
        for _ in 0..5 {
            r.slot(a).connection_opened();
        }
        let gate = AcceptGate::new(r, a);
        assert!(!gate.over_share(), "the peer is not accepting");
        AcceptGate::new(r, b).mark_accepting();
        assert!(gate.over_share(), "5 against 0");
        AcceptGate::new(r, b).unmark();
        assert!(!gate.over_share(), "the peer drains");
    }
}
