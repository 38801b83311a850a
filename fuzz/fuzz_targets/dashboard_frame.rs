//! A dashboard frame: a FILT envelope with its list of clauses, then the query evaluated over a fleet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_proto::parse_dashboard_message;
use smart_proto_fuzz::{check_error, check_query};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    match parse_dashboard_message(frame) {
        Ok(query) => check_query(&query),
        Err(e) => check_error(&e, frame.len()),
    }
});
