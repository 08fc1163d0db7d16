//! SVG charts for the load-test results, written next to the markdown tables.
//!
//! Two kinds of chart, each rendered to a standalone SVG 1.1 document (900 × 420 px):
//!
//! - [`Bars`]: grouped bars comparing variants (one group per client or proxy) on a few keys
//!   (one bar per latency percentile, say). Latencies span several orders of magnitude, so the
//!   value axis can be log10.
//! - [`Lines`]: values over time, one line per variant, e.g. the share of requests sent to a
//!   slow backend, which shows how quickly each balancer moves traffic away from it.
//!
//! Rendering never panics. Missing, non-finite and (on a log axis) non-positive values are left
//! out, and an input with nothing to draw still gives a valid document that says "no data".
//! Colors come from the Okabe–Ito palette, which stays distinguishable with common forms of
//! color blindness; series beyond the palette's size reuse its colors with dashed lines.

use std::fmt::Write as _;

/// Document width in pixels.
const WIDTH: f64 = 900.0;
/// Document height in pixels.
const HEIGHT: f64 = 420.0;
/// X of the value axis; the space on its left holds tick labels and the axis label.
const PLOT_LEFT: f64 = 80.0;
/// Right edge of the plot area.
const PLOT_RIGHT: f64 = WIDTH - 24.0;
/// Font size of tick labels, legend entries and group labels.
const FONT: f64 = 12.0;
/// Font size of the values printed at the bars.
const VALUE_FONT: f64 = 11.0;
/// Largest magnitude placed on a linear axis, so that spans between values stay finite.
const LIMIT: f64 = 1e300;
/// Okabe–Ito colors, darkest and most distinct first; yellow last as it is faint on white.
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000", "#F0E442",
];

/// Grouped bar chart: one group per variant, one bar per key inside each group.
///
/// Each value is printed at its bar; a missing or unplottable value shows as "n/a". A legend
/// names the keys. Values beyond `keys.len()` in a group are ignored, missing ones count as
/// `None`.
pub struct Bars {
    /// Chart title, shown on top.
    pub title: String,
    /// Label of the value axis, e.g. "latency, µs".
    pub unit: String,
    /// Names of the bars inside each group, in legend and drawing order.
    pub keys: Vec<String>,
    /// One `(group label, values by key)` per group, left to right.
    pub groups: Vec<(String, Vec<Option<f64>>)>,
    /// Log10 value axis (ticks 1, 10, 100, 1k, …) instead of a linear one starting at zero.
    pub log: bool,
}

