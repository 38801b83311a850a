//! Every example frame of `seed/smart-os-technical-details.md`, parsed and answered as PROTOCOL.md says.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
#![allow(
    clippy::float_cmp,
    reason = "the seed's numbers are exact in binary; the comparison is exact on purpose"
)]

use serde_json::{Map, Value, json};
use smart_proto::{
    DASHBOARD_WELCOME, DEVICE_WELCOME, Error, Header, Kind, Payload, Record, Rejection, Serial,
    ServerMessage, Timestamp, parse_body, parse_dashboard_message, parse_device_message,
    parse_envelope, parse_server_message, write_init,
};

/// The seed's "Typical Initial Message", verbatim: a Python-literal envelope around a JSON body with
/// underscored backing fields and the device's runtime attributes.
const SEED_INIT: &str = r#"{'type': 'INIT', 'message': '0000:0001:{"serial_number": "0001", "solmate_version": "v1", "_software_version": "v8.6", "_country": "DE", "_postcode": 7445, "_power_income": 377, "_power_inject": 336, "_power_consumption": 400, "_battery": 250, "_capacity": 5184000, "_local_time": null, "server_url": "ws://localhost:8000/update/", "websocket": "", "connected": true, "publish": true, "message_id": "0000", "message_queue": {}, "tasks": "", "meassuring": true, "charging": false, "injecting": false, "pv_connectors": 1}'}"#;

/// "An Initial message may also look like": an UPDT as the first message, no underscores.
const SEED_FIRST_UPDT: &str = r#"{'type': 'UPDT', 'message': '0000:0001:{"battery": 350, "software_version": "v2.0", "country": "AT", "postcode": 9733, "power_income": 388, "power_inject": 357, "power_consumption": 289}'}"#;

/// "Valid Data Update from Remote Device".
const SEED_UPDT: &str = r#"{'type': 'UPDT', 'message': '0116:0001:{"power_consumption": 357}'}"#;

/// "Typical Server Response to the Remote Device", as the seed prints it.
const SEED_ACK: &str = r#"{"type": "INFO", "message": "0116:0001:OK"}"#;

/// "Typical Server Response" to a query, as the seed prints it: a JSON string holding the frame.
const SEED_INIT_REPLY: &str = r#""{\"type\": \"INIT\", \"message\": [{\"serial_number\": \"0004\", \"software_version\": \"\", \"country\": \"\", \"postcode\": \"\", \"manufacturing_date\": \"2024-03-11T00:43:33.256667Z\", \"power_income\": 0.0, \"power_inject\": 0.0, \"power_consumption\": 144.0, \"battery\": 0.0, \"last_status_update\": \"2024-03-11T00:46:52.690962Z\", \"solmate_version\": \"v2\", \"pv_connectors\": 2, \"local_time\": \"2024-03-11T01:46:48.012456Z\", \"statusdata_ptr\": 467}]}""#;

/// Numbers may be held as integers or floats; the protocol cares about the value.
fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn device_welcome_is_the_seed_text() {
    let seed = r#"{"type": "INFO", "message": "Welcome to SMART-Server - SolMate Real-Time ObServer! - SolServerConsumer: groups ['updates']"}"#;
    assert_eq!(
        parse_server_message(seed).unwrap(),
        ServerMessage::Info(DEVICE_WELCOME.to_owned())
    );
    let ours = ServerMessage::Info(DEVICE_WELCOME.to_owned()).to_frame();
    assert_eq!(
        ours,
        r#"{"type":"INFO","message":"Welcome to SMART-Server - SolMate Real-Time ObServer! - SolServerConsumer: groups ['updates']"}"#
    );
    // Same JSON value as the seed's spelling.
    assert_eq!(
        serde_json::from_str::<Value>(&ours).unwrap(),
        serde_json::from_str::<Value>(seed).unwrap()
    );
}

#[test]
fn dashboard_welcome_is_the_seed_text() {
    // The seed prints it JavaScript-style: {type: 'INFO', message: "Welcome …"}.
    assert_eq!(
        DASHBOARD_WELCOME,
        "Welcome to SMART-Server - SolMate Real-Time ObServer! - ClientConsumer: groups ['broadcast']"
    );
    assert_eq!(
        ServerMessage::Info(DASHBOARD_WELCOME.to_owned()).to_frame(),
        r#"{"type":"INFO","message":"Welcome to SMART-Server - SolMate Real-Time ObServer! - ClientConsumer: groups ['broadcast']"}"#
    );
}

#[test]
fn the_four_types() {
    for (name, kind) in [
        ("INFO", Kind::Info),
        ("FILT", Kind::Filt),
        ("INIT", Kind::Init),
        ("UPDT", Kind::Updt),
    ] {
        assert_eq!(Kind::parse(name).unwrap(), kind);
    }
}

