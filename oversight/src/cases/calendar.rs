//! Working-day arithmetic on the official Chinese calendar.
//!
//! Which days are worked is data, never code: one TOML file per year (`calendar/2026.toml`,
//! `calendar/2027.toml`, embedded; newer years or corrections loaded with `jiandu calendar load`
//! into the database) lists the public holidays and the weekend days that are worked instead
//! (调休). A day is a working day when a file lists it as worked, else not when it falls in a
//! holiday, else when it is Monday to Friday. Asking about a year with no file is an error
//! rather than a guess, since a guessed deadline is a wrong one. Days are civil dates in UTC+8.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::OversightError;

/// The calendar years shipped with jiandu.
pub const EMBEDDED_YEARS: [&str; 2] =
    [include_str!("../../calendar/2026.toml"), include_str!("../../calendar/2027.toml")];

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;
/// UTC+8, the office's time zone, in milliseconds.
const UTC8_MS: i64 = 8 * 3_600_000;

/// A civil date, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    /// The date of year, month, day (proleptic Gregorian).
    pub fn from_ymd(y: i64, m: u32, d: u32) -> Day {
        // Howard Hinnant's days_from_civil.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = m as i64;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Day(era * 146_097 + doe - 719_468)
    }

    /// Year, month, day.
    pub fn ymd(self) -> (i64, u32, u32) {
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Day> {
        let mut parts = s.trim().splitn(3, '-');
        let y: i64 = parts.next()?.parse().ok()?;
        let m: u32 = parts.next()?.parse().ok()?;
        let d: u32 = parts.next()?.parse().ok()?;
        let day = Day::from_ymd(y, m, d);
        (day.ymd() == (y, m, d)).then_some(day)
    }

    /// The day (UTC+8) an instant falls on.
    pub fn of_ms(ms: i64) -> Day {
        Day((ms + UTC8_MS).div_euclid(DAY_MS))
    }

    /// The first millisecond of the day in UTC+8.
    pub fn start_ms(self) -> i64 {
        self.0 * DAY_MS - UTC8_MS
    }

    /// The last millisecond of the day in UTC+8.
    pub fn end_ms(self) -> i64 {
        self.start_ms() + DAY_MS - 1
    }

    /// Monday = 1 … Sunday = 7.
    pub fn weekday(self) -> u32 {
        ((self.0 + 3).rem_euclid(7) + 1) as u32
    }

    /// The day `n` days later (earlier when negative).
    pub fn plus(self, n: i64) -> Day {
        Day(self.0 + n)
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YearFile {
    year: i64,
    #[serde(default)]
    provisional: bool,
    source: String,
    #[serde(default)]
    holidays: Vec<HolidayFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HolidayFile {
    name: String,
    from: String,
    to: String,
    #[serde(default)]
    workdays: Vec<String>,
}

/// One year of the official calendar.
#[derive(Debug, Clone, PartialEq)]
pub struct CalendarYear {
    /// The year.
    pub year: i64,
    /// True while the State Council notice is not known (statutory holidays only).
    pub provisional: bool,
    /// Where the dates come from.
    pub source: String,
    /// Days off that would otherwise be working days or weekends.
    pub holidays: BTreeSet<Day>,
    /// Weekend days that are working days (调休).
    pub workdays: BTreeSet<Day>,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> OversightError {
    OversightError::Invalid { field: field.into(), reason: reason.into() }
}

impl CalendarYear {
    /// Parses and checks a year file: dates well-formed and in the year, ranges in order,
    /// worked days on weekends and outside holidays.
    pub fn parse(text: &str) -> Result<CalendarYear, OversightError> {
        let file: YearFile = toml::from_str(text).map_err(|e| invalid("calendar", e.message().to_owned()))?;
        if !(1949..=2200).contains(&file.year) {
            return Err(invalid("calendar.year", format!("must be a plausible year, got {}", file.year)));
        }
        let date = |field: String, s: &str| -> Result<Day, OversightError> {
            let day = Day::parse(s).ok_or_else(|| invalid(field.clone(), format!("not a YYYY-MM-DD date: {s:?}")))?;
            if day.ymd().0 != file.year {
                return Err(invalid(field, format!("{s} is not in {}", file.year)));
            }
            Ok(day)
        };
        let mut year = CalendarYear {
            year: file.year,
            provisional: file.provisional,
            source: file.source,
            holidays: BTreeSet::new(),
            workdays: BTreeSet::new(),
        };
        for (i, h) in file.holidays.iter().enumerate() {
            let from = date(format!("holidays[{i}].from"), &h.from)?;
            let to = date(format!("holidays[{i}].to"), &h.to)?;
            if to < from || to.0 - from.0 > 30 {
                return Err(invalid(
                    format!("holidays[{i}].to"),
                    format!("{} must be 0..=30 days after {}", h.to, h.from),
                ));
            }
            year.holidays.extend((from.0..=to.0).map(Day));
            for (j, w) in h.workdays.iter().enumerate() {
                let field = format!("holidays[{i}].workdays[{j}]");
                let day = date(field.clone(), w)?;
                if day.weekday() < 6 {
                    return Err(invalid(
                        field,
                        format!("{w} ({}) is a weekday; list only worked weekend days", h.name),
                    ));
                }
                year.workdays.insert(day);
            }
        }
        if let Some(both) = year.holidays.intersection(&year.workdays).next() {
            return Err(invalid("holidays", format!("{both} is listed both as a holiday and as a working day")));
        }
        Ok(year)
    }
}

/// The calendars in force, by year.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkCalendar {
    years: BTreeMap<i64, CalendarYear>,
}

impl WorkCalendar {
    /// The calendars shipped with jiandu.
    pub fn embedded() -> Result<WorkCalendar, OversightError> {
        let mut cal = WorkCalendar::default();
        for text in EMBEDDED_YEARS {
            cal.insert(CalendarYear::parse(text)?);
        }
        Ok(cal)
    }

    /// Adds or replaces a year.
    pub fn insert(&mut self, year: CalendarYear) {
        self.years.insert(year.year, year);
    }

    /// The years known.
    pub fn years(&self) -> impl Iterator<Item = &CalendarYear> {
        self.years.values()
    }

    /// Whether `day` is a working day; an error for a year with no calendar.
    pub fn is_working_day(&self, day: Day) -> Result<bool, OversightError> {
        let y = day.ymd().0;
        let year = self.years.get(&y).ok_or_else(|| {
            invalid("calendar", format!("no working-day calendar for {y}; load it with `jiandu calendar load FILE`"))
        })?;
        Ok(if year.workdays.contains(&day) {
            true
        } else if year.holidays.contains(&day) {
            false
        } else {
            day.weekday() <= 5
        })
    }

    /// The `n`th working day after `day` (the day itself does not count).
    pub fn add_working_days(&self, day: Day, n: u32) -> Result<Day, OversightError> {
        let mut d = day;
        let mut left = n;
        while left > 0 {
            d = d.plus(1);
            if self.is_working_day(d)? {
                left -= 1;
            }
        }
        Ok(d)
    }

    /// The `n`th working day before `day`.
    pub fn working_days_before(&self, day: Day, n: u32) -> Result<Day, OversightError> {
        let mut d = day;
        let mut left = n;
        while left > 0 {
            d = d.plus(-1);
            if self.is_working_day(d)? {
                left -= 1;
            }
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Day {
        Day::parse(s).unwrap()
    }

    #[test]
    fn dates_round_trip_and_know_their_weekday() {
        assert_eq!(Day::from_ymd(1970, 1, 1), Day(0));
        assert_eq!(d("2026-02-14").to_string(), "2026-02-14");
        assert_eq!(d("2026-02-14").weekday(), 6, "2026-02-14 is a Saturday");
        assert_eq!(d("2026-01-04").weekday(), 7, "2026-01-04 is a Sunday");
        assert_eq!(d("2024-02-29").ymd(), (2024, 2, 29));
        assert!(Day::parse("2026-02-30").is_none());
        // 2026-02-15 00:00 in Beijing is 2026-02-14 16:00 UTC.
        assert_eq!(Day::of_ms(d("2026-02-15").start_ms()), d("2026-02-15"));
        assert_eq!(Day::of_ms(d("2026-02-15").start_ms() - 1), d("2026-02-14"));
        assert_eq!(d("2026-02-15").start_ms(), 1_771_084_800_000);
    }

    #[test]
    fn the_2026_calendar_follows_the_state_council_notice() {
        let cal = WorkCalendar::embedded().unwrap();
        for off in ["2026-01-01", "2026-02-16", "2026-02-23", "2026-04-06", "2026-05-05", "2026-06-19", "2026-10-07"] {
            assert!(!cal.is_working_day(d(off)).unwrap(), "{off} is a day off");
        }
        for on in ["2026-01-04", "2026-02-14", "2026-02-28", "2026-05-09", "2026-09-20", "2026-10-10", "2026-02-24"] {
            assert!(cal.is_working_day(d(on)).unwrap(), "{on} is worked");
        }
        assert!(!cal.is_working_day(d("2026-03-01")).unwrap(), "an ordinary Sunday is off");
        assert!(cal.is_working_day(d("2028-01-03")).is_err(), "no calendar for 2028: an error, not a guess");
    }

    #[test]
    fn a_deadline_across_spring_festival_2026_is_right() {
        let cal = WorkCalendar::embedded().unwrap();
        // Started Thu 2026-02-12: worked Fri 13, Sat 14 (调休), then Feb 15–23 off, then
        // Tue 24, Wed 25, Thu 26, Fri 27, Sat 28 (调休), Mon Mar 2 …
        let start = d("2026-02-12");
        assert_eq!(cal.add_working_days(start, 1).unwrap(), d("2026-02-13"));
        assert_eq!(cal.add_working_days(start, 2).unwrap(), d("2026-02-14"));
        assert_eq!(cal.add_working_days(start, 3).unwrap(), d("2026-02-24"));
        assert_eq!(cal.add_working_days(start, 7).unwrap(), d("2026-02-28"));
        assert_eq!(cal.add_working_days(start, 8).unwrap(), d("2026-03-02"));
        assert_eq!(cal.add_working_days(start, 15).unwrap(), d("2026-03-11"));
        assert_eq!(cal.working_days_before(d("2026-02-24"), 1).unwrap(), d("2026-02-14"));
        assert_eq!(cal.working_days_before(d("2026-02-26"), 3).unwrap(), d("2026-02-14"));
        // Across the year end into the provisional 2027 file.
        assert_eq!(cal.add_working_days(d("2026-12-31"), 1).unwrap(), d("2027-01-04"));
    }

    #[test]
    fn bad_calendar_files_name_the_field() {
        let bad = "year = 2026\nsource = \"x\"\n[[holidays]]\nname = \"a\"\nfrom = \"2026-02-15\"\nto = \"2026-02-23\"\nworkdays = [\"2026-02-16\"]\n";
        let e = CalendarYear::parse(bad).unwrap_err();
        assert!(matches!(e, OversightError::Invalid { ref field, .. } if field == "holidays[0].workdays[0]"), "{e}");
        let wrong_year = bad.replace("2026-02-23", "2027-02-23");
        let e = CalendarYear::parse(&wrong_year).unwrap_err();
        assert!(matches!(e, OversightError::Invalid { ref field, .. } if field == "holidays[0].to"), "{e}");
    }
}
