//! A stored record's JSON text (Redis, the write-ahead log, sled): `Record::from_json`, whose fast path
//! must agree with the general one on every text; what it reads must write back as serde_json writes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_proto_fuzz::check_record_json;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = check_record_json(text);
    }
});
