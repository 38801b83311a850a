//! Any Python literal: the value read, written back as Python `repr`, must read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_proto::parse_python_literal;
use smart_proto_fuzz::{check_error, python_repr};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_python_literal(text) {
        Ok(value) => {
            let mut repr = String::new();
            python_repr(&value, &mut repr);
            assert_eq!(
                parse_python_literal(&repr),
                Ok(value),
                "Python literal round trip via {repr}"
            );
        }
        Err(e) => check_error(&e, text.len()),
    }
});
