//! Registry import: a CSV file exported from a government spreadsheet becomes a new registry
//! version.
//!
//! The file may be UTF-8 (with or without BOM) or GB18030/GBK, which is what Chinese office
//! software usually exports; headers may be Chinese or English and in any order ([`HEADERS`]).
//! Every row is checked before anything is written: any bad cell fails the whole import with
//! the row and column named, so a registry is never half updated. The checked records are
//! diffed against the current version (added, changed, retired); a dry run stops there, a
//! real import hands the plan to [`Store::registry_apply`], which lands it as one transaction
//! with its ledger entry.

use std::collections::{HashMap, HashSet};

use jiandu_store::{
    Department, IdNumber, ImportPlan, ImportVersion, Person, RegistryName, RegistryRecord, Store, Vehicle,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::OversightError;
use crate::plate;

/// How the file's bytes are to be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8 when the bytes are valid UTF-8 (or start with its BOM), otherwise GB18030.
    #[default]
    Auto,
    /// UTF-8 only.
    Utf8,
    /// GB18030, the superset of GBK and GB2312.
    Gbk,
}

impl std::str::FromStr for Encoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Encoding::Auto),
            "utf-8" | "utf8" => Ok(Encoding::Utf8),
            "gbk" | "gb18030" | "gb2312" => Ok(Encoding::Gbk),
            other => Err(format!("unknown encoding {other:?}; use auto, utf-8 or gbk")),
        }
    }
}

/// A cell (or a whole row, or the header) that stops the import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// Line in the file, 1 being the header.
    pub row: usize,
    /// The column's header as written in the file (empty for a whole-row problem).
    pub column: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.column.is_empty() {
            write!(f, "row {}: {}", self.row, self.message)
        } else {
            write!(f, "row {}, column {}: {}", self.row, self.column, self.message)
        }
    }
}

/// A registry's fields, each with the header names accepted for it; `*` marks a required field.
pub type HeaderMap = &'static [(&'static str, &'static [&'static str])];

/// The fields of each registry and the header names accepted for them (compared after trimming
/// and lower-casing).
pub const HEADERS: &[(RegistryName, HeaderMap)] = &[
    (RegistryName::Members, PERSON_HEADERS),
    (RegistryName::Staff, PERSON_HEADERS),
    (RegistryName::Vehicles, VEHICLE_HEADERS),
    (RegistryName::Departments, DEPARTMENT_HEADERS),
];

/// People: the code column is optional, since party-member and HR exports are often keyed by
/// the identity number alone; without it a person's key is derived from that number
/// ([`person_key`]). Columns such as 性别, 民族, 出生日期 or 人员类别 are accepted and ignored.
const PERSON_HEADERS: HeaderMap = &[
    ("code", &["编号", "人员编号", "党员编号", "工号", "人员代码", "code", "id"]),
    ("*name", &["姓名", "name"]),
    (
        "*id_number",
        &[
            "身份证号",
            "身份证号码",
            "公民身份号码",
            "公民身份证号",
            "公民身份证号码",
            "证件号码",
            "id_number",
            "id number",
        ],
    ),
    (
        "*unit",
        &[
            "单位",
            "工作单位",
            "所在单位",
            "所在党组织",
            "所在党支部",
            "所在支部",
            "党支部",
            "党组织名称",
            "单位名称",
            "unit",
        ],
    ),
    ("post", &["职务", "现任职务", "岗位", "post"]),
    ("rank", &["职级", "级别", "职务级别", "rank"]),
    ("party_member", &["是否党员", "党员", "政治面貌", "party_member", "party member"]),
    ("status", &["状态", "人员状态", "在册状态", "status"]),
];

/// The key of a person whose export has no code column: derived from the identity number, so a
/// re-import finds the same person, without writing the number itself where codes are shown.
pub fn person_key(id_number: &str) -> String {
    let digest = Sha256::digest(id_number.trim().to_uppercase().as_bytes());
    format!("sfz-{}", &hex::encode(digest)[..16])
}

