//! Synthetic registries at the seed county's scale, for the demo, tests and benchmarks.
//!
//! The four CSV files look like the spreadsheets the county would export (Chinese headers,
//! UTF-8) and go through the real import, so whatever loads them is exercised as in
//! production. The content is made up but well formed: identity numbers carry valid check
//! characters, plates are unique `鲁G` (Weifang) plates, some of them new-energy plates, and
//! every department has a power list and a responsibility list. The same seed always gives the
//! same files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::OversightError;
use crate::import::id_check_char;

/// How many records of each registry to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Party members.
    pub members: usize,
    /// Public-institution staff.
    pub staff: usize,
    /// Official vehicles.
    pub vehicles: usize,
    /// Departments.
    pub departments: usize,
}

impl Scale {
    /// The seed county: 50,689 members, 5,801 staff, 951 vehicles, 61 departments.
    pub const COUNTY: Scale = Scale { members: 50_689, staff: 5_801, vehicles: 951, departments: 61 };
}

/// Paths of the files written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generated {
    /// `members.csv`.
    pub members: PathBuf,
    /// `staff.csv`.
    pub staff: PathBuf,
    /// `vehicles.csv`.
    pub vehicles: PathBuf,
    /// `departments.csv`.
    pub departments: PathBuf,
}

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "胡", "朱", "高", "林", "何", "郭", "马",
    "罗", "梁", "宋", "郑", "谢", "韩", "唐", "冯", "于", "董", "萧", "程", "曹", "袁", "邓", "许", "傅", "沈", "曾",
    "彭", "吕", "苏", "卢", "蒋", "蔡", "贾", "丁", "魏", "薛", "叶", "阎", "孟", "臧", "管", "秦", "尹", "姜", "崔",
    "谭", "陆", "汪",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀", "霞",
    "平", "刚", "桂", "英", "华", "建", "国", "志", "红", "玉", "兰", "文", "斌", "波", "宁", "海", "峰", "鹏", "辉",
    "燕", "晨", "雪", "倩", "鑫", "浩", "凯", "琳", "欣", "宇", "鸿", "瑞", "晓", "东", "春", "福", "德", "荣", "祥",
    "林", "亮", "梅",
];
const DEPARTMENTS: &[&str] = &[
    "县委办公室",
    "县人民政府办公室",
    "县纪委监委机关",
    "县委组织部",
    "县委宣传部",
    "县委统战部",
    "县委政法委员会",
    "县委机构编制委员会办公室",
    "县发展和改革局",
    "县教育和体育局",
    "县科学技术局",
    "县工业和信息化局",
    "县公安局",
    "县民政局",
    "县司法局",
    "县财政局",
    "县人力资源和社会保障局",
    "县自然资源和规划局",
    "县住房和城乡建设局",
    "县交通运输局",
    "县水利局",
    "县农业农村局",
    "县商务局",
    "县文化和旅游局",
    "县卫生健康局",
    "县退役军人事务局",
    "县应急管理局",
    "县审计局",
    "县市场监督管理局",
    "县统计局",
    "县医疗保障局",
    "县行政审批服务局",
    "县综合行政执法局",
    "县信访局",
    "县机关事务服务中心",
    "县地方金融监督管理局",
    "县畜牧业发展中心",
    "县供销合作社",
    "县总工会",
    "团县委",
    "县妇女联合会",
];
const TOWNS: &[&str] = &[
    "城关",
    "东城",
    "南关",
    "五井",
    "冶源",
    "寺头",
    "九山",
    "辛寨",
    "柳山",
    "龙岗",
    "上林",
    "营子",
    "卧龙",
    "杨善",
    "蒋峪",
    "石家河",
    "嵩山",
    "宋王庄",
    "纸坊",
    "大关",
    "沂山",
];
const INSTITUTIONS: &[&str] = &[
    "县人民医院",
    "县中医院",
    "县妇幼保健院",
    "县疾病预防控制中心",
    "县第一中学",
    "县第二中学",
    "县实验中学",
    "县职业教育中心",
    "县实验小学",
    "县图书馆",
    "县文化馆",
    "县广播电视台",
    "县不动产登记中心",
    "县公共资源交易中心",
    "县社会保险事业中心",
    "县农业技术推广中心",
    "县水文站",
    "县气象局",
    "县融媒体中心",
    "县档案馆",
];
const MEMBER_POSTS: &[(&str, &str)] = &[
    ("科员", "一级科员"),
    ("副主任科员", "四级主任科员"),
    ("主任科员", "二级主任科员"),
    ("副科长", "副科级"),
    ("科长", "正科级"),
    ("副局长", "副科级"),
    ("局长", "正科级"),
    ("党支部书记", ""),
    ("村委会主任", ""),
    ("教师", "专业技术十级"),
    ("医师", "专业技术九级"),
    ("村民", ""),
    ("退休干部", ""),
    ("工人", ""),
];
const STAFF_POSTS: &[(&str, &str)] = &[
    ("管理岗", "八级职员"),
    ("专业技术岗", "专业技术十级"),
    ("专业技术岗", "专业技术八级"),
    ("工勤岗", "技术工二级"),
    ("副院长", "六级职员"),
    ("科室主任", "七级职员"),
    ("教师", "专业技术十一级"),
    ("护士", "专业技术十二级"),
];
const VEHICLE_TYPES: &[&str] =
    &["轿车", "轿车", "轿车", "越野车", "多用途乘用车", "小型客车", "中型客车", "皮卡", "厢式货车"];