#[test]
fn capping_identifier_example_plain_key_wins() {
    let message = "0001:1234:{'parameter_name':'AT','_parameter_name':430}";
    let (header, body) = Header::parse(message).unwrap();
    assert_eq!(
        (header.id.as_str(), header.serial.as_str()),
        ("0001", "1234")
    );
    assert_eq!(
        obj(Value::Object(parse_body(body).unwrap())),
        obj(json!({"parameter_name": "AT", "_parameter_name": 430}))
    );

    // As a whole device frame, in both envelope forms: normalization keeps the plain key.
    let python = format!("{{'type': 'UPDT', 'message': \"{message}\"}}");
    let json_frame = format!(
        r#"{{"type": "UPDT", "message": {}}}"#,
        Value::String(message.to_owned())
    );
    for frame in [python, json_frame] {
        let msg = parse_device_message(&frame).unwrap();
        assert_eq!(msg.header, header);
        assert_eq!(
            msg.update.as_map(),
            &obj(json!({"parameter_name": "AT"})),
            "{frame}"
        );
    }
}

#[test]
fn message_body_example() {
    let body = parse_body("{'parameter_name': 'AT', '_parameter_name': 430}").unwrap();
    assert_eq!(body["parameter_name"], "AT");
    assert_eq!(body["_parameter_name"], 430);
}

#[test]
fn seed_init_with_underscores_and_runtime_keys() {
    let env = parse_envelope(SEED_INIT).unwrap();
    assert_eq!(env.kind, Kind::Init);
    assert!(matches!(env.message, Payload::Text(_)));

    let msg = parse_device_message(SEED_INIT).unwrap();
    assert_eq!(msg.kind, Kind::Init);
    assert_eq!(msg.header, Header::new("0000", "0001").unwrap());
    let f = msg.update.as_map();
    let mut keys: Vec<&str> = f.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "battery",
            "capacity",
            "charging",
            "country",
            "injecting",
            "local_time",
            "meassuring",
            "postcode",
            "power_consumption",
            "power_income",
            "power_inject",
            "pv_connectors",
            "software_version",
            "solmate_version",
        ]
    );
    assert_eq!(f["software_version"], "v8.6");
    assert_eq!(f["country"], "DE");
    assert_eq!(f["postcode"], "7445", "postcode numbers become text");
    assert_eq!(f["solmate_version"], "v1");
    assert_eq!(num(&f["power_income"]), 377.0);
    assert_eq!(num(&f["power_inject"]), 336.0);
    assert_eq!(num(&f["power_consumption"]), 400.0);
    assert_eq!(num(&f["battery"]), 250.0);
    assert_eq!(num(&f["capacity"]), 5_184_000.0);
    assert_eq!(f["local_time"], Value::Null);
    assert_eq!(f["pv_connectors"], 1);
    assert_eq!(
        (&f["meassuring"], &f["charging"], &f["injecting"]),
        (&json!(true), &json!(false), &json!(false))
    );
}

#[test]
fn seed_updt_as_first_message() {
    let msg = parse_device_message(SEED_FIRST_UPDT).unwrap();
    assert_eq!(
        (msg.kind, msg.header.to_string()),
        (Kind::Updt, "0000:0001".to_owned())
    );
    let f = msg.update.as_map();
    assert_eq!(f.len(), 7);
    assert_eq!(num(&f["battery"]), 350.0);
    assert_eq!(f["software_version"], "v2.0");
    assert_eq!(f["country"], "AT");
    assert_eq!(f["postcode"], "9733");
    assert_eq!(num(&f["power_income"]), 388.0);
    assert_eq!(num(&f["power_inject"]), 357.0);
    assert_eq!(num(&f["power_consumption"]), 289.0);
}