/// Line chart of values over time: one polyline per series.
///
/// Points are joined in the order given; a non-finite point breaks the line. Short series
/// also get a marker on every point.
pub struct Lines {
    /// Chart title, shown on top.
    pub title: String,
    /// Label of the horizontal axis, e.g. "seconds since start".
    pub x_label: String,
    /// Label of the vertical axis, e.g. "requests to the slow backend, %".
    pub y_label: String,
    /// Fixed top of the vertical axis (100 for a percentage); from the data when `None`.
    pub y_max: Option<f64>,
    /// One `(name, points)` per series, points as `(x, y)`, in legend and drawing order.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Bars {
    /// Renders the chart as a standalone SVG document.
    pub fn render(&self) -> String {
        let mut svg = Svg::new(&self.title);
        let names: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        let top = svg.legend(&names, false) + 8.0;
        let bottom = HEIGHT - 40.0;
        svg.y_label(&self.unit, top, bottom);

        let key_count = self.keys.len();
        let plottable = |v: &f64| v.is_finite() && (!self.log || *v > 0.0);
        let values: Vec<f64> = self
            .groups
            .iter()
            .flat_map(|(_, row)| row.iter().take(key_count).flatten())
            .copied()
            .filter(plottable)
            .collect();
        let Some((min, max)) = min_max(&values) else {
            svg.no_data(top, bottom);
            return svg.finish();
        };
        let axis = if self.log {
            Axis::log(min, max)
        } else {
            Axis::linear(min.min(0.0), max.max(0.0))
        };

        let group_width = (PLOT_RIGHT - PLOT_LEFT) / self.groups.len() as f64;
        let bar_width = (group_width * 0.8 / key_count as f64).min(64.0);
        let label_width = values
            .iter()
            .map(|&v| text_width(&fmt_num(v), VALUE_FONT))
            .fold(text_width("n/a", VALUE_FONT), f64::max);
        // Labels wider than their bar would run into the neighbours': turn them upright.
        let upright = label_width > bar_width - 2.0;
        let room = if upright { label_width + 8.0 } else { 16.0 }.min((bottom - top) * 0.4);
        let below = if min < 0.0 && !self.log { room } else { 0.0 };
        let scale = Scale {
            axis,
            from: bottom - below,
            to: top + room,
        };
        let base = if self.log { scale.from } else { scale.px(0.0) };

        svg.y_grid(&scale, top, bottom);
        svg.line(PLOT_LEFT, base, PLOT_RIGHT, base, "#333333");

        for (index, (group, row)) in self.groups.iter().enumerate() {
            let group_left = PLOT_LEFT + index as f64 * group_width;
            let first = group_left + (group_width - bar_width * key_count as f64) / 2.0;
            for (slot, key) in self.keys.iter().enumerate() {
                let center = first + (slot as f64 + 0.5) * bar_width;
                let label = Label { x: center, upright };
                match row.get(slot).copied().flatten().filter(plottable) {
                    Some(value) => {
                        let y = scale.px(value);
                        let height = (y - base).abs().max(1.0);
                        let pad = if bar_width > 6.0 { 1.0 } else { 0.0 };
                        let tip = format!("{group} {key}: {} {}", fmt_num(value), self.unit);
                        svg.bar(
                            center - bar_width / 2.0 + pad,
                            y.min(base),
                            (bar_width - 2.0 * pad).max(0.5),
                            height,
                            (color(slot), &tip),
                        );
                        let up = self.log || value >= 0.0;
                        let y = if up {
                            y.min(base - 1.0)
                        } else {
                            y.max(base + 1.0)
                        };
                        svg.value(&label, y, up, &fmt_num(value), "#222222");
                    }
                    None => svg.value(&label, base - 1.0, true, "n/a", "#888888"),
                }
            }
            let text = fit(group, group_width - 4.0, FONT);
            let x = group_left + group_width / 2.0;
            svg.text(x, bottom + 18.0, "text-anchor=\"middle\"", &text);
        }
        svg.line(PLOT_LEFT, top, PLOT_LEFT, bottom, "#333333");
        svg.finish()
    }
}

impl Lines {
    /// Renders the chart as a standalone SVG document.
    pub fn render(&self) -> String {
        let mut svg = Svg::new(&self.title);
        let names: Vec<&str> = self.series.iter().map(|(name, _)| name.as_str()).collect();
        let top = svg.legend(&names, true) + 8.0;
        let bottom = HEIGHT - 52.0;
        svg.y_label(&self.y_label, top, bottom);
        let x_mid = (PLOT_LEFT + PLOT_RIGHT) / 2.0;
        let x_label = escape(&self.x_label);
        svg.text(x_mid, HEIGHT - 12.0, "text-anchor=\"middle\"", &x_label);

        let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
        let points: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|(_, points)| points.iter().copied().filter(finite))
            .collect();
        let xs: Vec<f64> = points.iter().map(|p| p.0).collect();
        let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
        let (Some((x_min, x_max)), Some((y_min, y_max))) = (min_max(&xs), min_max(&ys)) else {
            svg.no_data(top, bottom);
            return svg.finish();
        };
        let y_low = y_min.min(0.0);
        let y_axis = match self.y_max.filter(|m| m.is_finite() && *m > y_low) {
            Some(fixed) => Axis::linear(y_low, fixed).with_max(fixed),
            None => Axis::linear(y_low, y_max),
        };
        let x_scale = Scale {
            axis: Axis::linear(x_min, x_max),
            from: PLOT_LEFT,
            to: PLOT_RIGHT,
        };
        let y_scale = Scale {
            axis: y_axis,
            from: bottom,
            to: top,
        };

        svg.y_grid(&y_scale, top, bottom);
        for &tick in &x_scale.axis.ticks {
            let x = x_scale.px(tick);
            svg.line(x, top, x, bottom, "#e6e6e6");
            let text = fmt_num(tick);
            svg.text(x, bottom + 16.0, "text-anchor=\"middle\"", &text);
        }
        svg.line(PLOT_LEFT, bottom, PLOT_RIGHT, bottom, "#333333");
        svg.line(PLOT_LEFT, top, PLOT_LEFT, bottom, "#333333");