const USE_CATEGORIES: &[&str] = &[
    "一般公务用车",
    "一般公务用车",
    "一般公务用车",
    "执法执勤用车",
    "执法执勤用车",
    "特种专业技术用车",
    "应急保障用车",
    "机要通信用车",
];
const POWER_KINDS: &[&str] =
    &["行政许可", "行政处罚", "行政强制", "行政检查", "行政确认", "行政征收", "行政给付", "行政奖励", "其他行政权力"];
const MATTERS: &[&str] = &[
    "建设工程",
    "道路运输",
    "食品经营",
    "药品零售",
    "特种设备",
    "危险化学品",
    "安全生产",
    "排污",
    "取水",
    "林木采伐",
    "农药经营",
    "种子生产",
    "广告发布",
    "户外广告设施",
    "城镇排水",
    "燃气经营",
    "民办学校",
    "医疗机构",
    "出版物零售",
    "娱乐场所",
    "旅行社",
    "劳务派遣",
    "社会团体",
    "养老机构",
    "殡葬设施",
    "价格行为",
    "计量器具",
    "产品质量",
];
const DUTIES: &[&str] = &[
    "负责本部门权力事项的依法实施并接受监督",
    "负责对审批事项开展事中事后监管",
    "负责及时受理和办结群众投诉举报",
    "负责落实行政执法公示制度",
    "负责落实执法全过程记录制度",
    "负责重大执法决定法制审核",
    "负责建立健全廉政风险防控机制",
    "负责公开办事指南和办理时限",
    "负责对下级单位履职情况进行监督检查",
    "负责配合纪检监察机关开展监督",
];

fn person_name(rng: &mut StdRng) -> String {
    let mut name = String::from(*SURNAMES.choose(rng).unwrap_or(&"王"));
    let parts = if rng.random_bool(0.7) { 2 } else { 1 };
    for _ in 0..parts {
        name.push_str(GIVEN.choose(rng).unwrap_or(&"伟"));
    }
    name
}

/// A valid-looking 18-character identity number from a Weifang county (3707xx).
fn id_number(rng: &mut StdRng, seen: &mut HashSet<String>) -> String {
    loop {
        let region = 370700 + [2, 3, 4, 5, 24, 25, 81, 82, 83, 84, 85, 86].choose(rng).copied().unwrap_or(24);
        let year = rng.random_range(1945..=2002);
        let month = rng.random_range(1..=12);
        let day = rng.random_range(1..=28);
        let seq = rng.random_range(0..1000);
        let first17 = format!("{region}{year:04}{month:02}{day:02}{seq:03}");
        let n = format!("{first17}{}", id_check_char(&first17));
        if seen.insert(n.clone()) {
            return n;
        }
    }
}

