//! Small SVG charts drawn by our own code: line, grouped-bar and scatter charts with axes,
//! ticks and a legend. Nothing to download or install, no fonts: the text names the generic
//! `sans-serif` family and the viewer picks one. Output is a pure function of the data, so a
//! re-run with the same findings writes the same bytes.

use std::fmt::Write;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 430.0;
/// Plot area margins: left (y labels), right (legend), top (title), bottom (x labels).
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 45.0;
const BOTTOM: f64 = 60.0;
/// Colour-blind-safe palette (Okabe–Ito), one colour per series.
const PALETTE: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];

/// Titles and axis labels of one chart.
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

/// A named sequence of values (one per x category).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
}

/// A named set of (x, y) points.
#[derive(Debug, Clone)]
pub struct Points {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One line per series over the categories.
pub fn lines(labels: &Labels<'_>, categories: &[String], series: &[Series]) -> String {
    let values = series.iter().flat_map(|s| s.values.iter().copied());
    let y = Axis::fit(values, true);
    let mut svg = Canvas::new(labels);
    svg.y_axis(&y);
    let n = categories.len().max(1);
    let x_of = |i: usize| LEFT + plot_width() * (i as f64 + 0.5) / n as f64;
    svg.x_categories(categories, x_of);
    for (k, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| format!("{:.1},{:.1}", x_of(i), y.to_px(*v)))
            .collect();
        let _ = write!(
            svg.body,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            colour(k),
            path.join(" ")
        );
    }
    svg.legend(series.iter().map(|s| s.name.as_str()));
    svg.finish()
}

/// Bars side by side per category, one colour per series.
pub fn bars(labels: &Labels<'_>, categories: &[String], series: &[Series]) -> String {
    let values = series.iter().flat_map(|s| s.values.iter().copied());
    let y = Axis::fit(values, true);
    let mut svg = Canvas::new(labels);
    svg.y_axis(&y);
    let n = categories.len().max(1) as f64;
    let slot = plot_width() / n;
    let bar = slot * 0.8 / series.len().max(1) as f64;
    svg.x_categories(categories, |i| LEFT + slot * (i as f64 + 0.5));
    for (k, s) in series.iter().enumerate() {
        for (i, v) in s.values.iter().enumerate().filter(|(_, v)| v.is_finite()) {
            let x = LEFT + slot * i as f64 + slot * 0.1 + bar * k as f64;
            let (top, base) = (y.to_px(*v), y.to_px(0.0));
            let _ = write!(
                svg.body,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                top.min(base),
                bar * 0.95,
                (base - top).abs(),
                colour(k)
            );
        }
    }
    svg.legend(series.iter().map(|s| s.name.as_str()));
    svg.finish()
}

/// A dot per point, one colour per group.
pub fn scatter(labels: &Labels<'_>, groups: &[Points]) -> String {
    let all = || groups.iter().flat_map(|g| g.points.iter());
    let x = Axis::fit(all().map(|p| p.0), false);
    let y = Axis::fit(all().map(|p| p.1), false);
    let mut svg = Canvas::new(labels);
    svg.y_axis(&y);
    svg.x_axis(&x);
    for (k, g) in groups.iter().enumerate() {
        for (px, py) in g
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
        {
            let _ = write!(
                svg.body,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}" fill-opacity="0.75"/>"#,
                x.to_px_x(*px),
                y.to_px(*py),
                colour(k)
            );
        }
    }
    svg.legend(groups.iter().map(|g| g.name.as_str()));
    svg.finish()
}

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_height() -> f64 {
    HEIGHT - TOP - BOTTOM
}

fn colour(k: usize) -> &'static str {
    PALETTE[k % PALETTE.len()]
}