const VEHICLE_HEADERS: HeaderMap = &[
    ("*plate", &["车牌号", "车牌号码", "号牌号码", "车牌", "plate"]),
    ("*unit", &["使用单位", "单位", "所属单位", "unit"]),
    ("vehicle_type", &["车辆类型", "车型", "vehicle_type", "type"]),
    ("*use_category", &["使用性质", "用途类别", "车辆用途", "车辆类别", "use_category", "category"]),
    ("driver", &["驾驶员", "登记驾驶员", "专职驾驶员", "driver"]),
    ("status", &["状态", "车辆状态", "status"]),
    ("allowed", &["允许使用", "是否允许使用", "allowed"]),
];

const DEPARTMENT_HEADERS: HeaderMap = &[
    ("*code", &["部门代码", "单位代码", "代码", "编码", "code"]),
    ("*name", &["部门名称", "单位名称", "名称", "name"]),
    ("powers", &["权力清单", "权力事项", "powers"]),
    ("responsibilities", &["责任清单", "责任事项", "responsibilities"]),
];

fn headers_of(registry: RegistryName) -> HeaderMap {
    HEADERS.iter().find(|(r, _)| *r == registry).map(|(_, h)| *h).unwrap_or(&[])
}

/// Most row errors reported at once (the rest are counted).
const MAX_REPORTED: usize = 50;

/// Turns the file's bytes into text in the chosen encoding; returns the text and the encoding
/// actually used (`utf-8` or `gb18030`).
pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<(String, &'static str), OversightError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF".as_slice()).map(|b| (b, true)).unwrap_or((bytes, false));
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b).map(|s| s.to_owned()).map_err(|e| {
            let line = b[..e.valid_up_to()].iter().filter(|c| **c == b'\n').count() + 1;
            OversightError::Decode {
                encoding: "utf-8",
                line,
                reason: format!("invalid UTF-8 at byte {}; try --encoding gbk", e.valid_up_to()),
            }
        })
    };
    let gbk = |b: &[u8]| {
        let (text, had_errors) = encoding_rs::GB18030.decode_without_bom_handling(b);
        if had_errors {
            let line = text.lines().position(|l| l.contains('\u{FFFD}')).map(|p| p + 1).unwrap_or(1);
            return Err(OversightError::Decode {
                encoding: "gb18030",
                line,
                reason: "bytes that are neither GBK nor GB18030".into(),
            });
        }
        Ok(text.into_owned())
    };
    match (encoding, bytes) {
        (Encoding::Utf8, (b, _)) => Ok((utf8(b)?, "utf-8")),
        (Encoding::Gbk, (b, _)) => Ok((gbk(b)?, "gb18030")),
        (Encoding::Auto, (b, true)) => Ok((utf8(b)?, "utf-8")),
        (Encoding::Auto, (b, false)) => match std::str::from_utf8(b) {
            Ok(s) => Ok((s.to_owned(), "utf-8")),
            Err(_) => Ok((gbk(b)?, "gb18030")),
        },
    }
}

/// Parses and checks every row of a registry CSV; all errors or all records.
/// `progress(done, total)` is called every 1000 rows and at the end.
pub fn parse_records(
    registry: RegistryName,
    text: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<RegistryRecord>, OversightError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let header_row = reader.headers().map_err(|e| rows_error(vec![csv_error(1, e)]))?.clone();
    let columns = map_headers(registry, &header_row)?;
    let raw: Vec<csv::StringRecord> = reader
        .records()
        .enumerate()
        .map(|(i, r)| r.map_err(|e| csv_error(i + 2, e)))
        .collect::<Result<_, _>>()
        .map_err(|e| rows_error(vec![e]))?;
    let total = raw.len() as u64;
    let mut records = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    let mut keys: HashMap<String, usize> = HashMap::with_capacity(raw.len());
    for (i, rec) in raw.iter().enumerate() {
        let row = i + 2;
        if rec.iter().all(str::is_empty) {
            continue;
        }
        if rec.len() != header_row.len() {
            errors.push(RowError {
                row,
                column: String::new(),
                message: format!("{} cells, but the header has {}", rec.len(), header_row.len()),
            });
            continue;
        }
        let cells = Cells { registry, rec, columns: &columns, header: &header_row, row };
        match cells.record() {
            Ok(r) => {
                if let Some(first) = keys.insert(r.key().to_owned(), row) {
                    let key_field = match registry {
                        RegistryName::Vehicles => "plate",
                        RegistryName::Members | RegistryName::Staff if !columns.contains_key("code") => "id_number",
                        _ => "code",
                    };
                    errors.push(RowError {
                        row,
                        column: cells.header_of(key_field),
                        message: if key_field == "id_number" {
                            format!("this identity number appears twice (first in row {first})")
                        } else {
                            format!("{:?} appears twice (first in row {first})", r.key())
                        },
                    });
                } else {
                    records.push(r);
                }
            }
            Err(e) => errors.extend(e),
        }
        if (i + 1) % 1000 == 0 {
            progress(i as u64 + 1, total);
        }
    }
    progress(total, total);
    if errors.is_empty() { Ok(records) } else { Err(rows_error(errors)) }
}