/// A unique 鲁G plate: mostly five digits, some with a letter, about one in ten new-energy.
fn plate(rng: &mut StdRng, seen: &mut HashSet<String>) -> String {
    const LETTERS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    loop {
        let p = if rng.random_bool(0.1) {
            format!("鲁G{}{:05}", if rng.random_bool(0.8) { 'D' } else { 'F' }, rng.random_range(0..100_000))
        } else if rng.random_bool(0.2) {
            let l = LETTERS[rng.random_range(0..LETTERS.len())] as char;
            format!("鲁G{l}{:04}", rng.random_range(0..10_000))
        } else {
            format!("鲁G{:05}", rng.random_range(0..100_000))
        };
        if seen.insert(p.clone()) {
            return p;
        }
    }
}

fn department_names(n: usize) -> Vec<String> {
    let mut names: Vec<String> = DEPARTMENTS.iter().map(|s| (*s).to_owned()).collect();
    names.extend(TOWNS.iter().map(|t| format!("{t}镇人民政府")));
    let mut i = 1;
    while names.len() < n {
        names.push(format!("县直属机构{i}"));
        i += 1;
    }
    names.truncate(n);
    names
}

fn writer(path: &Path) -> Result<csv::Writer<std::fs::File>, OversightError> {
    let file = std::fs::File::create(path).map_err(|source| OversightError::Io { path: path.to_owned(), source })?;
    Ok(csv::Writer::from_writer(file))
}

fn csv_err(path: &Path) -> impl Fn(csv::Error) -> OversightError + '_ {
    move |e| OversightError::Io { path: path.to_owned(), source: std::io::Error::other(e) }
}

