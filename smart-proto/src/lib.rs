//! SMART-OS protocol (crate docs: owned by the envelope/header/body helper; to be written as a one-page
//! protocol explanation with runnable examples).

pub mod body;
pub mod envelope;
pub mod error;
pub mod header;
pub mod message;
pub mod normalize;
pub mod query;
pub mod record;

pub use body::{parse_body, parse_python_literal};
pub use envelope::{Envelope, Kind, Payload, parse_envelope};
pub use error::{Error, Result};
pub use header::{Header, MessageId, Serial};
pub use message::{
    DEVICE_WELCOME, DASHBOARD_WELCOME, DeviceMessage, Rejection, ServerMessage, parse_dashboard_message,
    parse_device_message, parse_server_message, write_init,
};
pub use normalize::{Normalized, normalize};
pub use query::{Clause, Direction, Filter, Op, Query, Sort, SortKind};
pub use record::{FieldValue, Record, Timestamp, Update};