/// A value range with "nice" tick steps (1, 2 or 5 times a power of ten).
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    /// Covers every finite value; `from_zero` keeps 0 in range (bars and rates).
    fn fit(values: impl Iterator<Item = f64>, from_zero: bool) -> Self {
        let (mut lo, mut hi) = values
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if from_zero {
            lo = lo.min(0.0);
            hi = hi.max(0.0);
        }
        if hi - lo < 1e-12 {
            hi = lo + 1.0;
        }
        let raw = (hi - lo) / 6.0;
        let power = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * power)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * power);
        Self {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
        }
    }

    fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as i64;
        (0..=n).map(|i| self.lo + self.step * i as f64).collect()
    }

    fn share(&self, v: f64) -> f64 {
        (v - self.lo) / (self.hi - self.lo)
    }

    /// Vertical pixel of `v`.
    fn to_px(&self, v: f64) -> f64 {
        TOP + plot_height() * (1.0 - self.share(v))
    }

    /// Horizontal pixel of `v`.
    fn to_px_x(&self, v: f64) -> f64 {
        LEFT + plot_width() * self.share(v)
    }

    fn label(&self, v: f64) -> String {
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// The SVG being written: frame, title and axis labels first, marks in `body`.
struct Canvas {
    head: String,
    body: String,
}

impl Canvas {
    fn new(labels: &Labels<'_>) -> Self {
        let mut head = String::new();
        let _ = write!(
            head,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(
            head,
            r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{LEFT}" y="25" font-size="15" font-weight="bold">{}</text>"#,
            escape(labels.title)
        );
        let _ = write!(
            head,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_width() / 2.0,
            HEIGHT - 15.0,
            escape(labels.x)
        );
        let _ = write!(
            head,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + plot_height() / 2.0,
            escape(labels.y)
        );
        Self {
            head,
            body: String::new(),
        }
    }

    fn y_axis(&mut self, y: &Axis) {
        for t in y.ticks() {
            let py = y.to_px(t);
            let _ = write!(
                self.head,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_width(),
                LEFT - 6.0,
                py + 4.0,
                y.label(t)
            );
        }
    }

    fn x_axis(&mut self, x: &Axis) {
        for t in x.ticks() {
            let px = x.to_px_x(t);
            let _ = write!(
                self.head,
                r##"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + plot_height(),
                TOP + plot_height() + 16.0,
                x.label(t)
            );
        }
    }

    fn x_categories(&mut self, categories: &[String], x_of: impl Fn(usize) -> f64) {
        // Long category lists (24 hours) label every other one, so labels never overlap.
        let every = if categories.len() > 12 { 2 } else { 1 };
        for (i, c) in categories.iter().enumerate().step_by(every) {
            let _ = write!(
                self.head,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x_of(i),
                TOP + plot_height() + 16.0,
                escape(c)
            );
        }
    }

    fn legend<'a>(&mut self, names: impl Iterator<Item = &'a str>) {
        let x = WIDTH - RIGHT + 15.0;
        for (k, name) in names.enumerate() {
            let y = TOP + 10.0 + 20.0 * k as f64;
            let _ = write!(
                self.body,
                r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
                y - 10.0,
                colour(k),
                x + 18.0,
                escape(name)
            );
        }
    }

    fn finish(self) -> String {
        let frame = format!(
            r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#888"/>"##,
            plot_width(),
            plot_height()
        );
        format!("{}{frame}{}</svg>\n", self.head, self.body)
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels<'static> {
        Labels {
            title: "A & B <test>",
            x: "x",
            y: "y",
        }
    }

    #[test]
    fn ticks_are_nice_and_cover_the_data() {
        let axis = Axis::fit([0.13, 7.9].into_iter(), true);
        assert_eq!(axis.step, 2.0);
        assert_eq!((axis.lo, axis.hi), (0.0, 8.0));
        let flat = Axis::fit([3.0, 3.0].into_iter(), false);
        assert!(flat.hi > flat.lo);
        let empty = Axis::fit(std::iter::empty(), false);
        assert!(empty.hi > empty.lo);
    }

    #[test]
    fn charts_are_well_formed_and_escape_text() {
        let series = [Series {
            name: "s".into(),
            values: vec![1.0, 2.0, f64::NAN],
        }];
        let categories: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        for svg in [
            lines(&labels(), &categories, &series),
            bars(&labels(), &categories, &series),
            scatter(
                &labels(),
                &[Points {
                    name: "p".into(),
                    points: vec![(1.0, 2.0), (3.0, -1.0)],
                }],
            ),
        ] {
            assert!(
                svg.starts_with("<svg") && svg.ends_with("</svg>\n"),
                "{svg}"
            );
            assert!(svg.contains("A &amp; B &lt;test&gt;"));
            assert!(!svg.contains("<test>"));
            assert!(!svg.contains("NaN"), "{svg}");
        }
    }
}
