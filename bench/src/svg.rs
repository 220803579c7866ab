//! The latency-versus-throughput chart, as a hand-written SVG: x = completed sagas per second, y = latency
//! in milliseconds on a log scale (latencies span orders of magnitude between idle and saturated), one
//! series for p50 and one for p99. Closed-loop points are joined in order of concurrency (solid lines,
//! circles), open-loop points in order of rate (dashed lines, squares); each point is labelled.

use std::fmt::Write as _;

use crate::point::Mode;
use crate::report::Report;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 64.0;
const P50_COLOR: &str = "#1f77b4";
const P99_COLOR: &str = "#d62728";

/// One point of the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartPoint {
    /// `C=16`, `R=50/s`.
    pub label: String,
    /// Closed loop (true) or open loop.
    pub closed: bool,
    /// The order of the point within its series (concurrency or rate).
    pub order: f64,
    /// Completed sagas per second.
    pub throughput: f64,
    /// p50 latency, ms.
    pub p50_ms: f64,
    /// p99 latency, ms.
    pub p99_ms: f64,
}

/// The chart of a report.
pub fn chart(report: &Report) -> String {
    let points: Vec<ChartPoint> = report
        .points
        .iter()
        .filter_map(|p| {
            let latency = p.latency?;
            let (closed, order) = match p.mode {
                Mode::Closed { concurrency } => (true, f64::from(concurrency)),
                Mode::Open { rate } => (false, rate),
            };
            Some(ChartPoint {
                label: p.label.clone(),
                closed,
                order,
                throughput: p.sagas_per_s,
                p50_ms: latency.p50_ms,
                p99_ms: latency.p99_ms,
            })
        })
        .collect();
    let title = format!(
        "saga-bench {}: order-to-terminal latency vs throughput",
        report.started_at.format("%Y-%m-%d %H:%M UTC")
    );
    render(&title, &points)
}

