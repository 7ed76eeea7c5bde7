//! Charts drawn on the server: this file turns figures into SVG geometry (bars, a line, axis labels, tooltips), and
//! the `chart.html` macro draws it. Every label and tooltip is plain text the template escapes; nothing here writes
//! markup. Pages keep their charts with JavaScript off, and the page's Content-Security-Policy needs no exception
//! (colours come from classes in the stylesheet, not from inline styles).

use super::pages::{bytes, seconds, when};

/// The drawing's coordinate system (`viewBox`), about the width it is shown at, so its text keeps its size; the
/// stylesheet scales it to the page.
pub const WIDTH: f64 = 1200.0;
pub const HEIGHT: f64 = 260.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 72.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 30.0;
const PLOT_WIDTH: f64 = WIDTH - LEFT - RIGHT;
const PLOT_HEIGHT: f64 = HEIGHT - TOP - BOTTOM;
/// A history of few pushes keeps narrow bars.
const MAX_BAR_WIDTH: f64 = 40.0;

pub struct Chart {
    pub title: String,
    pub caption: String,
    pub bars: Vec<Bar>,
    pub line: Option<Line>,
    /// Along the bottom, centred.
    pub x_labels: Vec<Label>,
    /// Left axis (the bars'), right-aligned.
    pub y_labels: Vec<Label>,
    /// Right axis (the line's), left-aligned.
    pub y2_labels: Vec<Label>,
    /// Heights of the horizontal grid lines.
    pub grid: Vec<String>,
    pub legend: Vec<Legend>,
    pub edges: Edges,
    pub width: f64,
    pub height: f64,
    /// Nothing to draw: the page says so instead.
    pub empty: bool,
}

pub struct Bar {
    pub x: String,
    pub y: String,
    pub width: String,
    pub height: String,
    pub class: String,
    pub tip: String,
}

pub struct Line {
    pub points: String,
    pub class: &'static str,
    pub dots: Vec<Dot>,
}

pub struct Dot {
    pub cx: String,
    pub cy: String,
    pub tip: String,
}

pub struct Label {
    pub x: String,
    pub y: String,
    pub text: String,
}

pub struct Legend {
    pub class: String,
    pub text: String,
}

/// The plot area's edges, for the template's axis lines.
pub struct Edges {
    pub left: String,
    pub right: String,
    pub bottom: String,
}

impl Default for Edges {
    fn default() -> Edges {
        Edges { left: coordinate(LEFT), right: coordinate(WIDTH - RIGHT), bottom: coordinate(TOP + PLOT_HEIGHT) }
    }
}

fn coordinate(value: f64) -> String {
    format!("{value:.1}")
}

