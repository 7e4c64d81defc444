//! Chinese licence plates as inspectors type them: with or without the middle dot or spaces,
//! in full-width characters, in lower case, ordinary 7-character and new-energy 8-character
//! plates. [`normalise`] turns all of these into one key (`鲁G12345`, `鲁GD12345`) so they find
//! the same car; [`candidate_plates`] lists the plates a misread or mistyped plate may have
//! meant (0/O/D/Q, 8/B, 1/I/L, 2/Z, 5/S, 6/G; one character missing, extra or wrong), nearest
//! first.

use std::collections::HashSet;

/// Province abbreviations that open a civil plate.
const PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼";
/// Characters that may close a plate instead of a letter or digit (police, coach, trailer…).
const SUFFIXES: &str = "警学挂领港澳试超使";
/// Characters a reader or OCR easily takes for one another.
const CONFUSIONS: [&str; 6] = ["0ODQ", "8B", "1IL", "2Z", "5S", "6G"];
/// Letters and digits a plate may contain after the province.
const ALPHANUMERIC: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// Why a text is not a plate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Chinese plate ({reason}); expected e.g. 鲁G12345 or 鲁GD12345, got {input:?}")]
pub struct PlateError {
    /// The text as given.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

/// Maps full-width ASCII to ASCII, drops separators (spaces, `·`, `•`, `.`, `-`) and upper-cases,
/// then checks the shape: a province abbreviation, an authority letter, then 5 letters/digits
/// (or 4 and a suffix such as 警), or 6 for a new-energy plate.
pub fn normalise(input: &str) -> Result<String, PlateError> {
    let fail = |reason: &str| PlateError { input: input.to_owned(), reason: reason.to_owned() };
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        let c = match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            _ => c,
        };
        if c.is_whitespace() || matches!(c, '·' | '•' | '・' | '･' | '‧' | '∙' | '.' | '-' | '－' | '_') {
            continue;
        }
        out.push(c.to_ascii_uppercase());
    }
    let chars: Vec<char> = out.chars().collect();
    if chars.is_empty() {
        return Err(fail("empty"));
    }
    if !PROVINCES.contains(chars[0]) {
        return Err(fail("must start with a province abbreviation such as 鲁"));
    }
    if chars.len() < 2 || !chars[1].is_ascii_uppercase() {
        return Err(fail("the second character must be a letter"));
    }
    let rest = &chars[2..];
    let (body, suffix) = match rest.last() {
        Some(c) if SUFFIXES.contains(*c) => (&rest[..rest.len() - 1], 1),
        _ => (rest, 0),
    };
    if !body.iter().all(char::is_ascii_alphanumeric) {
        return Err(fail("only letters and digits may follow the authority letter"));
    }
    match (body.len(), suffix) {
        (5, 0) | (6, 0) | (4, 1) => Ok(out),
        _ => Err(fail("wrong length: 7 characters, or 8 for a new-energy plate")),
    }
}

/// Plates `plate` (normalised) may have been meant as, nearest first: confusable characters
/// swapped (one, then two), then one character wrong, missing or extra. `plate` itself is not
/// included. The province is kept as given.
pub fn candidate_plates(plate: &str) -> Vec<String> {
    let chars: Vec<char> = plate.chars().collect();
    let mut seen: HashSet<String> = HashSet::from([plate.to_owned()]);
    let mut out = Vec::new();
    let mut push = |s: String, out: &mut Vec<String>| {
        if seen.insert(s.clone()) {
            out.push(s);
        }
    };
    if chars.len() < 3 {
        return out;
    }
    let swaps = |c: char| -> Vec<char> {
        CONFUSIONS.iter().filter(|g| g.contains(c)).flat_map(|g| g.chars().filter(move |&o| o != c)).collect()
    };
    // One confusable swap.
    let mut single = Vec::new();
    for i in 1..chars.len() {
        for o in swaps(chars[i]) {
            let mut v = chars.clone();
            v[i] = o;
            single.push(v);
        }
    }
    for v in &single {
        push(v.iter().collect(), &mut out);
    }
    // Two confusable swaps.
    for i in 1..chars.len() {
        for a in swaps(chars[i]) {
            for j in i + 1..chars.len() {
                for b in swaps(chars[j]) {
                    let mut v = chars.clone();
                    v[i] = a;
                    v[j] = b;
                    push(v.iter().collect(), &mut out);
                }
            }
        }
    }
    // One character wrong, missing or extra (after the province).
    for i in 1..chars.len() {
        for o in ALPHANUMERIC.chars() {
            let mut v = chars.clone();
            v[i] = o;
            push(v.iter().collect(), &mut out);
        }
        let mut v = chars.clone();
        v.remove(i);
        push(v.iter().collect(), &mut out);
    }
    for i in 1..=chars.len() {
        for o in ALPHANUMERIC.chars() {
            let mut v = chars.clone();
            v.insert(i, o);
            push(v.iter().collect(), &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_plate_normalise_alike() {
        for s in ["鲁G12345", "鲁g 12345", "鲁Ｇ·12345", "鲁G·12345", " 鲁ｇ１２３４５ ", "鲁G-12345", "鲁 G 1 2 3 4 5"]
        {
            assert_eq!(normalise(s).unwrap(), "鲁G12345", "{s}");
        }
        assert_eq!(normalise("鲁gd12345").unwrap(), "鲁GD12345");
        assert_eq!(normalise("鲁G12345F").unwrap(), "鲁G12345F");
        assert_eq!(normalise("鲁G1234警").unwrap(), "鲁G1234警");
    }

    #[test]
    fn non_plates_say_why() {
        assert!(normalise("").unwrap_err().reason.contains("empty"));
        assert!(normalise("AG12345").unwrap_err().reason.contains("province"));
        assert!(normalise("鲁112345").unwrap_err().reason.contains("letter"));
        assert!(normalise("鲁G1234").unwrap_err().reason.contains("length"));
        assert!(normalise("鲁G1234567").unwrap_err().reason.contains("length"));
        assert!(normalise("鲁G12中45").unwrap_err().reason.contains("letters and digits"));
        assert!(normalise("鲁G1234O").is_ok());
    }

    #[test]
    fn candidates_start_with_confusable_swaps() {
        let c = candidate_plates("鲁G1234O");
        // The first candidates are single swaps of confusable characters, left to right.
        assert_eq!(&c[..3], ["鲁61234O", "鲁GI234O", "鲁GL234O"]);
        let zero = c.iter().position(|p| p == "鲁G12340").unwrap();
        let double = c.iter().position(|p| p == "鲁GI2340").unwrap();
        let edit = c.iter().position(|p| p == "鲁G1234X").unwrap();
        assert!(zero < double && double < edit, "{zero} {double} {edit}");
        assert!(!c.contains(&"鲁G1234O".to_owned()));
        // Missing and extra characters are candidates too.
        assert!(candidate_plates("鲁G1234").contains(&"鲁G12345".to_owned()));
        assert!(candidate_plates("鲁G123456").contains(&"鲁G12345".to_owned()));
        // Every candidate keeps the province.
        assert!(c.iter().all(|p| p.starts_with('鲁')));
    }
}
