//! smart-proto hot paths, each measured against a naive baseline in the same run so the figures can be read
//! as ratios (see `benches/README.md`).
//!
//! The baseline is what a straightforward port would do: `serde_json::Value` for the envelope, `splitn(3,
//! ':')` for the header and `serde_json::Value` for the body, with no normalization, typing or validation.
//! smart-proto does strictly more work (validates the header, normalizes, type-checks), so a ratio above 1
//! is a real gain.

use std::cmp::Ordering;
use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use smart_proto::{
    Header, Payload, Query, Record, Serial, ServerMessage, Timestamp, Update, frame, normalize,
    parse_body, parse_dashboard_message, parse_device_message, parse_envelope, write_init,
};

/// The seed's INIT: underscored keys, runtime keys, extras.
const INIT_BODY: &str = r#"{"serial_number": "0001", "solmate_version": "v1", "_software_version": "v8.6", "_country": "DE", "_postcode": 7445, "_power_income": 377, "_power_inject": 336, "_power_consumption": 400, "_battery": 250, "_capacity": 5184000, "_local_time": null, "server_url": "ws://localhost:8000/update/", "websocket": "", "connected": true, "publish": true, "message_id": "0000", "message_queue": {}, "tasks": "", "meassuring": true, "charging": false, "injecting": false, "pv_connectors": 1}"#;

/// A stored record as `Record::to_json` writes it: 470 bytes, three extras.
const RECORD_JSON: &str = r#"{"serial_number":"0001","software_version":"v8.6","country":"DE","solmate_version":"v1","postcode":"7445","power_income":377,"power_inject":336,"power_consumption":400,"battery":92.5,"capacity":5184000,"pv_connectors":1,"local_time":"2024-03-17 14:59:13.047108","owner":"EET","manufacturing_date":"2024-03-11T00:43:33.256667Z","last_status_update":"2024-03-11T00:46:52.690962Z","online":true,"charging":false,"meassuring":true,"server_url":"ws://localhost:8000/update/"}"#;

/// One device frame in its two envelope forms.
struct Frame {
    name: &'static str,
    /// `{"type": "UPDT", "message": "…"}`: what the naive path can read.
    json: String,
    /// `{'type': 'UPDT', 'message': '…'}`: `str(dict)` from a Python device, as in the seed.
    python: String,
}

fn frame(name: &'static str, kind: &str, message: &str) -> Frame {
    // The layout of Python's `json.dumps`, which devices use: `type` first, a space after each separator.
    let json = format!(
        r#"{{"type": "{kind}", "message": {}}}"#,
        Value::String(message.to_owned())
    );
    let python = format!("{{'type': '{kind}', 'message': '{message}'}}");
    Frame { name, json, python }
}

/// UPDTs of 1–3 fields like the seed's, and the seed's INIT.
fn device_frames() -> Vec<Frame> {
    vec![
        frame(
            "updt_1_field",
            "UPDT",
            r#"0116:0001:{"power_consumption": 357}"#,
        ),
        frame(
            "updt_2_fields",
            "UPDT",
            r#"0117:0001:{"power_inject": 357, "battery": 92.5}"#,
        ),
        frame(
            "updt_3_fields",
            "UPDT",
            r#"0118:0001:{"power_income": 388, "power_inject": 357, "power_consumption": 289}"#,
        ),
        frame("init_seed", "INIT", &format!("0000:0001:{INIT_BODY}")),
    ]
}

/// The naive path: what the baseline pays for the same frame.
fn naive_parse(frame: &str) -> Option<(&str, Map<String, Value>)> {
    let envelope: Value = serde_json::from_str(frame).ok()?;
    let kind = envelope.get("type")?.as_str()?;
    let message = envelope.get("message")?.as_str()?;
    let mut parts = message.splitn(3, ':');
    let (_id, _serial, body) = (parts.next()?, parts.next()?, parts.next()?);
    let Value::Object(body) = serde_json::from_str(body).ok()? else {
        return None;
    };
    Some((if kind == "INIT" { "INIT" } else { "UPDT" }, body))
}

