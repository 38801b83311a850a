//! The front of the ingest path: one device connection's [`Intake`] parses a frame, checks the
//! connection's and the server's admission rules (its token's serial, serials per connection,
//! extras, closed registration) and queues the write for the writer thread with the connection's
//! [`AckTicket`]; what a parked connection keeps of it is its [`ParkedIntake`].

use std::collections::HashSet;
use std::sync::Arc;

use smart_proto::{Header, Kind, Rejection, Serial, ServerMessage};
use tracing::info;

use super::{Ingest, Job, Write, now};
use crate::acks::{AckQueue, AckTicket};
use crate::metrics::RejectClass;

/// A device message queued for the writer: what the session needs to reply in order.
#[derive(Debug)]
pub(crate) struct Queued {
    pub header: Header,
    pub kind: Kind,
    /// The connection's write number (see [`AckQueue`]).
    pub ordinal: u64,
}

/// One device connection's side of the ingest path.
#[derive(Debug)]
pub(crate) struct Intake<'a> {
    ingest: &'a Ingest,
    /// The serial this connection's device token is for (`--auth required`); `None`: any serial.
    bound: Option<Serial>,
    /// The owner that token assigns to its device, if any.
    owner: Option<Arc<str>>,
    /// Serials this connection has sent a valid message for (it keeps them online); at most
    /// `--max-serials-per-connection`.
    attached: HashSet<Serial>,
    /// Where the writer answers this connection's writes.
    acks: Arc<AckQueue>,
    /// Writes submitted so far (the ordinal of the latest).
    submitted: u64,
}

/// What a parked connection keeps of its [`Intake`] (the parking lot's thread serves its frames
/// through [`Ingest::resume`] too, so some of its writes may be in flight).
#[derive(Debug, Default)]
pub(crate) struct ParkedIntake {
    bound: Option<Serial>,
    owner: Option<Arc<str>>,
    attached: HashSet<Serial>,
    /// Where the writer answers the connection's writes: made at its first spell, then kept.
    acks: Option<Arc<AckQueue>>,
    /// Writes submitted so far.
    submitted: u64,
}

impl ParkedIntake {
    /// A new connection's: bound to the serial of its device token and the owner that token
    /// assigns, if given (`--auth required`), with no serial attached yet.
    pub(crate) fn new(binding: Option<(Serial, Option<Arc<str>>)>) -> ParkedIntake {
        let (bound, owner) = match binding {
            Some((serial, owner)) => (Some(serial), owner),
            None => (None, None),
        };
        ParkedIntake {
            bound,
            owner,
            ..ParkedIntake::default()
        }
    }

    /// Where this connection's writes are answered (`None`: it has had no spell yet).
    pub(crate) fn acks(&self) -> Option<&AckQueue> {
        self.acks.as_deref()
    }
}

impl<'a> Intake<'a> {
    /// A device connection's intake, from what it kept (see [`Ingest::resume`]).
    pub(super) fn resumed(ingest: &'a Ingest, parked: ParkedIntake) -> Intake<'a> {
        Intake {
            ingest,
            bound: parked.bound,
            owner: parked.owner,
            attached: parked.attached,
            acks: parked.acks.unwrap_or_default(),
            submitted: parked.submitted,
        }
    }

    /// What outlives an idle spell, with nothing in flight: the binding and the serials kept
    /// online (the answers' queue is made anew when the connection next speaks).
    pub(crate) fn park_idle(self) -> ParkedIntake {
        debug_assert_eq!(self.acks.answered(), self.submitted);
        ParkedIntake {
            bound: self.bound,
            owner: self.owner,
            attached: self.attached,
            acks: None,
            submitted: 0,
        }
    }

    /// What outlives the spell, writes in flight included: the binding, the serials kept online and
    /// the writes' answers.
    pub(crate) fn park(self) -> ParkedIntake {
        ParkedIntake {
            bound: self.bound,
            owner: self.owner,
            attached: self.attached,
            acks: Some(self.acks),
            submitted: self.submitted,
        }
    }

    /// Where this connection's writes are answered.
    pub(crate) fn acks(&self) -> &AckQueue {
        &self.acks
    }

    /// Parse one text frame, check it and queue it for the writer: the queued write, or the ERROR
    /// frame owed for it (nothing of it applied).
    pub(crate) fn submit(&mut self, text: &str) -> Result<Queued, String> {
        let message = match smart_proto::parse_device_message(text) {
            Ok(message) => message,
            Err(rejection) => return Err(self.reject(&rejection)),
        };
        let ingest = self.ingest;
        let serial = &message.header.serial;
        if let Some(bound) = self.bound.as_ref().filter(|bound| *bound != serial) {
            ingest.metrics.reject(RejectClass::Token);
            info!(header = %message.header, %bound, "device message rejected: serial not covered by the connection's token");
            let reply = ServerMessage::Error {
                header: Some(message.header.clone()),
                reason: format!(
                    "this connection's device token is for serial {bound}: it may not write {serial}"
                ),
            };
            return Err(reply.to_frame());
        }
        let attach = !self.attached.contains(serial);
        let max_serials = ingest.limits.serials_per_connection;
        if attach && self.attached.len() >= max_serials {
            ingest.metrics.reject(RejectClass::Serials);
            info!(header = %message.header, max_serials, "device message rejected: too many serials on one connection");
            let reply = ServerMessage::Error {
                header: Some(message.header),
                reason: format!(
                    "this connection already carries {max_serials} serials (--max-serials-per-connection): send for more serials over another connection"
                ),
            };
            return Err(reply.to_frame());
        }
        let limits = smart_proto::Limits {
            max_extras: ingest.limits.extras,
            max_extra_bytes: ingest.limits.extra_bytes,
        };
        if let Err(e) = limits.check(&message.update) {
            let rejection = Rejection {
                header: Some(message.header),
                error: e,
            };
            return Err(self.reject(&rejection));
        }
        if let Err(e) = ingest.fleet.admit(serial) {
            ingest.metrics.reject(RejectClass::Unregistered);
            info!(header = %message.header, reason = %e, "device message rejected");
            let reply = ServerMessage::Error {
                header: Some(message.header),
                reason: e.to_string(),
            };
            return Err(reply.to_frame());
        }
        let ordinal = self.submitted + 1;
        let job = Job::Write(Write {
            header: message.header.clone(),
            update: message.update,
            now: now(),
            owner: self.owner.clone(),
            ack: AckTicket::new(Arc::clone(&self.acks), ordinal),
        });
        if attach {
            // The first message of this connection for the serial.
            ingest.attach(serial, job);
            self.attached.insert(serial.clone());
        } else {
            ingest.submit(job);
        }
        self.submitted = ordinal;
        Ok(Queued {
            header: message.header,
            kind: message.kind,
            ordinal,
        })
    }

    fn reject(&self, rejection: &Rejection) -> String {
        let class = RejectClass::of(&rejection.error);
        self.ingest.metrics.reject(class);
        if let Some(header) = &rejection.header {
            info!(%header, reason = %rejection.error, "device message rejected");
        } else {
            info!(reason = %rejection.error, "device message rejected");
        }
        rejection.reply()
    }

    /// The connection is over: it no longer keeps its devices online.
    pub(crate) fn detach_all(&mut self) {
        for serial in self.attached.drain() {
            self.ingest.detach(&serial);
        }
    }
}