#[test]
fn seed_updt_and_its_exact_ok_reply() {
    let msg = parse_device_message(SEED_UPDT).unwrap();
    assert_eq!(msg.update.len(), 1);
    assert_eq!(num(&msg.update.as_map()["power_consumption"]), 357.0);
    let ack = ServerMessage::Ok(msg.header.clone()).to_frame();
    assert_eq!(ack, r#"{"type":"INFO","message":"0116:0001:OK"}"#);
    // The seed's spacing differs; the value is the same, and clients read either.
    assert_eq!(
        serde_json::from_str::<Value>(&ack).unwrap(),
        serde_json::from_str::<Value>(SEED_ACK).unwrap()
    );
    assert_eq!(
        parse_server_message(SEED_ACK).unwrap(),
        ServerMessage::Ok(msg.header)
    );

    // The same update in strict JSON, as a JSON-speaking device sends it.
    let json_frame = r#"{"type": "UPDT", "message": "0116:0001:{\"power_consumption\": 357}"}"#;
    assert_eq!(
        parse_device_message(json_frame).unwrap(),
        parse_device_message(SEED_UPDT).unwrap()
    );
}

#[test]
fn error_replies_echo_the_header_or_say_error() {
    let rejected =
        parse_device_message(r#"{'type': 'UPDT', 'message': '0116:0001:{"battery": "full"}'}"#)
            .unwrap_err();
    assert_eq!(rejected.header, Some(Header::new("0116", "0001").unwrap()));
    let reply: Value = serde_json::from_str(&rejected.reply()).unwrap();
    assert_eq!(reply["type"], "INFO");
    assert_eq!(reply["message"], "0116:0001:ERROR");
    assert!(
        reply["reason"].as_str().unwrap().contains("battery"),
        "{reply}"
    );

    let rejected = parse_device_message("{'type': 'UPDT', 'message': 'garbage'}").unwrap_err();
    assert_eq!(
        rejected,
        Rejection {
            header: None,
            error: Error::Header("message id must be 1 to 9 digits, got \"garbage\"".into())
        }
    );
    assert_eq!(
        rejected.reply(),
        r#"{"type":"INFO","message":"ERROR","reason":"bad header: message id must be 1 to 9 digits, got \"garbage\""}"#
    );
}

#[test]
fn message_id_after_9999_is_10000() {
    let msg = parse_device_message(r#"{"type": "UPDT", "message": "10000:0001:{\"battery\": 1}"}"#)
        .unwrap();
    assert_eq!(msg.header.id.as_str(), "10000");
    assert_eq!(
        ServerMessage::Ok(msg.header).to_frame(),
        r#"{"type":"INFO","message":"10000:0001:OK"}"#
    );
}

#[test]
fn updt_to_dashboards_carries_the_seed_message_text() {
    // The seed prints {type: 'UPDT', message: '0008:0001:{"local_time": "2024-03-17 14:59:13.047108"}'}.
    let header = Header::new("0008", "0001").unwrap();
    let body = obj(json!({"local_time": "2024-03-17 14:59:13.047108"}));
    let frame = ServerMessage::Updt {
        header: header.clone(),
        body: body.clone(),
    }
    .to_frame();
    let envelope: Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(envelope["type"], "UPDT");
    assert_eq!(
        envelope["message"],
        r#"0008:0001:{"local_time": "2024-03-17 14:59:13.047108"}"#
    );
    assert_eq!(
        parse_server_message(&frame).unwrap(),
        ServerMessage::Updt { header, body }
    );
}

#[test]
fn online_updt_text_of_protocol() {
    let header = Header {
        id: smart_proto::MessageId::zero(),
        serial: Serial::new("0001").unwrap(),
    };
    let frame = ServerMessage::Updt {
        header,
        body: obj(json!({"online": false})),
    }
    .to_frame();
    assert_eq!(
        frame,
        r#"{"type":"UPDT","message":"0000:0001:{\"online\": false}"}"#
    );
}

#[test]
fn seed_filt_query() {
    let query = parse_dashboard_message(
        r#"{"type":"FILT","message":["filter:serial_number:=:0","sort:serial_number:<:abc"]}"#,
    )
    .unwrap();
    let fleet: Vec<Record> = ["2032", "1234", "0023", "0001", "1009"]
        .iter()
        .map(|s| Record::new(Serial::new(s).unwrap(), "EET", Timestamp::UNIX_EPOCH))
        .collect();
    let view: Vec<&str> = query
        .apply(&fleet)
        .iter()
        .map(|r| r.serial_number.as_str())
        .collect();
    // "all devices with a serial number containing a 0", and `<` sorts ascending (PROTOCOL.md §8).
    assert_eq!(view, ["0001", "0023", "1009", "2032"]);
}

#[test]
fn seed_init_reply_fields_match_ours() {
    let seed_frame: String = serde_json::from_str(SEED_INIT_REPLY).unwrap();
    let seed: Value = serde_json::from_str(&seed_frame).unwrap();
    let seed_record = seed["message"][0].as_object().unwrap().clone();

    let mut record = Record::new(
        Serial::new("0004").unwrap(),
        "EET",
        Timestamp::parse("2024-03-11T00:43:33.256667Z").unwrap(),
    );
    record.power_income = Some(0.0);
    record.power_inject = Some(0.0);
    record.power_consumption = Some(144.0);
    record.battery = Some(0.0);
    record.last_status_update = Timestamp::parse("2024-03-11T00:46:52.690962Z").unwrap();
    record.solmate_version = "v2".into();
    record.pv_connectors = 2;
    record.local_time = Some("2024-03-11T01:46:48.012456Z".into());

    let ours_frame = write_init([&record]);
    let ServerMessage::Init(records) = parse_server_message(&ours_frame).unwrap() else {
        panic!("not an INIT")
    };
    assert_eq!(records, [record]);
    let ours: Value = serde_json::from_str(&ours_frame).unwrap();
    assert_eq!(ours["type"], "INIT");
    let ours_record = ours["message"][0].as_object().unwrap();
    for (key, value) in &seed_record {
        if key == "statusdata_ptr" {
            // An ORM artefact of the original, not part of the protocol (PROTOCOL.md §6).
            assert!(!ours_record.contains_key(key));
            continue;
        }
        let mine = &ours_record[key];
        match value {
            Value::Number(_) => assert_eq!(num(mine), num(value), "{key}"),
            _ => assert_eq!(mine, value, "{key}"),
        }
    }
}
