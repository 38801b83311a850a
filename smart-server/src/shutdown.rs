//! Graceful shutdown: a signal every task can watch, and a tracker that tells when they are all gone.

use tokio::sync::{mpsc, watch};

/// Watches for the shutdown signal. Cheap to clone: one per connection task.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A signal and the handle that fires it.
    pub(crate) fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown { rx })
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown has begun (at once if it already has). Cancel-safe.
    pub(crate) async fn recv(&mut self) {
        // An error means the sender is gone, which only happens when the server itself is dropped:
        // treat that as shutdown too.
        let _ = self.rx.wait_for(|down| *down).await;
    }
}

/// Counts live tasks without a registry: every task holds a [`TaskToken`] (a sender clone); when the
/// last token is dropped the receiver sees the channel close.
#[derive(Debug)]
pub(crate) struct Tracker {
    token: Option<mpsc::Sender<()>>,
    done: mpsc::Receiver<()>,
}

/// Held by a task for as long as shutdown must wait for it.
#[derive(Debug, Clone)]
pub(crate) struct TaskToken {
    _tx: mpsc::Sender<()>,
}

impl Tracker {
    pub(crate) fn new() -> Tracker {
        let (tx, done) = mpsc::channel(1);
        Tracker {
            token: Some(tx),
            done,
        }
    }

    /// A token for a new task. `None` once [`Tracker::wait`] has started (no new tasks then).
    pub(crate) fn token(&self) -> Option<TaskToken> {
        self.token.as_ref().map(|tx| TaskToken { _tx: tx.clone() })
    }

    /// Resolves when every token handed out has been dropped.
    pub(crate) async fn wait(&mut self) {
        self.token = None;
        // Nothing is ever sent: `recv` returns `None` when the last sender is dropped.
        let _ = self.done.recv().await;
    }
}