/// The smallest of 1, 2, 5 × 10^k that is at least `value` (1 for nothing), so axis labels are round.
pub fn nice_ceiling(value: f64) -> f64 {
    if value.is_nan() || value <= 0.0 || value.is_infinite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if step * magnitude >= value * (1.0 - 1e-12) {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// The height of `value` on a scale up to `max`, as a y coordinate.
fn y_of(value: f64, max: f64) -> f64 {
    TOP + PLOT_HEIGHT - (value / max).clamp(0.0, 1.0) * PLOT_HEIGHT
}

/// Labels at 0, half and the top of an axis, and the grid lines at their heights.
fn axis(max: f64, x: f64, show: impl Fn(f64) -> String) -> (Vec<Label>, Vec<String>) {
    let mut labels = Vec::new();
    let mut grid = Vec::new();
    for fraction in [0.0, 0.5, 1.0] {
        let y = y_of(max * fraction, max);
        labels.push(Label { x: coordinate(x), y: coordinate(y + 4.0), text: show(max * fraction) });
        grid.push(coordinate(y));
    }
    (labels, grid)
}

fn count(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn bar(x: f64, width: f64, low: f64, high: f64, max: f64, class: impl Into<String>, tip: String) -> Bar {
    let (top, bottom) = (y_of(high, max), y_of(low, max));
    Bar {
        x: coordinate(x),
        y: coordinate(top),
        width: coordinate(width),
        height: coordinate((bottom - top).max(0.0)),
        class: class.into(),
        tip,
    }
}

/// One hour of the overview's chart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hour {
    /// Unix seconds at the hour's start.
    pub start: i64,
    pub pushes: u64,
    pub failed: u64,
    pub uploads: u64,
    pub bytes: u64,
}

/// The overview's chart: per hour, pushes (failed ones stacked on top, in their own colour) and uploads as bars on
/// the left axis, and bytes as a line on the right axis.
pub fn hourly(hours: &[Hour]) -> Chart {
    let slot = PLOT_WIDTH / hours.len().max(1) as f64;
    let top_count = nice_ceiling(hours.iter().map(|h| h.pushes.max(h.uploads)).max().unwrap_or(0) as f64);
    let top_bytes = nice_ceiling(hours.iter().map(|h| h.bytes).max().unwrap_or(0) as f64);
    let mut bars = Vec::new();
    let mut points = Vec::new();
    let mut dots = Vec::new();
    let mut x_labels = Vec::new();
    for (n, hour) in hours.iter().enumerate() {
        let left = LEFT + n as f64 * slot;
        let span = format!("{} – {}", hour_label(hour.start), hour_label(hour.start + 3600));
        let ok = hour.pushes.saturating_sub(hour.failed);
        let width = slot * 0.38;
        let tip = format!("{span}: {} pushes ({} failed)", hour.pushes, hour.failed);
        if ok > 0 {
            bars.push(bar(left + slot * 0.1, width, 0.0, ok as f64, top_count, "bar-push", tip.clone()));
        }
        if hour.failed > 0 {
            bars.push(bar(left + slot * 0.1, width, ok as f64, hour.pushes as f64, top_count, "bar-failed", tip));
        }
        if hour.uploads > 0 {
            let tip = format!("{span}: {} analysis files stored", hour.uploads);
            bars.push(bar(left + slot * 0.52, width, 0.0, hour.uploads as f64, top_count, "bar-upload", tip));
        }
        let (cx, cy) = (left + slot / 2.0, y_of(hour.bytes as f64, top_bytes));
        points.push(format!("{cx:.1},{cy:.1}"));
        dots.push(Dot { cx: coordinate(cx), cy: coordinate(cy), tip: format!("{span}: {}", bytes(hour.bytes)) });
        if n % 6 == 0 {
            let y = coordinate(HEIGHT - 10.0);
            x_labels.push(Label { x: coordinate(left + slot / 2.0), y, text: hour_label(hour.start) });
        }
    }
    let (y_labels, grid) = axis(top_count, LEFT - 8.0, count);
    let (y2_labels, _) = axis(top_bytes, WIDTH - RIGHT + 8.0, |b| bytes(b as u64));
    let empty = hours.iter().all(|h| h.pushes == 0 && h.uploads == 0);
    Chart {
        title: "Pushes, uploads and bytes per hour, last 24 hours (UTC)".into(),
        caption: "Bars: pushes (failed ones on top) and analysis files stored, left axis. Line: bytes, right axis \
                  (the pushed replicas' sizes after each push, plus the files stored)."
            .into(),
        bars,
        line: Some(Line { points: points.join(" "), class: "line-bytes", dots }),
        x_labels,
        y_labels,
        y2_labels,
        grid,
        legend: vec![
            Legend { class: "bar-push".into(), text: "pushes".into() },
            Legend { class: "bar-failed".into(), text: "failed pushes".into() },
            Legend { class: "bar-upload".into(), text: "files stored".into() },
            Legend { class: "line-bytes".into(), text: "bytes".into() },
        ],
        edges: Edges::default(),
        width: WIDTH,
        height: HEIGHT,
        empty,
    }
}

fn hour_label(unix: i64) -> String {
    format!("{:02}:00", unix.rem_euclid(86_400) / 3600)
}

/// One push in a run's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub at: i64,
    pub database: String,
    /// Which of the run's databases (its colour).
    pub database_index: usize,
    pub ok: bool,
    pub exit: String,
    pub seconds: f64,
    pub bytes: Option<u64>,
}

/// A run's push history, oldest first: each push a bar as tall as its replica after it (coloured by database, failed
/// ones in the failure colour), and its duration as a line on the right axis.
pub fn pushes(history: &[Push], databases: &[String]) -> Chart {
    let slot = PLOT_WIDTH / history.len().max(1) as f64;
    let top_bytes = nice_ceiling(history.iter().filter_map(|p| p.bytes).max().unwrap_or(0) as f64);
    let top_seconds = nice_ceiling(history.iter().map(|p| p.seconds).fold(0.0, f64::max));
    let mut bars = Vec::new();
    let mut points = Vec::new();
    let mut dots = Vec::new();
    for (n, push) in history.iter().enumerate() {
        let left = LEFT + n as f64 * slot;
        let size = push.bytes.map(bytes).unwrap_or_else(|| "no replica".into());
        let tip =
            format!("{} · {} · exit {} · {} · {size}", push.database, when(push.at), push.exit, seconds(push.seconds));
        let class = if push.ok { format!("bar-db{}", push.database_index % 4) } else { "bar-failed".into() };
        let height = push.bytes.unwrap_or(0) as f64;
        // A failed push without a replica still shows, as a sliver.
        let height = if push.ok { height } else { height.max(top_bytes * 0.02) };
        let width = (slot * 0.7).clamp(1.0, MAX_BAR_WIDTH);
        bars.push(bar(left + (slot - width) / 2.0, width, 0.0, height, top_bytes, class, tip.clone()));
        let (cx, cy) = (left + slot / 2.0, y_of(push.seconds, top_seconds));
        points.push(format!("{cx:.1},{cy:.1}"));
        dots.push(Dot { cx: coordinate(cx), cy: coordinate(cy), tip });
    }
    let mut x_labels = Vec::new();
    if let (Some(first), Some(last)) = (history.first(), history.last()) {
        let y = coordinate(HEIGHT - 10.0);
        x_labels.push(Label { x: coordinate(LEFT + slot / 2.0), y: y.clone(), text: when(first.at) });
        if history.len() > 1 {
            x_labels.push(Label { x: coordinate(WIDTH - RIGHT - slot / 2.0), y, text: when(last.at) });
        }
    }
    let (y_labels, grid) = axis(top_bytes, LEFT - 8.0, |b| bytes(b as u64));
    let (y2_labels, _) = axis(top_seconds, WIDTH - RIGHT + 8.0, seconds);
    let mut legend: Vec<Legend> = databases
        .iter()
        .enumerate()
        .map(|(n, database)| Legend { class: format!("bar-db{}", n % 4), text: database.clone() })
        .collect();
    legend.push(Legend { class: "bar-failed".into(), text: "failed push".into() });
    legend.push(Legend { class: "line-seconds".into(), text: "duration".into() });
    Chart {
        title: match history.len() {
            0 => "No pushes yet".to_owned(),
            1 => "The one push so far".to_owned(),
            n => format!("The last {n} pushes"),
        },
        caption: "Bars: each replica's size after the push, left axis. Line: how long the push took, right axis."
            .into(),
        bars,
        line: Some(Line { points: points.join(" "), class: "line-seconds", dots }),
        x_labels,
        y_labels,
        y2_labels,
        grid,
        legend,
        edges: Edges::default(),
        width: WIDTH,
        height: HEIGHT,
        empty: history.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inside(bar: &Bar) -> bool {
        let number = |s: &str| s.parse::<f64>().unwrap();
        let (x, y, w, h) = (number(&bar.x), number(&bar.y), number(&bar.width), number(&bar.height));
        x >= LEFT - 0.1 && x + w <= WIDTH - RIGHT + 0.1 && y >= TOP - 0.1 && y + h <= TOP + PLOT_HEIGHT + 0.1
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(11.0), 20.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
    }

    #[test]
    fn hourly_bars_stay_inside_the_plot_and_stack_failures_on_top() {
        let mut hours: Vec<Hour> = (0..24).map(|n| Hour { start: n * 3600, ..Hour::default() }).collect();
        assert!(hourly(&hours).empty);
        hours[3] = Hour { start: 3 * 3600, pushes: 7, failed: 2, uploads: 3, bytes: 5 << 20 };
        hours[23].uploads = 11;
        let chart = hourly(&hours);
        assert!(!chart.empty);
        assert_eq!(chart.bars.len(), 4);
        assert!(chart.bars.iter().all(inside));
        let ok = &chart.bars[0];
        let failed = &chart.bars[1];
        assert_eq!((ok.class.as_str(), failed.class.as_str()), ("bar-push", "bar-failed"));
        let bottom_of_failed: f64 = failed.y.parse::<f64>().unwrap() + failed.height.parse::<f64>().unwrap();
        assert!((bottom_of_failed - ok.y.parse::<f64>().unwrap()).abs() < 0.2, "failed pushes sit on the others");
        assert_eq!(chart.y_labels.last().unwrap().text, "20", "the left axis ends at a round number");
        assert_eq!(
            chart.x_labels.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["00:00", "06:00", "12:00", "18:00"]
        );
        assert_eq!(chart.line.as_ref().unwrap().dots.len(), 24);
        assert!(chart.bars[0].tip.starts_with("03:00 – 04:00: 7 pushes (2 failed)"));
    }

    #[test]
    fn a_push_history_shows_every_push_and_its_duration() {
        let databases = vec!["genomes.sqlite".to_owned(), "features.sqlite".to_owned()];
        assert!(pushes(&[], &databases).empty);
        let history: Vec<Push> = (0..150)
            .map(|n| Push {
                at: 1_800_000_000 + n * 60,
                database: databases[n as usize % 2].clone(),
                database_index: n as usize % 2,
                ok: n != 7,
                exit: if n == 7 { "memory_limit".into() } else { "0".into() },
                seconds: 0.5 + n as f64 / 10.0,
                bytes: if n == 7 { None } else { Some(1000 * n as u64) },
            })
            .collect();
        let chart = pushes(&history, &databases);
        assert_eq!(chart.bars.len(), 150);
        assert!(chart.bars.iter().all(inside));
        assert_eq!(chart.bars[7].class, "bar-failed");
        assert!(chart.bars[7].height.parse::<f64>().unwrap() > 0.0, "a failed push shows");
        assert_eq!(chart.bars[8].class, "bar-db0");
        assert!(chart.bars[7].tip.contains("exit memory_limit") && chart.bars[7].tip.contains("no replica"));
        assert_eq!(chart.legend.len(), 4);
        assert_eq!(chart.x_labels.len(), 2);
    }
}
