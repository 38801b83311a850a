//! The parking lot: idle device sockets wait here without a task, a buffer or a registration with
//! the runtime, each only its few bytes of session state in a slab. One thread polls them (mio,
//! epoll) and hands a socket back to the runtime as soon as it is readable, its liveness deadline
//! comes, or it must be woken for another reason (a revoked token, shutdown).
//!
//! Generic over what is parked, so this module knows nothing of sessions: the device session
//! parks itself ([`Lot::park`]) and the `resume` function given to [`Lot::start`] turns a parked
//! item back into a session.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, error};

/// The token of the lot's waker (new arrivals, shutdown).
const WAKE: Token = Token(usize::MAX);

/// What can wait in the lot.
pub(crate) trait Park: Send + 'static {
    /// The socket whose readability ends the wait.
    fn socket(&mut self) -> &mut TcpStream;
    /// When the wait ends even if nothing arrives (`None`: never).
    fn deadline(&self) -> Option<Instant>;
    /// Whether the wait must end now for another reason (checked once per scan).
    fn must_wake(&mut self) -> bool;
}

/// A handle to the lot; cheap to clone.
#[derive(Debug)]
pub(crate) struct Lot<P> {
    inner: Arc<Inner<P>>,
}

impl<P> Clone for Lot<P> {
    fn clone(&self) -> Self {
        Lot {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// A handle that does not keep the lot open: the lot's thread ends once every [`Lot`] is dropped.
#[derive(Debug)]
pub(crate) struct WeakLot<P> {
    inner: Weak<Inner<P>>,
}

impl<P> WeakLot<P> {
    pub(crate) fn upgrade(&self) -> Option<Lot<P>> {
        self.inner.upgrade().map(|inner| Lot { inner })
    }
}

/// The handles' side: dropping the last one closes `arrivals`, which ends the lot's thread.
#[derive(Debug)]
struct Inner<P> {
    arrivals: mpsc::Sender<Box<P>>,
    waker: Waker,
    state: Arc<State>,
}

/// What the handles and the lot's thread share.
#[derive(Debug, Default)]
struct State {
    /// Once set, nothing stays parked.
    shut: AtomicBool,
    /// Items parked now.
    parked: AtomicUsize,
}

impl<P: Park> Lot<P> {
    /// Start the lot's thread. `scan` is how often deadlines and [`Park::must_wake`] are checked;
    /// `resume` is called on the lot's thread for every item that leaves it.
    pub(crate) fn start(
        scan: Duration,
        resume: impl Fn(Box<P>) + Send + 'static,
    ) -> io::Result<Lot<P>> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        let (arrivals, rx) = mpsc::channel();
        let state = Arc::new(State::default());
        let lot = Lot {
            inner: Arc::new(Inner {
                arrivals,
                waker,
                state: Arc::clone(&state),
            }),
        };
        std::thread::Builder::new()
            .name("device-park".into())
            .spawn(move || {
                Slab {
                    poll,
                    rx,
                    state,
                    items: Vec::new(),
                    free: Vec::new(),
                    resume,
                }
                .run(scan);
            })?;
        Ok(lot)
    }

    /// Park `item` until its socket is readable or its deadline comes; `Err` gives it back when
    /// the lot cannot take it (its thread has ended).
    pub(crate) fn park(&self, item: Box<P>) -> Result<(), Box<P>> {
        self.inner.arrivals.send(item).map_err(|e| e.0)?;
        if let Err(e) = self.inner.waker.wake() {
            error!(%e, "cannot wake the parking lot");
        }
        Ok(())
    }

    /// A handle that does not keep the lot open.
    pub(crate) fn downgrade(&self) -> WeakLot<P> {
        WeakLot {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Resume everything parked, now and from now on (shutdown).
    pub(crate) fn shut(&self) {
        self.inner.state.shut.store(true, Ordering::Release);
        if let Err(e) = self.inner.waker.wake() {
            error!(%e, "cannot wake the parking lot");
        }
    }

    /// How many items are parked now.
    #[cfg(test)]
    pub(crate) fn parked(&self) -> usize {
        self.inner.state.parked.load(Ordering::Relaxed)
    }
}

/// The lot's thread: the parked items and their poller.
struct Slab<P, R> {
    poll: Poll,
    rx: mpsc::Receiver<Box<P>>,
    state: Arc<State>,
    /// Boxed (by the sender): a slot costs a pointer, and the slab's spare capacity little.
    items: Vec<Option<Box<P>>>,
    free: Vec<usize>,
    resume: R,
}

impl<P: Park, R: Fn(Box<P>)> Slab<P, R> {
    fn run(mut self, scan: Duration) {
        let mut events = Events::with_capacity(1024);
        let mut next_scan = Instant::now() + scan;
        loop {
            let timeout = next_scan.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                // Nothing parked can be watched any more: hand everything back, and stop taking.
                error!(%e, "the parking lot cannot poll; resuming every parked connection");
                self.state.shut.store(true, Ordering::Release);
                // Arrivals are still handed back below; do not spin on a failing poller.
                std::thread::sleep(Duration::from_millis(100));
            }
            for event in &events {
                if event.token() != WAKE {
                    self.unpark(event.token().0);
                }
            }
            let shut = self.state.shut.load(Ordering::Acquire);
            loop {
                match self.rx.try_recv() {
                    Ok(item) if shut => (self.resume)(item),
                    Ok(item) => self.add(item),
                    Err(mpsc::TryRecvError::Empty) => break,
                    // Every handle is gone: nothing more will arrive.
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.resume_all();
                        return;
                    }
                }
            }
            if shut {
                self.resume_all();
            }
            let now = Instant::now();
            if now >= next_scan {
                self.scan(now);
                next_scan = now + scan;
            }
        }
    }

    fn add(&mut self, mut item: Box<P>) {
        let index = self.free.pop().unwrap_or(self.items.len());
        if let Err(e) =
            self.poll
                .registry()
                .register(item.socket(), Token(index), Interest::READABLE)
        {
            debug!(%e, "cannot park a connection; it stays active");
            self.free.push(index);
            (self.resume)(item);
            return;
        }
        if index == self.items.len() {
            self.items.push(Some(item));
        } else {
            self.items[index] = Some(item);
        }
        self.state.parked.fetch_add(1, Ordering::Relaxed);
    }

    fn unpark(&mut self, index: usize) {
        let Some(mut item) = self.items.get_mut(index).and_then(Option::take) else {
            return;
        };
        // A socket closed meanwhile may fail to deregister; it leaves the poller anyway.
        let _ = self.poll.registry().deregister(item.socket());
        self.free.push(index);
        self.state.parked.fetch_sub(1, Ordering::Relaxed);
        (self.resume)(item);
    }

    fn scan(&mut self, now: Instant) {
        for index in 0..self.items.len() {
            let due = match &mut self.items[index] {
                Some(item) => item.deadline().is_some_and(|at| at <= now) || item.must_wake(),
                None => false,
            };
            if due {
                self.unpark(index);
            }
        }
    }

    fn resume_all(&mut self) {
        for index in 0..self.items.len() {
            self.unpark(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::net::TcpListener;

    use super::*;

    #[derive(Debug)]
    struct Item {
        id: u32,
        socket: TcpStream,
        deadline: Option<Instant>,
        wake: Arc<AtomicBool>,
    }

    impl Park for Item {
        fn socket(&mut self) -> &mut TcpStream {
            &mut self.socket
        }
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn must_wake(&mut self) -> bool {
            self.wake.load(Ordering::Relaxed)
        }
    }

    fn pair(listener: &TcpListener) -> (std::net::TcpStream, TcpStream) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, TcpStream::from_std(server))
    }

    #[test]
    fn items_leave_on_data_on_their_deadline_on_demand_and_at_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, rx) = mpsc::channel();
        let lot = Lot::start(Duration::from_millis(20), move |item: Box<Item>| {
            tx.send(item.id).unwrap();
        })
        .unwrap();
        let wake = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for (id, deadline) in [
            (1, None),
            (2, Some(Duration::from_millis(150))),
            (3, None),
            (4, None),
        ] {
            let (client, socket) = pair(&listener);
            clients.push(client);
            let item = Item {
                id,
                socket,
                deadline: deadline.map(|d| Instant::now() + d),
                wake: if id == 3 {
                    Arc::clone(&wake)
                } else {
                    Arc::default()
                },
            };
            lot.park(Box::new(item)).unwrap();
        }
        let wait = Duration::from_secs(5);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(lot.parked(), 4);
        assert!(rx.try_recv().is_err(), "nothing leaves by itself");
        clients[0].write_all(b"x").unwrap();
        assert_eq!(rx.recv_timeout(wait), Ok(1), "readable");
        assert_eq!(rx.recv_timeout(wait), Ok(2), "deadline");
        wake.store(true, Ordering::Relaxed);
        assert_eq!(rx.recv_timeout(wait), Ok(3), "must wake");
        assert_eq!(lot.parked(), 1);
        lot.shut();
        assert_eq!(rx.recv_timeout(wait), Ok(4), "shutdown");
        let (_client, socket) = pair(&listener);
        let late = Item {
            id: 5,
            socket,
            deadline: None,
            wake: Arc::default(),
        };
        lot.park(Box::new(late)).unwrap();
        assert_eq!(rx.recv_timeout(wait), Ok(5), "after shutdown nothing stays");
        assert_eq!(lot.parked(), 0);
    }
}
