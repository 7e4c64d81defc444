//! Tips from citizens (`POST /api/v1/public/tips`, issue 19): the one payload the platform takes
//! from people without an account, so every field is bounded and checked here before anything
//! else sees it. The web role turns a JSON body or the text fields of a multipart form into one
//! JSON object and calls [`parse_public_tip`]; errors name the field without a root prefix
//! (`text`, `lat`), as the REST API does.

use serde::Deserialize;

use crate::PayloadError;

/// The categories a citizen may choose (the page offers exactly these).
pub const PUBLIC_TIP_KINDS: &[&str] = &["official-car", "banquet", "gift", "other"];
/// Longest tip text, in characters (a few paragraphs from a phone).
pub const MAX_PUBLIC_TEXT_CHARS: usize = 2000;
/// Shortest tip text worth dispatching, in characters.
pub const MIN_PUBLIC_TEXT_CHARS: usize = 4;
/// Longest place description, in characters.
pub const MAX_PLACE_CHARS: usize = 200;
/// Longest contact (a phone number or an e-mail address with a name), in characters.
pub const MAX_CONTACT_CHARS: usize = 100;
/// Longest licence plate, in characters.
pub const MAX_PUBLIC_PLATE_CHARS: usize = 16;

/// A citizen's tip, checked: it says where (a point, or the place in words, or both), text and
/// labels are within bounds, and an anonymous tip carries no contact.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicTip {
    /// One of [`PUBLIC_TIP_KINDS`].
    pub kind: String,
    /// What the citizen saw, trimmed.
    pub text: String,
    /// The place as a point, WGS-84 `(lat, lon)` degrees, if the citizen shared or picked one.
    pub point: Option<(f64, f64)>,
    /// The place in words (a street, a school gate); always there when `point` is not.
    pub place: Option<String>,
    /// The licence plate seen, upper-cased without spaces, if given.
    pub plate: Option<String>,
    /// How the office may reach the reporter; never set when `anonymous`.
    pub contact: Option<String>,
    /// The reporter asked not to be identifiable.
    pub anonymous: bool,
}

/// The body as sent; every field optional so a missing one is named by the checks below.
#[derive(Debug, Deserialize)]
struct RawTip {
    kind: Option<String>,
    text: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    place: Option<String>,
    plate: Option<String>,
    contact: Option<String>,
    anonymous: Option<bool>,
}

/// Parses and checks a tip from a JSON object. Unknown fields are ignored (forward compatible).
pub fn parse_public_tip(value: serde_json::Value) -> Result<PublicTip, PayloadError> {
    if !value.is_object() {
        return Err(PayloadError::new("body", "must be a JSON object"));
    }
    let raw: RawTip = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." || field.is_empty() { "body".to_owned() } else { field };
        PayloadError::new(field, e.into_inner().to_string())
    })?;
    let kind = raw.kind.map(|k| k.trim().to_owned()).filter(|k| !k.is_empty());
    let kind =
        kind.ok_or_else(|| PayloadError::new("kind", format!("missing; one of {}", PUBLIC_TIP_KINDS.join(", "))))?;
    if !PUBLIC_TIP_KINDS.contains(&kind.as_str()) {
        return Err(PayloadError::new(
            "kind",
            format!("unknown kind {}; one of {}", shown(&kind), PUBLIC_TIP_KINDS.join(", ")),
        ));
    }
    let text = raw.text.as_deref().map(str::trim).unwrap_or_default().to_owned();
    let n = text.chars().count();
    if n < MIN_PUBLIC_TEXT_CHARS {
        return Err(PayloadError::new(
            "text",
            format!("say what you saw: at least {MIN_PUBLIC_TEXT_CHARS} characters"),
        ));
    }
    if n > MAX_PUBLIC_TEXT_CHARS {
        return Err(PayloadError::new("text", format!("at most {MAX_PUBLIC_TEXT_CHARS} characters, got {n}")));
    }
    if has_control(&text, true) {
        return Err(PayloadError::new("text", "contains control characters"));
    }
    let point = match (raw.lat, raw.lon) {
        (Some(lat), Some(lon)) => Some((lat, lon)),
        (None, Some(_)) => return Err(PayloadError::new("lat", "missing; send lat and lon together")),
        (Some(_), None) => return Err(PayloadError::new("lon", "missing; send lat and lon together")),
        (None, None) => None,
    };
    if let Some((lat, lon)) = point {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(PayloadError::new("lat", format!("must be within -90..=90 degrees, got {lat}")));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(PayloadError::new("lon", format!("must be within -180..=180 degrees, got {lon}")));
        }
    }
    let place = bounded("place", raw.place, MAX_PLACE_CHARS)?;
    if point.is_none() && place.is_none() {
        return Err(PayloadError::new(
            "place",
            "say where: describe the place in words, or share your location (lat and lon)",
        ));
    }
    let plate = bounded("plate", raw.plate, MAX_PUBLIC_PLATE_CHARS)?
        .map(|p| p.chars().filter(|c| !c.is_whitespace() && *c != '·' && *c != '-').collect::<String>().to_uppercase());
    if let Some(p) = &plate
        && !p.chars().all(|c| c.is_alphanumeric())
    {
        return Err(PayloadError::new("plate", format!("letters and digits only, got {}", shown(p))));
    }
    let anonymous = raw.anonymous.unwrap_or(false);
    let contact = bounded("contact", raw.contact, MAX_CONTACT_CHARS)?;
    if anonymous && contact.is_some() {
        return Err(PayloadError::new(
            "contact",
            "an anonymous tip keeps no contact: leave it empty or send anonymous false",
        ));
    }
    Ok(PublicTip { kind, text, point, place, plate, contact, anonymous })
}

