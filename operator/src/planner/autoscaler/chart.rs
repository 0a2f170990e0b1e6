//! A dependency-free SVG chart of a simulation run: input and processed events/s, taskmanagers,
//! and lag, over time (what `cargo run -p streamjob-operator --example autoscaler-sim -- --svg
//! PATH` writes for the README).

use std::fmt::Write;

use super::reason::count;
use super::sim::{Point, Report};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PANEL: f64 = 150.0;
const GAP: f64 = 45.0;
const TOP: f64 = 40.0;

/// One panel: a title, a y range and lines.
struct Panel<'a> {
    title: &'a str,
    top: f64,
    y_max: f64,
}

impl Panel<'_> {
    fn y(&self, value: f64) -> f64 {
        self.top + PANEL - (value / self.y_max).clamp(0.0, 1.0) * PANEL
    }
}

fn x(t: f64, duration: f64) -> f64 {
    LEFT + (t / duration) * (WIDTH - LEFT - RIGHT)
}

/// At most ~1,000 points per line: one per column of pixels is all a reader sees.
fn thin(points: &[Point]) -> Vec<Point> {
    let every = (points.len() / 1_000).max(1);
    points.iter().step_by(every).copied().collect()
}

fn polyline(out: &mut String, coords: &[(f64, f64)], style: &str) {
    let mut d = String::new();
    for (i, (px, py)) in coords.iter().enumerate() {
        let _ = write!(d, "{}{px:.1},{py:.1}", if i == 0 { "M" } else { " L" });
    }
    let _ = writeln!(out, r#"<path d="{d}" fill="none" {style}/>"#);
}

fn frame(out: &mut String, panel: &Panel<'_>, duration: f64) {
    let (top, bottom) = (panel.top, panel.top + PANEL);
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{:.0}" font-weight="bold">{}</text>"##,
        top - 8.0,
        panel.title
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL}" fill="none" stroke="#999"/>"##,
        WIDTH - LEFT - RIGHT
    );
    for fraction in [0.0, 0.5, 1.0] {
        let value = panel.y_max * fraction;
        let _ = writeln!(
            out,
            r##"<text x="{:.0}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
            LEFT - 6.0,
            panel.y(value) + 4.0,
            count(value)
        );
    }
    let hours = (duration / 3_600.0).ceil() as u64;
    let every = if hours > 12 { 2 } else { 1 };
    for hour in (0..=hours).step_by(every) {
        let px = x(hour as f64 * 3_600.0, duration);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{bottom}" x2="{px:.1}" y2="{:.0}" stroke="#999"/><text x="{px:.1}" y="{:.0}" text-anchor="middle" font-size="11">{hour:02}:00</text>"##,
            bottom + 4.0,
            bottom + 16.0
        );
    }
}

fn panel_top(index: usize) -> f64 {
    TOP + index as f64 * (PANEL + GAP)
}

/// The chart of `report`, as an SVG document.
pub fn svg(report: &Report) -> String {
    let points = thin(&report.points);
    let duration = report.points.last().map_or(1.0, |p| p.t.max(1.0));
    let height = panel_top(3) + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-size="14" font-weight="bold">Autoscaler, simulated: {} ({} scale-ups, {} scale-downs, peak lag {})</text>"##,
        report.name,
        report.scale_ups(),
        report.scale_downs(),
        count(report.peak_lag().0)
    );
    let peak_rate = points
        .iter()
        .map(|p| p.input.max(p.processed))
        .fold(1.0, f64::max);
    let rates = Panel {
        title: "events/s: input (blue), processed (green)",
        top: panel_top(0),
        y_max: peak_rate * 1.1,
    };
    frame(&mut out, &rates, duration);
    let line = |f: fn(&Point) -> f64, panel: &Panel<'_>| -> Vec<(f64, f64)> {
        points
            .iter()
            .map(|p| (x(p.t, duration), panel.y(f(p))))
            .collect()
    };
    polyline(
        &mut out,
        &line(|p| p.input, &rates),
        r##"stroke="#1f6fd1" stroke-width="1.5""##,
    );
    polyline(
        &mut out,
        &line(|p| p.processed, &rates),
        r##"stroke="#2a9d3a" stroke-width="1" stroke-dasharray="4 2""##,
    );
    let replicas = Panel {
        title: "taskmanagers",
        top: panel_top(1),
        // An even top, so the half-way label is a whole count.
        y_max: f64::from((report.max_replicas().max(1) + 2) / 2 * 2),
    };
    frame(&mut out, &replicas, duration);
    let mut steps = Vec::new();
    for (t, r) in report.replica_changes() {
        if let Some(&(_, previous)) = steps.last() {
            steps.push((x(t, duration), previous));
        }
        steps.push((x(t, duration), replicas.y(f64::from(r))));
    }
    steps.push((x(duration, duration), steps.last().map_or(0.0, |s| s.1)));
    polyline(&mut out, &steps, r##"stroke="#e07b00" stroke-width="2""##);
    let lag = Panel {
        title: "lag (records)",
        top: panel_top(2),
        y_max: (report.peak_lag().0 * 1.1).max(1.0),
    };
    frame(&mut out, &lag, duration);
    polyline(
        &mut out,
        &line(|p| p.lag, &lag),
        r##"stroke="#c62828" stroke-width="1.5""##,
    );
    out.push_str("</svg>\n");
    out
}
