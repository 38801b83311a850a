//! The parking lot: device sockets wait here without a task, a buffer or a registration with the
//! runtime, each only its few bytes of session state in a slab. One thread polls them (mio, epoll).
//! When a socket is readable, or an item's waker is woken (its writes were answered), the lot asks
//! its [`Keeper`] to serve the item where it is; the keeper may instead send it away
//! ([`Next::Leave`]), and so does the lot when the item's deadline comes or it must be woken for
//! another reason (a revoked token, shutdown): [`Keeper::resume`] then takes it.
//!
//! Generic over what is parked, so this module knows nothing of sessions: the device session
//! parks itself ([`Lot::park`]) and the [`Keeper`] given to [`Lot::start`] serves parked items and
//! turns them back into sessions.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tracing::{debug, error};

/// The token of the lot's waker (new arrivals, woken items, shutdown).
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

/// Whether an item stays in the lot after its keeper served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Stay,
    Leave,
}

/// What the lot's thread does with its items (given to [`Lot::start`]).
pub(crate) trait Keeper<P>: Send + 'static {
    /// `item`'s socket is readable (edge-triggered: what is there must be read now, or the item
    /// must leave; a read shorter than asked has taken it all, as any later data is a new edge).
    /// Not called once the peer has closed its side or the socket has an error: the item leaves.
    /// `waker`, woken from any thread, has [`Keeper::woken`] called for the item.
    fn readable(&mut self, item: &mut P, waker: &Waker) -> Next;
    /// `item`'s waker was woken (it may be a stale wake, meant for an earlier item in its place).
    fn woken(&mut self, item: &mut P, waker: &Waker) -> Next;
    /// `item` leaves the lot: serve it elsewhere.
    fn resume(&mut self, item: Box<P>);
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

/// The handles' side: dropping the last one closes `arrivals`, which ends the lot's thread.
#[derive(Debug)]
struct Inner<P> {
    arrivals: mpsc::Sender<Box<P>>,
    ready: Arc<Ready>,
    state: Arc<State>,
}

/// The items whose wakers were woken, and the poller's waker.
#[derive(Debug)]
struct Ready {
    woken: Mutex<Vec<usize>>,
    /// Set once the poller was woken for `woken`: many wakes in a row cost one `write` to it.
    notified: AtomicBool,
    waker: mio::Waker,
}

impl Ready {
    fn wake_poller(&self) {
        if let Err(e) = self.waker.wake() {
            error!(%e, "cannot wake the parking lot");
        }
    }
}

impl crate::wakes::Wake for Ready {
    fn wake_now(&self) {
        self.wake_poller();
    }
}

/// The waker of one place in the slab.
struct PlaceWaker {
    index: usize,
    ready: Arc<Ready>,
}

impl Wake for PlaceWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready
            .woken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.index);
        // The writer answers a whole group commit before the lot is woken (`wakes::batched`).
        if !self.ready.notified.swap(true, Ordering::AcqRel) {
            crate::wakes::wake(&self.ready);
        }
    }
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
    /// `keeper` serves the items on the lot's thread.
    pub(crate) fn start(scan: Duration, keeper: impl Keeper<P>) -> io::Result<Lot<P>> {
        let poll = Poll::new()?;
        let ready = Arc::new(Ready {
            woken: Mutex::new(Vec::new()),
            notified: AtomicBool::new(false),
            waker: mio::Waker::new(poll.registry(), WAKE)?,
        });
        let (arrivals, rx) = mpsc::channel();
        let state = Arc::new(State::default());
        let lot = Lot {
            inner: Arc::new(Inner {
                arrivals,
                ready: Arc::clone(&ready),
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
                    ready,
                    items: Vec::new(),
                    wakers: Vec::new(),
                    free: Vec::new(),
                    keeper,
                }
                .run(scan);
            })?;
        Ok(lot)
    }

    /// Park `item` until its socket is readable or its deadline comes; `Err` gives it back when
    /// the lot cannot take it (its thread has ended).
    pub(crate) fn park(&self, item: Box<P>) -> Result<(), Box<P>> {
        self.inner.arrivals.send(item).map_err(|e| e.0)?;
        self.inner.ready.wake_poller();
        Ok(())
    }

    /// Resume everything parked, now and from now on (shutdown).
    pub(crate) fn shut(&self) {
        self.inner.state.shut.store(true, Ordering::Release);
        self.inner.ready.wake_poller();
    }

    /// How many items are parked now.
    #[cfg(test)]
    pub(crate) fn parked(&self) -> usize {
        self.inner.state.parked.load(Ordering::Relaxed)
    }
}

/// The lot's thread: the parked items and their poller.
struct Slab<P, K> {
    poll: Poll,
    rx: mpsc::Receiver<Box<P>>,
    state: Arc<State>,
    ready: Arc<Ready>,
    /// Boxed (by the sender): a slot costs a pointer, and the slab's spare capacity little.
    items: Vec<Option<Box<P>>>,
    /// The waker of each place, made when first needed and kept for whoever holds the place (an
    /// item that is never served, such as an idle connection, costs none).
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
    keeper: K,
}

