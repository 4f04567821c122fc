//! `forecast.png`: the whole series with its train/validation/test parts and the forecast (top),
//! a close-up of the test part (bottom left) and the training loss curves (bottom right).
//!
//! Drawn with `plotters`' bitmap backend and an embedded font (DejaVu Sans, Bitstream Vera
//! licence, `assets/fonts/`), so no system font library is needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{Error, FormatError};
use crate::forecast::pipeline::PlotData;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The font is a fixed, valid file: registration cannot fail in practice; if it did,
        // text would be missing and drawing reports the error.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const TRAIN: RGBColor = RGBColor(70, 110, 170);
const ACTUAL: RGBColor = RGBColor(20, 20, 20);
const FORECAST: RGBColor = RGBColor(220, 50, 40);
const VAL_LOSS: RGBColor = RGBColor(240, 140, 20);

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9 * lo.abs().max(1.0));
    (lo - pad, hi + pad)
}

/// Draws the forecast figure (1400×1000 PNG) to `path`.
pub fn draw_forecast(data: &PlotData, path: &Path) -> Result<(), Error> {
    register_font();
    let shown = path.display().to_string();
    draw(data, path).map_err(|e| FormatError::malformed(&shown, "forecast plot", e).into())
}

fn draw(d: &PlotData, path: &Path) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(540);
    let (bl, br) = bottom.split_horizontally(840);
    let n = d.values.len();
    let label = |x: f64| -> String {
        let i = x.round().max(0.0) as usize;
        match &d.dates {
            Some(dates) => dates
                .get(i.min(n.saturating_sub(1)))
                .cloned()
                .unwrap_or_default(),
            None => i.to_string(),
        }
    };
    let x_desc = if d.dates.is_some() { "date" } else { "index" };
    // One-step-ahead forecasts: (t + 1, ŷ[t+1]).
    let h = d.horizon.max(1);
    let step1: Vec<(f64, f64)> = d
        .test_origins
        .iter()
        .enumerate()
        .filter_map(|(i, &t)| d.test_forecasts.get(i * h).map(|v| ((t + 1) as f64, *v)))
        .collect();
    let fc_label = if h == 1 {
        "GRU forecast (one step ahead)".to_string()
    } else {
        format!("GRU forecast (1st of {h} steps)")
    };
    let (rmse, naive, snaive) = d.rmse;
    let ratio = |a: f64| {
        if a > 0.0 {
            format!("{:.2}×", rmse / a)
        } else {
            "n/a".into()
        }
    };

    // Top: the whole series.
    {
        let (lo, hi) = range(d.values.iter().copied().chain(step1.iter().map(|p| p.1)));
        let title = format!(
            "{}: GRU forecast on {} — test RMSE {:.4} ({} last value)",
            d.name,
            d.representation.replace('_', " "),
            rmse,
            ratio(naive)
        );
        let mut chart = ChartBuilder::on(&top)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(0f64..(n.max(2) - 1) as f64, lo..hi)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|x| label(*x))
            .x_desc(x_desc)
            .y_desc(d.name.as_str())
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .light_line_style(WHITE)
            .draw()
            .map_err(|x| e(&x))?;
        let shade = |from: usize, to: usize, c: RGBColor| {
            Rectangle::new(
                [(from as f64, lo), (to.saturating_sub(1) as f64, hi)],
                c.mix(0.10).filled(),
            )
        };
        chart
            .draw_series([
                shade(d.val_start, d.test_start, VAL_LOSS),
                shade(d.test_start, n, FORECAST),
            ])
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(
                d.values
                    .iter()
                    .enumerate()
                    .take(d.test_start)
                    .map(|(i, v)| (i as f64, *v)),
                TRAIN.stroke_width(1),
            ))
            .map_err(|x| e(&x))?
            .label("history (train | validation shaded)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], TRAIN.stroke_width(3)));
        chart
            .draw_series(LineSeries::new(
                d.values
                    .iter()
                    .enumerate()
                    .skip(d.test_start.saturating_sub(1))
                    .map(|(i, v)| (i as f64, *v)),
                ACTUAL.stroke_width(1),
            ))
            .map_err(|x| e(&x))?
            .label("test actuals (shaded)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], ACTUAL.stroke_width(3)));
        chart
            .draw_series(LineSeries::new(
                step1.iter().copied(),
                FORECAST.stroke_width(1),
            ))
            .map_err(|x| e(&x))?
            .label(fc_label.as_str())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], FORECAST.stroke_width(3)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(|x| e(&x))?;
    }

    // Bottom left: close-up of the end of the test part (two seasons, at least 100 points).
    {
        let season = d.season.unwrap_or(0);
        let span = (2 * season).max(100);
        let from = d.test_start.saturating_sub(1).max(n.saturating_sub(span));
        let shown = n - from;
        let what = if from + 1 == d.test_start {
            "Test part".to_string()
        } else {
            format!("Last {shown} points of the test part")
        };
        let last_path: Vec<(f64, f64)> = match d.test_origins.last() {
            Some(&t) if h > 1 => (0..h)
                .filter_map(|k| {
                    d.test_forecasts
                        .get((d.test_origins.len() - 1) * h + k)
                        .map(|v| ((t + 1 + k) as f64, *v))
                })
                .collect(),
            _ => vec![],
        };
        let close: Vec<(f64, f64)> = step1
            .iter()
            .copied()
            .filter(|p| p.0 >= from as f64)
            .collect();
        let (lo, hi) = range(
            d.values
                .iter()
                .skip(from)
                .copied()
                .chain(close.iter().map(|p| p.1))
                .chain(last_path.iter().map(|p| p.1)),
        );
        let sn = snaive.map_or(String::new(), |s| format!(", seasonal naive {s:.4}"));
        let mut chart = ChartBuilder::on(&bl)
            .caption(
                format!("{what} (test RMSE {rmse:.4}, last value {naive:.4}{sn})"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(from as f64..(n.max(from + 2) - 1) as f64, lo..hi)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_labels(5)
            .y_labels(7)
            .x_label_formatter(&|x| label(*x))
            .x_desc(x_desc)
            .y_desc(d.name.as_str())
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(WHITE)
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(
                d.values
                    .iter()
                    .enumerate()
                    .skip(from)
                    .map(|(i, v)| (i as f64, *v)),
                ACTUAL.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label("actual")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], ACTUAL.stroke_width(3)));
        chart
            .draw_series(LineSeries::new(close, FORECAST.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(fc_label.as_str())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], FORECAST.stroke_width(3)));
        if !last_path.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(
                    last_path,
                    6,
                    4,
                    FORECAST.mix(0.8).stroke_width(2),
                ))
                .map_err(|x| e(&x))?
                .label(format!("last {h}-step forecast"))
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], FORECAST.mix(0.8).stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|x| e(&x))?;
    }

    // Bottom right: loss curves.
    {
        let epochs = d
            .histories
            .iter()
            .map(|hh| hh.loss.len())
            .max()
            .unwrap_or(1)
            .max(2);
        let all = d
            .histories
            .iter()
            .flat_map(|hh| hh.loss.iter().chain(&hh.val_loss))
            .copied()
            .filter(|v| v.is_finite() && *v > 0.0);
        let (lo, hi) = all.fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo.is_finite() && hi > lo {
            ((lo - 0.08 * (hi - lo)).max(0.0), hi + 0.05 * (hi - lo))
        } else {
            (0.0, 1.0)
        };
        let members = d.histories.len();
        let mut chart = ChartBuilder::on(&br)
            .caption(
                format!(
                    "Training loss ({members} member{})",
                    if members == 1 { "" } else { "s" }
                ),
                ("sans-serif", 19),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(1f64..epochs as f64, lo..hi)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .x_desc("epoch")
            .y_desc("MSE (scaled)")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(WHITE)
            .draw()
            .map_err(|x| e(&x))?;
        for (m, hh) in d.histories.iter().enumerate() {
            let train = chart
                .draw_series(LineSeries::new(
                    hh.loss
                        .iter()
                        .enumerate()
                        .map(|(i, v)| ((i + 1) as f64, *v)),
                    TRAIN.stroke_width(2),
                ))
                .map_err(|x| e(&x))?;
            if m == 0 {
                train.label("train").legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], TRAIN.stroke_width(3))
                });
            }
            let val = chart
                .draw_series(LineSeries::new(
                    hh.val_loss
                        .iter()
                        .enumerate()
                        .map(|(i, v)| ((i + 1) as f64, *v)),
                    VAL_LOSS.stroke_width(2),
                ))
                .map_err(|x| e(&x))?;
            if m == 0 {
                val.label("validation").legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], VAL_LOSS.stroke_width(3))
                });
            }
            if let Some(v) = hh
                .best_epoch
                .checked_sub(1)
                .and_then(|i| hh.val_loss.get(i))
            {
                let best = chart
                    .draw_series([Circle::new(
                        (hh.best_epoch as f64, *v),
                        4,
                        VAL_LOSS.filled(),
                    )])
                    .map_err(|x| e(&x))?;
                if m == 0 {
                    best.label("kept (best validation)")
                        .legend(|(x, y)| Circle::new((x + 11, y), 4, VAL_LOSS.filled()));
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
