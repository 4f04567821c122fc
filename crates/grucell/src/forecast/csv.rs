//! Reading one numeric column (and optionally a date column) of a CSV file as a time series.
//!
//! Parsing is done by the `csv` crate (quoting, CRLF, ragged rows); this module only picks the
//! columns and turns cells into numbers. Missing-value rules:
//! - an empty cell, `NA`, `N/A`, `NaN`, `nan`, `null`, `None`, `.`, `?` or `-` is **missing**
//!   (kept as `None`: [`super::series::fill_gaps`] interpolates interior gaps and drops
//!   leading/trailing ones);
//! - any other text that is not a number, and a number that is not finite (`inf`, `1e400`), is
//!   an **error** naming the row and the cell, so that a wrong column or a broken file is not
//!   silently read as gaps.
//!
//! Rows are read in file order. When a date column is given or found and its values are dates
//! (`1958-03-29`, `29.03.1958`, `3/29/1958 10:00`) or whole numbers (a `year` column) that run
//! backwards (newest first, as many exports do), the rows are reversed so the series is
//! chronological; [`Series::reversed`] records it.

use std::path::Path;

use crate::error::{ConfigError, Error, FormatError};

/// A univariate series read from a CSV file.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Name of the value column.
    pub name: String,
    /// The values in chronological order; `None` for a missing cell.
    pub values: Vec<Option<f64>>,
    /// The dates' text, aligned with `values`, when a date column was given or a time axis
    /// found (`1959Q1` for a `year` and a `quarter` column).
    pub dates: Option<Vec<String>>,
    /// Where the dates come from (``column `date` ``, ``columns `year` + `month` ``), when
    /// they do.
    pub time_axis: Option<String>,
    /// True when the rows were reversed to put them in chronological order.
    pub reversed: bool,
    /// True when the file has no header row: its first row holds numbers (and dates) only, so
    /// it is read as data and the columns are named `column 1`, `column 2`, ….
    pub headerless: bool,
}

impl Series {
    /// A series from in-memory values (no dates).
    pub fn from_values(name: impl Into<String>, values: Vec<Option<f64>>) -> Self {
        Series {
            name: name.into(),
            values,
            dates: None,
            time_axis: None,
            reversed: false,
            headerless: false,
        }
    }

    /// Number of rows (missing ones included).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Number of missing cells.
    pub fn missing(&self) -> usize {
        self.values.iter().filter(|v| v.is_none()).count()
    }
}

/// Cell texts read as a missing value (compared case-insensitively after trimming).
const MISSING_MARKERS: &[&str] = &["", "na", "n/a", "nan", "null", "none", ".", "?", "-"];

/// Why a cell is not a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BadCell {
    /// Text that is not a number.
    NotANumber,
    /// A number that is infinite or too large for `f64` (`inf`, `1e400`).
    NotFinite,
}

/// Parses one cell: `Ok(None)` for a missing marker, an error for other non-numeric text and
/// for numbers that are not finite (an overflowed `1e400` is not silently a gap). With
/// `decimal_comma` (files whose fields are not separated by commas), `2,5` reads as 2.5, as
/// spreadsheets in many locales write it.
fn parse_cell(cell: &str, decimal_comma: bool) -> Result<Option<f64>, BadCell> {
    let t = cell.trim();
    if MISSING_MARKERS.iter().any(|m| t.eq_ignore_ascii_case(m)) {
        return Ok(None);
    }
    let swapped;
    let t = if decimal_comma && t.matches(',').count() == 1 && !t.contains('.') {
        swapped = t.replacen(',', ".", 1);
        swapped.as_str()
    } else {
        t
    };
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        Ok(_) => Err(BadCell::NotFinite),
        Err(_) => Err(BadCell::NotANumber),
    }
}

/// For the error of a file without a numeric column: the columns that hold numbers but also
/// cells that are not one, each with its first such cell (row 1-based: `first_row` is the file
/// row of the first record, 2 below a header), as
/// ` (column `x` has numbers, but row 52 is `inf`)`; empty when there are none.
fn almost_numeric(
    headers: &[String],
    records: &[csv::StringRecord],
    skip: &[usize],
    decimal_comma: bool,
    first_row: usize,
) -> String {
    let found: Vec<String> = (0..headers.len())
        .filter(|i| !skip.contains(i))
        .filter_map(|i| {
            let cells = records
                .iter()
                .enumerate()
                .filter_map(|(r, rec)| Some((r, rec.get(i)?)));
            let (mut any, mut first_bad) = (false, None);
            for (r, c) in cells {
                match parse_cell(c, decimal_comma) {
                    Ok(Some(_)) => any = true,
                    Ok(None) => {}
                    Err(_) => {
                        first_bad.get_or_insert((r, c));
                    }
                }
            }
            let (r, c) = first_bad.filter(|_| any)?;
            let shown: String = c.trim().chars().take(40).collect();
            Some(format!(
                "column `{}` has numbers, but row {} is `{shown}`",
                headers[i],
                r + first_row
            ))
        })
        .take(3)
        .collect();
    if found.is_empty() {
        String::new()
    } else {
        format!(" ({})", found.join("; "))
    }
}

/// Reads `column` (and `date_column`) of the CSV file at `path`.
///
/// `column = None` picks the only numeric column other than the date column, and fails
/// (listing the columns) when there are several. Errors name the file, the column and, for bad
/// cells, the row (1-based, header = row 1).
///
/// ```
/// use grucell::forecast::csv::read_series;
/// let path = std::env::temp_dir().join(format!("grucell_doc_csv_{}.csv", std::process::id()));
/// std::fs::write(&path, "date,value\n2020-01-01,1.5\n2020-01-02,\n2020-01-03,2.5\n")?;
/// let s = read_series(&path, Some("value"), Some("date"))?;
/// assert_eq!(s.values, vec![Some(1.5), None, Some(2.5)]);
/// assert_eq!(s.dates.as_ref().map(|d| d.len()), Some(3));
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_series(
    path: &Path,
    column: Option<&str>,
    date_column: Option<&str>,
) -> Result<Series, Error> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(&shown, e))?;
    parse_series(&bytes, &shown, column, date_column)
}

