#![allow(clippy::unwrap_used)]
use std::hint::black_box;
use std::time::Instant;
use serde_json::{Map, Value};

fn naive(frame: &str) -> Option<Map<String, Value>> {
    let envelope: Value = serde_json::from_str(frame).ok()?;
    let _kind = envelope.get("type")?.as_str()?;
    let message = envelope.get("message")?.as_str()?;
    let mut parts = message.splitn(3, ':');
    let (_id, _serial, body) = (parts.next()?, parts.next()?, parts.next()?);
    let Value::Object(body) = serde_json::from_str(body).ok()? else { return None };
    Some(body)
}

fn time<F: FnMut()>(name: &str, mut f: F) {
    for _ in 0..50_000 { f(); }
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n { f(); }
    eprintln!("{name}: {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
}

#[test]
#[ignore]
fn timing() {
    let json = r#"{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}"#;
    let py = r#"{'type': 'UPDT', 'message': '0116:0001:{"power_consumption": 357}'}"#;
    assert!(smart_proto::parse_device_message(json).is_ok());
    assert!(smart_proto::parse_device_message(py).is_ok());
    time("naive json", || { black_box(naive(black_box(json))); });
    time("proto json", || { black_box(smart_proto::parse_device_message(black_box(json)).is_ok()); });
    time("proto py  ", || { black_box(smart_proto::parse_device_message(black_box(py)).is_ok()); });
    time("envelope json", || { black_box(smart_proto::parse_envelope(black_box(json)).is_ok()); });
    time("envelope py", || { black_box(smart_proto::parse_envelope(black_box(py)).is_ok()); });
    time("header", || { black_box(smart_proto::Header::parse(black_box("0116:0001:{\"power_consumption\": 357}")).is_ok()); });
    time("body", || { black_box(smart_proto::parse_body(black_box("{\"power_consumption\": 357}")).is_ok()); });
    let serial = smart_proto::Serial::new("0001").unwrap();
    time("body+norm", || { black_box(smart_proto::normalize(smart_proto::parse_body(black_box("{\"power_consumption\": 357}")).unwrap(), &serial).is_ok()); });
}
