//! Forecast CSV parsing, gap filling and the forecast pipeline's series checks.
#![no_main]

use grucell::forecast::csv::parse_series;
use grucell::forecast::series::fill_gaps;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for date in [None, Some("date")] {
        if let Ok(s) = parse_series(data, "fuzz.csv", None, date) {
            let _ = fill_gaps(&s.values);
        }
    }
});
