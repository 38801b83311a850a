//! A message body: the JSON fast path and the Python-literal fallback.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use smart_proto::parse_body;
use smart_proto_fuzz::check_error;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_body(body);

    // Differential: wherever serde_json reads the text, parse_body must agree with it.
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(map)) => assert_eq!(parsed.as_ref(), Ok(&map), "JSON object {body:?}"),
        Ok(_) => assert!(
            parsed.is_err(),
            "non-object JSON {body:?} accepted as {parsed:?}"
        ),
        Err(_) => {}
    }

    match parsed {
        Ok(map) => {
            // What was read writes as JSON that reads back the same.
            let json = Value::Object(map.clone()).to_string();
            assert_eq!(parse_body(&json), Ok(map), "body round trip via {json}");
        }
        Err(e) => check_error(&e, body.len()),
    }
});