/// Renders `points` under `title`.
pub fn render(title: &str, points: &[ChartPoint]) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let valid: Vec<&ChartPoint> = points
        .iter()
        .filter(|p| p.throughput.is_finite() && p.p50_ms > 0.0 && p.p99_ms > 0.0 && p.p99_ms.is_finite())
        .collect();
    if valid.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">no points with latencies</text>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        svg.push_str("</svg>\n");
        return svg;
    }
    let x_max = nice_ceiling(valid.iter().map(|p| p.throughput).fold(0.0, f64::max) * 1.1);
    let lowest = valid.iter().map(|p| p.p50_ms.min(p.p99_ms)).fold(f64::INFINITY, f64::min);
    let highest = valid.iter().map(|p| p.p99_ms.max(p.p50_ms)).fold(0.0, f64::max);
    let (y_lo, y_hi) = decades(lowest, highest);
    let x = |v: f64| LEFT + v / x_max * plot_w;
    let y = |v: f64| TOP + plot_h - (v.log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10()) * plot_h;

    // Axes, grid and ticks.
    let _ = writeln!(svg, r##"<g stroke="#cccccc" stroke-width="1">"##);
    for tick in x_ticks(x_max) {
        let _ = writeln!(svg, r#"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}"/>"#, x(tick), TOP + plot_h);
    }
    for tick in y_ticks(y_lo, y_hi) {
        let _ = writeln!(svg, r#"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}"/>"#, y(tick), LEFT + plot_w);
    }
    svg.push_str("</g>\n");
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black" stroke-width="1"/>"#
    );
    for tick in x_ticks(x_max) {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(tick),
            TOP + plot_h + 18.0,
            number(tick)
        );
    }
    for tick in y_ticks(y_lo, y_hi) {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y(tick) + 4.0,
            number(tick)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">completed sagas per second</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 18.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{0:.1}" text-anchor="middle" transform="rotate(-90 18 {0:.1})">latency, ms (log scale)</text>"#,
        TOP + plot_h / 2.0
    );

    // Series: p50 and p99, closed loop and open loop.
    for (closed, dash) in [(true, ""), (false, r#" stroke-dasharray="6 4""#)] {
        let mut series: Vec<&ChartPoint> = valid.iter().copied().filter(|p| p.closed == closed).collect();
        series.sort_by(|a, b| a.order.total_cmp(&b.order));
        for (color, value) in
            [(P50_COLOR, (|p: &ChartPoint| p.p50_ms) as fn(&ChartPoint) -> f64), (P99_COLOR, |p| p.p99_ms)]
        {
            if series.len() > 1 {
                let path: Vec<String> =
                    series.iter().map(|p| format!("{:.1},{:.1}", x(p.throughput), y(value(p)))).collect();
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                    path.join(" ")
                );
            }
            for p in &series {
                let (cx, cy) = (x(p.throughput), y(value(p)));
                if closed {
                    let _ = writeln!(svg, r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="4" fill="{color}"/>"#);
                } else {
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="{color}"/>"#,
                        cx - 4.0,
                        cy - 4.0
                    );
                }
            }
        }
        for p in &series {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#333333">{}</text>"##,
                x(p.throughput) + 6.0,
                y(p.p99_ms) - 6.0,
                escape(&p.label)
            );
        }
    }

    // Legend.
    let lx = LEFT + plot_w + 16.0;
    let entries = [
        (format!(r#"<line x1="0" y1="0" x2="24" y2="0" stroke="{P50_COLOR}" stroke-width="2"/>"#), "p50"),
        (format!(r#"<line x1="0" y1="0" x2="24" y2="0" stroke="{P99_COLOR}" stroke-width="2"/>"#), "p99"),
        (r##"<circle cx="12" cy="0" r="4" fill="#555555"/>"##.to_owned(), "closed loop (C)"),
        (
            r##"<line x1="0" y1="0" x2="24" y2="0" stroke="#555555" stroke-width="2" stroke-dasharray="6 4"/><rect x="8" y="-4" width="8" height="8" fill="#555555"/>"##
                .to_owned(),
            "open loop (R)",
        ),
    ];
    for (i, (mark, text)) in entries.iter().enumerate() {
        let ly = TOP + 12.0 + 22.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<g transform="translate({lx:.1} {ly:.1})">{mark}<text x="32" y="4">{}</text></g>"#,
            escape(text)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The decades around `[low, high]`: `(10^floor(log10 low), 10^ceil(log10 high))`, at least one decade apart.
fn decades(low: f64, high: f64) -> (f64, f64) {
    let lo = 10_f64.powf(low.max(1e-3).log10().floor());
    let mut hi = 10_f64.powf(high.max(1e-3).log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo, hi)
}

/// 1, 2 and 5 times each power of ten within `[lo, hi]`.
fn y_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = lo;
    while decade <= hi * 1.0001 {
        for factor in [1.0, 2.0, 5.0] {
            let tick = decade * factor;
            if tick >= lo * 0.9999 && tick <= hi * 1.0001 {
                ticks.push(tick);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value` (at least 1).
fn nice_ceiling(value: f64) -> f64 {
    let value = value.max(1.0);
    let magnitude = 10_f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|f| f * magnitude).find(|v| *v >= value * 0.9999).unwrap_or(10.0 * magnitude)
}

/// About five evenly spaced ticks from 0 to `max` (a [`nice_ceiling`]).
fn x_ticks(max: f64) -> Vec<f64> {
    let step = nice_ceiling(max / 5.0);
    let count = (max / step).round() as usize;
    (0..=count).map(|i| i as f64 * step).filter(|t| *t <= max * 1.0001).collect()
}

fn number(value: f64) -> String {
    if value >= 1.0 || value == 0.0 { format!("{}", (value * 100.0).round() / 100.0) } else { format!("{value:.3}") }
}

/// Text safe inside an SVG element or attribute.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Checks that `text` is a well-formed tag tree (every element closed in order, one root) and returns the
/// root element's name. Not a full XML parser: enough to tell a broken chart (for tests).
pub fn well_formed(text: &str) -> Result<String, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut root: Option<String> = None;
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>').ok_or("a tag is not closed with >")?;
        let tag = &after[..close];
        rest = &after[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim();
            match stack.pop() {
                Some(top) if top == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            continue;
        }
        let name: String = tag.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect();
        if name.is_empty() {
            return Err(format!("an element without a name: <{tag}>"));
        }
        if stack.is_empty() {
            if root.is_some() {
                return Err(format!("a second root element <{name}>"));
            }
            root = Some(name.clone());
        }
        if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    if let Some(open) = stack.pop() {
        return Err(format!("<{open}> is never closed"));
    }
    root.ok_or_else(|| "no element".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(label: &str, closed: bool, order: f64, throughput: f64, p50: f64, p99: f64) -> ChartPoint {
        ChartPoint { label: label.into(), closed, order, throughput, p50_ms: p50, p99_ms: p99 }
    }

    #[test]
    fn the_chart_is_well_formed_with_both_series() {
        let points = vec![
            point("C=16", true, 16.0, 150.0, 90.0, 300.0),
            point("C=1", true, 1.0, 22.0, 40.0, 70.0),
            point("C=256", true, 256.0, 180.0, 1400.0, 5200.0),
            point("R=90/s", false, 90.0, 89.0, 60.0, 200.0),
            point("R=<&>", false, 140.0, 139.0, 80.0, 260.0),
        ];
        let svg = render("a & b", &points);
        assert_eq!(well_formed(&svg), Ok("svg".to_owned()), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 4, "p50 and p99 for each mode");
        assert_eq!(svg.matches("<circle").count(), 6 + 1, "three closed points twice, plus the legend");
        assert!(svg.contains("a &amp; b") && svg.contains("R=&lt;&amp;&gt;"));
        assert!(svg.contains(">C=256</text>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn no_points_still_make_a_chart() {
        let svg = render("empty", &[]);
        assert_eq!(well_formed(&svg), Ok("svg".to_owned()));
        assert!(svg.contains("no points"));
        let one = render("one", &[point("C=1", true, 1.0, 0.0, 5.0, 5.0)]);
        assert_eq!(well_formed(&one), Ok("svg".to_owned()), "{one}");
        assert!(!one.contains("NaN"));
    }

    #[test]
    fn the_report_chart_is_well_formed() {
        let svg = chart(&crate::report::tests::report());
        assert_eq!(well_formed(&svg), Ok("svg".to_owned()));
    }

    #[test]
    fn scales_are_nice() {
        assert_eq!(decades(42.0, 5200.0), (10.0, 10_000.0));
        assert_eq!(decades(10.0, 10.0), (10.0, 100.0));
        assert_eq!(y_ticks(10.0, 100.0), vec![10.0, 20.0, 50.0, 100.0]);
        assert_eq!(nice_ceiling(198.0), 200.0);
        assert_eq!(nice_ceiling(201.0), 250.0);
        assert_eq!(nice_ceiling(0.2), 1.0);
        assert_eq!(x_ticks(250.0), vec![0.0, 50.0, 100.0, 150.0, 200.0, 250.0]);
    }

    #[test]
    fn broken_markup_is_caught() {
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg></svg><svg></svg>").is_err());
        assert!(well_formed("<svg>").is_err());
        assert_eq!(well_formed("<?xml version=\"1.0\"?><svg><a/></svg>"), Ok("svg".to_owned()));
    }
}