/// Picks the field delimiter: the first of `,`, `;` and tab that occurs the same number of
/// times (at least once) on each of the first lines (up to 20), so that `1.2.1990;2,5` reads as
/// a semicolon file with a decimal comma; else `,` unless the first line has none and has `;`
/// or a tab.
fn sniff_delimiter(bytes: &[u8]) -> u8 {
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .take(20)
        .collect();
    let count = |line: &[u8], c: u8| line.iter().filter(|b| **b == c).count();
    let steady = |c: u8| {
        let first = lines.first().map_or(0, |l| count(l, c));
        first > 0 && lines.iter().all(|l| count(l, c) == first)
    };
    if let Some(c) = [b',', b';', b'\t'].into_iter().find(|&c| steady(c)) {
        return c;
    }
    let header = lines.first().copied().unwrap_or(&[]);
    if count(header, b',') > 0 {
        b','
    } else if count(header, b';') > 0 {
        b';'
    } else if count(header, b'\t') > 0 {
        b'\t'
    } else {
        b','
    }
}

/// Finds a header: exact match first, then a unique case-insensitive match.
fn find_column(headers: &[String], name: &str) -> Option<usize> {
    headers.iter().position(|h| h == name).or_else(|| {
        let hits: Vec<usize> = headers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.trim().eq_ignore_ascii_case(name.trim()))
            .map(|(i, _)| i)
            .collect();
        match hits.as_slice() {
            [i] => Some(*i),
            _ => None,
        }
    })
}

/// How a column writes its dates; decides the order of [`date_key`]'s fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DateStyle {
    /// Year first: `1958-03-29`, `1949-01`, `2020/05/01 10:00` (ordered as text after the year).
    YearFirst,
    /// Dates that name their month or period: `Jan-1-1995`, `01 Jan 1995`, `March 2001`,
    /// `1974Q1`, `Q3 1974`, `1995M07`, `2020-W05`.
    Named,
    /// Day, month, year: `29.03.1958`, `29/03/1958 10:00`.
    DayFirst,
    /// Month, day, year: `3/29/1958` (the US order).
    MonthFirst,
    /// Whole numbers in a column named like a time axis (`year`, `t`, `time`, `date`, …).
    Number,
}

/// A date as a sortable key: (year or number, month, day, the rest of the cell, such as a time
/// of day, compared as text).
type DateKey = (i64, u32, u32, String);

/// A date cell as a sortable key. `None` when the cell is not written in `style`.
fn date_key(cell: &str, style: DateStyle) -> Option<DateKey> {
    let c = cell.trim();
    let b = c.as_bytes();
    match style {
        DateStyle::YearFirst => {
            let year_first = b.len() >= 7
                && b[..4].iter().all(u8::is_ascii_digit)
                && matches!(b[4], b'-' | b'/')
                && b[5].is_ascii_digit();
            let year = c.get(..4)?.parse().ok()?;
            year_first.then(|| (year, 0, 0, c[4..].to_string()))
        }
        DateStyle::Named => named_date_key(c),
        DateStyle::DayFirst | DateStyle::MonthFirst => {
            // `A?B?YYYY…` with one- or two-digit A and B and one separator kind (`/`, `.`, `-`).
            let (date, rest) = c.split_at(c.find([' ', 'T']).unwrap_or(c.len()));
            let sep = date.bytes().find(|x| matches!(x, b'/' | b'.' | b'-'))?;
            let mut parts = date.split(sep as char);
            let (a, m, y) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || !is_small_number(a) || !is_small_number(m) || y.len() != 4
            {
                return None;
            }
            let (a, m, y): (u32, u32, i64) = (a.parse().ok()?, m.parse().ok()?, y.parse().ok()?);
            let (day, month) = if style == DateStyle::DayFirst {
                (a, m)
            } else {
                (m, a)
            };
            ((1..=12).contains(&month) && (1..=31).contains(&day))
                .then(|| (y, month, day, rest.to_string()))
        }
        DateStyle::Number => c.parse::<i64>().ok().map(|n| (n, 0, 0, String::new())),
    }
}

/// One or two ASCII digits.
fn is_small_number(s: &str) -> bool {
    (1..=2).contains(&s.len()) && s.bytes().all(|x| x.is_ascii_digit())
}

