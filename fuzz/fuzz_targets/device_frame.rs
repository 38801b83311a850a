//! A device frame all the way: envelope, header, body, normalization, typed fields; then the ack or
//! ERROR reply, the record it builds and the INIT it appears in. The result must equal the one of the
//! stage functions composed by hand (the library takes a fused fast path for common frames).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_proto::{ServerMessage, parse_device_message, parse_server_message};
use smart_proto_fuzz::{check_device_message, check_error, device_message_by_stages};

fuzz_target!(|data: &[u8]| {
    // Websocket text frames are UTF-8 by the time they reach the parser.
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_device_message(frame);
    assert_eq!(
        parsed,
        device_message_by_stages(frame),
        "fast path and stages disagree on {frame:?}"
    );
    match parsed {
        Ok(msg) => check_device_message(&msg),
        Err(rejection) => {
            // Offsets of body errors are relative to the body, a suffix of the frame's message.
            check_error(&rejection.error, frame.len());
            let reply = rejection.reply();
            let expected = ServerMessage::Error {
                header: rejection.header.clone(),
                reason: rejection.error.to_string(),
            };
            match parse_server_message(&reply) {
                Ok(back) => assert_eq!(back, expected, "ERROR reply round trip via {reply}"),
                Err(e) => panic!("own ERROR reply {reply} refused: {e}"),
            }
        }
    }
});