/// Writes `members.csv`, `staff.csv`, `vehicles.csv` and `departments.csv` into `dir`.
pub fn generate(dir: &Path, seed: u64, scale: Scale) -> Result<Generated, OversightError> {
    std::fs::create_dir_all(dir).map_err(|source| OversightError::Io { path: dir.to_owned(), source })?;
    let mut rng = StdRng::seed_from_u64(seed);
    let out = Generated {
        members: dir.join("members.csv"),
        staff: dir.join("staff.csv"),
        vehicles: dir.join("vehicles.csv"),
        departments: dir.join("departments.csv"),
    };
    let depts = department_names(scale.departments.max(1));
    let mut ids = HashSet::new();

    let path = &out.departments;
    let mut w = writer(path)?;
    w.write_record(["部门代码", "部门名称", "权力清单", "责任清单"]).map_err(csv_err(path))?;
    for (i, name) in depts.iter().enumerate() {
        let powers: Vec<String> = (0..rng.random_range(8..=30))
            .map(|_| {
                let kind = POWER_KINDS.choose(&mut rng).unwrap_or(&"行政检查");
                let matter = MATTERS.choose(&mut rng).unwrap_or(&"安全生产");
                format!("{kind}：{matter}{}", if *kind == "行政许可" { "审批" } else { "相关事项" })
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let duties: Vec<String> = DUTIES.choose_multiple(&mut rng, 5).map(|s| (*s).to_owned()).collect();
        w.write_record([format!("D{:03}", i + 1), name.clone(), powers.join("；"), duties.join("；")])
            .map_err(csv_err(path))?;
    }
    w.flush().map_err(|source| OversightError::Io { path: path.clone(), source })?;

    let path = &out.members;
    let mut w = writer(path)?;
    w.write_record(["党员编号", "姓名", "身份证号", "所在单位", "职务", "职级", "状态"]).map_err(csv_err(path))?;
    for i in 0..scale.members {
        let unit = if rng.random_bool(0.45) {
            format!(
                "{}镇{}村党支部",
                TOWNS.choose(&mut rng).unwrap_or(&"城关"),
                GIVEN.choose(&mut rng).unwrap_or(&"家")
            )
        } else {
            depts.choose(&mut rng).cloned().unwrap_or_default()
        };
        let (post, rank) = MEMBER_POSTS.choose(&mut rng).copied().unwrap_or(("科员", ""));
        let status = if post == "退休干部" || rng.random_bool(0.08) { "退休" } else { "在职" };
        let name = person_name(&mut rng);
        let id = id_number(&mut rng, &mut ids);
        w.write_record([&format!("M{:07}", i + 1), &name, &id, &unit, post, rank, status]).map_err(csv_err(path))?;
    }
    w.flush().map_err(|source| OversightError::Io { path: path.clone(), source })?;

    let path = &out.staff;
    let mut w = writer(path)?;
    w.write_record(["工号", "姓名", "身份证号", "工作单位", "岗位", "职级", "是否党员", "状态"])
        .map_err(csv_err(path))?;
    for i in 0..scale.staff {
        let unit = INSTITUTIONS.choose(&mut rng).copied().unwrap_or("县人民医院");
        let (post, rank) = STAFF_POSTS.choose(&mut rng).copied().unwrap_or(("管理岗", ""));
        let member = if rng.random_bool(0.4) { "是" } else { "否" };
        let name = person_name(&mut rng);
        let id = id_number(&mut rng, &mut ids);
        w.write_record([&format!("S{:06}", i + 1), &name, &id, unit, post, rank, member, "在职"])
            .map_err(csv_err(path))?;
    }
    w.flush().map_err(|source| OversightError::Io { path: path.clone(), source })?;

    let path = &out.vehicles;
    let mut w = writer(path)?;
    w.write_record(["车牌号", "使用单位", "车辆类型", "使用性质", "驾驶员", "状态"]).map_err(csv_err(path))?;
    let mut plates = HashSet::new();
    for _ in 0..scale.vehicles {
        let p = plate(&mut rng, &mut plates);
        let unit = depts.choose(&mut rng).cloned().unwrap_or_default();
        let vtype = VEHICLE_TYPES.choose(&mut rng).copied().unwrap_or("轿车");
        let category = USE_CATEGORIES.choose(&mut rng).copied().unwrap_or("一般公务用车");
        let status = match rng.random_range(0..100) {
            0..=89 => "在用",
            90..=94 => "封存",
            95..=97 => "维修",
            _ => "报废",
        };
        let driver = person_name(&mut rng);
        w.write_record([&p, &unit, vtype, category, &driver, status]).map_err(csv_err(path))?;
    }
    w.flush().map_err(|source| OversightError::Io { path: path.clone(), source })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::parse_records;
    use jiandu_store::RegistryName;

    #[test]
    fn small_registries_are_deterministic_and_import_cleanly() {
        let scale = Scale { members: 300, staff: 50, vehicles: 40, departments: 61 };
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ga = generate(a.path(), 7, scale).unwrap();
        let gb = generate(b.path(), 7, scale).unwrap();
        for (x, y, registry, n) in [
            (&ga.members, &gb.members, RegistryName::Members, 300),
            (&ga.staff, &gb.staff, RegistryName::Staff, 50),
            (&ga.vehicles, &gb.vehicles, RegistryName::Vehicles, 40),
            (&ga.departments, &gb.departments, RegistryName::Departments, 61),
        ] {
            let text = std::fs::read_to_string(x).unwrap();
            assert_eq!(text, std::fs::read_to_string(y).unwrap(), "{registry} differs between runs");
            let records = parse_records(registry, &text, &mut |_, _| {}).unwrap();
            assert_eq!(records.len(), n, "{registry}");
        }
        let vehicles = std::fs::read_to_string(&ga.vehicles).unwrap();
        assert!(vehicles.lines().skip(1).all(|l| l.starts_with("鲁G")));
        let other = tempfile::tempdir().unwrap();
        let gc = generate(other.path(), 8, scale).unwrap();
        assert_ne!(vehicles, std::fs::read_to_string(gc.vehicles).unwrap());
    }
}