fn bench_device_frames(c: &mut Criterion) {
    for f in device_frames() {
        // Check once, outside the timing, that both sides accept the frame.
        assert!(
            parse_device_message(&f.json).is_ok(),
            "smart-proto refused {}",
            f.json
        );
        assert!(
            parse_device_message(&f.python).is_ok(),
            "smart-proto refused {}",
            f.python
        );
        assert!(
            naive_parse(&f.json).is_some(),
            "naive path refused {}",
            f.json
        );

        let mut group = c.benchmark_group(format!("device_frame/{}", f.name));
        group.throughput(Throughput::Elements(1));
        group.bench_function("naive_serde_value", |b| {
            b.iter(|| naive_parse(black_box(&f.json)));
        });
        group.bench_function("smart_proto_json", |b| {
            b.iter(|| parse_device_message(black_box(&f.json)));
        });
        group.bench_function("smart_proto_python", |b| {
            b.iter(|| parse_device_message(black_box(&f.python)));
        });
        group.finish();
    }
}

/// Where the time of one typical UPDT goes: each stage of `parse_device_message` alone, on the output of
/// the stage before it. Stages that consume their input get a fresh clone outside the timing.
fn bench_device_stages(c: &mut Criterion) {
    let frames = device_frames();
    let frame = &frames[1].json;
    let envelope = parse_envelope(frame).expect("bench frame is valid");
    let Payload::Text(text) = &envelope.message else {
        panic!("bench frame has a text message")
    };
    let (header, body) = Header::parse(text).expect("bench header is valid");
    let map = parse_body(body).expect("bench body is valid");
    let normalized = normalize(map.clone(), &header.serial).expect("bench body normalizes");

    let mut group = c.benchmark_group("device_stages/updt_2_fields");
    group.bench_function("0_naive_total", |b| {
        b.iter(|| naive_parse(black_box(frame)));
    });
    group.bench_function("1_envelope", |b| {
        b.iter(|| parse_envelope(black_box(frame)).is_ok());
    });
    group.bench_function("2_header", |b| {
        b.iter(|| Header::parse(black_box(text)).is_ok());
    });
    group.bench_function("3_body", |b| b.iter(|| parse_body(black_box(body))));
    group.bench_function("4_normalize", |b| {
        b.iter_batched(
            || map.clone(),
            |m| normalize(m, &header.serial),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("5_typed_update", |b| {
        b.iter_batched(
            || normalized.clone(),
            Update::from_normalized,
            BatchSize::SmallInput,
        );
    });
    group.bench_function("6_smart_proto_total", |b| {
        b.iter(|| parse_device_message(black_box(frame)));
    });
    group.finish();
}

/// The whole corpus per iteration, in the proportions of a live fleet: mostly small UPDTs.
fn bench_device_corpus(c: &mut Criterion) {
    let frames = device_frames();
    let mut corpus: Vec<&str> = Vec::new();
    for _ in 0..4 {
        corpus.extend(frames[..3].iter().map(|f| f.json.as_str()));
    }
    corpus.push(&frames[3].json);
    let mut group = c.benchmark_group("device_corpus");
    group.throughput(Throughput::Elements(corpus.len() as u64));
    group.bench_function("naive_serde_value", |b| {
        b.iter(|| {
            corpus
                .iter()
                .filter_map(|f| naive_parse(black_box(f)))
                .count()
        });
    });
    group.bench_function("smart_proto_json", |b| {
        b.iter(|| {
            corpus
                .iter()
                .filter(|f| parse_device_message(black_box(f)).is_ok())
                .count()
        });
    });
    group.finish();
}

fn bench_body(c: &mut Criterion) {
    let python = INIT_BODY
        .replace('"', "'")
        .replace("null", "None")
        .replace("true", "True")
        .replace("false", "False");
    assert_eq!(parse_body(&python).ok(), parse_body(INIT_BODY).ok());
    let mut group = c.benchmark_group("body/init_seed");
    group.bench_function("naive_serde_value", |b| {
        b.iter(|| serde_json::from_str::<Value>(black_box(INIT_BODY)).ok());
    });
    group.bench_function("smart_proto_json", |b| {
        b.iter(|| parse_body(black_box(INIT_BODY)));
    });
    group.bench_function("smart_proto_python", |b| {
        b.iter(|| parse_body(black_box(&python)));
    });
    group.finish();
}

const FILT_FRAME: &str = r#"{"type":"FILT","message":["filter:power_inject:>=:300","filter:solmate_version:=:v2","filter:local_time:=:14:59","sort:postcode:>:abc","sort:serial_number:<:abc"]}"#;

/// Naive FILT parse: `Value` envelope, each clause split on `:` into four parts.
fn naive_filt(frame: &str) -> Option<Vec<[String; 4]>> {
    let envelope: Value = serde_json::from_str(frame).ok()?;
    let clauses = envelope.get("message")?.as_array()?;
    clauses
        .iter()
        .map(|clause| {
            let mut parts = clause.as_str()?.splitn(4, ':').map(str::to_owned);
            Some([parts.next()?, parts.next()?, parts.next()?, parts.next()?])
        })
        .collect()
}

fn bench_filt_parse(c: &mut Criterion) {
    assert!(parse_dashboard_message(FILT_FRAME).is_ok());
    assert!(naive_filt(FILT_FRAME).is_some());
    let mut group = c.benchmark_group("filt_parse");
    group.bench_function("naive_serde_value", |b| {
        b.iter(|| naive_filt(black_box(FILT_FRAME)));
    });
    group.bench_function("smart_proto", |b| {
        b.iter(|| parse_dashboard_message(black_box(FILT_FRAME)));
    });
    group.finish();
}

/// Deterministic pseudo-random numbers (xorshift64), so every run measures the same fleet.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A fleet of `n` devices, each registered by the seed's INIT and then moved by one UPDT of varied values.
fn fleet(n: usize) -> Vec<Record> {
    let mut rng = Rng(0x5eed_0001);
    let start = 1_710_117_813_256_667;
    (0..n)
        .map(|i| {
            let serial = format!("{i:04}");
            let now = Timestamp::from_unix_micros(start + i as i64 * 1_000);
            let mut record = Record::new(Serial::new(&serial).expect("generated serials are valid"), "EET", now);
            let init = format!(
                r#"{{"type":"INIT","message":"0000:{serial}:{}"}}"#,
                INIT_BODY.replace("\"0001\"", &format!("\"{serial}\"")).replace('"', "\\\"")
            );
            let updt = json!({
                "type": "UPDT",
                "message": format!("0001:{serial}:{}", json!({
                    "power_inject": rng.below(600),
                    "power_income": rng.below(900),
                    "battery": rng.below(1000) as f64 / 10.0,
                    "postcode": 1000 + rng.below(9000),
                    "solmate_version": if rng.below(3) == 0 { "v2" } else { "v1" },
                    "local_time": format!("2024-03-17 14:{:02}:{:02}.047108", rng.below(60), rng.below(60)),
                })),
            })
            .to_string();
            for frame in [init, updt] {
                let msg = parse_device_message(&frame).map_err(|r| r.error).expect("fleet frames are valid");
                record.apply(&msg.update, now);
            }
            record
        })
        .collect()
}

/// Naive evaluation over JSON objects, for scale: the numeric filter and one sort key of the typed query.
fn naive_eval<'a>(
    records: &'a [Map<String, Value>],
    min_inject: f64,
    sort_key: &str,
) -> Vec<&'a Map<String, Value>> {
    let mut out: Vec<_> = records
        .iter()
        .filter(|r| {
            r.get("power_inject")
                .and_then(Value::as_f64)
                .is_some_and(|v| v >= min_inject)
        })
        .collect();
    out.sort_by(|a, b| {
        let key = |r: &Map<String, Value>| r.get(sort_key).and_then(Value::as_f64);
        match (key(a), key(b)) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
        .then_with(|| {
            a.get("serial_number")
                .and_then(Value::as_str)
                .cmp(&b.get("serial_number").and_then(Value::as_str))
        })
    });
    out
}

fn bench_filt_eval(c: &mut Criterion) {
    let records = fleet(10_000);
    let maps: Vec<Map<String, Value>> = records.iter().map(Record::to_map).collect();
    let queries: [(&str, &[&str]); 4] = [
        (
            "seed_contains_sort",
            &["filter:serial_number:=:0", "sort:serial_number:<:abc"],
        ),
        (
            "contains_upper_case",
            &[
                "filter:local_time:=:14:3",
                "filter:solmate_version:=:V2",
                "sort:serial_number:<:abc",
            ],
        ),
        (
            "numeric_sort_desc",
            &["filter:power_inject:>=:300", "sort:battery:>:123"],
        ),
        (
            "three_filters_two_sorts",
            &[
                "filter:power_inject:>=:300",
                "filter:solmate_version:=:v2",
                "filter:postcode:^:8",
                "sort:postcode:>:abc",
                "sort:serial_number:>:abc",
            ],
        ),
    ];
    // The baseline must do the same job: same devices, same order.
    let typed = Query::parse(queries[2].1).expect("bench queries are valid");
    let typed: Vec<&str> = typed
        .apply(&records)
        .iter()
        .map(|r| r.serial_number.as_str())
        .collect();
    let naive: Vec<&str> = naive_eval(&maps, 300.0, "battery")
        .iter()
        .filter_map(|m| m.get("serial_number").and_then(Value::as_str))
        .collect();
    assert_eq!(
        typed, naive,
        "naive evaluation differs from the typed query"
    );

    let mut group = c.benchmark_group("filt_eval_10k");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("naive_json_maps/numeric_sort_desc", |b| {
        b.iter(|| naive_eval(black_box(&maps), 300.0, "battery").len());
    });
    for (name, clauses) in queries {
        let query = Query::parse(clauses).expect("bench queries are valid");
        assert!(!query.apply(&records).is_empty(), "{name} matches nothing");
        group.bench_with_input(BenchmarkId::new("smart_proto", name), &query, |b, q| {
            b.iter(|| q.apply(black_box(&records)).len());
        });
    }
    group.finish();
}

/// The contains test of a straightforward port: every window of the text against the needle, ignoring
/// ASCII case (what smart-proto did before issue 9: O(text × needle)).
fn naive_contains(text: &str, needle: &str) -> bool {
    text.as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The `=` filter at its worst: a needle at the value cap that almost matches everywhere in long texts
/// (the attack of issue 9, item 7), naive windows against smart-proto's linear search.
fn bench_filt_long_text(c: &mut Criterion) {
    let text = "a".repeat(4096);
    let records: Vec<Record> = (0..100)
        .map(|i| {
            let mut r = Record::new(
                Serial::new(&format!("{i:04}")).expect("valid serial"),
                "EET",
                Timestamp::UNIX_EPOCH,
            );
            r.country.clone_from(&text);
            r
        })
        .collect();
    let needle = format!("{}B", "A".repeat(smart_proto::query::MAX_VALUE_BYTES - 1));
    let query =
        Query::parse(&[format!("filter:country:=:{needle}")]).expect("bench query is valid");
    assert!(query.apply(&records).is_empty());
    let mut group = c.benchmark_group("filt_eval_long_text_100");
    group.sample_size(10);
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("naive_windows", |b| {
        b.iter(|| {
            black_box(&records)
                .iter()
                .filter(|r| naive_contains(&r.country, &needle))
                .count()
        });
    });
    group.bench_function("smart_proto_apply", |b| {
        b.iter(|| query.apply(black_box(&records)).len());
    });
    group.finish();
}

fn bench_init_write(c: &mut Criterion) {
    let records = fleet(10_000);
    let values: Vec<Value> = records.iter().map(|r| Value::Object(r.to_map())).collect();
    let mut group = c.benchmark_group("init_write_10k");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("naive_serde_value", |b| {
        b.iter(|| {
            serde_json::to_string(&json!({ "type": "INIT", "message": black_box(&values) }))
                .map(|s| s.len())
        });
    });
    group.bench_function("smart_proto_write_init", |b| {
        b.iter(|| write_init(black_box(&records)).len());
    });
    // One device in ten reports an extra the others lack: the rest are padded with `null` for it.
    let mut mixed = records.clone();
    for record in mixed.iter_mut().step_by(10) {
        record.extra.insert("mode".to_owned(), json!("eco"));
    }
    group.bench_function("smart_proto_write_init_padded", |b| {
        b.iter(|| write_init(black_box(&mixed)).len());
    });
    group.finish();
}

/// What the server writes per change and per stored record: an UPDT frame (smart-proto's frame writer
/// from borrowed parts, against `ServerMessage::to_frame` of the same message) and a record's JSON text
/// as a shared `Arc<str>` (`Record::to_json`; `serde_json::to_writer` into reused bytes and one UTF-8
/// check of the result, the server's way until session 10; `Record::write_json_bytes` the same way, the
/// server's way since).
fn bench_server_texts(c: &mut Criterion) {
    let header = Header::new("0117", "0001").unwrap_or_else(|e| panic!("{e}"));
    let mut body = Map::new();
    body.insert("battery".to_owned(), json!(92.5));
    body.insert("power_inject".to_owned(), json!(357));
    body.insert(
        "last_status_update".to_owned(),
        json!("2024-03-11T00:43:33.256667Z"),
    );
    let message = ServerMessage::Updt {
        header: header.clone(),
        body: body.clone(),
    };
    assert_eq!(frame::updt(&header, &body), message.to_frame());
    let mut group = c.benchmark_group("server_texts");
    group.bench_function("updt/server_message_to_frame", |b| {
        b.iter(|| black_box(&message).to_frame().len());
    });
    group.bench_function("updt/frame_updt", |b| {
        b.iter(|| frame::updt(black_box(&header), black_box(&body)).len());
    });
    let record = fleet(1).pop().unwrap_or_else(|| panic!("a record"));
    let mut scratch = Vec::new();
    group.bench_function("record/serde_to_vec_then_validate", |b| {
        b.iter(|| {
            scratch.clear();
            let _ = serde_json::to_writer(&mut scratch, black_box(&record));
            std::str::from_utf8(&scratch).map(|text| std::sync::Arc::<str>::from(text).len())
        });
    });
    group.bench_function("record/write_json_bytes_then_validate", |b| {
        b.iter(|| {
            scratch.clear();
            black_box(&record).write_json_bytes(&mut scratch);
            std::str::from_utf8(&scratch).map(|text| std::sync::Arc::<str>::from(text).len())
        });
    });
    let mut text = String::new();
    group.bench_function("record/write_json_reused", |b| {
        b.iter(|| {
            text.clear();
            black_box(&record).write_json(&mut text);
            std::sync::Arc::<str>::from(text.as_str()).len()
        });
    });
    group.bench_function("record/to_json", |b| {
        b.iter(|| std::sync::Arc::<str>::from(black_box(&record).to_json()).len());
    });
    group.finish();
}

/// A stored record as the cluster follower reads it from Redis (and start-up reads it from the write-ahead
/// log and sled): `Record::from_json` of a typical 470-byte record with three extras, against the general
/// path it took before its fast path (and still takes for text `to_json` would not write): the text's
/// JSON object as a `serde_json::Map`, then `Record::from_map`.
fn bench_record_read(c: &mut Criterion) {
    /// `Record::from_json` as it was: the general path.
    fn naive_read(text: &str) -> Result<Record, smart_proto::Error> {
        serde_json::from_str::<Map<String, Value>>(text)
            .map_err(|e| smart_proto::Error::Record(format!("not a JSON object: {e}")))
            .and_then(Record::from_map)
    }
    let text = RECORD_JSON;
    let record = Record::from_json(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(naive_read(text).as_ref(), Ok(&record));
    assert_eq!(record.to_json(), text, "the record is as to_json writes it");
    let mut group = c.benchmark_group("record_from_json");
    group.bench_function("naive_map_then_from_map", |b| {
        b.iter(|| naive_read(black_box(text)));
    });
    group.bench_function("smart_proto_from_json", |b| {
        b.iter(|| Record::from_json(black_box(text)));
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_device_frames,
    bench_device_stages,
    bench_device_corpus,
    bench_body,
    bench_filt_parse,
    bench_filt_eval,
    bench_filt_long_text,
    bench_init_write,
    bench_server_texts,
    bench_record_read
);
criterion_main!(benches);