fn csv_error(row: usize, e: csv::Error) -> RowError {
    let row = e.position().map(|p| p.line() as usize).unwrap_or(row);
    RowError { row, column: String::new(), message: format!("not readable as CSV: {e}") }
}

fn rows_error(mut errors: Vec<RowError>) -> OversightError {
    let total = errors.len();
    errors.truncate(MAX_REPORTED);
    OversightError::Rows { total, errors }
}

/// Field name → column index.
fn map_headers(
    registry: RegistryName,
    header: &csv::StringRecord,
) -> Result<HashMap<&'static str, usize>, OversightError> {
    let mut columns = HashMap::new();
    let mut errors = Vec::new();
    for (i, h) in header.iter().enumerate() {
        let h = h.trim().trim_start_matches('\u{FEFF}').to_lowercase();
        let Some((field, _)) = headers_of(registry).iter().find(|(_, names)| names.iter().any(|n| *n == h)) else {
            continue;
        };
        let field = field.trim_start_matches('*');
        if let Some(prev) = columns.insert(field, i) {
            errors.push(RowError {
                row: 1,
                column: header[i].to_owned(),
                message: format!("column {:?} already gives {field}", &header[prev]),
            });
        }
    }
    for (field, names) in headers_of(registry) {
        if let Some(required) = field.strip_prefix('*')
            && !columns.contains_key(required)
        {
            errors.push(RowError {
                row: 1,
                column: required.to_owned(),
                message: format!("required column missing; name it one of {}", names.join(", ")),
            });
        }
    }
    if errors.is_empty() { Ok(columns) } else { Err(rows_error(errors)) }
}

/// One data row with its header mapping, for reading and checking cells.
struct Cells<'a> {
    registry: RegistryName,
    rec: &'a csv::StringRecord,
    columns: &'a HashMap<&'static str, usize>,
    header: &'a csv::StringRecord,
    row: usize,
}