impl<P: Park, K: Keeper<P>> Slab<P, K> {
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
                if event.token() == WAKE {
                    continue;
                }
                if event.is_read_closed()
                    || event.is_error()
                    || self.state.shut.load(Ordering::Acquire)
                {
                    // The end of the stream (or an error), maybe after data, or shutdown: the
                    // item's own task reads what is left and closes.
                    self.unpark(event.token().0);
                } else {
                    self.serve(event.token().0, K::readable);
                }
            }
            if self.ready.notified.swap(false, Ordering::AcqRel) {
                let woken = std::mem::take(
                    &mut *self
                        .ready
                        .woken
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                );
                for index in woken {
                    self.serve(index, K::woken);
                }
            }
            let shut = self.state.shut.load(Ordering::Acquire);
            loop {
                match self.rx.try_recv() {
                    Ok(item) if shut => self.keeper.resume(item),
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
            self.keeper.resume(item);
            return;
        }
        if index == self.items.len() {
            self.items.push(Some(item));
            self.wakers.push(None);
        } else {
            self.items[index] = Some(item);
        }
        self.state.parked.fetch_add(1, Ordering::Relaxed);
    }

    /// Let the keeper serve the item at `index` (if any) with `how`; it leaves if the keeper says
    /// so, or if the keeper panicked (the item's session then goes on, or ends, in its own task).
    fn serve(&mut self, index: usize, how: fn(&mut K, &mut P, &Waker) -> Next) {
        let (Some(Some(item)), Some(waker)) =
            (self.items.get_mut(index), self.wakers.get_mut(index))
        else {
            return;
        };
        let waker = waker.get_or_insert_with(|| {
            Waker::from(Arc::new(PlaceWaker {
                index,
                ready: Arc::clone(&self.ready),
            }))
        });
        let keeper = &mut self.keeper;
        let next = catch_unwind(AssertUnwindSafe(|| how(keeper, item, waker)));
        let next = next.unwrap_or_else(|_| {
            error!("serving a parked connection panicked; it leaves the lot");
            Next::Leave
        });
        if next == Next::Leave {
            self.unpark(index);
        }
    }

    fn unpark(&mut self, index: usize) {
        let Some(mut item) = self.items.get_mut(index).and_then(Option::take) else {
            return;
        };
        // A socket closed meanwhile may fail to deregister; it leaves the poller anyway.
        let _ = self.poll.registry().deregister(item.socket());
        self.free.push(index);
        self.state.parked.fetch_sub(1, Ordering::Relaxed);
        let keeper = &mut self.keeper;
        if catch_unwind(AssertUnwindSafe(|| keeper.resume(item))).is_err() {
            error!("resuming a parked connection panicked; it is closed");
        }
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

    /// Items leave when readable; a woken item says which it is.
    struct Keep {
        left: mpsc::Sender<u32>,
        woken: mpsc::Sender<u32>,
        wakers: mpsc::Sender<(u32, Waker)>,
    }

    /// What the test hears of a [`Keep`]: items that left, items woken, wakers handed out.
    type Heard = (
        mpsc::Receiver<u32>,
        mpsc::Receiver<u32>,
        mpsc::Receiver<(u32, Waker)>,
    );

    impl Keep {
        fn new() -> (Keep, Heard) {
            let (left, left_rx) = mpsc::channel();
            let (woken, woken_rx) = mpsc::channel();
            let (wakers, wakers_rx) = mpsc::channel();
            let keep = Keep {
                left,
                woken,
                wakers,
            };
            (keep, (left_rx, woken_rx, wakers_rx))
        }
    }

    impl Keeper<Item> for Keep {
        fn readable(&mut self, item: &mut Item, waker: &Waker) -> Next {
            if item.id >= 10 {
                // Served in place: read what is there, hand out the waker, stay.
                let mut buf = [0u8; 16];
                while matches!(std::io::Read::read(&mut item.socket, &mut buf), Ok(n) if n > 0) {}
                self.wakers.send((item.id, waker.clone())).unwrap();
                return Next::Stay;
            }
            Next::Leave
        }
        fn woken(&mut self, item: &mut Item, _: &Waker) -> Next {
            self.woken.send(item.id).unwrap();
            Next::Stay
        }
        fn resume(&mut self, item: Box<Item>) {
            self.left.send(item.id).unwrap();
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
        let (keeper, (rx, _, _)) = Keep::new();
        let lot = Lot::start(Duration::from_millis(20), keeper).unwrap();
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

    #[test]
    fn items_are_served_in_place_and_woken_by_their_wakers() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (keeper, (left, woken, wakers)) = Keep::new();
        let lot = Lot::start(Duration::from_millis(20), keeper).unwrap();
        let mut clients = Vec::new();
        for id in [10, 11] {
            let (client, socket) = pair(&listener);
            clients.push(client);
            let item = Item {
                id,
                socket,
                deadline: None,
                wake: Arc::default(),
            };
            lot.park(Box::new(item)).unwrap();
        }
        let wait = Duration::from_secs(5);
        // Each is served where it is, as often as data comes, and stays.
        for round in 0..2 {
            for client in &mut clients {
                client.write_all(b"x").unwrap();
            }
            let mut served: Vec<(u32, Waker)> =
                (0..2).map(|_| wakers.recv_timeout(wait).unwrap()).collect();
            served.sort_by_key(|(id, _)| *id);
            assert_eq!(served[0].0, 10, "round {round}");
            assert_eq!(served[1].0, 11, "round {round}");
            // Woken from another thread, several times: the keeper hears of the right item.
            if round == 1 {
                let waker = served[1].1.clone();
                std::thread::spawn(move || {
                    waker.wake_by_ref();
                    waker.wake();
                })
                .join()
                .unwrap();
                assert_eq!(woken.recv_timeout(wait), Ok(11));
                served[0].1.wake_by_ref();
                let mut more: Vec<u32> = woken.try_iter().collect();
                while !more.contains(&10) {
                    more.push(woken.recv_timeout(wait).unwrap());
                }
                assert!(more.iter().all(|id| [10, 11].contains(id)), "{more:?}");
            }
        }
        assert_eq!(lot.parked(), 2);
        assert!(left.try_recv().is_err(), "served items stay");
        lot.shut();
        let mut gone: Vec<u32> = (0..2).map(|_| left.recv_timeout(wait).unwrap()).collect();
        gone.sort_unstable();
        assert_eq!(gone, [10, 11]);
    }
}
