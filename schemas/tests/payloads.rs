//! Every payload shape of DESIGN §3 parses to the values sent, and malformed payloads are
//! rejected naming the exact field.

use jiandu_schemas::*;
use serde_json::json;

const T: i64 = 1_735_700_000_000; // 2025-01-01T02:53:20Z
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn heartbeat_object() {
    let hbs = parse_heartbeats(
        br#"{"ts":1735700000000,"lat":36.6512,"lon":117.1201,"acc":8.5,"spd":1.4,
             "hdg":270,"alt":52.0,"bat":81,"duty":"busy","extra":"ignored"}"#,
    )
    .unwrap();
    assert_eq!(
        hbs,
        [Heartbeat {
            seq: None,
            ts: T,
            lat: 36.6512,
            lon: 117.1201,
            acc: Some(8.5),
            spd: Some(1.4),
            hdg: Some(270.0),
            alt: Some(52.0),
            bat: Some(81.0),
            duty: Some(Duty::Busy),
        }]
    );
}

#[test]
fn heartbeat_minimal_and_edges() {
    let hbs = parse_heartbeats(br#" {"ts":946684800000,"lat":-90,"lon":180,"hdg":360,"acc":null}"#).unwrap();
    assert_eq!(hbs.len(), 1);
    assert_eq!(hbs[0].ts, TS_MIN);
    assert_eq!((hbs[0].lat, hbs[0].lon, hbs[0].hdg), (-90.0, 180.0, Some(360.0)));
    assert_eq!(hbs[0].acc, None);
    assert_eq!(hbs[0].duty, None);
}

#[test]
fn heartbeat_backlog_out_of_order_keeps_sent_order() {
    let body = json!([
        {"ts": T + 20_000, "lat": 36.66, "lon": 117.13, "duty": "on"},
        {"ts": T, "lat": 36.65, "lon": 117.12, "spd": 0.0},
        {"ts": T + 10_000, "lat": 36.655, "lon": 117.125, "duty": "off"},
    ]);
    let hbs = parse_heartbeats(body.to_string().as_bytes()).unwrap();
    assert_eq!(hbs.iter().map(|h| h.ts).collect::<Vec<_>>(), [T + 20_000, T, T + 10_000]);
    assert_eq!(hbs[0].duty, Some(Duty::On));
    assert_eq!(hbs[1].spd, Some(0.0));
    assert_eq!(hbs[2].duty, Some(Duty::Off));
    assert_eq!(hbs[2].lat, 36.655);
}

#[test]
fn heartbeat_backlog_of_exactly_max() {
    let pts: Vec<_> = (0..MAX_BACKLOG as i64).map(|i| json!({"ts": T + i * 1000, "lat": 36.0, "lon": 117.0})).collect();
    let hbs = parse_heartbeats(json!(pts).to_string().as_bytes()).unwrap();
    assert_eq!(hbs.len(), 1000);
    assert_eq!(hbs[999].ts, T + 999_000);
}

#[test]
fn heartbeat_serialises_without_absent_fields() {
    let hb = Heartbeat {
        seq: None,
        ts: T,
        lat: 1.0,
        lon: 2.0,
        acc: None,
        spd: None,
        hdg: None,
        alt: None,
        bat: None,
        duty: Some(Duty::Off),
    };
    assert_eq!(serde_json::to_value(&hb).unwrap(), json!({"ts": T, "lat": 1.0, "lon": 2.0, "duty": "off"}));
    assert_eq!(Duty::Busy.as_str(), "busy");
}

#[test]
fn presence() {
    assert_eq!(parse_presence(br#"{"online":false,"ts":1735700000000}"#).unwrap(), Presence { online: false, ts: T });
    assert!(parse_presence(br#"{"online":true,"ts":1735700000000}"#).unwrap().online);
}

#[test]
fn report_with_plate() {
    let r = parse_report(
        r#"{"id":"01JGX3Q7B8M2N4P5R6S7T8V9WX","kind":"official-car","text":"公车停在酒店门口，疑似公车私用",
            "lat":37.4638,"lon":121.4479,"ts":1735700000000,"plate":"鲁G·12345"}"#
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.id, "01JGX3Q7B8M2N4P5R6S7T8V9WX");
    assert_eq!(r.kind, "official-car");
    assert_eq!(r.text, "公车停在酒店门口，疑似公车私用");
    assert_eq!((r.lat, r.lon, r.ts), (37.4638, 121.4479, T));
    assert_eq!(r.plate.as_deref(), Some("鲁G·12345"));

    let no_plate =
        parse_report(br#"{"id":"r-2","kind":"banquet","text":"","lat":37.4,"lon":121.4,"ts":1735700000000}"#).unwrap();
    assert_eq!(no_plate.plate, None);
    assert!(!serde_json::to_string(&no_plate).unwrap().contains("plate"));
}

#[test]
fn integration_report() {
    let r = parse_integration_report(
        r#"{"id":"hotline-88231","kind":"banquet","text":"举报：某局在农家乐聚餐","lat":37.5,
            "lon":121.39,"ts":1735700000000,"source":"12345-hotline"}"#
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.source, "12345-hotline");
    assert_eq!(r.id, "hotline-88231");
    let as_report = Report::from(r.clone());
    assert_eq!((as_report.id, as_report.plate), (r.id, None));
}

#[test]
fn assignment_status() {
    let a = parse_assignment_status(br#"{"status":"accepted","ts":1735700000000}"#).unwrap();
    assert_eq!(a, AssignmentStatus { status: AsgStatus::Accepted, ts: T, note: None });
    let d = parse_assignment_status(r#"{"status":"declined","ts":1735700000000,"note":"正在处理另一起"}"#.as_bytes())
        .unwrap();
    assert_eq!(d.status, AsgStatus::Declined);
    assert_eq!(d.note.as_deref(), Some("正在处理另一起"));
    for s in ["arrived", "completed"] {
        let a = parse_assignment_status(format!(r#"{{"status":"{s}","ts":{T}}}"#).as_bytes()).unwrap();
        assert_eq!(a.status.as_str(), s);
    }
}

#[test]
fn lookup() {
    let l = parse_lookup(r#"{"corr":"q-17","kind":"vehicle","q":"鲁G·12345"}"#.as_bytes()).unwrap();
    assert_eq!(
        l,
        LookupRequest { corr: "q-17".into(), kind: LookupKind::Vehicle, q: "鲁G·12345".into(), lat: None, lon: None }
    );
    let at = parse_lookup(r#"{"corr":"q","kind":"vehicle","q":"x","lat":36.7,"lon":119.1}"#.as_bytes()).unwrap();
    assert_eq!((at.lat, at.lon), (Some(36.7), Some(119.1)));
    let e = parse_lookup(r#"{"corr":"q","kind":"vehicle","q":"x","lat":136.7,"lon":119.1}"#.as_bytes()).unwrap_err();
    assert_eq!(e.field, "lookup.lat");
    let e = parse_lookup(r#"{"corr":"q","kind":"vehicle","q":"x","lat":36.7}"#.as_bytes()).unwrap_err();
    assert_eq!(e.field, "lookup.lon");
    let p = parse_lookup(r#"{"corr":"a b:1","kind":"person","q":"张三"}"#.as_bytes()).unwrap();
    assert_eq!((p.kind, p.corr.as_str()), (LookupKind::Person, "a b:1"));
    assert_eq!(LookupKind::Department.as_str(), "department");
}

#[test]
fn evidence_meta() {
    let m = parse_evidence_meta(
        format!(
            r#"{{"sha256":"{SHA}","size":1048577,"mime":"image/jpeg","captured_at":1735700000000,
                "lat":37.4638,"lon":121.4479,"report_id":"01JGX3Q7B8M2N4P5R6S7T8V9WX",
                "chunk_size":262144,"chunks":5}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(m.sha256, SHA);
    assert_eq!((m.size, m.chunk_size, m.chunks), (1_048_577, 262_144, 5));
    assert_eq!(m.captured_at, T);
    assert_eq!(m.report_id.as_deref(), Some("01JGX3Q7B8M2N4P5R6S7T8V9WX"));
    assert_eq!((m.lat, m.lon), (Some(37.4638), Some(121.4479)));
    assert_eq!(m.chunk_len(0), Some(262_144));
    assert_eq!(m.chunk_len(4), Some(1));
    assert_eq!(m.chunk_len(5), None);

    let bare = parse_evidence_meta(
        format!(
            r#"{{"sha256":"{SHA}","size":10,"mime":"audio/mp4","captured_at":1735700000000,
                "chunk_size":262144,"chunks":1}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!((bare.lat, bare.lon, bare.report_id), (None, None, None));
}

fn meta(size: u64, chunk_size: u32) -> EvidenceMeta {
    EvidenceMeta {
        sha256: SHA.into(),
        size,
        mime: "video/mp4".into(),
        captured_at: T,
        lat: None,
        lon: None,
        report_id: None,
        chunk_size,
        chunks: size.div_ceil(u64::from(chunk_size)) as u32,
    }
}

#[test]
fn chunks_are_checked_against_meta() {
    let m = meta(600_000, 262_144); // 262144 + 262144 + 75712
    assert_eq!(m.chunks, 3);
    check_chunk(&m, 0, 262_144).unwrap();
    check_chunk(&m, 1, 262_144).unwrap();
    check_chunk(&m, 2, 75_712).unwrap();

    let e = check_chunk(&m, 3, 10).unwrap_err();
    assert_eq!(e.field, "chunk[3]");
    assert_eq!(e.message, "index out of range; meta declares 3 chunks (0..=2)");
    let e = check_chunk(&m, 1, 262_143).unwrap_err();
    assert_eq!(e.field, "chunk[1]");
    assert_eq!(e.message, "is 262143 bytes, expected 262144 (size 600000, chunk_size 262144, 3 chunks)");
    let e = check_chunk(&m, 2, 262_144).unwrap_err();
    assert!(e.message.starts_with("is 262144 bytes, expected 75712"), "{e}");

    let exact = meta(524_288, 262_144);
    assert_eq!(exact.chunks, 2);
    check_chunk(&exact, 1, 262_144).unwrap();
    let one = meta(1, 262_144);
    check_chunk(&one, 0, 1).unwrap();
    assert!(check_chunk(&one, 0, 0).is_err());
}

#[test]
fn owntracks_location_converts_units() {
    let hb = parse_owntracks(
        br#"{"_type":"location","tid":"p1","lat":37.4638,"lon":121.4479,"tst":1735700000,
             "acc":12,"vel":54,"cog":90,"alt":40,"batt":67,"conn":"m","t":"u"}"#,
    )
    .unwrap()
    .expect("a location");
    assert_eq!(hb.ts, T);
    assert_eq!((hb.lat, hb.lon), (37.4638, 121.4479));
    assert!((hb.spd.unwrap() - 15.0).abs() < 1e-9, "54 km/h = 15 m/s");
    assert_eq!(hb.hdg, Some(90.0));
    assert_eq!(hb.acc, Some(12.0));
    assert_eq!(hb.alt, Some(40.0));
    assert_eq!(hb.bat, Some(67.0));
    assert_eq!(hb.duty, None);

    let loc = OwnTracksLocation {
        kind: "location".into(),
        lat: 1.0,
        lon: 2.0,
        tst: 1_735_700_000,
        acc: None,
        vel: Some(-1.0),
        cog: Some(-1.0),
        alt: None,
        batt: None,
    };
    let hb = loc.to_heartbeat();
    assert_eq!((hb.ts, hb.spd, hb.hdg), (T, None, None));
    assert_eq!(serde_json::to_value(&loc).unwrap()["_type"], json!("location"));
}

#[test]
fn owntracks_other_types_are_not_heartbeats() {
    for body in [
        r#"{"_type":"transition","event":"enter","desc":"office","tst":1735700000,"wtst":1,"lat":1,"lon":2,"acc":5,"tid":"p1"}"#,
        r#"{"_type":"waypoint","desc":"office","lat":1,"lon":2,"rad":50,"tst":1735700000}"#,
        r#"{"_type":"lwt","tst":1735700000}"#,
        r#"{"_type":"card","name":"x"}"#,
    ] {
        assert_eq!(parse_owntracks(body.as_bytes()).unwrap(), None, "{body}");
    }
}

#[test]
fn downstream_payloads_serialise_as_the_contract_says() {
    assert_eq!(serde_json::to_value(Ack { hb_upto: Some(T), ..Ack::default() }).unwrap(), json!({"hb_upto": T}));
    assert_eq!(
        serde_json::to_value(Ack { asg: Some("a1".into()), status: Some(AsgStatus::Arrived), ..Ack::default() })
            .unwrap(),
        json!({"asg": "a1", "status": "arrived"})
    );

    let stored = Receipt::Stored {
        evid: "e1".into(),
        sha256: SHA.into(),
        size: 10,
        ledger_seq: 7,
        ledger_hash: "ab".repeat(32),
        received_at: T,
        sig: "cd".repeat(64),
    };
    let v = serde_json::to_value(&stored).unwrap();
    assert_eq!(v["status"], "stored");
    assert_eq!(v["ledger_seq"], 7);
    assert_eq!(serde_json::from_value::<Receipt>(v).unwrap(), stored);
    let partial = Receipt::Partial { evid: "e1".into(), missing: vec![0, 3] };
    assert_eq!(serde_json::to_value(&partial).unwrap(), json!({"status": "partial", "evid": "e1", "missing": [0, 3]}));
    let rejected: Receipt =
        serde_json::from_str(r#"{"evid":"e2","status":"rejected","error":"meta.size: x"}"#).unwrap();
    assert_eq!(rejected.evid(), "e2");
    assert_eq!(rejected, Receipt::Rejected { evid: "e2".into(), error: "meta.size: x".into() });

    let offer = AssignmentOffer {
        assignment_id: "asg-1".into(),
        report: Report {
            id: "r1".into(),
            kind: "banquet".into(),
            text: "t".into(),
            lat: 1.0,
            lon: 2.0,
            ts: T,
            plate: None,
        },
        distance_m: 850.5,
        respond_by: T + 120_000,
    };
    let v = serde_json::to_value(&offer).unwrap();
    assert_eq!(v["report"]["id"], "r1");
    assert_eq!(v["distance_m"], 850.5);
    assert_eq!(serde_json::from_value::<AssignmentOffer>(v).unwrap(), offer);

    let reply = LookupReply {
        corr: "q-17".into(),
        found: false,
        result: None,
        candidates: Some(vec![json!({"plate": "鲁G·12346"})]),
        error: None,
    };
    assert_eq!(
        serde_json::to_value(&reply).unwrap(),
        json!({"corr": "q-17", "found": false, "candidates": [{"plate": "鲁G·12346"}]})
    );
    let limited = LookupReply {
        corr: "q-18".into(),
        found: false,
        result: None,
        candidates: None,
        error: Some("rate limit".into()),
    };
    assert_eq!(serde_json::to_value(&limited).unwrap(), json!({"corr": "q-18", "found": false, "error": "rate limit"}));

    let ev = Event { r#type: "report.received".into(), id: "01JGX3".into(), ts: T, data: json!({"report": "r1"}) };
    assert_eq!(
        serde_json::to_value(&ev).unwrap(),
        json!({"type": "report.received", "id": "01JGX3", "ts": T, "data": {"report": "r1"}})
    );
    assert_eq!(
        serde_json::to_value(ErrorNotice { topic: "jd/v1/dev/d/hb".into(), error: "hb.lat: missing".into() }).unwrap(),
        json!({"topic": "jd/v1/dev/d/hb", "error": "hb.lat: missing"})
    );
    assert_eq!(serde_json::to_value(Notice { ts: T, text: "收队".into() }).unwrap(), json!({"ts": T, "text": "收队"}));
}

/// Which parser a malformed case goes to.
#[derive(Clone, Copy, Debug)]
enum Parser {
    Hb,
    Presence,
    Report,
    Integration,
    Asg,
    Lookup,
    Meta,
    OwnTracks,
}

fn run(parser: Parser, body: &[u8]) -> Result<(), PayloadError> {
    match parser {
        Parser::Hb => parse_heartbeats(body).map(drop),
        Parser::Presence => parse_presence(body).map(drop),
        Parser::Report => parse_report(body).map(drop),
        Parser::Integration => parse_integration_report(body).map(drop),
        Parser::Asg => parse_assignment_status(body).map(drop),
        Parser::Lookup => parse_lookup(body).map(drop),
        Parser::Meta => parse_evidence_meta(body).map(drop),
        Parser::OwnTracks => parse_owntracks(body).map(drop),
    }
}

fn hb_points(n: usize) -> String {
    let pts: Vec<_> = (0..n).map(|i| json!({"ts": T + i as i64, "lat": 36.0, "lon": 117.0})).collect();
    json!(pts).to_string()
}

fn meta_with(patch: serde_json::Value) -> String {
    let mut m = json!({"sha256": SHA, "size": 1000, "mime": "image/jpeg",
        "captured_at": T, "chunk_size": 256, "chunks": 4});
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            m.as_object_mut().unwrap().remove(k);
        } else {
            m[k] = v.clone();
        }
    }
    m.to_string()
}

fn report_with(patch: serde_json::Value) -> String {
    let mut r = json!({"id": "r1", "kind": "banquet", "text": "t", "lat": 37.0, "lon": 121.0,
        "ts": T});
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            r.as_object_mut().unwrap().remove(k);
        } else {
            r[k] = v.clone();
        }
    }
    r.to_string()
}

#[test]
fn malformed_payloads_name_the_field() {
    use Parser::*;
    let sha_upper = SHA.to_uppercase();
    let cases: Vec<(Parser, String, &str, &str)> = vec![
        // Bad JSON.
        (Hb, r#"{"ts":1,"lat":"#.into(), "hb", "invalid JSON at line 1 column 14"),
        (Hb, "".into(), "hb", "invalid JSON at line 1 column 0: EOF while parsing a value"),
        (Hb, "[{\"ts\":1735700000000,\n\"lat\":1,,}]".into(), "hb", "invalid JSON at line 2"),
        (
            Report,
            format!("{} x", report_with(json!({}))),
            "report",
            "invalid JSON at line 1 column 83: trailing characters",
        ),
        (Presence, "not json".into(), "presence", "invalid JSON"),
        // Wrong types.
        (
            Hb,
            format!(r#"{{"ts":{T},"lat":"36.6","lon":117}}"#),
            "hb.lat",
            "invalid type: string \"36.6\", expected f64",
        ),
        (
            Hb,
            format!(r#"[{{"ts":{T},"lat":1,"lon":2}},{{"ts":{T},"lat":1,"lon":2}},{{"ts":"x","lat":1,"lon":2}}]"#),
            "hb[2].ts",
            "invalid type: string \"x\", expected i64",
        ),
        (Hb, "42".into(), "hb", "invalid type: integer `42`, expected struct Heartbeat"),
        (
            Hb,
            format!(r#"{{"ts":{T},"lat":1,"lon":2,"duty":"lunch"}}"#),
            "hb.duty",
            "unknown variant `lunch`, expected one of `on`, `off`, `busy`",
        ),
        (
            Presence,
            format!(r#"{{"online":"yes","ts":{T}}}"#),
            "presence.online",
            "invalid type: string \"yes\", expected a boolean",
        ),
        (Asg, format!(r#"{{"status":"done","ts":{T}}}"#), "asg.status", "unknown variant `done`"),
        (Lookup, r#"{"corr":"c","kind":"car","q":"x"}"#.into(), "lookup.kind", "unknown variant `car`"),
        (Meta, meta_with(json!({"size": -5})), "meta.size", "invalid value: integer `-5`, expected u64"),
        (Meta, meta_with(json!({"chunks": 4.5})), "meta.chunks", "invalid type: floating point `4.5`, expected u32"),
        // Out of range.
        (
            Hb,
            format!(
                r#"[{{"ts":{T},"lat":1,"lon":2}},{{"ts":{T},"lat":1,"lon":2}},{{"ts":{T},"lat":1,"lon":2}},{{"ts":{T},"lat":123.4,"lon":2}}]"#
            ),
            "hb[3].lat",
            "must be within -90..=90, got 123.4",
        ),
        (Hb, format!(r#"{{"ts":{T},"lat":1,"lon":-180.5}}"#), "hb.lon", "must be within -180..=180, got -180.5"),
        (Report, report_with(json!({"lat": 91})), "report.lat", "must be within -90..=90, got 91"),
        (Report, report_with(json!({"lon": 200})), "report.lon", "must be within -180..=180, got 200"),
        (Hb, format!(r#"{{"ts":{T},"lat":1,"lon":2,"acc":-1}}"#), "hb.acc", "must be within 0..=100000 m, got -1"),
        (Hb, format!(r#"{{"ts":{T},"lat":1,"lon":2,"hdg":361}}"#), "hb.hdg", "must be within 0..=360 degrees, got 361"),
        (
            Hb,
            format!(r#"{{"ts":{T},"lat":1,"lon":2,"alt":12000}}"#),
            "hb.alt",
            "must be within -1000..=10000 m, got 12000",
        ),
        (Hb, format!(r#"{{"ts":{T},"lat":1,"lon":2,"bat":101}}"#), "hb.bat", "must be within 0..=100 percent, got 101"),
        // Units.
        (
            Hb,
            r#"{"ts":1735700000,"lat":1,"lon":2}"#.into(),
            "hb.ts",
            "looks like seconds; ts is Unix epoch milliseconds, got 1735700000",
        ),
        (
            Hb,
            r#"{"ts":0,"lat":1,"lon":2}"#.into(),
            "hb.ts",
            "must be Unix epoch milliseconds between 2000-01-01 and 2100-01-01",
        ),
        (Hb, r#"{"ts":4102444800001,"lat":1,"lon":2}"#.into(), "hb.ts", "got 4102444800001"),
        (Presence, r#"{"online":true,"ts":1735700000}"#.into(), "presence.ts", "looks like seconds"),
        (
            Meta,
            meta_with(json!({"captured_at": 1_735_700_000})),
            "meta.captured_at",
            "looks like seconds; captured_at is Unix epoch milliseconds",
        ),
        (
            Hb,
            format!(r#"{{"ts":{T},"lat":1,"lon":2,"spd":120}}"#),
            "hb.spd",
            "must be within 0..=100 m/s, got 120 (km/h? the wire unit is m/s)",
        ),
        (Hb, format!(r#"{{"ts":{T},"lat":1,"lon":2,"spd":-0.5}}"#), "hb.spd", "must be within 0..=100 m/s, got -0.5"),
        // Missing fields.
        (Report, report_with(json!({"lat": null})), "report.lat", "missing"),
        (Hb, format!(r#"[{{"ts":{T},"lat":1,"lon":2}},{{"ts":{T},"lat":1}}]"#), "hb[1].lon", "missing"),
        (Presence, r#"{"online":true}"#.into(), "presence.ts", "missing"),
        (Integration, report_with(json!({})), "report.source", "missing"),
        (Meta, meta_with(json!({"sha256": null})), "meta.sha256", "missing"),
        (OwnTracks, r#"{"lat":1,"lon":2,"tst":1735700000}"#.into(), "owntracks._type", "missing"),
        (OwnTracks, r#"{"_type":"location","lat":1,"tst":1735700000}"#.into(), "owntracks.lon", "missing"),
        // Backlog size.
        (Hb, hb_points(1001), "hb", "1001 heartbeats in one message; at most 1000"),
        (Hb, " [ ] ".into(), "hb", "empty array"),
        // Evidence checks.
        (
            Meta,
            meta_with(json!({"sha256": "abc123"})),
            "meta.sha256",
            "must be 64 lowercase hex characters (SHA-256), got \"abc123\"",
        ),
        (Meta, meta_with(json!({"sha256": sha_upper})), "meta.sha256", "must be 64 lowercase hex"),
        (Meta, meta_with(json!({"sha256": format!("{}g", &SHA[..63])})), "meta.sha256", "must be 64 lowercase hex"),
        (
            Meta,
            meta_with(json!({"chunks": 3})),
            "meta.chunks",
            "must be ceil(size / chunk_size) = ceil(1000 / 256) = 4, got 3",
        ),
        (
            Meta,
            meta_with(json!({"chunk_size": 300_000, "chunks": 1})),
            "meta.chunk_size",
            "must be within 1..=262144 bytes (256 KiB), got 300000",
        ),
        (Meta, meta_with(json!({"chunk_size": 0})), "meta.chunk_size", "got 0"),
        (Meta, meta_with(json!({"size": 0, "chunks": 0})), "meta.size", "must be at least 1 byte, got 0"),
        (
            Meta,
            meta_with(json!({"mime": "jpeg"})),
            "meta.mime",
            "must look like type/subtype (e.g. image/jpeg), got \"jpeg\"",
        ),
        (Meta, meta_with(json!({"mime": "image/"})), "meta.mime", "type/subtype"),
        (Meta, meta_with(json!({"lat": 37.0})), "meta.lon", "missing (lat and lon go together)"),
        (Meta, meta_with(json!({"lat": 37.0, "lon": 400.0})), "meta.lon", "must be within -180..=180, got 400"),
        (Meta, meta_with(json!({"report_id": "r/1"})), "meta.report_id", "not starting with '.', got \"r/1\""),
        // Invalid ids.
        (
            Report,
            report_with(json!({"id": "r/1"})),
            "report.id",
            "must be 1..=64 characters of A-Z a-z 0-9 _ . - not starting with '.', got \"r/1\"",
        ),
        (Report, report_with(json!({"id": "r+1"})), "report.id", "got \"r+1\""),
        (Report, report_with(json!({"id": "#"})), "report.id", "got \"#\""),
        (Report, report_with(json!({"id": ".r"})), "report.id", "got \".r\""),
        (Report, report_with(json!({"id": ""})), "report.id", "got \"\""),
        (
            Integration,
            report_with(json!({"id": "x".repeat(65), "source": "s"})),
            "report.id",
            "must be 1..=64 characters",
        ),
        (
            Lookup,
            r#"{"corr":"","kind":"person","q":"x"}"#.into(),
            "lookup.corr",
            "must be 1..=64 printable characters, got \"\"",
        ),
        (Lookup, r#"{"corr":"a\nb","kind":"person","q":"x"}"#.into(), "lookup.corr", "printable"),
        // Text limits.
        (Report, report_with(json!({"kind": " "})), "report.kind", "must not be empty"),
        (Report, report_with(json!({"kind": "k".repeat(65)})), "report.kind", "must be at most 64 characters, got 65"),
        (
            Report,
            report_with(json!({"text": "字".repeat(4001)})),
            "report.text",
            "must be at most 4000 characters, got 4001",
        ),
        (Report, report_with(json!({"plate": ""})), "report.plate", "must not be empty"),
        (Integration, report_with(json!({"source": ""})), "report.source", "must not be empty"),
        (Asg, format!(r#"{{"status":"declined","ts":{T},"note":"{}"}}"#, "n".repeat(4001)), "asg.note", "at most 4000"),
        (Lookup, r#"{"corr":"c","kind":"person","q":""}"#.into(), "lookup.q", "must not be empty"),
        (
            Lookup,
            format!(r#"{{"corr":"c","kind":"person","q":"{}"}}"#, "张".repeat(201)),
            "lookup.q",
            "must be at most 200 characters, got 201",
        ),
        // OwnTracks units.
        (
            OwnTracks,
            r#"{"_type":"location","lat":1,"lon":2,"tst":1735700000000}"#.into(),
            "owntracks.tst",
            "looks like milliseconds; tst is Unix epoch seconds, got 1735700000000",
        ),
        (
            OwnTracks,
            r#"{"_type":"location","lat":95,"lon":2,"tst":1735700000}"#.into(),
            "owntracks.lat",
            "must be within -90..=90, got 95",
        ),
        (
            OwnTracks,
            r#"{"_type":"location","lat":1,"lon":2,"tst":1735700000,"vel":400}"#.into(),
            "owntracks.vel",
            "must be at most 360 km/h, got 400",
        ),
        (OwnTracks, r#"{"_type":7}"#.into(), "owntracks._type", "invalid type: integer `7`, expected a string"),
    ];
    for (parser, body, field, fragment) in &cases {
        let e = run(*parser, body.as_bytes()).expect_err(&format!("{parser:?} should reject {body}"));
        assert_eq!(&e.field, field, "{parser:?} {body}: {e}");
        assert!(e.message.contains(fragment), "{parser:?} {body}: message {:?} lacks {fragment:?}", e.message);
        assert_eq!(e.to_string(), format!("{}: {}", e.field, e.message));
    }
    assert!(cases.len() >= 60);
}

#[test]
fn error_display_and_conversion() {
    let e = parse_heartbeats(hb_points(3).replace("36.0", "123.4").as_bytes()).unwrap_err();
    assert_eq!(e.to_string(), "hb[0].lat: must be within -90..=90, got 123.4");
    let wrapped: SchemaError = e.clone().into();
    assert_eq!(wrapped.to_string(), e.to_string());
    assert_eq!(wrapped, SchemaError::Payload(e));
}

#[test]
fn heartbeat_seq_is_kept_bounded_and_all_or_none_per_message() {
    let one = parse_heartbeats(json!({"seq": 7, "ts": T, "lat": 1.0, "lon": 2.0}).to_string().as_bytes()).unwrap();
    assert_eq!(one[0].seq, Some(7));
    let zero = parse_heartbeats(json!({"seq": 0, "ts": T, "lat": 1.0, "lon": 2.0}).to_string().as_bytes());
    assert_eq!(zero.unwrap_err().to_string(), "hb.seq: must be within 1..=9007199254740991, got 0");
    let big = parse_heartbeats(json!([{"seq": 1u64 << 53, "ts": T, "lat": 1.0, "lon": 2.0}]).to_string().as_bytes());
    assert_eq!(big.unwrap_err().to_string(), "hb[0].seq: must be within 1..=9007199254740991, got 9007199254740992");
    let negative = parse_heartbeats(json!({"seq": -1, "ts": T, "lat": 1.0, "lon": 2.0}).to_string().as_bytes());
    assert!(negative.unwrap_err().to_string().starts_with("hb.seq: "));
    let mixed = json!([
        {"seq": 1, "ts": T, "lat": 1.0, "lon": 2.0},
        {"ts": T + 1, "lat": 1.0, "lon": 2.0},
    ]);
    assert_eq!(
        parse_heartbeats(mixed.to_string().as_bytes()).unwrap_err().to_string(),
        "hb[1].seq: missing, but hb[0] has; in one message every heartbeat carries seq or none does"
    );
    let mixed = json!([{"ts": T, "lat": 1.0, "lon": 2.0}, {"seq": 2, "ts": T + 1, "lat": 1.0, "lon": 2.0}]);
    assert_eq!(
        parse_heartbeats(mixed.to_string().as_bytes()).unwrap_err().to_string(),
        "hb[1].seq: present, but hb[0] has none; in one message every heartbeat carries seq or none does"
    );
    let ack = Ack { hb_seq: Some(vec![[1, 5], [9, 9]]), ..Ack::default() };
    assert_eq!(serde_json::to_value(ack).unwrap(), json!({"hb_seq": [[1, 5], [9, 9]]}));
}