        for (index, (_, points)) in self.series.iter().enumerate() {
            let style = format!(
                "fill=\"none\" stroke=\"{}\" stroke-width=\"2\" stroke-linejoin=\"round\"{}",
                color(index),
                dash(index)
            );
            let markers = points.len() <= 40;
            for run in points.split(|p| !finite(p)) {
                let pixels: Vec<(f64, f64)> = run
                    .iter()
                    .map(|&(x, y)| (x_scale.px(x), y_scale.px(y)))
                    .collect();
                if pixels.len() > 1 {
                    svg.polyline(&pixels, &style);
                }
                if markers || pixels.len() == 1 {
                    for &(x, y) in &pixels {
                        svg.dot(x, y, color(index));
                    }
                }
            }
        }
        svg.finish()
    }
}

/// Value range of an axis and its tick values.
struct Axis {
    /// Low end: a value, or its log10 on a log axis.
    lo: f64,
    /// High end, like `lo`.
    hi: f64,
    /// Whether positions follow log10 of the value.
    log: bool,
    /// Values to label, low to high, all within the range.
    ticks: Vec<f64>,
}

impl Axis {
    /// Linear axis covering `min..=max` (finite), widened to round ticks 1, 2 or 5 × 10^n apart.
    fn linear(min: f64, max: f64) -> Self {
        let (mut lo, mut hi) = (min.clamp(-LIMIT, LIMIT), max.clamp(-LIMIT, LIMIT));
        if hi <= lo {
            let pad = (lo.abs() * 0.1).max(1.0);
            lo -= pad;
            hi += pad;
        }
        let raw = (hi - lo) / 5.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = magnitude
            * match raw / magnitude {
                r if r <= 1.0 => 1.0,
                r if r <= 2.0 => 2.0,
                r if r <= 5.0 => 5.0,
                _ => 10.0,
            };
        if !(step.is_finite() && step > 0.0) {
            return Self {
                lo,
                hi,
                log: false,
                ticks: vec![lo, hi],
            };
        }
        let first = (lo / step).floor();
        let last = (hi / step).ceil();
        let count = (last - first).clamp(0.0, 50.0) as usize;
        Self {
            lo: first * step,
            hi: last * step,
            log: false,
            ticks: (0..=count).map(|i| (first + i as f64) * step).collect(),
        }
    }

    /// Log10 axis covering `min..=max` (finite, positive), widened to whole decades.
    fn log(min: f64, max: f64) -> Self {
        let lo = min.log10().floor();
        let hi = max.log10().ceil().max(lo + 1.0);
        let decades = (hi - lo) as usize;
        let stride = decades.div_ceil(10).max(1);
        Self {
            lo,
            hi,
            log: true,
            ticks: (0..=decades)
                .step_by(stride)
                .map(|i| 10f64.powf(lo + i as f64))
                .collect(),
        }
    }

    /// Moves the top of a linear axis to `max`, dropping the ticks above it.
    fn with_max(mut self, max: f64) -> Self {
        let slack = (self.hi - self.lo).abs() * 1e-9;
        self.ticks.retain(|&t| t <= max + slack);
        self.hi = max;
        self
    }

    /// Position of `value` along the axis, 0 at the low end and 1 at the high end, clamped.
    fn fraction(&self, value: f64) -> f64 {
        let value = if self.log { value.log10() } else { value };
        let t = (value - self.lo) / (self.hi - self.lo);
        if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) }
    }
}

/// An axis laid along a pixel interval.
struct Scale {
    /// The values shown.
    axis: Axis,
    /// Pixel coordinate of the axis's low end.
    from: f64,
    /// Pixel coordinate of the axis's high end.
    to: f64,
}

impl Scale {
    /// Pixel coordinate of `value`.
    fn px(&self, value: f64) -> f64 {
        self.from + (self.to - self.from) * self.axis.fraction(value)
    }
}

/// Where a bar's value label goes.
struct Label {
    /// Center of the bar.
    x: f64,
    /// Whether the text runs bottom to top instead of left to right.
    upright: bool,
}

/// An SVG document under construction.
struct Svg {
    /// Markup written so far.
    out: String,
}