/// A four-digit year.
fn four_digit_year(s: &str) -> Option<i64> {
    (s.len() == 4 && s.bytes().all(|x| x.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// The month (1–12) an English month name or its abbreviation (`Jan`, `Sept`, `JANUARY`) names.
fn month_number(word: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let w = word.trim().trim_end_matches('.').to_ascii_lowercase();
    if w.len() < 3 || !w.bytes().all(|x| x.is_ascii_alphabetic()) {
        return None;
    }
    MONTHS
        .iter()
        .position(|m| m.starts_with(&w))
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// A year followed or preceded by a period code: `1974Q1`, `1974-Q1`, `1974 q1`, `Q1 1974`,
/// `Q1-1974` (quarters, as month 3q − 2), `1995M07`, `1995m7` (months), `2020-W05`, `2020W5`
/// (ISO weeks, kept in the day field).
fn period_code_key(c: &str) -> Option<DateKey> {
    let compact: String = c
        .chars()
        .filter(|x| !matches!(x, ' ' | '-' | '/' | '.'))
        .collect::<String>()
        .to_ascii_uppercase();
    let (year, code) = if compact.len() > 4 && compact.as_bytes()[0].is_ascii_digit() {
        (compact.get(..4)?, compact.get(4..)?)
    } else {
        let split = compact.len().checked_sub(4)?;
        (compact.get(split..)?, compact.get(..split)?)
    };
    let year = four_digit_year(year)?;
    let (kind, number) = (code.get(..1)?, code.get(1..)?);
    if !is_small_number(number) {
        return None;
    }
    let n: u32 = number.parse().ok()?;
    match kind {
        "Q" if (1..=4).contains(&n) => Some((year, 3 * n - 2, 0, String::new())),
        "M" if (1..=12).contains(&n) => Some((year, n, 0, String::new())),
        "W" if (1..=53).contains(&n) => Some((year, 0, n, String::new())),
        _ => None,
    }
}

/// A date that names its month (`Jan-1-1995`, `1-Jan-1995`, `01 January 1995`, `Jan 1995`,
/// `1995-Jan-01`, `March 3, 2001 10:00`) or its period ([`period_code_key`]). Exactly one month
/// name, one four-digit year and at most one day (1–31); a trailing time of day (`10:00`) is
/// kept as text.
fn named_date_key(c: &str) -> Option<DateKey> {
    if let Some(k) = period_code_key(c) {
        return Some(k);
    }
    let mut tokens: Vec<&str> = c
        .split([' ', '-', '/', ',', '.'])
        .filter(|t| !t.is_empty())
        .collect();
    let rest = match tokens.last() {
        Some(t) if t.contains(':') => tokens.pop().unwrap_or_default(),
        _ => "",
    };
    let (mut months, mut years, mut days) = (Vec::new(), Vec::new(), Vec::new());
    for t in tokens {
        if let Some(m) = month_number(t) {
            months.push(m);
        } else if let Some(y) = four_digit_year(t) {
            years.push(y);
        } else if is_small_number(t) {
            days.push(t.parse::<u32>().ok()?);
        } else {
            return None;
        }
    }
    match (months.as_slice(), years.as_slice(), days.as_slice()) {
        ([m], [y], []) => Some((*y, *m, 0, rest.to_string())),
        ([m], [y], [d]) if (1..=31).contains(d) => Some((*y, *m, *d, rest.to_string())),
        _ => None,
    }
}

/// The style in which every cell of column `i` is a date: year first, else named months or
/// periods, else day first or month first (day first when both read every cell, unless the
/// separator is `/`, which the US writes month first), else whole numbers. `None` when no style
/// reads them all.
fn date_style(records: &[csv::StringRecord], i: usize) -> Option<DateStyle> {
    let reads = |style| {
        !records.is_empty()
            && records
                .iter()
                .all(|r| r.get(i).is_some_and(|c| date_key(c, style).is_some()))
    };
    let slashed = records
        .first()
        .and_then(|r| r.get(i))
        .is_some_and(|c| c.contains('/'));
    let (first, second) = if slashed {
        (DateStyle::MonthFirst, DateStyle::DayFirst)
    } else {
        (DateStyle::DayFirst, DateStyle::MonthFirst)
    };
    [
        DateStyle::YearFirst,
        DateStyle::Named,
        first,
        second,
        DateStyle::Number,
    ]
    .into_iter()
    .find(|&s| reads(s))
}

/// Headers of columns that count time in whole numbers (see [`time_number_column`]).
const TIME_AXIS_NAMES: &[&str] = &[
    "year",
    "t",
    "time",
    "step",
    "period",
    "date",
    "datetime",
    "timestamp",
    "ds",
    "month",
    "quarter",
    "week",
    "day",
    "hour",
];

/// A part of the calendar held in its own column (`year`, `month`, … — see [`CalendarPart::of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum CalendarPart {
    Year,
    Quarter,
    Month,
    Week,
    Day,
    Hour,
}

impl CalendarPart {
    /// The part a header names (`Year`, `yr`, `MONTH`, `qtr`, …).
    fn of(header: &str) -> Option<Self> {
        Some(match header.trim().to_ascii_lowercase().as_str() {
            "year" | "yr" | "yyyy" => CalendarPart::Year,
            "quarter" | "qtr" => CalendarPart::Quarter,
            "month" | "mon" | "mm" => CalendarPart::Month,
            "week" | "wk" => CalendarPart::Week,
            "day" | "dd" => CalendarPart::Day,
            "hour" | "hr" | "hh" => CalendarPart::Hour,
            _ => return None,
        })
    }

    /// The part's value in `cell`: a whole number in its range (a month may also be named).
    fn value(self, cell: &str) -> Option<i64> {
        let c = cell.trim();
        let n = c.parse::<i64>().ok().or_else(|| {
            (self == CalendarPart::Month)
                .then(|| month_number(c).map(i64::from))
                .flatten()
        })?;
        let range = match self {
            CalendarPart::Year => i64::MIN..=i64::MAX,
            CalendarPart::Quarter => 1..=4,
            CalendarPart::Month => 1..=12,
            CalendarPart::Week => 1..=53,
            CalendarPart::Day => 1..=31,
            CalendarPart::Hour => 0..=23,
        };
        range.contains(&n).then_some(n)
    }
}

/// Where the series' time axis comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TimeAxis {
    /// One column of dates or of whole numbers counting time.
    Column(usize),
    /// A year column and finer calendar parts in their own columns (`year`, `month`; `year`,
    /// `quarter`; `year`, `month`, `day`, `hour`), coarsest first.
    Calendar(Vec<(usize, CalendarPart)>),
}

impl TimeAxis {
    /// The columns the axis reads.
    fn columns(&self) -> Vec<usize> {
        match self {
            TimeAxis::Column(i) => vec![*i],
            TimeAxis::Calendar(parts) => parts.iter().map(|(i, _)| *i).collect(),
        }
    }

    /// How the axis is described in messages and `metrics.json`.
    fn describe(&self, headers: &[String]) -> String {
        let names: Vec<String> = self
            .columns()
            .iter()
            .filter_map(|i| headers.get(*i).map(|h| format!("`{h}`")))
            .collect();
        match names.as_slice() {
            [one] => format!("column {one}"),
            _ => format!("columns {}", names.join(" + ")),
        }
    }

    /// The row's date as text (`1959Q1`, `1959-03`, `1959-03-07 05h`) and its sortable key, or
    /// `None` when a cell does not read.
    fn date(&self, r: &csv::StringRecord, style: Option<DateStyle>) -> Option<(String, DateKey)> {
        match self {
            TimeAxis::Column(i) => {
                let cell = r.get(*i)?;
                Some((cell.to_string(), date_key(cell, style?)?))
            }
            TimeAxis::Calendar(parts) => {
                let (mut text, mut key) = (String::new(), (0, 0, 0, String::new()));
                for &(i, part) in parts {
                    let v = part.value(r.get(i)?)?;
                    let small = u32::try_from(v).unwrap_or(0);
                    match part {
                        CalendarPart::Year => {
                            text = v.to_string();
                            key.0 = v;
                        }
                        CalendarPart::Quarter => {
                            text.push_str(&format!("Q{v}"));
                            key.1 = 3 * small - 2;
                        }
                        CalendarPart::Month => {
                            text.push_str(&format!("-{v:02}"));
                            key.1 = small;
                        }
                        CalendarPart::Week => {
                            text.push_str(&format!("-W{v:02}"));
                            key.2 = small;
                        }
                        CalendarPart::Day => {
                            text.push_str(&format!("-{v:02}"));
                            key.2 = small;
                        }
                        CalendarPart::Hour => {
                            text.push_str(&format!(" {v:02}h"));
                            key.3 = format!("{v:02}");
                        }
                    }
                }
                Some((text, key))
            }
        }
    }
}

/// A compact date `YYYYMMDD` (month 1–12, day 1–31) as `YYYY-MM-DD`.
fn compact_date(cell: &str) -> Option<String> {
    let c = cell.trim();
    if c.len() != 8 || !c.bytes().all(|x| x.is_ascii_digit()) {
        return None;
    }
    let (y, m, d) = (&c[..4], &c[4..6], &c[6..]);
    let (mn, dn): (u32, u32) = (m.parse().ok()?, d.parse().ok()?);
    ((1..=12).contains(&mn) && (1..=31).contains(&dn)).then(|| format!("{y}-{m}-{d}"))
}

/// Keys that run strictly up or strictly down.
fn strictly_monotone<K: PartialOrd>(keys: &[K]) -> bool {
    keys.len() >= 2
        && (keys.windows(2).all(|w| w[1] > w[0]) || keys.windows(2).all(|w| w[1] < w[0]))
}

/// The time axis found when `--date-column` is not given: the first column whose every cell is
/// a date ([`date_style`]: `1958-03-29`, `1949-01`, `2020/05/01 10:00`, `Jan-1-1995`, `1974Q1`,
/// `29.03.1958`, `3/29/1958`; not decimal years like `1958.2027`, which are numbers); failing
/// that, a year column with finer calendar parts beside it ([`calendar_columns`]); failing that,
/// a column named like a time axis ([`TIME_AXIS_NAMES`]) whose whole numbers run strictly up or
/// down, when the file has other columns.
fn find_time_axis(headers: &[String], records: &[csv::StringRecord]) -> Option<TimeAxis> {
    (0..headers.len())
        .find(|&i| matches!(date_style(records, i), Some(s) if s != DateStyle::Number))
        .map(TimeAxis::Column)
        .or_else(|| calendar_columns(headers, records))
        .or_else(|| time_number_column(headers, records).map(TimeAxis::Column))
}

/// A year column and at least one finer calendar part (quarter, month, week, day, hour) in
/// columns of their own, every cell in range, whose combined dates run strictly up or down:
/// `year,quarter,gdp` or `Year,Month,Value`. One column per part; a day needs a month.
fn calendar_columns(headers: &[String], records: &[csv::StringRecord]) -> Option<TimeAxis> {
    let mut parts: Vec<(usize, CalendarPart)> = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let Some(part) = CalendarPart::of(h) else {
            continue;
        };
        let reads = records
            .iter()
            .all(|r| r.get(i).and_then(|c| part.value(c)).is_some());
        if reads && !parts.iter().any(|(_, p)| *p == part) {
            parts.push((i, part));
        }
    }
    parts.sort_by_key(|(_, p)| *p);
    let has = |p| parts.iter().any(|(_, q)| *q == p);
    let coarse = [
        CalendarPart::Quarter,
        CalendarPart::Month,
        CalendarPart::Week,
    ];
    let finer = parts.len() >= 2 && coarse.iter().filter(|p| has(**p)).count() <= 1;
    if !has(CalendarPart::Year) || !finer || (has(CalendarPart::Day) && !has(CalendarPart::Month)) {
        return None;
    }
    let axis = TimeAxis::Calendar(parts);
    let keys: Option<Vec<DateKey>> = records
        .iter()
        .map(|r| axis.date(r, None).map(|d| d.1))
        .collect();
    keys.is_some_and(|k| strictly_monotone(&k)).then_some(axis)
}

/// A column named like a time axis holding whole numbers that run strictly up or down
/// (`year` 1900, 1901, …; `t` 0, 1, …; `date` 19580329, 19580405, …), when there is another
/// column to forecast.
fn time_number_column(headers: &[String], records: &[csv::StringRecord]) -> Option<usize> {
    if headers.len() < 2 {
        return None;
    }
    (0..headers.len()).find(|&i| {
        let h = headers[i].trim().to_ascii_lowercase();
        TIME_AXIS_NAMES.contains(&h.as_str())
            && whole_numbers(records, i).is_some_and(|n| strictly_monotone(&n))
    })
}

/// Every cell of column `i` as a whole number, or `None`.
fn whole_numbers(records: &[csv::StringRecord], i: usize) -> Option<Vec<i64>> {
    records
        .iter()
        .map(|r| r.get(i).and_then(|c| c.trim().parse::<i64>().ok()))
        .collect()
}

/// The two rules by which a numeric column is passed over as the series (see [`skipped`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    /// Row numbers: named like an index (empty, pandas' `Unnamed: 0`, `index`, `id`; any
    /// column of a file without a header row) and holding consecutive integers, counting up or
    /// down.
    RowNumbers,
    /// Whole numbers in a column named like a time axis that never turn back (`year`, `t`,
    /// `date`), or in a column named like a finer calendar part, within its range (`month`
    /// 1–12, `day` 1–31, … of a daily file whose date is spread over columns).
    TimeNamed,
}

