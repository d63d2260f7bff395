//! Charts as inline SVG rendered from data: line charts with labelled axes and units, and
//! sparklines for table rows. No script, no external library.

use maud::{html, Markup};

/// One series of (x = Unix ms, y) points.
pub struct Series<'a> {
    pub points: &'a [(i64, f64)],
    /// Unit shown on the y axis, e.g. "req/s", "%", "ms".
    pub unit: &'a str,
    pub axis: Axis,
}

/// The range of a chart's y axis.
#[derive(Debug, Clone, Copy)]
pub enum Axis {
    /// From 0 to the largest value: for amounts (rates, latencies).
    FromZero,
    /// Around the data, never above `ceiling`: for values whose changes matter near a limit,
    /// such as a success rate between 95% and 100%, which a 0–100% axis flattens.
    Fit { ceiling: f64 },
}

impl Axis {
    fn range(self, points: &[(i64, f64)]) -> (f64, f64) {
        let max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        match self {
            _ if points.is_empty() => (0.0, 1.0),
            Axis::FromZero => (0.0, max.max(f64::EPSILON)),
            Axis::Fit { ceiling } => {
                // A tenth of the spread as margin, and at least one unit of span, so a flat
                // 100% is a line at the top rather than a division by zero.
                let margin = (max - min) * 0.1;
                let hi = (max + margin).min(ceiling);
                let lo = (min - margin).min(hi - 1.0).max(0.0);
                (lo, hi.max(lo + f64::EPSILON))
            }
        }
    }
}

pub const MINUTE_MS: i64 = 60_000;

fn fmt_value(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn hhmm(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%H:%M").to_string()).unwrap_or_default()
}

/// A line chart with a y axis (its `Axis`, 3 ticks) and an x axis (time, start/middle/end).
pub fn line_chart(title: &str, s: &Series) -> Markup {
    let (w, h, left, bottom, top, right) = (320.0, 140.0, 44.0, 22.0, 8.0, 8.0);
    let (plot_w, plot_h) = (w - left - right, h - top - bottom);
    let (x0, x1) = match (s.points.first(), s.points.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (a.0, b.0),
        (Some(a), _) => (a.0 - 60_000, a.0),
        _ => (0, 1),
    };
    let (min, max) = s.axis.range(s.points);
    let x = |t: i64| left + (t - x0) as f64 / (x1 - x0) as f64 * plot_w;
    let y = |v: f64| top + plot_h - (v - min) / (max - min) * plot_h;
    let path: String = s.points.iter().map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v))).collect::<Vec<_>>().join(" ");
    html! {
        figure.chart {
            figcaption { (title) " (" (s.unit) ")" }
            @if s.points.is_empty() {
                p.muted { "No data in this period yet." }
            } @else {
                svg viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(format!("{title}, {} points, from {} to {} {}", s.points.len(), fmt_value(min), fmt_value(max), s.unit)) {
                    @for i in 0..=2 {
                        @let v = min + (max - min) * f64::from(i) / 2.0;
                        line.grid x1=(left) x2=(w - right) y1=(y(v)) y2=(y(v)) {}
                        text.tick x=(left - 4.0) y=(y(v) + 3.0) text-anchor="end" { (fmt_value(v)) }
                    }
                    line.axis x1=(left) x2=(left) y1=(top) y2=(top + plot_h) {}
                    line.axis x1=(left) x2=(w - right) y1=(top + plot_h) y2=(top + plot_h) {}
                    @for t in [x0, x0 + (x1 - x0) / 2, x1] {
                        text.tick x=(x(t)) y=(h - 6.0) text-anchor="middle" { (hhmm(t)) }
                    }
                    polyline.series points=(path) {}
                }
            }
        }
    }
}

/// A tiny trend line for a table cell.
pub fn sparkline(points: &[(i64, f64)], label: &str) -> Markup {
    if points.len() < 2 {
        return html! { span.muted { "–" } };
    }
    let (w, h) = (80.0, 20.0);
    let (x0, x1) = (points[0].0, points[points.len() - 1].0.max(points[0].0 + 1));
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(f64::EPSILON);
    let path: String = points
        .iter()
        .map(|&(t, v)| format!("{:.1},{:.1}", (t - x0) as f64 / (x1 - x0) as f64 * w, h - 1.0 - v / max * (h - 2.0)))
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        svg.spark viewBox=(format!("0 0 {w} {h}")) width="80" height="20" role="img" aria-label=(label) {
            polyline points=(path) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_have_axes_units_and_escape_titles() {
        let points = [(0, 1.0), (60_000, 3.0), (120_000, 2.0)];
        let svg = line_chart("<rps>", &Series { points: &points, unit: "req/s", axis: Axis::FromZero }).into_string();
        assert!(svg.contains("&lt;rps&gt; (req/s)"));
        assert!(svg.contains("polyline") && svg.contains("00:01") && svg.contains(">3.00<"));
        assert!(line_chart("x", &Series { points: &[], unit: "ms", axis: Axis::FromZero }).into_string().contains("No data"));
        assert!(sparkline(&points, "trend").into_string().contains("polyline"));
    }

    #[test]
    fn success_axis_fits_the_data_below_its_ceiling() {
        let points = [(0, 99.2), (60_000, 97.0), (120_000, 100.0)];
        let svg = line_chart("Success rate", &Series { points: &points, unit: "%", axis: Axis::Fit { ceiling: 100.0 } }).into_string();
        // Ticks from just under the lowest value to 100, not from 0.
        assert!(svg.contains(">96.7<") && svg.contains(">100<"), "{svg}");
        assert!(!svg.contains(">0<"), "{svg}");
        // A flat 100% keeps one point of span and draws at the top.
        assert_eq!(Axis::Fit { ceiling: 100.0 }.range(&[(0, 100.0)]), (99.0, 100.0));
        // Rates still start at zero.
        assert_eq!(Axis::FromZero.range(&[(0, 3.0), (1, 5.0)]), (0.0, 5.0));
    }

    #[test]
    fn only_finished_minutes_count() {}
}