impl Svg {
    /// Starts a document with a white background and `title` on top.
    fn new(title: &str) -> Self {
        let title = escape(title);
        let mut out = String::with_capacity(16 * 1024);
        let _ = write!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{WIDTH}\" \
             height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" \
             font-size=\"{FONT}\" fill=\"#222222\">\n\
             <title>{title}</title>\n\
             <rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#ffffff\"/>\n\
             <text x=\"{}\" y=\"26\" text-anchor=\"middle\" font-size=\"17\" \
             font-weight=\"bold\">{title}</text>\n",
            WIDTH / 2.0
        );
        Self { out }
    }

    /// Writes a `<text>` element; `content` must already be escaped.
    fn text(&mut self, x: f64, y: f64, attributes: &str, content: &str) {
        let _ = writeln!(
            self.out,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" {attributes}>{content}</text>"
        );
    }

    /// Writes a one-pixel line.
    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str) {
        let _ = writeln!(
            self.out,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{stroke}\"/>"
        );
    }

    /// Writes a bar with a hover tooltip; `style` is its fill color and unescaped tooltip.
    fn bar(&mut self, x: f64, y: f64, width: f64, height: f64, style: (&str, &str)) {
        let (fill, tip) = style;
        let _ = writeln!(
            self.out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" \
             fill=\"{fill}\"><title>{}</title></rect>",
            escape(tip)
        );
    }

    /// Writes a bar's value just beyond `y`: above it when `up`, below it otherwise.
    fn value(&mut self, label: &Label, y: f64, up: bool, text: &str, fill: &str) {
        let attributes = format!("font-size=\"{VALUE_FONT}\" fill=\"{fill}\"");
        if label.upright {
            let anchor = if up { "start" } else { "end" };
            let y = if up { y - 4.0 } else { y + 4.0 };
            let _ = writeln!(
                self.out,
                "<text transform=\"translate({:.1} {y:.1}) rotate(-90)\" text-anchor=\"{anchor}\" \
                 {attributes}>{}</text>",
                label.x + VALUE_FONT * 0.35,
                escape(text)
            );
        } else {
            let y = if up {
                y - 4.0
            } else {
                y + 4.0 + VALUE_FONT * 0.8
            };
            let attributes = format!("text-anchor=\"middle\" {attributes}");
            self.text(label.x, y, &attributes, &escape(text));
        }
    }

    /// Writes a polyline through pixel `points`.
    fn polyline(&mut self, points: &[(f64, f64)], style: &str) {
        let mut coordinates = String::new();
        for (x, y) in points {
            let _ = write!(coordinates, "{x:.1},{y:.1} ");
        }
        let _ = writeln!(
            self.out,
            "<polyline points=\"{}\" {style}/>",
            coordinates.trim_end()
        );
    }

    /// Writes a point marker.
    fn dot(&mut self, x: f64, y: f64, fill: &str) {
        let _ = writeln!(
            self.out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{fill}\"/>"
        );
    }

    /// Writes a legend below the title, flowing into as many rows as needed, and returns the
    /// y coordinate below it. Entries show a line sample when `lines`, a swatch otherwise.
    fn legend(&mut self, names: &[&str], lines: bool) -> f64 {
        let row_height = 18.0;
        let first_row = 48.0;
        let mut x = PLOT_LEFT;
        let mut y = first_row;
        for (index, name) in names.iter().enumerate() {
            let text = fit(name, PLOT_RIGHT - PLOT_LEFT - 40.0, FONT);
            let width = 26.0 + text_width(&text, FONT);
            if x > PLOT_LEFT && x + width > PLOT_RIGHT {
                x = PLOT_LEFT;
                y += row_height;
            }
            if lines {
                let _ = writeln!(
                    self.out,
                    "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" \
                     stroke-width=\"3\"{}/>",
                    y - 4.0,
                    x + 18.0,
                    y - 4.0,
                    color(index),
                    dash(index)
                );
            } else {
                let _ = writeln!(
                    self.out,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/>",
                    y - 10.0,
                    color(index)
                );
            }
            let offset = if lines { 24.0 } else { 17.0 };
            self.text(x + offset, y, "", &text);
            x += width + 18.0;
        }
        if names.is_empty() {
            first_row - row_height
        } else {
            y + 6.0
        }
    }

    /// Writes the label of the vertical axis, upright, centered on the `top..bottom` span.
    fn y_label(&mut self, label: &str, top: f64, bottom: f64) {
        let text = fit(label, bottom - top, FONT);
        let _ = writeln!(
            self.out,
            "<text transform=\"translate(22 {:.1}) rotate(-90)\" text-anchor=\"middle\">{text}</text>",
            (top + bottom) / 2.0
        );
    }

    /// Writes horizontal grid lines and labels at the ticks of a vertical scale.
    fn y_grid(&mut self, scale: &Scale, top: f64, bottom: f64) {
        for &tick in &scale.axis.ticks {
            let y = scale.px(tick).clamp(top, bottom);
            self.line(PLOT_LEFT, y, PLOT_RIGHT, y, "#e6e6e6");
            let text = fmt_num(tick);
            self.text(PLOT_LEFT - 6.0, y + 4.0, "text-anchor=\"end\"", &text);
        }
    }

    /// Writes "no data" in the middle of the plot area.
    fn no_data(&mut self, top: f64, bottom: f64) {
        let x = (PLOT_LEFT + PLOT_RIGHT) / 2.0;
        let attributes = "text-anchor=\"middle\" font-size=\"16\" fill=\"#888888\"";
        self.text(x, (top + bottom) / 2.0, attributes, "no data");
    }

    /// Closes the document and returns it.
    fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