impl Cells<'_> {
    fn get(&self, field: &str) -> &str {
        self.columns.get(field).and_then(|i| self.rec.get(*i)).unwrap_or("")
    }

    fn header_of(&self, field: &str) -> String {
        self.columns.get(field).map(|i| self.header[*i].to_owned()).unwrap_or_else(|| field.to_owned())
    }

    fn error(&self, field: &str, message: impl Into<String>) -> RowError {
        RowError { row: self.row, column: self.header_of(field), message: message.into() }
    }

    fn text(&self, field: &str, required: bool, max: usize, errors: &mut Vec<RowError>) -> String {
        let v = self.get(field);
        if required && v.is_empty() {
            errors.push(self.error(field, "empty; this column is required"));
        } else if v.chars().count() > max {
            errors.push(self.error(field, format!("longer than {max} characters")));
        } else if v.chars().any(char::is_control) && field != "powers" && field != "responsibilities" {
            errors.push(self.error(field, "contains control characters"));
        }
        v.to_owned()
    }

    fn choice(
        &self,
        field: &str,
        default: &str,
        choices: &[(&'static str, &[&str])],
        errors: &mut Vec<RowError>,
    ) -> String {
        let v = self.get(field);
        if v.is_empty() {
            return default.to_owned();
        }
        let lower = v.to_lowercase();
        match choices.iter().find(|(code, names)| *code == lower || names.contains(&v)) {
            Some((code, _)) => (*code).to_owned(),
            None => {
                let accepted: Vec<String> =
                    choices.iter().map(|(code, names)| format!("{code} ({})", names.join("/"))).collect();
                errors.push(self.error(field, format!("{v:?} is not one of {}", accepted.join(", "))));
                default.to_owned()
            }
        }
    }

    fn yes_no(&self, field: &str, default: bool, errors: &mut Vec<RowError>) -> bool {
        let v = self.get(field);
        match v.to_lowercase().as_str() {
            "" => default,
            "是" | "yes" | "y" | "true" | "1" | "党员" | "中共党员" | "允许" => true,
            "否" | "no" | "n" | "false" | "0" | "群众" | "非党员" | "禁止" | "不允许" => false,
            _ => {
                errors.push(self.error(field, format!("{v:?} is not yes/no (是/否)")));
                default
            }
        }
    }

    fn record(&self) -> Result<RegistryRecord, Vec<RowError>> {
        let mut e = Vec::new();
        let record = match self.registry {
            RegistryName::Members | RegistryName::Staff => {
                let id_number = self.get("id_number").to_uppercase();
                if let Err(why) = check_id_number(&id_number) {
                    e.push(self.error("id_number", why));
                }
                let code = if self.columns.contains_key("code") {
                    self.text("code", true, 64, &mut e)
                } else {
                    person_key(&id_number)
                };
                RegistryRecord::Person(Person {
                    code,
                    name: self.text("name", true, 64, &mut e),
                    id_number: IdNumber::new(id_number),
                    unit: self.text("unit", true, 200, &mut e),
                    post: self.text("post", false, 100, &mut e),
                    rank: self.text("rank", false, 100, &mut e),
                    party_member: self.yes_no("party_member", self.registry == RegistryName::Members, &mut e),
                    status: self.choice(
                        "status",
                        "active",
                        &[
                            ("active", &["在职", "在岗", "正常", "在册"]),
                            ("retired", &["退休", "离休"]),
                            ("transferred", &["调离", "离职", "转出"]),
                            ("deceased", &["死亡", "去世", "病故"]),
                        ],
                        &mut e,
                    ),
                })
            }
            RegistryName::Vehicles => {
                let raw = self.get("plate");
                let plate = if raw.is_empty() {
                    e.push(self.error("plate", "empty; this column is required"));
                    String::new()
                } else {
                    plate::normalise(raw).unwrap_or_else(|err| {
                        e.push(self.error("plate", err.to_string()));
                        String::new()
                    })
                };
                let status = self.choice(
                    "status",
                    "in_service",
                    &[
                        ("in_service", &["在用", "正常", "使用中"]),
                        ("sealed", &["封存", "停用"]),
                        ("repair", &["维修", "送修"]),
                        ("disposed", &["报废", "已处置", "处置", "拍卖"]),
                    ],
                    &mut e,
                );
                let allowed = self.yes_no("allowed", status == "in_service", &mut e);
                RegistryRecord::Vehicle(Vehicle {
                    plate,
                    unit: self.text("unit", true, 200, &mut e),
                    vehicle_type: self.text("vehicle_type", false, 64, &mut e),
                    use_category: self.choice(
                        "use_category",
                        "",
                        &[
                            ("general", &["一般公务用车", "一般公务", "公务用车"]),
                            ("law_enforcement", &["执法执勤用车", "执法执勤", "执法用车"]),
                            ("special", &["特种专业技术用车", "特种专业技术", "特种用车"]),
                            ("emergency", &["应急保障用车", "应急保障", "应急用车"]),
                            ("confidential", &["机要通信用车", "机要通信", "机要用车"]),
                        ],
                        &mut e,
                    ),
                    driver: self.text("driver", false, 64, &mut e),
                    status,
                    allowed,
                })
            }
            RegistryName::Departments => RegistryRecord::Department(Department {
                code: self.text("code", true, 64, &mut e),
                name: self.text("name", true, 200, &mut e),
                powers: split_items(&self.text("powers", false, 100_000, &mut e)),
                responsibilities: split_items(&self.text("responsibilities", false, 100_000, &mut e)),
            }),
        };
        if self.registry == RegistryName::Vehicles && self.get("use_category").is_empty() {
            e.push(self.error("use_category", "empty; this column is required"));
        }
        if e.is_empty() { Ok(record) } else { Err(e) }
    }
}

/// Items of a power or responsibility list cell: one per line or separated by `；`, `;` or `|`.
fn split_items(cell: &str) -> Vec<String> {
    cell.split(['\n', '；', ';', '|']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Checks an 18-character citizen identity number: 17 digits, then a digit or X matching the
/// ISO 7064 MOD 11-2 check character.
pub fn check_id_number(n: &str) -> Result<(), String> {
    let chars: Vec<char> = n.chars().collect();
    if chars.len() != 18 {
        return Err(format!("must be 18 characters, got {}", chars.len()));
    }
    if !chars[..17].iter().all(char::is_ascii_digit) {
        return Err("the first 17 characters must be digits".into());
    }
    let expected = id_check_char(&n[..17]);
    if chars[17] != expected {
        return Err(format!("check character is {}, expected {expected} (mistyped digit?)", chars[17]));
    }
    Ok(())
}

/// The check character of the first 17 digits of an identity number.
pub fn id_check_char(first17: &str) -> char {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];
    let sum: u32 = first17.chars().zip(WEIGHTS).map(|(c, w)| c.to_digit(10).unwrap_or(0) * w).sum();
    CHECK[(sum % 11) as usize]
}

/// What an import changes, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportDiff {
    /// Keys new in the file.
    pub added: Vec<String>,
    /// Keys whose content changed.
    pub changed: Vec<String>,
    /// Keys in the registry but no longer in the file.
    pub retired: Vec<String>,
    /// Keys with identical content.
    pub unchanged: usize,
}

/// The result of [`import_csv`].
#[derive(Debug, Clone, Serialize)]
pub struct ImportOutcome {
    /// Registry imported.
    pub registry: RegistryName,
    /// Encoding the file was read in.
    pub encoding: &'static str,
    /// Records in the file.
    pub records: usize,
    /// The diff against the version before.
    pub diff: ImportDiff,
    /// The new version, unless this was a dry run (or nothing changed).
    pub version: Option<ImportVersion>,
}

/// Options of one import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// How to read the bytes.
    pub encoding: Encoding,
    /// Compute and return the diff without writing.
    pub dry_run: bool,
    /// Who imports (for the ledger).
    pub actor: String,
    /// File name, for the record.
    pub source: String,
}

