//! The descriptor budget. Every accepted socket counts against the process's file-descriptor limit
//! minus a reserve for the store; websockets may take all of it but a share kept for plain HTTP.
//! When the budget is spent, the HTTP connection that has waited longest for a request (an idle
//! keep-alive, or a socket that never sent one) is closed to make room; if there is none, the new
//! socket gets a 503 and is closed. So idle sockets can neither starve `/healthz` and new devices nor
//! take the descriptors the store needs to rotate its log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// Descriptors kept for the store (sled, log segments, directories), stdio and the runtime.
pub(crate) const STORE_RESERVE: usize = 64;
/// Sockets kept for plain HTTP when the websockets are at their cap.
pub(crate) const HTTP_RESERVE: usize = 64;
/// Sockets accepted beyond the budget while the connections evicted for them are still closing;
/// the accept loop waits for them beyond this.
const EVICTION_SLACK: usize = STORE_RESERVE / 4;

/// The caps in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The soft `RLIMIT_NOFILE` (`None`: unlimited or unknown).
    pub fd_limit: Option<u64>,
    /// Most accepted sockets open at once.
    pub sockets: usize,
    /// Most websockets open at once.
    pub websockets: usize,
}

impl Budget {
    /// The caps for `--max-connections` under a descriptor limit.
    pub(crate) fn new(max_connections: usize, fd_limit: Option<u64>) -> Budget {
        let Some(limit) = fd_limit else {
            return Budget {
                fd_limit,
                sockets: usize::MAX,
                websockets: max_connections,
            };
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let sockets = limit.saturating_sub(STORE_RESERVE).max(2);
        let websockets = max_connections.min(sockets.saturating_sub(HTTP_RESERVE).max(1));
        Budget {
            fd_limit,
            sockets,
            websockets,
        }
    }

    /// The caps for this process.
    pub(crate) fn of_process(max_connections: usize) -> Budget {
        Budget::new(max_connections, soft_fd_limit())
    }
}

#[cfg(unix)]
fn soft_fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(unix))]
fn soft_fd_limit() -> Option<u64> {
    None
}

/// Every accepted socket, and the HTTP ones that wait for a request (the eviction candidates).
#[derive(Debug)]
pub(crate) struct Conns {
    budget: Budget,
    open: AtomicUsize,
    /// Idle HTTP connections by the order they became idle (oldest first).
    idle: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    next: AtomicU64,
    /// Notified whenever a socket closes.
    released: Notify,
    metrics: Arc<Metrics>,
}

/// One accepted socket; releases its place in the budget when dropped (shared between the HTTP
/// connection and, after an upgrade, its websocket session).
#[derive(Debug)]
pub(crate) struct Slot {
    conns: Arc<Conns>,
    state: Arc<ConnState>,
}

/// Whether an HTTP connection may be evicted, and how it is told.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Its key in [`Conns::idle`] while it waits for a request.
    key: Mutex<Option<u64>>,
    evict: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Conns {
    pub(crate) fn new(budget: Budget, metrics: Arc<Metrics>) -> Conns {
        Conns {
            budget,
            open: AtomicUsize::new(0),
            idle: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            released: Notify::new(),
            metrics,
        }
    }

    pub(crate) fn budget(&self) -> Budget {
        self.budget
    }

    /// Accepted sockets open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves when another socket may be accepted: at once unless connections evicted for
    /// earlier ones are still closing (then the kernel's backlog holds the next one meanwhile).
    pub(crate) async fn room(&self) {
        while self.open() >= self.budget.sockets.saturating_add(EVICTION_SLACK) {
            let released = self.released.notified();
            if self.open() < self.budget.sockets.saturating_add(EVICTION_SLACK) {
                return;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), released).await;
        }
    }

    /// Take a place for a socket just accepted, evicting the longest-idle HTTP connection if the
    /// budget is spent. `None`: no room (answer 503 and close it).
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Slot> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if open > self.budget.sockets && !self.evict_oldest() {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let slot = Slot {
            conns: Arc::clone(self),
            state: Arc::new(ConnState::default()),
        };
        slot.idle();
        Some(slot)
    }

    fn evict_oldest(&self) -> bool {
        let Some((_, state)) = lock(&self.idle).pop_first() else {
            return false;
        };
        *lock(&state.key) = None;
        state.evict.notify_one();
        Metrics::inc(&self.metrics.shed_evicted);
        true
    }
}

impl Slot {
    /// The connection waits for a request: it may be evicted.
    pub(crate) fn idle(&self) {
        let mut key = lock(&self.state.key);
        let mut idle = lock(&self.conns.idle);
        if let Some(old) = key.take() {
            idle.remove(&old);
        }
        let new = self.conns.next.fetch_add(1, Ordering::Relaxed);
        idle.insert(new, Arc::clone(&self.state));
        *key = Some(new);
    }

    /// The connection is answering a request, or has become a websocket: it is not evicted.
    pub(crate) fn busy(&self) {
        let mut key = lock(&self.state.key);
        if let Some(old) = key.take() {
            lock(&self.conns.idle).remove(&old);
        }
    }

    /// Resolves when the connection was evicted to make room for another.
    pub(crate) async fn evicted(&self) {
        self.state.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.busy();
        self.conns.open.fetch_sub(1, Ordering::AcqRel);
        self.conns.released.notify_waiters();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_room_for_the_store_and_http() {
        let b = Budget::new(100_000, Some(1024));
        assert_eq!(b.sockets, 1024 - STORE_RESERVE);
        assert_eq!(b.websockets, 1024 - STORE_RESERVE - HTTP_RESERVE);
        assert_eq!(Budget::new(10, Some(1024)).websockets, 10);
        assert_eq!(Budget::new(10, None).sockets, usize::MAX);
        assert!(Budget::new(100, Some(16)).websockets >= 1);
    }

    #[tokio::test]
    async fn the_longest_idle_connection_makes_room() {
        let conns = Arc::new(Conns::new(
            Budget::new(100, Some((STORE_RESERVE + 2) as u64)),
            Arc::new(Metrics::default()),
        ));
        let a = conns.admit().unwrap();
        let b = conns.admit().unwrap();
        b.busy();
        // Full: `a` (idle) is evicted for `c`.
        let c = conns.admit().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), a.evicted())
            .await
            .unwrap();
        drop(a);
        c.busy();
        // Full and nobody idle: refused.
        assert!(conns.admit().is_none());
        assert_eq!(conns.open(), 2);
        drop(b);
        assert!(conns.admit().is_some());
    }
}
