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
//! Rows are read in file order. When a date column is given and its values are ISO-like
//! (`YYYY…`) and run backwards (newest first, as many exports do), the rows are reversed so the
//! series is chronological; [`Series::reversed`] records it.

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

/// The first column whose every cell starts like an ISO date (`1958-03-29`, `1949-01`,
/// `2020/05/01 10:00`; not decimal years like `1958.2027`, which are numbers): read as the
/// dates when `--date-column` is not given.
fn date_like_column(headers: &[String], records: &[csv::StringRecord]) -> Option<usize> {
    let date_like = |c: &str| {
        let b = c.as_bytes();
        b.len() >= 7
            && b[..4].iter().all(u8::is_ascii_digit)
            && matches!(b[4], b'-' | b'/')
            && b[5].is_ascii_digit()
    };
    (0..headers.len())
        .find(|&i| !records.is_empty() && records.iter().all(|r| r.get(i).is_some_and(date_like)))
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
        let iso = |s: &String| s.len() >= 4 && s.bytes().take(4).all(|b| b.is_ascii_digit());
        let descending = d.len() >= 2
            && d.iter().all(iso)
            && d.windows(2).all(|w| w[0] >= w[1])
            && d.first() != d.last();
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
