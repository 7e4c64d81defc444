//! Property tests (issue 15): every upstream payload parser takes arbitrary bytes, arbitrary
//! JSON and near-valid objects (the right field names with arbitrary values) without panicking,
//! answers within the published limits (backlog length, text lengths, error message size) and
//! never allocates more than a small multiple of its input while doing so.
//!
//! The case count is bounded for CI (256 per property; `PROPTEST_CASES` raises it locally).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use jiandu_schemas::topic::{Topic, filter_matches, filter_within};
use jiandu_schemas::{
    EvidenceMeta, MAX_BACKLOG, MAX_LABEL_CHARS, MAX_QUERY_CHARS, MAX_TEXT_CHARS, PayloadError, check_chunk,
    json_schemas, parse_assignment_status, parse_evidence_meta, parse_heartbeats, parse_integration_report,
    parse_lookup, parse_owntracks, parse_presence, parse_report,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Counts the bytes live on this thread and their peak, so a parse can be measured alone
/// (nextest and cargo test run properties on separate threads).
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(n: usize) {
    let _ = LIVE.try_with(|l| {
        let now = l.get().saturating_add(n);
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn note_free(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

// SAFETY: forwards to the system allocator; the bookkeeping touches only const-initialised
// thread locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the peak bytes it held at once beyond what was live.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

/// What a parse may hold at once: parsed values are a bounded multiple of the input (numbers
/// and short strings become fixed-size structs), plus a fixed allowance for messages.
fn allowance(input: usize) -> usize {
    64 * input + 64 * 1024
}

/// An error must name a field and stay short whatever the input (it goes back on `inbox/error`).
fn check_error(e: &PayloadError) {
    assert!(!e.field.is_empty(), "error without a field: {e}");
    assert!(e.field.len() <= 256, "field path too long: {}", e.field.len());
    assert!(e.message.chars().count() <= 1024, "message too long ({} chars)", e.message.chars().count());
}

/// Every parser on the same bytes; checks the limits of whatever comes back.
fn parse_all(bytes: &[u8]) {
    let limit = allowance(bytes.len());
    let (r, peak) = peak_during(|| parse_heartbeats(bytes));
    assert!(peak <= limit, "heartbeats: {peak} bytes for {} input", bytes.len());
    match r {
        Ok(hbs) => assert!((1..=MAX_BACKLOG).contains(&hbs.len())),
        Err(e) => check_error(&e),
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        match jiandu_schemas::parse_public_tip(v) {
            Ok(t) => {
                assert!(t.text.chars().count() <= jiandu_schemas::public::MAX_PUBLIC_TEXT_CHARS);
                assert!(jiandu_schemas::PUBLIC_TIP_KINDS.contains(&t.kind.as_str()));
                assert!(!(t.anonymous && t.contact.is_some()));
            }
            Err(e) => check_error(&e),
        }
    }
    let (r, peak) = peak_during(|| parse_presence(bytes));
    assert!(peak <= limit, "presence: {peak}");
    if let Err(e) = r {
        check_error(&e);
    }
    let (r, peak) = peak_during(|| parse_report(bytes));
    assert!(peak <= limit, "report: {peak}");
    match r {
        Ok(rep) => {
            assert!(rep.kind.chars().count() <= MAX_LABEL_CHARS);
            assert!(rep.text.chars().count() <= MAX_TEXT_CHARS);
        }
        Err(e) => check_error(&e),
    }
    let (r, peak) = peak_during(|| parse_integration_report(bytes));
    assert!(peak <= limit, "integration report: {peak}");
    match r {
        Ok(rep) => assert!(rep.text.chars().count() <= MAX_TEXT_CHARS),
        Err(e) => check_error(&e),
    }
    let (r, peak) = peak_during(|| parse_assignment_status(bytes));
    assert!(peak <= limit, "assignment status: {peak}");
    if let Err(e) = r {
        check_error(&e);
    }
    let (r, peak) = peak_during(|| parse_lookup(bytes));
    assert!(peak <= limit, "lookup: {peak}");
    match r {
        Ok(l) => assert!(l.q.chars().count() <= MAX_QUERY_CHARS),
        Err(e) => check_error(&e),
    }
    let (r, peak) = peak_during(|| parse_evidence_meta(bytes));
    assert!(peak <= limit, "evidence meta: {peak}");
    match r {
        Ok(m) => check_meta(&m),
        Err(e) => check_error(&e),
    }
    let (r, peak) = peak_during(|| parse_owntracks(bytes));
    assert!(peak <= limit, "owntracks: {peak}");
    if let Err(e) = r {
        check_error(&e);
    }
}

/// An accepted meta is internally consistent and only of an allowed type; chunk checks on it
/// never panic.
fn check_meta(m: &EvidenceMeta) {
    assert!(jiandu_schemas::EVIDENCE_MIME_TYPES.contains(&m.mime.as_str()), "{}", m.mime);
    assert!(m.size >= 1 && m.chunk_size >= 1);
    for n in [0, 1, m.chunks.saturating_sub(1), m.chunks, u32::MAX] {
        let _ = check_chunk(m, n, m.chunk_size as usize);
        let _ = check_chunk(m, n, 0);
    }
}

/// Arbitrary JSON, at most a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        "[a-z]{1,8}/[a-z0-9.+-]{1,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Every property name of every published upstream schema, so objects get past "unknown field".
fn field_names() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(props)) = m.get("properties") {
                    out.extend(props.keys().cloned());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (_, schema) in json_schemas() {
        walk(&schema, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// Objects made of the real field names with arbitrary values (and arrays of them).
fn near_valid() -> impl Strategy<Value = Value> {
    let names = field_names();
    let object = prop::collection::vec((prop::sample::select(names), any_json()), 0..16)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
        .boxed();
    prop_oneof![object.clone(), prop::collection::vec(object, 0..6).prop_map(Value::Array)]
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        parse_all(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(v in any_json()) {
        parse_all(v.to_string().as_bytes());
    }

    #[test]
    fn near_valid_objects_never_panic(v in near_valid()) {
        parse_all(v.to_string().as_bytes());
    }

    #[test]
    fn long_strings_are_cut_in_errors(s in ".{0,64}", n in 0usize..20_000) {
        let long = s.repeat(n / s.len().max(1) + 1);
        let v = serde_json::json!({"id": long, "kind": long, "text": long, "q": long, "mime": long, "ts": long});
        parse_all(v.to_string().as_bytes());
    }

    #[test]
    fn topics_and_filters_never_panic(t in "[a-z0-9/+#$._-]{0,80}", f in "[a-z0-9/+#$._-]{0,80}") {
        let _ = Topic::parse(&t);
        let _ = filter_matches(&f, &t);
        let _ = filter_within(&f, &t);
        if let Ok(topic) = Topic::parse(&t) {
            prop_assert_eq!(topic.to_string(), t);
        }
    }
}

#[test]
fn a_huge_backlog_is_refused_within_bounded_memory() {
    let one = r#"{"ts":1735700000000,"lat":36.5,"lon":118.5}"#;
    let many = format!("[{}]", vec![one; MAX_BACKLOG + 1].join(","));
    let (r, peak) = peak_during(|| parse_heartbeats(many.as_bytes()));
    let e = r.unwrap_err();
    assert_eq!(e.field, "hb");
    assert!(peak <= allowance(many.len()), "{peak} bytes for a {} byte backlog", many.len());
}