/// Whether column `i` is passed over by `rule` when another numeric column is there.
fn skipped(
    rule: Skip,
    header: &str,
    headerless: bool,
    records: &[csv::StringRecord],
    i: usize,
) -> bool {
    let h = header.trim().to_ascii_lowercase();
    let Some(n) = whole_numbers(records, i).filter(|n| n.len() >= 2) else {
        return false;
    };
    match rule {
        Skip::RowNumbers => {
            let named =
                headerless || h.is_empty() || h.starts_with("unnamed") || h == "index" || h == "id";
            named
                && (n.windows(2).all(|w| w[1] == w[0] + 1)
                    || n.windows(2).all(|w| w[1] == w[0] - 1))
        }
        // A finer calendar part cycles through its range; a year or another time axis never
        // turns back (a daily file repeats its year).
        Skip::TimeNamed => match CalendarPart::of(&h) {
            Some(p) if p != CalendarPart::Year => records
                .iter()
                .all(|r| r.get(i).and_then(|c| p.value(c)).is_some()),
            _ => {
                (CalendarPart::of(&h).is_some() || TIME_AXIS_NAMES.contains(&h.as_str()))
                    && (n.windows(2).all(|w| w[1] >= w[0]) || n.windows(2).all(|w| w[1] <= w[0]))
            }
        },
    }
}