/// Decodes, checks and diffs a registry file and, unless a dry run, lands it as a new version.
/// `progress(done, total)` follows the row checks. A file identical to the current version
/// lands nothing.
pub async fn import_csv(
    store: &Store,
    registry: RegistryName,
    bytes: &[u8],
    options: &ImportOptions,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<ImportOutcome, OversightError> {
    let (text, encoding) = decode(bytes, options.encoding)?;
    let records = parse_records(registry, &text, progress)?;
    let (base_version, current) = store.registry_current(registry).await?;
    let mut diff = ImportDiff::default();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    let mut in_file = HashSet::with_capacity(records.len());
    for r in &records {
        in_file.insert(r.key().to_owned());
        match current.get(r.key()) {
            None => {
                diff.added.push(r.key().to_owned());
                added.push(r.clone());
            }
            Some(h) if *h != r.content_hash() => {
                diff.changed.push(r.key().to_owned());
                changed.push(r.clone());
            }
            Some(_) => diff.unchanged += 1,
        }
    }
    let mut retired: Vec<String> = current.keys().filter(|k| !in_file.contains(*k)).cloned().collect();
    retired.sort();
    diff.retired = retired.clone();
    let nothing_changed = added.is_empty() && changed.is_empty() && retired.is_empty();
    let version = if options.dry_run || nothing_changed {
        None
    } else {
        let plan = ImportPlan {
            registry,
            base_version,
            actor: options.actor.clone(),
            source: options.source.clone(),
            sha256: hex::encode(Sha256::digest(bytes)),
            records: records.len() as i64,
            added,
            changed,
            retired,
        };
        Some(store.registry_apply(&plan).await?)
    };
    info!(
        registry = %registry, encoding, records = records.len(), added = diff.added.len(),
        changed = diff.changed.len(), retired = diff.retired.len(), dry_run = options.dry_run, "registry import"
    );
    Ok(ImportOutcome { registry, encoding, records: records.len(), diff, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(registry: RegistryName, text: &str) -> Result<Vec<RegistryRecord>, OversightError> {
        parse_records(registry, text, &mut |_, _| {})
    }

    #[test]
    fn id_numbers_carry_a_check_character() {
        assert_eq!(id_check_char("11010519491231002"), 'X');
        assert!(check_id_number("11010519491231002X").is_ok());
        assert!(check_id_number("110105194912310021").unwrap_err().contains("expected X"));
        assert!(check_id_number("1101051949").unwrap_err().contains("18 characters"));
    }

    #[test]
    fn chinese_and_english_headers_map_to_fields() {
        let zh = "车牌号,使用单位,车辆类型,使用性质,驾驶员,状态\n鲁G·12345,县财政局,轿车,一般公务用车,王强,在用\n";
        let en = "plate,unit,type,category,driver,status,allowed\n鲁g 12345,县财政局,轿车,general,王强,in_service,no\n";
        let a = parse(RegistryName::Vehicles, zh).unwrap();
        let b = parse(RegistryName::Vehicles, en).unwrap();
        let RegistryRecord::Vehicle(a) = &a[0] else { panic!() };
        let RegistryRecord::Vehicle(b) = &b[0] else { panic!() };
        assert_eq!((a.plate.as_str(), a.use_category.as_str(), a.allowed), ("鲁G12345", "general", true));
        assert_eq!((b.plate.as_str(), b.driver.as_str(), b.allowed), ("鲁G12345", "王强", false));
    }

    #[test]
    fn bad_cells_name_row_and_column() {
        let text = "编号,姓名,身份证号,单位\nM1,张三,11010519491231002X,县委\nM2,李四,110105194912310021,县委\nM3,,11010519491231002X,县委\n";
        let OversightError::Rows { total, errors } = parse(RegistryName::Members, text).unwrap_err() else { panic!() };
        assert_eq!(total, 2);
        assert_eq!(errors[0].row, 3);
        assert_eq!(errors[0].column, "身份证号");
        assert_eq!(
            errors[1],
            RowError { row: 4, column: "姓名".into(), message: "empty; this column is required".into() }
        );
        let missing = parse(RegistryName::Members, "编号,姓名,单位\nM1,张三,县委\n").unwrap_err();
        assert!(missing.to_string().contains("row 1, column id_number: required column missing"), "{missing}");
        let dup = parse(
            RegistryName::Members,
            "编号,姓名,身份证号,单位\nM1,张三,11010519491231002X,县委\nM1,张三,11010519491231002X,县委\n",
        );
        assert!(dup.unwrap_err().to_string().contains("row 3, column 编号: \"M1\" appears twice (first in row 2)"));
    }

    #[test]
    fn exports_without_a_code_column_are_keyed_by_identity_number() {
        let text = "姓名,公民身份号码,所在党支部,性别,民族,出生日期,人员类别\n\
                    张三,11010519491231002x,城关街道第一党支部,男,汉族,1949-12-31,在职党员\n";
        let records = parse(RegistryName::Members, text).unwrap();
        let RegistryRecord::Person(p) = &records[0] else { panic!("{records:?}") };
        assert_eq!((p.name.as_str(), p.unit.as_str()), ("张三", "城关街道第一党支部"));
        assert_eq!(p.code, person_key("11010519491231002X"));
        assert!(!p.code.contains("1101051949"), "the key must not carry the number: {}", p.code);
        let twice = "姓名,身份证号,工作单位\n张三,11010519491231002X,县委\n张三,11010519491231002X,县委\n";
        let err = parse(RegistryName::Members, twice).unwrap_err().to_string();
        assert!(err.contains("row 3, column 身份证号: this identity number appears twice (first in row 2)"), "{err}");
        assert!(!err.contains("11010519491231002X"), "{err}");
    }

    #[test]
    fn gbk_bytes_are_detected() {
        let text = "部门代码,部门名称,权力清单\nD01,县交通运输局,行政许可；行政处罚\n";
        let (bytes, _, _) = encoding_rs::GBK.encode(text);
        assert!(std::str::from_utf8(&bytes).is_err());
        let (decoded, enc) = decode(&bytes, Encoding::Auto).unwrap();
        assert_eq!((decoded.as_str(), enc), (text, "gb18030"));
        assert!(decode(&bytes, Encoding::Utf8).unwrap_err().to_string().contains("--encoding gbk"));
        let recs = parse(RegistryName::Departments, &decoded).unwrap();
        let RegistryRecord::Department(d) = &recs[0] else { panic!() };
        assert_eq!(d.powers, ["行政许可", "行政处罚"]);
        let bom = [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat();
        assert_eq!(decode(&bom, Encoding::Auto).unwrap(), (text.to_owned(), "utf-8"));
    }
}
