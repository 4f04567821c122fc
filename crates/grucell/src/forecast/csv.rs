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
    /// The date column's text, aligned with `values`, when a date column was given.
    pub dates: Option<Vec<String>>,
    /// True when the rows were reversed to put them in chronological order.
    pub reversed: bool,
}

impl Series {
    /// A series from in-memory values (no dates).
    pub fn from_values(name: impl Into<String>, values: Vec<Option<f64>>) -> Self {
        Series {
            name: name.into(),
            values,
            dates: None,
            reversed: false,
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

/// Picks the field delimiter: `,` unless the header line has none and has `;` or a tab.
fn sniff_delimiter(bytes: &[u8]) -> u8 {
    let header = bytes.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let count = |c: u8| header.iter().filter(|b| **b == c).count();
    if count(b',') > 0 {
        b','
    } else if count(b';') > 0 {
        b';'
    } else if count(b'\t') > 0 {
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
    /// Day, month, year: `29.03.1958`, `29/03/1958 10:00`.
    DayFirst,
    /// Month, day, year: `3/29/1958` (the US order).
    MonthFirst,
    /// Whole numbers in a column named like a time axis (`year`, `t`, `time`, `step`, `period`).
    Number,
}

/// A date cell as a sortable key: (year or number, month, day, the rest of the cell, such as a
/// time of day, compared as text). `None` when the cell is not written in `style`.
fn date_key(cell: &str, style: DateStyle) -> Option<(i64, u32, u32, String)> {
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
        DateStyle::DayFirst | DateStyle::MonthFirst => {
            // `A?B?YYYY…` with one- or two-digit A and B and one separator kind (`/`, `.`, `-`).
            let (date, rest) = c.split_at(c.find([' ', 'T']).unwrap_or(c.len()));
            let sep = date.bytes().find(|x| matches!(x, b'/' | b'.' | b'-'))?;
            let mut parts = date.split(sep as char);
            let (a, m, y) = (parts.next()?, parts.next()?, parts.next()?);
            let small =
                |s: &str| (1..=2).contains(&s.len()) && s.bytes().all(|x| x.is_ascii_digit());
            if parts.next().is_some() || !small(a) || !small(m) || y.len() != 4 {
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

/// The style in which every cell of column `i` is a date: year first, else day first or month
/// first (day first when both read every cell, unless the separator is `/`, which the US writes
/// month first), else whole numbers. `None` when no style reads them all.
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
    let order = if slashed {
        [
            DateStyle::YearFirst,
            DateStyle::MonthFirst,
            DateStyle::DayFirst,
            DateStyle::Number,
        ]
    } else {
        [
            DateStyle::YearFirst,
            DateStyle::DayFirst,
            DateStyle::MonthFirst,
            DateStyle::Number,
        ]
    };
    order.into_iter().find(|&s| reads(s))
}

/// Headers of columns that count time in whole numbers (see [`time_number_column`]).
const TIME_AXIS_NAMES: &[&str] = &["year", "t", "time", "step", "period"];

/// The first column whose every cell is a date ([`date_style`]: `1958-03-29`, `1949-01`,
/// `2020/05/01 10:00`, `29.03.1958`, `3/29/1958`; not decimal years like `1958.2027`, which are
/// numbers): read as the dates when `--date-column` is not given. Failing that, a column named
/// like a time axis ([`TIME_AXIS_NAMES`]) whose whole numbers run strictly up or down, when the
/// file has other columns.
fn date_like_column(headers: &[String], records: &[csv::StringRecord]) -> Option<usize> {
    (0..headers.len())
        .find(|&i| matches!(date_style(records, i), Some(s) if s != DateStyle::Number))
        .or_else(|| time_number_column(headers, records))
}

/// A column named like a time axis holding whole numbers that run strictly up or down
/// (`year` 1900, 1901, …; `t` 0, 1, …), when there is another column to forecast.
fn time_number_column(headers: &[String], records: &[csv::StringRecord]) -> Option<usize> {
    if headers.len() < 2 {
        return None;
    }
    (0..headers.len()).find(|&i| {
        let h = headers[i].trim().to_ascii_lowercase();
        let nums: Option<Vec<i64>> = records
            .iter()
            .map(|r| r.get(i).and_then(|c| c.trim().parse::<i64>().ok()))
            .collect();
        TIME_AXIS_NAMES.contains(&h.as_str())
            && nums.is_some_and(|n| {
                n.len() >= 2
                    && (n.windows(2).all(|w| w[1] > w[0]) || n.windows(2).all(|w| w[1] < w[0]))
            })
    })
}

/// A column of row numbers: named like an index (empty, pandas' `Unnamed: 0`, `index`, `id`)
/// and holding consecutive integers, counting up or down.
fn is_row_number_column(header: &str, records: &[csv::StringRecord], i: usize) -> bool {
    let h = header.trim().to_ascii_lowercase();
    let named = h.is_empty() || h.starts_with("unnamed") || h == "index" || h == "id";
    let nums: Option<Vec<i64>> = records
        .iter()
        .map(|r| r.get(i).and_then(|c| c.trim().parse::<i64>().ok()))
        .collect();
    named
        && nums.is_some_and(|n| {
            n.len() >= 2
                && (n.windows(2).all(|w| w[1] == w[0] + 1)
                    || n.windows(2).all(|w| w[1] == w[0] - 1))
        })
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
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| bad("header".into(), e.to_string()))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_string())
        .collect();
    if headers.is_empty() || headers.iter().all(|h| h.is_empty()) {
        return Err(bad(
            "header".into(),
            "the file is empty or has no header row; expected a header naming the columns".into(),
        ));
    }
    let records: Vec<csv::StringRecord> = reader
        .records()
        .collect::<Result<_, _>>()
        .map_err(|e| bad("rows".into(), e.to_string()))?;
    let date_idx = match date_column {
        None => date_like_column(&headers, &records),
        Some(d) => Some(find_column(&headers, d).ok_or_else(|| {
            bad(
                format!("date column `{d}`"),
                format!("not found; available columns: {}", list(&headers)),
            )
        })?),
    };
    let value_idx = match column {
        Some(c) => find_column(&headers, c).ok_or_else(|| {
            bad(
                format!("column `{c}`"),
                format!("not found; available columns: {}", list(&headers)),
            )
        })?,
        None => {
            let numeric: Vec<usize> = (0..headers.len())
                .filter(|i| Some(*i) != date_idx)
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
            // A row number column (pandas' unnamed index, `index`, `id`) is not the series,
            // when another numeric column is there.
            let not_index: Vec<usize> = numeric
                .iter()
                .copied()
                .filter(|&i| !is_row_number_column(&headers[i], &records, i))
                .collect();
            let numeric = if not_index.is_empty() {
                numeric
            } else {
                not_index
            };
            match numeric.as_slice() {
                [i] => *i,
                [] => {
                    return Err(ConfigError::invalid(
                        "--column",
                        "(not given)",
                        format!(
                            "a column name: {} has no numeric column; columns: {}",
                            source,
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
    let mut dates = date_idx.map(|_| Vec::with_capacity(records.len()));
    for (i, r) in records.iter().enumerate() {
        let cell = r.get(value_idx).unwrap_or("");
        let v = parse_cell(cell, decimal_comma).map_err(|why| {
            let what = match why {
                BadCell::NotANumber => "is not a number",
                BadCell::NotFinite => "is not a finite number",
            };
            bad(
                format!("column `{name}`, row {}", i + 2),
                format!("`{cell}` {what}; expected a number (empty cells and NA/NaN/null/./? are read as missing values)"),
            )
        })?;
        values.push(v);
        if let (Some(d), Some(di)) = (dates.as_mut(), date_idx) {
            d.push(r.get(di).unwrap_or("").to_string());
        }
    }
    if values.iter().all(Option::is_none) {
        return Err(bad(
            format!("column `{name}`"),
            format!("has no numeric values in {} data rows", values.len()),
        ));
    }
    let mut series = Series {
        name,
        values,
        dates,
        reversed: false,
    };
    if let Some(d) = &series.dates {
        let keys: Option<Vec<_>> = date_idx
            .and_then(|i| date_style(&records, i))
            .and_then(|style| d.iter().map(|c| date_key(c, style)).collect());
        let descending = keys.is_some_and(|k| {
            k.len() >= 2 && k.windows(2).all(|w| w[0] >= w[1]) && k.first() != k.last()
        });
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

    #[test]
    fn text_cell_is_an_error_with_row() {
        let e = parse("v\n1\n2\nabc\n", Some("v"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 4") && e.contains("`abc`"), "{e}");
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
        // Not a time axis: repeated numbers, another name, or the only column.
        assert!(parse("t,v\n0,5\n0,6\n", None, None).is_err());
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