/// Whether a first row is data rather than a header: every cell is a number or a date
/// (year first, day or month first, or naming its month or period), and at least one is a
/// number. A header naming its columns by years only (`2019,2020`) is read as data too; the
/// file then needs a header word such as `region` or `value` to be read as headed.
fn is_data_row(cells: &[String], decimal_comma: bool) -> bool {
    let number = |c: &str| matches!(parse_cell(c, decimal_comma), Ok(Some(_)));
    let date = |c: &str| {
        [
            DateStyle::YearFirst,
            DateStyle::Named,
            DateStyle::DayFirst,
            DateStyle::MonthFirst,
        ]
        .into_iter()
        .any(|s| date_key(c, s).is_some())
    };
    cells.iter().any(|c| number(c)) && cells.iter().all(|c| number(c) || date(c))
}

fn list(headers: &[String]) -> String {
    headers
        .iter()
        .map(|h| format!("`{h}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Like [`read_series`], from bytes already in memory; `source` names them in errors.
pub fn parse_series(
    bytes: &[u8],
    source: &str,
    column: Option<&str>,
    date_column: Option<&str>,
) -> Result<Series, Error> {
    let bad =
        |part: String, msg: String| -> Error { FormatError::malformed(source, part, msg).into() };
    let delimiter = sniff_delimiter(bytes);
    let decimal_comma = delimiter != b',';
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .has_headers(false)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    // An error in the first line is the header's (or, in a file without one, the first row's).
    let mut records = reader
        .records()
        .collect::<Result<Vec<csv::StringRecord>, _>>()
        .map_err(|e| {
            let first = e.position().is_none_or(|p| p.record() == 0);
            bad(if first { "header" } else { "rows" }.into(), e.to_string())
        })?;
    let first: Vec<String> = records
        .first()
        .map(|r| {
            r.iter()
                .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    if first.is_empty() || first.iter().all(|h| h.is_empty()) {
        return Err(bad(
            "header".into(),
            "the file is empty; expected a header naming the columns, or rows of data".into(),
        ));
    }
    let headerless = is_data_row(&first, decimal_comma);
    let headers: Vec<String> = if headerless {
        if let Some(c) = records.first_mut() {
            *c = first.iter().collect();
        }
        (1..=first.len()).map(|i| format!("column {i}")).collect()
    } else {
        records.remove(0);
        first
    };
    // The file row of `records[i]` is `i + first_row` (1-based, a header is row 1).
    let first_row = if headerless { 1 } else { 2 };
    let axis = match date_column {
        None => find_time_axis(&headers, &records),
        Some(d) => Some(TimeAxis::Column(find_column(&headers, d).ok_or_else(
            || {
                bad(
                    format!("date column `{d}`"),
                    format!("not found; available columns: {}", list(&headers)),
                )
            },
        )?)),
    };
    let axis_columns = axis.as_ref().map(TimeAxis::columns).unwrap_or_default();
    let value_idx = match column {
        Some(c) => find_column(&headers, c).ok_or_else(|| {
            bad(
                format!("column `{c}`"),
                format!("not found; available columns: {}", list(&headers)),
            )
        })?,
        None => {
            let numeric: Vec<usize> = (0..headers.len())
                .filter(|i| !axis_columns.contains(i))
                .filter(|&i| {
                    let cells = records.iter().filter_map(|r| r.get(i));
                    let mut any = false;
                    for c in cells {
                        match parse_cell(c, decimal_comma) {
                            Ok(Some(_)) => any = true,
                            Ok(None) => {}
                            Err(_) => return false,
                        }
                    }
                    any
                })
                .collect();
            // Row numbers (pandas' unnamed index, `index`, `id`), then whole numbers in columns
            // named like a time axis or calendar part, are not the series when another numeric
            // column is there.
            let mut numeric = numeric;
            for rule in [Skip::RowNumbers, Skip::TimeNamed] {
                let kept: Vec<usize> = numeric
                    .iter()
                    .copied()
                    .filter(|&i| !skipped(rule, &headers[i], headerless, &records, i))
                    .collect();
                if !kept.is_empty() {
                    numeric = kept;
                }
            }
            match numeric.as_slice() {
                [i] => *i,
                [] => {
                    return Err(ConfigError::invalid(
                        "--column",
                        "(not given)",
                        format!(
                            "a column name: {} has no numeric column{}; columns: {}",
                            source,
                            almost_numeric(
                                &headers,
                                &records,
                                &axis_columns,
                                decimal_comma,
                                first_row
                            ),
                            list(&headers)
                        ),
                    )
                    .into())
                }
                _ => {
                    let names: Vec<String> = numeric
                        .iter()
                        .filter_map(|i| headers.get(*i).cloned())
                        .collect();
                    return Err(ConfigError::invalid(
                        "--column",
                        "(not given)",
                        format!("one of the numeric columns {}", list(&names)),
                    )
                    .into());
                }
            }
        }
    };
    let name = headers.get(value_idx).cloned().unwrap_or_default();
    let mut values = Vec::with_capacity(records.len());
    let style = match &axis {
        Some(TimeAxis::Column(i)) => date_style(&records, *i),
        _ => None,
    };
    let mut dates = axis.as_ref().map(|_| Vec::with_capacity(records.len()));
    let mut keys = axis.as_ref().map(|_| Vec::with_capacity(records.len()));
    for (i, r) in records.iter().enumerate() {
        let cell = r.get(value_idx).unwrap_or("");
        let v = parse_cell(cell, decimal_comma).map_err(|why| {
            let what = match why {
                BadCell::NotANumber => "is not a number",
                BadCell::NotFinite => "is not a finite number",
            };
            bad(
                format!("column `{name}`, row {}", i + first_row),
                format!("`{cell}` {what}; expected a number (empty cells and NA/NaN/null/./? are read as missing values)"),
            )
        })?;
        values.push(v);
        if let (Some(d), Some(a)) = (dates.as_mut(), axis.as_ref()) {
            let date = a.date(r, style);
            let text = match (a, &date) {
                (_, Some((text, _))) => text.clone(),
                (TimeAxis::Column(i), None) => r.get(*i).unwrap_or("").to_string(),
                (TimeAxis::Calendar(_), None) => String::new(),
            };
            d.push(text);
            if let Some(k) = keys.as_mut() {
                k.push(date.map(|d| d.1));
            }
        }
    }
    if values.iter().all(Option::is_none) {
        return Err(bad(
            format!("column `{name}`"),
            format!("has no numeric values in {} data rows", values.len()),
        ));
    }
    // Whole numbers that are all compact dates (`19580329`) are shown as `1958-03-29`.
    if style == Some(DateStyle::Number) {
        if let Some(d) = dates.as_mut() {
            let shown: Option<Vec<String>> = d.iter().map(|c| compact_date(c)).collect();
            if let Some(shown) = shown {
                *d = shown;
            }
        }
    }
    let mut series = Series {
        name,
        values,
        dates,
        time_axis: axis.as_ref().map(|a| a.describe(&headers)),
        reversed: false,
        headerless,
    };
    // Every row's key read: newest first when they never rise and are not all equal.
    let keys: Option<Vec<DateKey>> = keys.and_then(|k| k.into_iter().collect());
    if let Some(k) = keys {
        let descending =
            k.len() >= 2 && k.windows(2).all(|w| w[0] >= w[1]) && k.first() != k.last();
        if descending {
            series.values.reverse();
            if let Some(d) = series.dates.as_mut() {
                d.reverse();
            }
            series.reversed = true;
        }
    }
    Ok(series)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, col: Option<&str>, date: Option<&str>) -> Result<Series, Error> {
        parse_series(text.as_bytes(), "t.csv", col, date)
    }

    #[test]
    fn missing_markers_and_numbers() {
        let s = parse("a,b\n1,x\nNA,y\n,z\n3.5e1,w\n", Some("a"), None).unwrap();
        assert_eq!(s.values, vec![Some(1.0), None, None, Some(35.0)]);
        assert_eq!(s.missing(), 2);
    }

    #[test]
    fn missing_column_lists_available() {
        let e = parse("date,co2\n2000,1\n", Some("value"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`value`") && e.contains("`date`, `co2`"), "{e}");
        let e = parse("date,co2\n2000,1\n", Some("co2"), Some("when"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("date column `when`") && e.contains("`date`, `co2`"),
            "{e}"
        );
    }

    /// A file as pandas writes it (unnamed index column), newest first, without `--date-column`:
    /// the index is not taken for the series, and the ISO dates are found and put in order.
    #[test]
    fn pandas_index_is_skipped_and_iso_dates_are_found() {
        let s = parse(
            ",Month,Sunspots\n2,1749-03-01,30.5\n1,1749-02-01,20.0\n0,1749-01-01,10.0\n",
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.name, "Sunspots");
        assert_eq!(s.values, [Some(10.0), Some(20.0), Some(30.5)]);
        assert!(s.reversed);
        assert_eq!(s.dates.unwrap()[0], "1749-01-01");
        // Two real series stay ambiguous; a lone index column is still a series.
        assert!(parse("a,b\n1,5\n2,6\n", None, None).is_err());
        assert_eq!(parse("id\n1\n2\n", None, None).unwrap().name, "id");
        // Values of four digits and a decimal point are numbers, not dates.
        let s = parse("t,v\n2000-01,1234.5\n2000-02,1240.25\n", None, None).unwrap();
        assert_eq!((s.name.as_str(), s.dates.unwrap().len()), ("v", 2));
    }

    /// A first row of numbers (and dates) is data: nothing is lost, the columns are numbered,
    /// dates are still found, and rows in errors count from the file's first line.
    #[test]
    fn a_first_row_of_numbers_is_data() {
        let s = parse("\u{feff}10.5\n11\n12.25\n", None, None).unwrap();
        assert!(s.headerless);
        assert_eq!(s.name, "column 1");
        assert_eq!(s.values, [Some(10.5), Some(11.0), Some(12.25)]);
        let s = parse("1990-02,3\n1990-01,2\n", None, None).unwrap();
        assert_eq!((s.name.as_str(), s.reversed), ("column 2", true));
        assert_eq!(s.values, [Some(2.0), Some(3.0)]);
        assert_eq!(s.time_axis.as_deref(), Some("column `column 1`"));
        let s = parse("01.02.1990;2,5\n02.02.1990;3\n", Some("column 2"), None).unwrap();
        assert_eq!(s.values, [Some(2.5), Some(3.0)]);
        // Row numbers in the first column are passed over, as an `index` column is.
        let s = parse("1,10.5\n2,11\n3,12\n", None, None).unwrap();
        assert_eq!((s.name.as_str(), s.values.len()), ("column 2", 3));
        let e = parse("1\n2\nabc\n", None, None).unwrap_err().to_string();
        assert!(e.contains("row 3") && e.contains("`abc`"), "{e}");
        // A header has a word in it; dates alone, or a number beside a word, are a header.
        for headed in [
            "v\n1\n2\n",
            "1990-01,value\n1990-02,3\n",
            "1990-01,1991-01\n1,2\n",
        ] {
            assert!(
                !parse(headed, None, None).is_ok_and(|s| s.headerless),
                "{headed}"
            );
        }
    }

    #[test]
    fn text_cell_is_an_error_with_row() {
        let e = parse("v\n1\n2\nabc\n", Some("v"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 4") && e.contains("`abc`"), "{e}");
    }

    #[test]
    fn no_numeric_column_names_the_cell_that_spoils_one() {
        let e = parse(
            "d,v,w\n2001-01,1,a\n2001-02,inf,b\n2001-03,3,c\n",
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("column `v` has numbers, but row 3 is `inf`"),
            "{e}"
        );
        assert!(!e.contains("column `w`"), "{e}");
        let e = parse("v,w\nx,a\n", None, None).unwrap_err().to_string();
        assert!(e.contains("has no numeric column; columns"), "{e}");
    }

    #[test]
    fn no_numbers_is_an_error() {
        let e = parse("v\n\nNA\n", Some("v"), None).unwrap_err().to_string();
        assert!(e.contains("no numeric values"), "{e}");
    }

    #[test]
    fn case_insensitive_and_semicolon() {
        let s = parse(
            "Date;Value\n2001-01-01;1\n2001-01-02;2\n",
            Some("value"),
            Some("date"),
        )
        .unwrap();
        assert_eq!(s.values, vec![Some(1.0), Some(2.0)]);
        assert!(!s.reversed);
    }

    #[test]
    fn semicolon_files_may_use_decimal_commas() {
        let s = parse(
            "Datum;Wert\n2001-01-01;1,5\n2001-01-02;-2,25\n2001-01-03;3\n2001-01-04;4.5\n",
            None,
            Some("datum"),
        )
        .unwrap();
        assert_eq!(s.values, vec![Some(1.5), Some(-2.25), Some(3.0), Some(4.5)]);
        let s = parse("d\tv\n1\t0,5\n", Some("v"), None).unwrap();
        assert_eq!(s.values, vec![Some(0.5)]);
        // Thousands separators are not guessed: `1,234.5` is text, in any file.
        assert!(parse("d;v\n1;1,234.5\n", Some("v"), None).is_err());
        // In a comma-separated file a quoted `1,5` is not a number either.
        assert!(parse("d,v\n1,\"1,5\"\n", Some("v"), None).is_err());
    }

    #[test]
    fn descending_dates_are_reversed() {
        let s = parse(
            "d,v\n2001-03,3\n2001-02,2\n2001-01,1\n",
            Some("v"),
            Some("d"),
        )
        .unwrap();
        assert_eq!(s.values, vec![Some(1.0), Some(2.0), Some(3.0)]);
        assert_eq!(s.dates.unwrap()[0], "2001-01");
        assert!(s.reversed);
    }

    /// Day-first, month-first and whole-number time axes are found without `--date-column`
    /// and put newest-last.
    #[test]
    fn other_date_styles_are_found_and_ordered() {
        // US month-first dates with a time, newest first.
        let s = parse(
            "when,v\n1/13/2021 10:00,3\n12/31/2020 23:00,2\n12/31/2020 09:00,1\n",
            None,
            None,
        )
        .unwrap();
        assert_eq!((s.name.as_str(), s.reversed), ("v", true));
        assert_eq!(s.values, [Some(1.0), Some(2.0), Some(3.0)]);
        assert_eq!(s.dates.unwrap()[0], "12/31/2020 09:00");
        // Day-first dotted dates, semicolons and decimal commas, newest first.
        let s = parse("Datum;Wert\n02.01.2021;2,5\n31.12.2020;1,5\n", None, None).unwrap();
        assert_eq!((s.name.as_str(), s.reversed), ("Wert", true));
        assert_eq!(s.values, [Some(1.5), Some(2.5)]);
        // Ambiguous slashed dates read month first: 01/02 (Jan 2) comes before 02/01 (Feb 1).
        let s = parse("d,v\n02/01/2021,2\n01/02/2021,1\n", None, None).unwrap();
        assert!(s.reversed);
        // ... and dotted ones day first: 01.02 (Feb 1) comes after 02.01 (Jan 2).
        let s = parse("d,v\n01.02.2021,2\n02.01.2021,1\n", None, None).unwrap();
        assert!(s.reversed);
        let s = parse("d,v\n02.01.2021,1\n01.02.2021,2\n", None, None).unwrap();
        assert!(!s.reversed);
        // A `year` column of whole numbers is the time axis, newest first or not.
        let s = parse("Year,Rainfall\n1903,3.5\n1902,2\n1900,1\n", None, None).unwrap();
        assert_eq!((s.name.as_str(), s.reversed), ("Rainfall", true));
        assert_eq!(s.values, [Some(1.0), Some(2.0), Some(3.5)]);
        assert_eq!(s.dates.unwrap(), ["1900", "1902", "1903"]);
        let s = parse("t,v\n0,5\n1,6\n2,7\n", None, None).unwrap();
        assert_eq!((s.name.as_str(), s.reversed), ("v", false));
        // Not a time axis: repeated numbers, another name, or the only column. A time-named
        // column that never turns back is still not the series; one that does may be.
        let s = parse("t,v\n0,5\n0,6\n", None, None).unwrap();
        assert_eq!((s.name.as_str(), s.dates.is_none()), ("v", true));
        assert!(parse("t,v\n3,5\n1,6\n2,7\n", None, None).is_err());
        assert!(parse("n,v\n0,5\n1,6\n", None, None).is_err());
        assert_eq!(parse("year\n1\n2\n", None, None).unwrap().name, "year");
        // Not dates: impossible months and days, two-digit years.
        for bad in ["13/13/2020", "1.2.20", "0/5/2020", "5/32/2020"] {
            for style in [DateStyle::DayFirst, DateStyle::MonthFirst] {
                assert_eq!(date_key(bad, style), None, "{bad}");
            }
        }
        // An explicit date column of whole numbers orders the rows too.
        let s = parse("k,v\n3,1\n2,2\n", Some("v"), Some("k")).unwrap();
        assert!(s.reversed);
    }

    /// Dates that name their month or period are found and ordered.
    #[test]
    fn named_months_and_period_codes() {
        let key = |c| date_key(c, DateStyle::Named);
        assert_eq!(key("Jan-1-1995"), Some((1995, 1, 1, String::new())));
        assert_eq!(key("01 Jan 1995"), Some((1995, 1, 1, String::new())));
        assert_eq!(
            key("March 3, 2001 10:00"),
            Some((2001, 3, 3, "10:00".into()))
        );
        assert_eq!(key("SEPT 2001"), Some((2001, 9, 0, String::new())));
        assert_eq!(key("1995-Oct"), Some((1995, 10, 0, String::new())));
        assert_eq!(key("1974Q1"), Some((1974, 1, 0, String::new())));
        assert_eq!(key("Q3 1974"), Some((1974, 7, 0, String::new())));
        assert_eq!(key("1974-q4"), Some((1974, 10, 0, String::new())));
        assert_eq!(key("1995M07"), Some((1995, 7, 0, String::new())));
        assert_eq!(key("2020-W05"), Some((2020, 0, 5, String::new())));
        for bad in [
            "Ja 1995",
            "Jan Feb 1995",
            "Jan 1995 1996",
            "Jan 32 1995",
            "Jan 95",
            "1974Q5",
            "1995M13",
            "Q1",
            "hello 1995",
            "1 2 Jan 1995",
            "",
        ] {
            assert_eq!(key(bad), None, "{bad}");
        }
        // statsmodels' elec_equip: `Jan-1-1995`, monthly, here newest first.
        let s = parse(
            "DATE,v\nMar-1-1995,3\nFeb-1-1995,2\nJan-1-1995,1\n",
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.values, [Some(1.0), Some(2.0), Some(3.0)]);
        assert!(s.reversed);
        assert_eq!(s.time_axis.as_deref(), Some("column `DATE`"));
        // Quarters across a year boundary, newest last.
        let s = parse("period,v\n1974Q3,1\n1974Q4,2\n1975Q1,3\n", None, None).unwrap();
        assert_eq!((s.name.as_str(), s.reversed), ("v", false));
    }

    /// A year column and finer calendar parts in columns of their own make the time axis; a
    /// `date` column of whole numbers (`19580329`) is one too, and neither is the series.
    #[test]
    fn calendar_columns_and_numeric_dates() {
        // statsmodels' macrodata-like: year, quarter, value; newest first.
        let s = parse(
            "year,quarter,gdp\n1960,1,3\n1959,4,2\n1959,3,1\n",
            None,
            None,
        )
        .unwrap();
        assert_eq!((s.name.as_str(), s.reversed), ("gdp", true));
        assert_eq!(s.dates.unwrap(), ["1959Q3", "1959Q4", "1960Q1"]);
        assert_eq!(s.time_axis.as_deref(), Some("columns `year` + `quarter`"));
        // Month names in a month column.
        let s = parse("Year,Month,Value\n2000,Dec,1\n2001,Jan,2\n", None, None).unwrap();
        assert_eq!(s.dates.unwrap(), ["2000-12", "2001-01"]);
        // Year, month, day, newest first.
        let text = "year,month,day,flow\n2001,2,1,3\n2001,1,31,2\n2001,1,30,1\n";
        let s = parse(text, None, None).unwrap();
        assert_eq!((s.name.as_str(), s.reversed), ("flow", true));
        assert_eq!(s.dates.unwrap()[0], "2001-01-30");
        // Not a time axis: repeated dates (two stations), or a day without a month. The
        // calendar columns are still not taken for the series.
        let s = parse("year,month,v\n2000,1,1\n2000,1,2\n", None, None).unwrap();
        assert_eq!((s.name.as_str(), s.dates.is_none()), ("v", true));
        let s = parse("year,day,v\n2000,1,1\n2001,2,2\n", None, None).unwrap();
        assert_eq!(s.name, "v");
        assert_eq!(s.time_axis.as_deref(), Some("column `year`"));
        // statsmodels' co2: a `date` column of yyyymmdd numbers, gaps in the values.
        let s = parse(
            "date,co2\n19580329,316.1\n19580405,\n19580412,317.5\n",
            None,
            None,
        );
        let s = s.unwrap();
        assert_eq!((s.name.as_str(), s.missing()), ("co2", 1));
        assert_eq!(s.time_axis.as_deref(), Some("column `date`"));
        assert_eq!(s.dates.unwrap(), ["1958-03-29", "1958-04-05", "1958-04-12"]);
        // Numbers that are not all dates stay numbers.
        let s = parse("date,v\n19581329,1\n19581330,2\n", None, None).unwrap();
        assert_eq!(s.dates.unwrap(), ["19581329", "19581330"]);
        // A single time-named column is still a series, and a measured `time` beside an index
        // column is the series.
        assert_eq!(parse("month\n3\n1\n", None, None).unwrap().name, "month");
        assert_eq!(
            parse("id,time\n1,30\n2,25\n3,31\n", None, None)
                .unwrap()
                .name,
            "time"
        );
    }

    #[test]
    fn column_inferred_when_unique() {
        let s = parse("d,v\n2001-01,1\n2001-02,2\n", None, Some("d")).unwrap();
        assert_eq!(s.name, "v");
        let e = parse("d,v,w\n2001-01,1,3\n", None, Some("d"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`v`, `w`"), "{e}");
    }
}
