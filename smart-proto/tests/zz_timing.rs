#![allow(clippy::unwrap_used)]
use std::hint::black_box;
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

#[test]
#[ignore]
fn timing() {
    let json = r#"{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}"#;
    let py = r#"{'type': 'UPDT', 'message': '0116:0001:{"power_consumption": 357}'}"#;
    let name = std::env::var("BENCH").unwrap();
    let n: usize = std::env::var("N").unwrap().parse().unwrap();
    let serial = smart_proto::Serial::new("0001").unwrap();
    let normd = smart_proto::normalize(smart_proto::parse_body("{\"power_consumption\": 357}").unwrap(), &serial).unwrap();
    let hdr = "0116:0001:{\"power_consumption\": 357}";
    for _ in 0..n {
        match name.as_str() {
            "naive" => { black_box(naive(black_box(json))); }
            "json" => { black_box(smart_proto::parse_device_message(black_box(json)).is_ok()); }
            "py" => { black_box(smart_proto::parse_device_message(black_box(py)).is_ok()); }
            "env_json" => { black_box(smart_proto::parse_envelope(black_box(json)).is_ok()); }
            "env_py" => { black_box(smart_proto::parse_envelope(black_box(py)).is_ok()); }
            "header" => { black_box(smart_proto::Header::parse(black_box(hdr)).is_ok()); }
            "body" => { black_box(smart_proto::parse_body(black_box("{\"power_consumption\": 357}")).is_ok()); }
            "pybody" => { black_box(smart_proto::parse_body(black_box("{'power_consumption': 357}")).is_ok()); }
            "update" => { black_box(smart_proto::Update::from_normalized(black_box(normd.clone())).is_ok()); }
            "clone" => { black_box(black_box(normd.clone())); }
            "alloc" => { let mut m = Map::new(); m.insert(black_box("power_consumption").to_owned(), Value::from(357)); black_box(m); }
            _ => panic!(),
        }
    }
}