/// An optional single-line field: trimmed, empty means absent, at most `max` characters.
fn bounded(field: &str, v: Option<String>, max: usize) -> Result<Option<String>, PayloadError> {
    let Some(v) = v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) else { return Ok(None) };
    let n = v.chars().count();
    if n > max {
        return Err(PayloadError::new(field, format!("at most {max} characters, got {n}")));
    }
    if has_control(&v, false) {
        return Err(PayloadError::new(field, "contains control characters"));
    }
    Ok(Some(v))
}

/// Control characters other than line breaks and tabs (those only when `lines`).
fn has_control(s: &str, lines: bool) -> bool {
    s.chars().any(|c| c.is_control() && !(lines && matches!(c, '\n' | '\r' | '\t')))
}

/// A string for an error message: quoted, and cut short if long.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    if cut.len() < s.len() { format!("{cut:?}…") } else { format!("{s:?}") }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ok() -> serde_json::Value {
        json!({"kind": "official-car", "text": "公车停在学校门口接孩子", "lat": 36.5, "lon": 118.5, "plate": "鲁G 12345"})
    }

    #[test]
    fn a_good_tip_is_parsed_and_normalised() {
        let t = parse_public_tip(ok()).unwrap();
        assert_eq!(t.plate.as_deref(), Some("鲁G12345"));
        assert!(!t.anonymous);
    }

    #[test]
    fn a_place_in_words_is_enough() {
        let t = parse_public_tip(json!({"kind": "banquet", "text": "饭店包间公款宴请", "place": " 城关镇幸福饭店 "}))
            .unwrap();
        assert_eq!((t.point, t.place.as_deref()), (None, Some("城关镇幸福饭店")));
        assert_eq!(parse_public_tip(ok()).unwrap().point, Some((36.5, 118.5)));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            ("kind", json!("rocket")),
            ("text", json!("hi")),
            ("lat", json!(95.0)),
            ("lon", json!("east")),
            ("plate", json!("<script>")),
            ("place", json!("x".repeat(500))),
        ];
        for (field, value) in cases {
            let mut v = ok();
            v[field] = value;
            let e = parse_public_tip(v).unwrap_err();
            assert_eq!(e.field, field, "{e:?}");
        }
        let mut v = ok();
        v.as_object_mut().unwrap().remove("lat");
        assert_eq!(parse_public_tip(v).unwrap_err().field, "lat");
        let mut v = ok();
        v.as_object_mut().unwrap().remove("lon");
        assert_eq!(parse_public_tip(v).unwrap_err().field, "lon", "lat without lon");
        let mut v = ok();
        v.as_object_mut().unwrap().remove("lat");
        v.as_object_mut().unwrap().remove("lon");
        assert_eq!(parse_public_tip(v.clone()).unwrap_err().field, "place", "neither a point nor a place");
        v["place"] = json!("   ");
        assert_eq!(parse_public_tip(v).unwrap_err().field, "place", "a blank place is no place");
        let mut v = ok();
        v["anonymous"] = json!(true);
        v["contact"] = json!("13800000000");
        assert_eq!(parse_public_tip(v).unwrap_err().field, "contact");
        assert_eq!(parse_public_tip(json!([1])).unwrap_err().field, "body");
    }
}