/// Color of the series or key at `index`.
fn color(index: usize) -> &'static str {
    PALETTE[index % PALETTE.len()]
}

/// Stroke dash attribute for the series at `index`: solid for the first round of colors.
fn dash(index: usize) -> &'static str {
    if index < PALETTE.len() {
        ""
    } else {
        " stroke-dasharray=\"7 4\""
    }
}

/// Smallest and largest of `values`, or `None` when empty.
fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let first = *values.first()?;
    Some(
        values
            .iter()
            .fold((first, first), |(lo, hi), &v| (lo.min(v), hi.max(v))),
    )
}

/// Rough width of `text` in pixels at font `size` (average sans-serif glyph).
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.6
}

/// `text` escaped, shortened with an ellipsis to fit in `width` pixels at font `size`.
fn fit(text: &str, width: f64, size: f64) -> String {
    if text_width(text, size) <= width {
        return escape(text);
    }
    let keep = (width / (size * 0.6)).floor().max(1.0) as usize - 1;
    let mut short: String = text.chars().take(keep).collect();
    short.push('…');
    escape(&short)
}

/// `text` with the XML special characters replaced by entities.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

/// `value` in a few characters: about three significant digits, with k, M, G, T, P, E
/// suffixes from a thousand up (1234 → "1.2k", 95.3 → "95.3", 0.5 → "0.5").
fn fmt_num(value: f64) -> String {
    const SUFFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "∞" } else { "-∞" }.to_owned();
    }
    let sign = if value < 0.0 { "-" } else { "" };
    let mut magnitude = value.abs();
    if magnitude == 0.0 {
        return "0".to_owned();
    }
    if magnitude < 1e-3 {
        return format!("{sign}{magnitude:.1e}");
    }
    let mut group = 0;
    while magnitude >= 999.5 && group + 1 < SUFFIXES.len() {
        magnitude /= 1000.0;
        group += 1;
    }
    if magnitude >= 999.5 {
        return format!("{value:.1e}");
    }
    let decimals = if magnitude >= 100.0 {
        0
    } else if magnitude >= 1.0 || group > 0 {
        1
    } else {
        // Two significant digits below one: 0.5, 0.25, 0.012.
        (1.0 - magnitude.log10().floor()).clamp(1.0, 4.0) as usize
    };
    let mut digits = format!("{magnitude:.decimals$}");
    if digits.contains('.') {
        digits.truncate(digits.trim_end_matches('0').trim_end_matches('.').len());
    }
    format!("{sign}{digits}{}", SUFFIXES[group])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that `doc` is well-formed XML with a single `svg` root: matched tags, quoted
    /// attributes, and `&` only in the five predefined entities or numeric references.
    fn check_xml(doc: &str) -> Result<(), String> {
        fn check_text(text: &str) -> Result<(), String> {
            for (at, _) in text.match_indices('&') {
                let rest = &text[at + 1..];
                let end = rest.find(';').ok_or(format!("bare & in {text:?}"))?;
                let entity = &rest[..end];
                let numeric = entity
                    .strip_prefix('#')
                    .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
                if !numeric && !["amp", "lt", "gt", "quot", "apos"].contains(&entity) {
                    return Err(format!("bad entity &{entity}; in {text:?}"));
                }
            }
            if text.contains('<') {
                return Err(format!("raw < in {text:?}"));
            }
            Ok(())
        }
        fn check_attributes(mut rest: &str) -> Result<(), String> {
            loop {
                rest = rest.trim_start();
                if rest.is_empty() {
                    return Ok(());
                }
                let eq = rest
                    .find("=\"")
                    .ok_or(format!("bad attribute in {rest:?}"))?;
                let name = &rest[..eq];
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    return Err(format!("bad attribute name {name:?}"));
                }
                let value_and_rest = &rest[eq + 2..];
                let close = value_and_rest.find('"').ok_or("unclosed attribute")?;
                check_text(&value_and_rest[..close])?;
                rest = &value_and_rest[close + 1..];
                if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
                    return Err(format!("no space after attribute {name}"));
                }
            }
        }

        let mut rest = doc;
        let mut stack: Vec<&str> = Vec::new();
        let mut roots = 0;
        while let Some(lt) = rest.find('<') {
            let text = &rest[..lt];
            if stack.is_empty() && !text.trim().is_empty() {
                return Err(format!("text outside the root: {text:?}"));
            }
            check_text(text)?;
            let after = &rest[lt + 1..];
            let gt = after.find('>').ok_or("unterminated tag")?;
            let tag = &after[..gt];
            rest = &after[gt + 1..];
            if let Some(declaration) = tag.strip_prefix('?') {
                if !declaration.ends_with('?') || roots > 0 {
                    return Err(format!("bad declaration {tag:?}"));
                }
            } else if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else {
                let (body, empty) = match tag.strip_suffix('/') {
                    Some(body) => (body, true),
                    None => (tag, false),
                };
                let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
                let name = &body[..name_end];
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(format!("bad tag name {name:?}"));
                }
                check_attributes(&body[name_end..])?;
                if stack.is_empty() {
                    roots += 1;
                    if roots > 1 || name != "svg" {
                        return Err(format!("unexpected root <{name}>"));
                    }
                }
                if !empty {
                    stack.push(name);
                }
            }
        }
        if !stack.is_empty() || roots != 1 || !rest.trim().is_empty() {
            return Err(format!(
                "unclosed {stack:?}, {roots} roots, trailing {rest:?}"
            ));
        }
        Ok(())
    }

    fn assert_document(doc: &str) {
        if let Err(error) = check_xml(doc) {
            panic!("{error}\n{doc}");
        }
        assert_eq!(doc.matches("<svg").count(), 1);
        assert_eq!(doc.matches("</svg>").count(), 1);
        assert_eq!(doc.matches("<text").count(), doc.matches("</text>").count());
        assert!(!doc.contains("NaN") && !doc.contains("inf"), "{doc}");
    }

    fn latency_bars() -> Bars {
        let row = |a: f64, b: f64, c: f64| vec![Some(a), Some(b), Some(c)];
        Bars {
            title: "Closed loop latency (homogeneous)".to_owned(),
            unit: "latency, µs".to_owned(),
            keys: vec!["p50".to_owned(), "p99".to_owned(), "p99.9".to_owned()],
            groups: vec![
                ("raw".to_owned(), row(212.0, 980.0, 2_310.0)),
                ("round_robin".to_owned(), row(240.0, 1_460.0, 4_020.0)),
                ("tower_p2c".to_owned(), row(310.0, 2_650.0, 9_870.0)),
                ("proxyless".to_owned(), row(265.0, 1_320.0, 3_150.0)),
                ("haproxy".to_owned(), row(402.0, 3_900.0, 21_500.0)),
                ("nginx".to_owned(), vec![Some(388.0), Some(4_410.0), None]),
            ],
            log: true,
        }
    }

    fn share_lines() -> Lines {
        let curve = |start: f64, rate: f64| -> Vec<(f64, f64)> {
            (0..=60)
                .map(|i| {
                    let t = f64::from(i) * 0.5;
                    (t, 10.0 + (start - 10.0) * (-rate * t).exp())
                })
                .collect()
        };
        Lines {
            title: "one_slow: share of requests to the slow backend".to_owned(),
            x_label: "seconds since start".to_owned(),
            y_label: "requests to the slow backend, %".to_owned(),
            y_max: Some(100.0),
            series: vec![
                ("round_robin".to_owned(), vec![(0.0, 10.0), (30.0, 10.0)]),
                ("tower_p2c".to_owned(), curve(10.0, 0.0)),
                ("proxyless".to_owned(), curve(45.0, 0.4)),
                ("haproxy".to_owned(), curve(60.0, 0.1)),
            ],
        }
    }

    #[test]
    fn escapes_xml_specials() {
        assert_eq!(
            escape(r#"a&b<c>"d"'e'"#),
            "a&amp;b&lt;c&gt;&quot;d&quot;&apos;e&apos;"
        );
        let mut bars = latency_bars();
        bars.title = "<script>&\"'".to_owned();
        bars.unit = "µs & <ms>".to_owned();
        bars.keys[0] = "p<50>".to_owned();
        bars.groups[0].0 = "a&b".to_owned();
        let doc = bars.render();
        assert_document(&doc);
        assert!(doc.contains("&lt;script&gt;&amp;&quot;&apos;"));
        assert!(doc.contains("µs &amp; &lt;ms&gt;"));
        assert!(doc.contains("p&lt;50&gt;"));
        assert!(doc.contains(">a&amp;b<"));
        assert!(!doc.contains("<script"));

        let mut lines = share_lines();
        lines.x_label = "x & <y>".to_owned();
        lines.series[0].0 = "\"quoted\"".to_owned();
        let doc = lines.render();
        assert_document(&doc);
        assert!(doc.contains("x &amp; &lt;y&gt;"));
        assert!(doc.contains("&quot;quoted&quot;"));
    }

    #[test]
    fn formats_numbers_compactly() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (0.5, "0.5"),
            (0.25, "0.25"),
            (0.0123, "0.012"),
            (1.0, "1"),
            (9.96, "10"),
            (95.3, "95.3"),
            (100.0, "100"),
            (999.4, "999"),
            (999.7, "1k"),
            (1_234.0, "1.2k"),
            (12_345.0, "12.3k"),
            (123_456.0, "123k"),
            (-1_500_000.0, "-1.5M"),
            (1e9, "1G"),
            (1e18, "1E"),
            (2.5e-5, "2.5e-5"),
            (3e21, "3.0e21"),
            (f64::MAX, "1.8e308"),
            (f64::INFINITY, "∞"),
        ];
        for (value, expected) in cases {
            assert_eq!(fmt_num(value), expected, "{value}");
        }
    }

    #[test]
    fn log_ticks_cover_whole_decades() {
        let axis = Axis::log(20.0, 50_000.0);
        let labels: Vec<String> = axis.ticks.iter().map(|&t| fmt_num(t)).collect();
        assert_eq!(labels, ["10", "100", "1k", "10k", "100k"]);
        let axis = Axis::log(1.0, 1.0);
        let labels: Vec<String> = axis.ticks.iter().map(|&t| fmt_num(t)).collect();
        assert_eq!(labels, ["1", "10"]);
        // Hundreds of decades are thinned to about ten labels.
        assert!(Axis::log(1e-300, 1e300).ticks.len() <= 11);
    }

    #[test]
    fn linear_ticks_are_round() {
        let labels =
            |axis: Axis| -> Vec<String> { axis.ticks.iter().map(|&t| fmt_num(t)).collect() };
        assert_eq!(
            labels(Axis::linear(0.0, 95.3)),
            ["0", "20", "40", "60", "80", "100"]
        );
        assert_eq!(
            labels(Axis::linear(0.0, 0.7)),
            ["0", "0.2", "0.4", "0.6", "0.8"]
        );
        assert_eq!(
            labels(Axis::linear(-3.0, 12.0)),
            ["-5", "0", "5", "10", "15"]
        );
        assert_eq!(labels(Axis::linear(0.0, 100.0).with_max(100.0)).len(), 6);
        assert_eq!(
            labels(Axis::linear(0.0, 30.0).with_max(30.0))
                .last()
                .map(String::as_str),
            Some("30")
        );
    }

    #[test]
    fn values_map_monotonically() {
        let values = [1.0, 20.0, 21.0, 300.0, 4_000.0, 49_999.0, 50_000.0];
        for axis in [Axis::log(20.0, 50_000.0), Axis::linear(0.0, 50_000.0)] {
            let scale = Scale {
                axis,
                from: 380.0,
                to: 60.0,
            };
            let pixels: Vec<f64> = values.iter().map(|&v| scale.px(v)).collect();
            assert!(pixels.windows(2).all(|w| w[1] <= w[0]), "{pixels:?}");
            assert!(pixels.iter().all(|p| (60.0..=380.0).contains(p)));
            assert!(scale.px(50_000.0) < scale.px(300.0));
        }
    }

    #[test]
    fn renders_example_charts() {
        let doc = latency_bars().render();
        assert_document(&doc);
        for label in [
            "p50",
            "p99.9",
            "round_robin",
            "nginx",
            "n/a",
            "1k",
            "10k",
            "21.5k",
        ] {
            assert!(doc.contains(&format!(">{label}<")), "missing {label}");
        }
        assert_eq!(doc.matches("<rect").count(), 1 + 3 + 17);
        let doc = share_lines().render();
        assert_document(&doc);
        assert_eq!(doc.matches("<polyline").count(), 4);
        assert!(doc.contains(">100<") && doc.contains(">seconds since start<"));
    }

    #[test]
    fn degenerate_inputs_still_render() {
        let specials = [
            None,
            Some(0.0),
            Some(-0.0),
            Some(-5.0),
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
            Some(f64::MAX),
            Some(-f64::MAX),
            Some(f64::MIN_POSITIVE),
            Some(5e-324),
            Some(1e-300),
            Some(7.0),
            Some(1e300),
        ];
        let keys = |n: usize| (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
        for log in [false, true] {
            let mut cases = vec![
                Bars {
                    title: String::new(),
                    unit: String::new(),
                    keys: Vec::new(),
                    groups: Vec::new(),
                    log,
                },
                Bars {
                    title: "no keys".to_owned(),
                    unit: "x".to_owned(),
                    keys: Vec::new(),
                    groups: vec![("g".to_owned(), vec![Some(1.0)])],
                    log,
                },
                Bars {
                    title: "short rows".to_owned(),
                    unit: "x".to_owned(),
                    keys: keys(3),
                    groups: vec![
                        ("g".to_owned(), Vec::new()),
                        ("h".to_owned(), vec![Some(2.0)]),
                    ],
                    log,
                },
                Bars {
                    title: "many".to_owned(),
                    unit: "x".repeat(500),
                    keys: keys(40),
                    groups: (0..300)
                        .map(|i| ("g".repeat(i), vec![Some(i as f64); 40]))
                        .collect(),
                    log,
                },
            ];
            for &a in &specials {
                for &b in &specials {
                    cases.push(Bars {
                        title: "pair".to_owned(),
                        unit: "µs".to_owned(),
                        keys: keys(2),
                        groups: vec![
                            ("a".to_owned(), vec![a, b]),
                            ("b".to_owned(), vec![b, a, a]),
                        ],
                        log,
                    });
                }
                cases.push(Bars {
                    title: "all equal".to_owned(),
                    unit: "µs".to_owned(),
                    keys: keys(3),
                    groups: vec![("a".to_owned(), vec![a; 3]), ("b".to_owned(), vec![a; 3])],
                    log,
                });
            }
            for bars in cases {
                assert_document(&bars.render());
            }
        }

        let values: Vec<f64> = specials.iter().flatten().copied().collect();
        let mut cases = vec![Lines {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            y_max: None,
            series: Vec::new(),
        }];
        for y_max in [
            None,
            Some(100.0),
            Some(0.0),
            Some(-1.0),
            Some(f64::NAN),
            Some(f64::INFINITY),
        ] {
            for &x in &values {
                for &y in &values {
                    let series = vec![
                        ("single".to_owned(), vec![(x, y)]),
                        ("pair".to_owned(), vec![(0.0, y), (x, 1.0)]),
                        ("empty".to_owned(), Vec::new()),
                        (
                            "flat".to_owned(),
                            vec![(x, y), (x, y), (f64::NAN, 1.0), (x, y)],
                        ),
                    ];
                    cases.push(Lines {
                        title: "t".to_owned(),
                        x_label: "x".to_owned(),
                        y_label: "y".to_owned(),
                        y_max,
                        series,
                    });
                }
            }
        }
        cases.push(Lines {
            title: "many".to_owned(),
            x_label: "x".to_owned(),
            y_label: "y".to_owned(),
            y_max: None,
            series: (0..30)
                .map(|i| {
                    (
                        format!("series {i}"),
                        (0..1000)
                            .map(|t| (f64::from(t), f64::from(t * i)))
                            .collect(),
                    )
                })
                .collect(),
        });
        for lines in cases {
            let doc = lines.render();
            assert_document(&doc);
        }
    }

    /// Writes the example charts to `$CHART_DEMO_DIR` for a look, when that is set.
    #[test]
    fn writes_demo_files() {
        let Some(dir) = std::env::var_os("CHART_DEMO_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::write(dir.join("chart-bars.svg"), latency_bars().render()).expect("write bars");
        std::fs::write(dir.join("chart-lines.svg"), share_lines().render()).expect("write lines");
        let mut linear = latency_bars();
        linear.log = false;
        linear.title = "Closed loop latency, linear".to_owned();
        let path = dir.join("chart-bars-linear.svg");
        std::fs::write(path, linear.render()).expect("write linear bars");
        let dense = Bars {
            title: "Dense: upright value labels".to_owned(),
            unit: "requests/s".to_owned(),
            keys: (1..=5).map(|i| format!("C = {}", 8 * i)).collect(),
            groups: (0..10)
                .map(|g| {
                    let name = format!("variant_with_a_long_name_{g}");
                    let values = (0..5)
                        .map(|k| Some(f64::from(1_000 * (g + 1) + 137 * k)))
                        .collect();
                    (name, values)
                })
                .collect(),
            log: false,
        };
        let path = dir.join("chart-bars-dense.svg");
        std::fs::write(path, dense.render()).expect("write dense bars");
    }
}
