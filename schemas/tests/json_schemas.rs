//! The committed JSON Schema files under `json/` must equal what the types generate.

use std::collections::BTreeSet;
use std::path::PathBuf;

fn json_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json")
}

/// Points at the first differing line, so a failure reads like a small diff.
fn first_difference(committed: &str, generated: &str) -> String {
    let (c, g): (Vec<&str>, Vec<&str>) = (committed.lines().collect(), generated.lines().collect());
    for i in 0..c.len().max(g.len()) {
        let (cl, gl) = (c.get(i).copied(), g.get(i).copied());
        if cl != gl {
            return format!(
                "first difference at line {}:\n  - committed: {}\n  + generated: {}",
                i + 1,
                cl.unwrap_or("<end of file>"),
                gl.unwrap_or("<end of file>")
            );
        }
    }
    "files differ only in trailing whitespace".to_owned()
}

#[test]
fn json_schemas_match_types() {
    let bless = std::env::var_os("JIANDU_BLESS").is_some_and(|v| v == "1");
    let dir = json_dir();
    let schemas = jiandu_schemas::json_schemas();
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for (name, schema) in &schemas {
        assert!(names.insert(format!("{name}.json")), "duplicate schema name {name}");
        let generated = serde_json::to_string_pretty(schema).unwrap() + "\n";
        let path = dir.join(format!("{name}.json"));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &generated).unwrap();
            } else if committed.is_empty() {
                problems.push(format!("{}: missing", path.display()));
            } else {
                problems.push(format!("{}: out of date; {}", path.display(), first_difference(&committed, &generated)));
            }
        }
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        if file.ends_with(".json") && !names.contains(&file) {
            if bless {
                std::fs::remove_file(dir.join(&file)).unwrap();
            } else {
                problems.push(format!("{file}: no type generates this schema"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "JSON Schemas differ from the Rust types:\n{}\nrun with JIANDU_BLESS=1 to rewrite",
        problems.join("\n")
    );
}

#[test]
fn schemas_cover_every_payload_and_state_the_bounds() {
    let schemas: std::collections::BTreeMap<_, _> = jiandu_schemas::json_schemas().into_iter().collect();
    let expected = [
        "ack",
        "assignment-offer",
        "assignment-status",
        "error",
        "event",
        "evidence-meta",
        "heartbeat",
        "integration-report",
        "lookup",
        "lookup-reply",
        "notice",
        "owntracks-location",
        "presence",
        "receipt",
        "report",
    ];
    assert_eq!(schemas.keys().copied().collect::<Vec<_>>(), expected);
    for (name, s) in &schemas {
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema", "{name}");
    }

    let hb = &schemas["heartbeat"];
    let one_of = hb["oneOf"].as_array().expect("heartbeat schema is a oneOf");
    assert_eq!(one_of.len(), 2);
    assert_eq!(one_of[1]["type"], "array");
    assert_eq!(one_of[1]["minItems"], 1);
    assert_eq!(one_of[1]["maxItems"], 1000);
    let props = &hb["$defs"]["Heartbeat"]["properties"];
    assert_eq!(props["lat"]["minimum"], -90.0);
    assert_eq!(props["lat"]["maximum"], 90.0);
    assert_eq!(props["lon"]["maximum"], 180.0);
    assert_eq!(props["ts"]["minimum"], 946_684_800_000_i64);
    assert_eq!(props["ts"]["maximum"], 4_102_444_800_000_i64);
    assert_eq!(props["spd"]["maximum"], 100.0);
    assert_eq!(props["hdg"]["maximum"], 360.0);
    let required: Vec<&str> =
        hb["$defs"]["Heartbeat"]["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(required, ["ts", "lat", "lon"]);

    let meta = &schemas["evidence-meta"]["properties"];
    assert_eq!(meta["sha256"]["pattern"], "^[0-9a-f]{64}$");
    assert_eq!(meta["chunk_size"]["maximum"], 262_144);
    assert_eq!(meta["size"]["minimum"], 1);

    let report = &schemas["report"]["properties"];
    assert_eq!(report["text"]["maxLength"], 4000);
    assert_eq!(report["kind"]["minLength"], 1);
    assert_eq!(report["id"]["pattern"], jiandu_schemas::ID_PATTERN);

    let ot = &schemas["owntracks-location"]["properties"];
    assert_eq!(ot["_type"]["const"], "location");

    let receipt = serde_json::to_string(&schemas["receipt"]).unwrap();
    for status in ["stored", "partial", "rejected"] {
        assert!(receipt.contains(&format!("\"const\":\"{status}\"")), "{status}");
    }
}
