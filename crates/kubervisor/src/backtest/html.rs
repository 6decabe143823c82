//! `--report FILE.html`: one self-contained page, an SVG chart per breaker and the summary.
//!
//! Nothing in the page refers to the network: the charts are inline SVG, the style inline.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;
use plotters::prelude::*;

use super::report::{Summary, summary_rows};
use super::{Backtest, BreakerInfo, CAVEAT};

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 440;
/// Past this many pods, only the pods that lost traffic get a legend entry.
const LEGEND_ALL_UP_TO: usize = 12;

/// The whole page for one or more backtests of the same history.
pub fn render(backtests: &[&Backtest]) -> String {
    let mut page = String::new();
    let title = backtests
        .first()
        .map(|b| format!("Backtest of {}", b.resource))
        .unwrap_or_else(|| "Backtest".into());
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:3px 10px;text-align:left}}td.n{{text-align:right}}\
         .caveat{{color:#844}}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    if let Some(first) = backtests.first() {
        let _ = writeln!(
            page,
            "<p>From {} to {}.</p>\n<p class=\"caveat\">Caveat: {}.</p>",
            first.start,
            first.end,
            escape(CAVEAT)
        );
    }
    page.push_str(&summary_table(backtests));
    for backtest in backtests {
        let _ = writeln!(page, "<h2>Policy {}</h2>", escape(&backtest.label));
        for n in &backtest.not_replayable {
            let _ = writeln!(
                page,
                "<p>Breaker {}: not replayable: {}</p>",
                escape(&n.breaker),
                escape(&n.reason)
            );
        }
        for breaker in &backtest.breakers {
            let _ = writeln!(
                page,
                "<h3>Breaker {} ({})</h3>\n<figure>",
                escape(&breaker.name),
                breaker.detector
            );
            match chart(backtest, breaker) {
                Ok(svg) => page.push_str(&svg),
                Err(e) => {
                    let _ = write!(page, "<p>chart not drawn: {}</p>", escape(&e));
                }
            }
            let _ = writeln!(
                page,
                "<figcaption>Each pod's {} at each evaluation; {}; \
                 shaded bands are the intervals a pod spent without traffic, in its colour.</figcaption>\n</figure>",
                breaker.quantity_name,
                match breaker.thresholds.len() {
                    0 => "the bound moves with the fleet at each evaluation, so no line is drawn",
                    1 => "the thick black line is the threshold",
                    _ => "the thick black lines are the bounds",
                }
            );
        }
    }
    page.push_str("</body>\n</html>\n");
    page
}

fn summary_table(backtests: &[&Backtest]) -> String {
    let summaries: Vec<Summary> = backtests.iter().map(|b| Summary::of(b)).collect();
    let rows: Vec<Vec<(String, String)>> = summaries.iter().map(summary_rows).collect();
    let mut names: Vec<String> = Vec::new();
    for r in &rows {
        for (name, _) in r {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    let mut out = String::from("<h2>Summary</h2>\n<table>\n<tr><th></th>");
    for b in backtests {
        let _ = write!(out, "<th>{}</th>", escape(&b.label));
    }
    out.push_str("</tr>\n");
    for name in names {
        let _ = write!(out, "<tr><td>{}</td>", escape(&name));
        for r in &rows {
            let value = r
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("-", |(_, v)| v.as_str());
            let _ = write!(out, "<td class=\"n\">{}</td>", escape(value));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// Minutes since the start of the range, the charts' x axis.
fn minutes(start: Timestamp, t: Timestamp) -> f64 {
    t.duration_since(start).as_secs_f64() / 60.0
}

fn chart(backtest: &Backtest, breaker: &BreakerInfo) -> Result<String, String> {
    let empty = BTreeMap::new();
    let quantities = backtest
        .replayed
        .quantities
        .get(&breaker.name)
        .unwrap_or(&empty);
    let out = &backtest.replayed.out;
    // One colour per pod, the same for its line and its shading.
    let mut pods: Vec<&String> = quantities.keys().chain(out.keys()).collect();
    pods.sort();
    pods.dedup();
    let colour = |pod: &str| {
        let i = pods.iter().position(|p| p.as_str() == pod).unwrap_or(0);
        Palette99::pick(i).to_rgba()
    };
    let was_out = |pod: &str| out.get(pod).is_some_and(|i| !i.is_empty());
    let legend_all = pods.len() <= LEGEND_ALL_UP_TO;
    let x_end = minutes(backtest.start, backtest.end).max(1e-3);
    let values = quantities
        .values()
        .flatten()
        .map(|(_, v)| *v)
        .chain(breaker.thresholds.iter().copied())
        .filter(|v| v.is_finite());
    // Zero always shows; slopes and z-scores go below it.
    let (lowest, highest) = values.fold((0f64, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let margin = (highest - lowest) * 0.1;
    let (y_start, y_end) = if highest > lowest {
        (
            if lowest < 0.0 { lowest - margin } else { 0.0 },
            if highest > 0.0 { highest + margin } else { 0.0 },
        )
    } else {
        (0.0, 1.0)
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_end, y_start..y_end)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("minutes since start")
            .y_desc(breaker.quantity_name)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(|x| e(&x))?;
        for (pod, intervals) in out {
            let fill = colour(pod).mix(0.18).filled();
            chart
                .draw_series(intervals.iter().map(|(from, to)| {
                    let (a, b) = (minutes(backtest.start, *from), minutes(backtest.start, *to));
                    Rectangle::new([(a, y_start), (b, y_end)], fill)
                }))
                .map_err(|x| e(&x))?;
        }
        for (pod, points) in quantities {
            let style = colour(pod).stroke_width(2);
            let series = chart
                .draw_series(LineSeries::new(
                    points
                        .iter()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(t, v)| (minutes(backtest.start, *t), *v)),
                    style,
                ))
                .map_err(|x| e(&x))?;
            if legend_all || was_out(pod) {
                series
                    .label(pod.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
        }
        // Black: the palette's first colour is red, a pod's.
        let line = BLACK.stroke_width(3);
        for threshold in breaker.thresholds.iter().filter(|t| t.is_finite()) {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, *threshold), (x_end, *threshold)],
                    line,
                ))
                .map_err(|x| e(&x))?
                .label(format!("threshold {threshold}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    // Inline SVG in HTML needs no namespace: dropping it leaves no URL in the page.
    Ok(svg.replace(" xmlns=\"http://www.w3.org/2000/svg\"", ""))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}
