//! Plots and comparisons of training runs (`qatc plot`, `qatc compare`).
//!
//! **Input**: a run directory as `qatc train` writes it: `run.json` (model,
//! profile, data, training config) and `metrics.jsonl`, one JSON object per
//! finished epoch (losses, accuracies in percent, learning rate, epoch time,
//! and `clip`, the value of every learnable clipping site). Both are read
//! through the trainer's own record types and readers (`qatc_records`:
//! [`RunInfo`], [`EpochRecord`]), so the plots and the trainer cannot
//! disagree on the format. Keys the records do not know are ignored, so the
//! trainer can log more without breaking plots. `metrics.csv` carries the
//! same numbers and is not read.
//!
//! **Output**: [`read_run`] gives a validated [`Run`]; [`render_run`] and
//! [`render_comparison`] give PNG bytes (the caller writes them atomically);
//! [`RunSummary`] is one row of the `compare` table, printed by
//! [`comparison_table`] or serialised as JSON.
//!
//! **Invariants**:
//! - Bad input is an error naming the file (and for JSON, `file:line`),
//!   never a panic: a missing directory or `run.json`, a line that is not a
//!   JSON object with the expected keys.
//! - [`Run::epochs`] is sorted by epoch with no epoch twice: a resumed run
//!   may log an epoch again, and the later line wins.
//! - A `null` metric (JSON has no NaN, so a NaN loss is logged as `null`)
//!   is kept as NaN and left out of the plot; it is not an error. So is a
//!   value too large to draw (beyond 1e150 in magnitude).
//! - A run with no finished epoch (an empty or, before the trainer's first
//!   epoch, missing `metrics.jsonl`) reads fine (the table shows it) but has
//!   nothing to plot: [`render_run`] refuses it with [`PlotError::NoEpochs`].
//!
//! **Dependencies, kept lean on purpose**: plotters with only
//! `bitmap_backend`, `line_series` and `ab_glyph`. Text goes through
//! `ab_glyph` with DejaVu Sans embedded in the binary
//! (`compiler/assets/`, Bitstream Vera licence next to it), so a plot looks
//! the same on every machine and needs no system fonts: the default `ttf`
//! feature would pull in font-kit and fontconfig (a C library to link and a
//! font search at run time). The bitmap backend draws into an RGB buffer
//! that the `png` crate encodes, instead of plotters' `bitmap_encoder`,
//! which would add a second, older `image` crate with JPEG and BMP codecs
//! the plots never use. No SVG, GIF, chrono or palette features.

use plotters::coord::ranged1d::AsRangedCoord;
use plotters::coord::types::RangedCoordu32;
use plotters::coord::Shift;
use plotters::prelude::*;
use qatc_records::run_dir::{METRICS_JSONL, RUN_JSON};
use qatc_records::{EpochRecord, RecordError};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The run's description, `run.json`, with its settings as any JSON: the
/// trainer's record (`qatc_records::RunInfo`).
pub type RunInfo = qatc_records::RunInfo;

/// A run directory, read and validated.
#[derive(Debug, Clone)]
pub struct Run {
    /// The directory as the user named it.
    pub dir: PathBuf,
    pub info: RunInfo,
    /// Sorted by epoch, each epoch once.
    pub epochs: Vec<EpochRecord>,
}

impl Run {
    /// `metrics.jsonl` of this run (for messages).
    pub fn metrics_path(&self) -> PathBuf {
        self.dir.join(METRICS_JSONL)
    }
}

/// An epoch's place on the x axis (epochs beyond `u32::MAX` share the last).
fn x(e: &EpochRecord) -> u32 {
    u32::try_from(e.epoch).unwrap_or(u32::MAX)
}

/// Why a run directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("run directory `{}` does not exist", .0.display())]
    NoDir(PathBuf),
    #[error("`{}` is not a directory (expected a run directory written by `qatc train`)", .0.display())]
    NotDir(PathBuf),
    #[error("`{}` is missing: is `{}` a run directory written by `qatc train`?", .path.display(), .dir.display())]
    MissingFile { path: PathBuf, dir: PathBuf },
    /// A record that cannot be read (the error names the file, and for
    /// JSON its line and column).
    #[error(transparent)]
    Record(RecordError),
}

/// Reads and validates the run in `dir` (see the module docs).
pub fn read_run(dir: &Path) -> Result<Run, RunError> {
    if !dir.exists() {
        return Err(RunError::NoDir(dir.to_path_buf()));
    }
    if !dir.is_dir() {
        return Err(RunError::NotDir(dir.to_path_buf()));
    }
    let info: RunInfo = qatc_records::run_info::read(&dir.join(RUN_JSON)).map_err(|e| match e {
        RecordError::Missing { path } => RunError::MissingFile {
            path,
            dir: dir.to_path_buf(),
        },
        e => RunError::Record(e),
    })?;
    // `qatc train` writes `metrics.jsonl` after the first epoch: without it
    // the run has just started and has no epoch yet (no records).
    let mut epochs =
        qatc_records::metrics::read(&dir.join(METRICS_JSONL)).map_err(RunError::Record)?;
    // Stable sort, then keep the last line of each epoch: a resumed run
    // logs again the epochs after its checkpoint.
    epochs.sort_by_key(|e| e.epoch);
    let mut unique: Vec<EpochRecord> = Vec::with_capacity(epochs.len());
    for e in epochs {
        match unique.last_mut() {
            Some(last) if last.epoch == e.epoch => *last = e,
            _ => unique.push(e),
        }
    }
    Ok(Run {
        dir: dir.to_path_buf(),
        info,
        epochs: unique,
    })
}

/// Why a plot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("`{}` has no finished epoch yet: nothing to plot", .0.display())]
    NoEpochs(PathBuf),
    #[error("no run has a finished epoch yet ({}): nothing to plot", .0.join(", "))]
    NoRunHasEpochs(Vec<String>),
    #[error("cannot draw the plot: {0}")]
    Draw(String),
    #[error("cannot encode the PNG: {0}")]
    Encode(String),
}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for PlotError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        PlotError::Draw(e.to_string())
    }
}

/// Size of the `qatc plot` image in pixels.
pub const RUN_PLOT_SIZE: (u32, u32) = (1600, 1100);
/// Size of the `qatc compare` image in pixels.
pub const COMPARE_PLOT_SIZE: (u32, u32) = (1600, 700);

const FONT: &str = "sans-serif";
const LEGEND_FONT_SIZE: u32 = 15;
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font with plotters once per process.
fn register_font() -> Result<(), PlotError> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Draw("the embedded font does not load".into()))
    }
}

/// Colours of the lines: matplotlib's "tab10", readable on white and told
/// apart by most colour-blind readers; past ten, plotters' palette.
fn colour(i: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    match TAB10.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b),
        None => {
            let (r, g, b) = Palette99::pick(i).rgb();
            RGBColor(r, g, b)
        }
    }
}

/// `c` halfway to white: for the many lines behind the ones that matter.
fn pale(c: RGBColor) -> RGBColor {
    let half = |v: u8| v / 2 + 128;
    RGBColor(half(c.0), half(c.1), half(c.2))
}

/// The largest magnitude drawn. Beyond it a value (a diverged loss) is left
/// out like NaN: axis ranges near `f64::MAX` overflow to infinity when
/// padded, and plotters does not return from laying out such an axis.
const PLOTTABLE: f64 = 1e150;

/// One line of a panel: its points (epoch, value), NaNs and values beyond
/// [`PLOTTABLE`] already dropped.
struct Line {
    label: Option<String>,
    colour: RGBColor,
    width: u32,
    points: Vec<(u32, f64)>,
}

impl Line {
    fn new(
        label: Option<String>,
        colour: RGBColor,
        points: impl Iterator<Item = (u32, f64)>,
    ) -> Self {
        Line {
            label,
            colour,
            width: 2,
            points: points.filter(|(_, v)| v.abs() <= PLOTTABLE).collect(),
        }
    }
}

/// One chart: a caption, its lines, and how to scale and label the y axis.
struct Panel {
    caption: String,
    y_desc: &'static str,
    lines: Vec<Line>,
    /// Clamp the y range to this (accuracies: 0..100).
    y_limits: Option<(f64, f64)>,
    /// Use a log scale when the positive values span one to twelve decades.
    log_if_wide: bool,
    legend: SeriesLabelPosition,
    /// Shown in the middle of an empty panel.
    empty_note: &'static str,
}

impl Panel {
    /// A panel on a linear scale fitted to its values, legend upper right.
    fn new(
        caption: impl Into<String>,
        y_desc: &'static str,
        lines: Vec<Line>,
        empty_note: &'static str,
    ) -> Self {
        Panel {
            caption: caption.into(),
            y_desc,
            lines,
            y_limits: None,
            log_if_wide: false,
            legend: SeriesLabelPosition::UpperRight,
            empty_note,
        }
    }

    /// Percentages: the axis stays within 0..100, the legend lower right
    /// (below curves that climb).
    fn percent(mut self) -> Self {
        self.y_limits = Some((0.0, 100.0));
        self.legend = SeriesLabelPosition::LowerRight;
        self
    }

    fn log_if_wide(mut self) -> Self {
        self.log_if_wide = true;
        self
    }
}

/// The y range of `lines`: min..max with 5% margins, widened when flat.
fn y_range(lines: &[Line], limits: Option<(f64, f64)>) -> Option<(f64, f64)> {
    let values = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let (lo, hi) = values.fold(None, |acc: Option<(f64, f64)>, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })?;
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        (hi.abs() * 0.1).max(1e-3)
    };
    // The limits only trim the margins: every value stays inside the axes
    // (plotters' mapping of a point far outside overflows), so values
    // beyond them (a bug in the trainer's units, say) are shown as they are.
    match limits {
        Some((min, max)) if min <= lo && hi <= max => {
            Some(((lo - pad).max(min), (hi + pad).min(max)))
        }
        _ => Some((lo - pad, hi + pad)),
    }
}

/// The x range: first..last epoch, widened by one on each side when a run
/// has a single epoch so the point sits inside the axes.
fn x_range(lines: &[Line]) -> (u32, u32) {
    let epochs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let lo = epochs.clone().min().unwrap_or(1);
    let hi = epochs.max().unwrap_or(1);
    if lo == hi {
        (lo.saturating_sub(1), hi.saturating_add(1))
    } else {
        (lo, hi)
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn draw_panel(area: &Area, panel: &Panel) -> Result<(), PlotError> {
    let Some((lo, hi)) = y_range(&panel.lines, panel.y_limits) else {
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.caption, (FONT, 22))
            .margin(12)
            .build_cartesian_2d(0u32..1u32, 0f64..1f64)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_axes()
            .draw()?;
        chart.draw_series(std::iter::once(Text::new(
            panel.empty_note,
            (0, 0.5),
            (FONT, 18).into_font().color(&BLACK.mix(0.6)),
        )))?;
        return Ok(());
    };
    let (x_lo, x_hi) = x_range(&panel.lines);
    let positive = panel
        .lines
        .iter()
        .flat_map(|l| l.points.iter())
        .all(|p| p.1 > 0.0);
    let (min, max) = panel
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    // Past twelve decades (no schedule spans that) the axis stays linear:
    // plotters' log axis lays out every decade, and never returns when the
    // ratio of its ends overflows to infinity.
    let decades = (max / min).log10();
    if panel.log_if_wide && positive && (1.0..=12.0).contains(&decades) {
        let y = (min / 1.2..max * 1.2).log_scale();
        let mut chart = chart_on(area, panel, x_lo..x_hi, y)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(format!("{} (log scale)", panel.y_desc))
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .label_style((FONT, 15))
            .light_line_style(BLACK.mix(0.04))
            .draw()?;
        draw_lines(&mut chart, panel)
    } else {
        let mut chart = chart_on(area, panel, x_lo..x_hi, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(panel.y_desc)
            .y_label_formatter(&|v| short_number(*v))
            .label_style((FONT, 15))
            .light_line_style(BLACK.mix(0.04))
            .draw()?;
        draw_lines(&mut chart, panel)
    }
}

fn chart_on<'a, 'b, Y: AsRangedCoord<Value = f64>>(
    area: &'a Area<'b>,
    panel: &Panel,
    x: std::ops::Range<u32>,
    y: Y,
) -> Result<
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordu32, Y::CoordDescType>>,
    PlotError,
> {
    Ok(ChartBuilder::on(area)
        .caption(&panel.caption, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)?)
}

fn draw_lines<'a, 'b: 'a, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordu32, Y>>,
    panel: &Panel,
) -> Result<(), PlotError> {
    for line in &panel.lines {
        let style = line.colour.stroke_width(line.width);
        let series = chart.draw_series(LineSeries::new(line.points.iter().copied(), style))?;
        if let Some(label) = &line.label {
            let colour = line.colour;
            series.label(label.as_str()).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3))
            });
        }
        // Markers, so that a single epoch still shows up.
        chart.draw_series(
            line.points
                .iter()
                .map(|&p| Circle::new(p, line.width + 1, line.colour.filled())),
        )?;
    }
    if panel.lines.iter().any(|l| l.label.is_some()) {
        let position = legend_corner(chart, panel)?;
        chart
            .configure_series_labels()
            .position(position)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, LEGEND_FONT_SIZE))
            .draw()?;
    }
    Ok(())
}

/// Where the legend hides the least of the lines: the panel's preferred
/// corner unless another corner's box (sized as plotters will draw it) is
/// crossed by fewer of the lines' pixels.
fn legend_corner<'a, 'b: 'a, Y: Ranged<ValueType = f64>>(
    chart: &ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordu32, Y>>,
    panel: &Panel,
) -> Result<SeriesLabelPosition, PlotError> {
    let font: TextStyle = (FONT, LEGEND_FONT_SIZE).into();
    let mut text = MultiLineText::<_, &str>::new((0, 0), &font);
    for label in panel.lines.iter().filter_map(|l| l.label.as_deref()) {
        text.push_line(label);
    }
    let (w, h) = text
        .estimate_dimension()
        .map_err(|e| PlotError::Draw(e.to_string()))?;
    // plotters adds 30 px for the line sample and a 10 px margin around,
    // and keeps the box 5 px from the plotting area's edges.
    let (w, h) = (w + 30 + 20, h + 20);
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let boxes = [
        (
            SeriesLabelPosition::UpperRight,
            xs.end - w - 5,
            ys.start + 5,
        ),
        (
            SeriesLabelPosition::LowerRight,
            xs.end - w - 5,
            ys.end - h - 5,
        ),
        (SeriesLabelPosition::UpperLeft, xs.start + 5, ys.start + 5),
        (SeriesLabelPosition::LowerLeft, xs.start + 5, ys.end - h - 5),
    ];
    let coord = chart.as_coord_spec();
    let mut hidden = [0usize; 4];
    for line in &panel.lines {
        let pixels: Vec<(i32, i32)> = line.points.iter().map(|p| coord.translate(p)).collect();
        // Samples along each segment as drawn (straight in pixel space).
        let samples = pixels.windows(2).flat_map(|seg| {
            (0..16).map(move |i| {
                let t = f64::from(i) / 16.0;
                let along = |a: i32, b: i32| a + (f64::from(b - a) * t) as i32;
                (along(seg[0].0, seg[1].0), along(seg[0].1, seg[1].1))
            })
        });
        for (x, y) in samples.chain(pixels.last().copied()) {
            for (count, (_, bx, by)) in hidden.iter_mut().zip(&boxes) {
                if (*bx..bx + w).contains(&x) && (*by..by + h).contains(&y) {
                    *count += 1;
                }
            }
        }
    }
    let preferred = boxes
        .iter()
        .position(|b| std::mem::discriminant(&b.0) == std::mem::discriminant(&panel.legend))
        .unwrap_or(0);
    let mut best = preferred;
    for (i, &count) in hidden.iter().enumerate() {
        if count < hidden[best] {
            best = i;
        }
    }
    Ok(boxes[best].0.clone())
}

/// A tick label with at most four significant digits and no trailing zeros.
fn short_number(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-3..5).contains(&magnitude) {
        return format!("{v:.1e}");
    }
    let decimals = (3 - magnitude).clamp(0, 6) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Draws `panels` on a grid of `rows` x `cols` under `title` into a white
/// RGB image of `size`, and encodes it as PNG.
fn render(
    size: (u32, u32),
    title: &str,
    (rows, cols): (usize, usize),
    panels: &[Panel],
) -> Result<Vec<u8>, PlotError> {
    register_font()?;
    let (w, h) = size;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.margin(8, 8, 8, 8).titled(title, (FONT, 28))?;
        for (area, panel) in body.split_evenly((rows, cols)).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present()?;
    }
    encode_png(&rgb, size)
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>, PlotError> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let encode = |e: png::EncodingError| PlotError::Encode(e.to_string());
    let mut writer = encoder.write_header().map_err(encode)?;
    writer.write_image_data(rgb).map_err(encode)?;
    writer.finish().map_err(encode)?;
    Ok(bytes)
}

/// How many clipping sites get a legend entry each; past that only the
/// sites with the largest and smallest final value are named.
const CLIP_LEGEND_MAX: usize = 8;

/// The clipping values of a run as one line per site, in the records' order
/// (by site name, as the trainer writes them).
fn clip_lines(run: &Run) -> Vec<Line> {
    let mut sites: Vec<&str> = Vec::new();
    for e in &run.epochs {
        for name in e.clip.keys() {
            if !sites.contains(&name.as_str()) {
                sites.push(name);
            }
        }
    }
    let value = |e: &EpochRecord, site: &str| e.clip.get(site).copied();
    let mut lines: Vec<Line> = sites
        .iter()
        .enumerate()
        .map(|(i, site)| {
            let points = run
                .epochs
                .iter()
                .filter_map(|e| value(e, site).map(|v| (x(e), v)));
            Line::new(Some(site.to_string()), colour(i), points)
        })
        .collect();
    if lines.len() > CLIP_LEGEND_MAX {
        let last = |l: &Line| l.points.last().map(|p| p.1);
        let by_last = |pick: fn(f64, f64) -> bool| {
            let mut best: Option<(usize, f64)> = None;
            for (i, l) in lines.iter().enumerate() {
                if let Some(v) = last(l) {
                    if best.is_none_or(|(_, b)| pick(v, b)) {
                        best = Some((i, v));
                    }
                }
            }
            best
        };
        let max = by_last(|v, b| v > b);
        let min = by_last(|v, b| v < b);
        // The others thin and pale, the two named extremes bold, in colours
        // of their own, drawn last (on top), largest first in the legend.
        for l in &mut lines {
            l.label = None;
            l.width = 1;
            l.colour = pale(l.colour);
        }
        let mut extremes = Vec::new();
        for (tag, extreme, c) in [("largest", max, colour(3)), ("smallest", min, colour(0))] {
            if let Some((i, v)) = extreme {
                if extremes.iter().any(|(j, _)| *j == i) {
                    continue;
                }
                let label = format!("{tag}: {} ({})", sites[i], short_number(v));
                extremes.push((
                    i,
                    Line {
                        label: Some(label),
                        colour: c,
                        width: 3,
                        points: Vec::new(),
                    },
                ));
            }
        }
        for (i, extreme) in &mut extremes {
            extreme.points = std::mem::take(&mut lines[*i].points);
        }
        lines.retain(|l| !l.points.is_empty());
        lines.extend(extremes.into_iter().map(|(_, l)| l));
    }
    lines
}

/// The title of a run's plot: model, profile, data and progress.
fn run_title(run: &Run) -> String {
    let info = &run.info;
    let done = run.epochs.len();
    let epochs = |n: u64| if n == 1 { "epoch" } else { "epochs" };
    let progress = match info.planned_epochs() {
        Some(planned) => format!("{done} of {planned} {}", epochs(planned)),
        None => format!("{done} {}", epochs(done as u64)),
    };
    format!(
        "{}  |  profile {}  |  data {}  |  {progress}",
        info.model, info.profile, info.data
    )
}

/// `qatc plot`: loss, accuracy, learning rate and clipping values of `run`
/// over its epochs, as PNG bytes ([`RUN_PLOT_SIZE`]).
pub fn render_run(run: &Run) -> Result<Vec<u8>, PlotError> {
    if run.epochs.is_empty() {
        return Err(PlotError::NoEpochs(run.metrics_path()));
    }
    let series = |label: &str, i: usize, get: fn(&EpochRecord) -> f64| {
        let points = run.epochs.iter().map(|e| (x(e), get(e)));
        Line::new(Some(label.to_string()), colour(i), points)
    };
    let clip = clip_lines(run);
    let summary = RunSummary::new(run, String::new());
    let test_top1 = match (summary.best_test_top1, summary.best_epoch) {
        (Some(best), Some(epoch)) => format!("test top-1 (best {best:.2}, epoch {epoch})"),
        _ => "test top-1".to_string(),
    };
    let panels = [
        Panel::new(
            "loss",
            "cross-entropy",
            vec![
                series("train", 0, |e| e.train_loss),
                series("test", 1, |e| e.test_loss),
            ],
            "no finite loss",
        ),
        Panel::new(
            "accuracy",
            "accuracy (%)",
            vec![
                series("train top-1", 0, |e| e.train_top1),
                series(&test_top1, 1, |e| e.test_top1),
                series("test top-5", 2, |e| e.test_top5),
            ],
            "no accuracy recorded",
        )
        .percent(),
        Panel::new(
            "learning rate",
            "lr",
            vec![Line::new(
                None,
                colour(0),
                run.epochs.iter().map(|e| (x(e), e.lr)),
            )],
            "no learning rate recorded",
        )
        .log_if_wide(),
        Panel::new(
            format!("clipping values ({} sites)", clip.len()),
            "clip",
            clip,
            "no learnable clipping values in this profile",
        ),
    ];
    render(RUN_PLOT_SIZE, &run_title(run), (2, 2), &panels)
}

/// The label of each run in a comparison: `model/profile`, or the run's
/// directory name where two runs share that, or the whole path as given
/// where the directory names collide too.
pub fn run_labels(runs: &[Run]) -> Vec<String> {
    let short: Vec<String> = runs
        .iter()
        .map(|r| format!("{}/{}", r.info.model, r.info.profile))
        .collect();
    let dir_name = |r: &Run| {
        r.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.dir.display().to_string())
    };
    let names: Vec<String> = runs.iter().map(dir_name).collect();
    let count = |all: &[String], s: &String| all.iter().filter(|x| *x == s).count();
    runs.iter()
        .enumerate()
        .map(|(i, r)| {
            if count(&short, &short[i]) == 1 {
                short[i].clone()
            } else if count(&names, &names[i]) == 1 {
                names[i].clone()
            } else {
                r.dir.display().to_string()
            }
        })
        .collect()
}

/// One row of `qatc compare`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub label: String,
    pub dir: String,
    pub model: String,
    pub profile: String,
    pub data: String,
    pub epochs: usize,
    pub best_test_top1: Option<f64>,
    pub best_epoch: Option<usize>,
    pub final_test_top1: Option<f64>,
    pub final_test_top5: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub mean_epoch_seconds: Option<f64>,
}

impl RunSummary {
    pub fn new(run: &Run, label: String) -> Self {
        let finite = |v: f64| Some(v).filter(|v| v.is_finite());
        let best = run.epochs.iter().filter(|e| e.test_top1.is_finite()).fold(
            None,
            |best: Option<&EpochRecord>, e| match best {
                Some(b) if b.test_top1 >= e.test_top1 => Some(b),
                _ => Some(e),
            },
        );
        let last = run.epochs.last();
        let seconds: Vec<f64> = run
            .epochs
            .iter()
            .map(|e| e.epoch_seconds)
            .filter(|s| s.is_finite())
            .collect();
        RunSummary {
            label,
            dir: run.dir.display().to_string(),
            model: run.info.model.clone(),
            profile: run.info.profile.clone(),
            data: run.info.data.clone(),
            epochs: run.epochs.len(),
            best_test_top1: best.map(|e| e.test_top1),
            best_epoch: best.map(|e| e.epoch),
            final_test_top1: last.and_then(|e| finite(e.test_top1)),
            final_test_top5: last.and_then(|e| finite(e.test_top5)),
            final_train_loss: last.and_then(|e| finite(e.train_loss)),
            mean_epoch_seconds: (!seconds.is_empty())
                .then(|| seconds.iter().sum::<f64>() / seconds.len() as f64),
        }
    }
}

/// The summaries of `runs`, labelled by [`run_labels`].
pub fn summarize_runs(runs: &[Run]) -> Vec<RunSummary> {
    runs.iter()
        .zip(run_labels(runs))
        .map(|(run, label)| RunSummary::new(run, label))
        .collect()
}

/// The `compare` table: one row per run, columns aligned, `-` where a run
/// has no value (no finished epoch yet).
pub fn comparison_table(rows: &[RunSummary]) -> String {
    let num = |v: Option<f64>, decimals: usize| match v {
        Some(v) if v.abs() < 1e6 => format!("{v:.decimals$}"),
        Some(v) => format!("{v:.3e}"),
        None => "-".into(),
    };
    let header = [
        "run",
        "model",
        "profile",
        "data",
        "epochs",
        "best top-1",
        "@epoch",
        "final top-1",
        "final top-5",
        "train loss",
        "s/epoch",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        table.push(vec![
            r.label.clone(),
            r.model.clone(),
            r.profile.clone(),
            r.data.clone(),
            r.epochs.to_string(),
            num(r.best_test_top1, 2),
            r.best_epoch.map_or("-".into(), |e| e.to_string()),
            num(r.final_test_top1, 2),
            num(r.final_test_top5, 2),
            num(r.final_train_loss, 4),
            num(r.mean_epoch_seconds, 1),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| {
                // Text columns left-aligned, numbers right-aligned.
                if c < 4 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `qatc compare`: test top-1 and train loss of every run over the epochs,
/// one colour per run labelled with `labels` (one per run, in order: see
/// [`run_labels`]), as PNG bytes ([`COMPARE_PLOT_SIZE`]). Runs without a
/// finished epoch are left out; none with one is an error.
pub fn render_comparison(runs: &[Run], labels: &[String]) -> Result<Vec<u8>, PlotError> {
    if runs.iter().all(|r| r.epochs.is_empty()) {
        let files = runs.iter().map(|r| r.metrics_path().display().to_string());
        return Err(PlotError::NoRunHasEpochs(files.collect()));
    }
    let lines = |get: fn(&EpochRecord) -> f64| -> Vec<Line> {
        runs.iter()
            .zip(labels)
            .enumerate()
            .filter(|(_, (r, _))| !r.epochs.is_empty())
            .map(|(i, (r, label))| {
                let points = r.epochs.iter().map(|e| (x(e), get(e)));
                Line::new(Some(label.clone()), colour(i), points)
            })
            .collect()
    };
    let panels = [
        Panel::new(
            "test top-1",
            "test top-1 (%)",
            lines(|e| e.test_top1),
            "no accuracy recorded",
        )
        .percent(),
        Panel::new(
            "train loss",
            "cross-entropy",
            lines(|e| e.train_loss),
            "no finite loss",
        ),
    ];
    let n = runs.len();
    let title = format!("qatc compare: {n} run{}", if n == 1 { "" } else { "s" });
    render(COMPARE_PLOT_SIZE, &title, (1, 2), &panels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(0.0), "0");
        assert_eq!(short_number(2.5), "2.5");
        assert_eq!(short_number(100.0), "100");
        assert_eq!(short_number(0.0125), "0.0125");
        assert_eq!(short_number(123456.0), "1.2e5");
    }

    #[test]
    fn y_range_pads_and_clamps() {
        let line = Line::new(None, colour(0), [(1, 10.0), (2, 90.0)].into_iter());
        assert_eq!(y_range(&[line], Some((0.0, 100.0))), Some((6.0, 94.0)));
        let flat = Line::new(None, colour(0), [(1, 5.0), (2, f64::NAN)].into_iter());
        assert_eq!(flat.points.len(), 1);
        let (lo, hi) = y_range(&[flat], None).unwrap();
        assert!(lo < 5.0 && hi > 5.0);
        let wild = Line::new(None, colour(0), [(1, 150.0), (2, 160.0)].into_iter());
        let (lo, hi) = y_range(&[wild], Some((0.0, 100.0))).unwrap();
        assert!(lo < 150.0 && hi > 160.0, "not clamped into an empty range");
    }

    /// A run directory as the trainer writes it: `run.json` and `lines` of
    /// `metrics.jsonl` (epoch `e` has test top-1 `10 e`, one clip site).
    fn write_run(dir: &Path, lines: &[String]) {
        std::fs::create_dir_all(dir).unwrap();
        let info = r#"{"model": "toynet", "profile": "w4a4", "spec": "spec/toynet.qspec", "spec_hash": "00", "data": "digits", "config": {"epochs": 4}}"#;
        std::fs::write(dir.join(RUN_JSON), info).unwrap();
        std::fs::write(dir.join(METRICS_JSONL), lines.join("\n")).unwrap();
    }

    fn line(e: usize, loss: &str) -> String {
        format!(
            r#"{{"epoch":{e},"lr":0.1,"train_loss":{loss},"train_top1":50,"test_loss":1,"test_top1":{},"test_top5":90,"epoch_seconds":2,"train_images_per_s":400,"data_wait_seconds":0,"clip":{{"s.act":{}}},"later":1}}"#,
            10 * e,
            6.0 - e as f64
        )
    }

    #[test]
    fn runs_read_through_the_records_sorted_and_plotted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        // Epoch 2 logged twice (a resumed run): the later line wins.
        let mut again = line(2, "0.5");
        again = again.replace("\"test_top1\":20", "\"test_top1\":25");
        write_run(
            &dir,
            &[line(2, "1"), line(1, "null"), again, line(3, "0.4")],
        );
        let run = read_run(&dir).unwrap();
        let epochs: Vec<usize> = run.epochs.iter().map(|e| e.epoch).collect();
        assert_eq!(epochs, [1, 2, 3]);
        assert!(run.epochs[0].train_loss.is_nan(), "null is NaN");
        assert_eq!(run.epochs[1].test_top1, 25.0);
        assert_eq!(run.info.planned_epochs(), Some(4));
        let row = RunSummary::new(&run, "r".into());
        assert_eq!((row.best_epoch, row.best_test_top1), (Some(3), Some(30.0)));
        assert_eq!(clip_lines(&run)[0].points, [(1, 5.0), (2, 4.0), (3, 3.0)]);
        assert_eq!(
            run_title(&run),
            "toynet  |  profile w4a4  |  data digits  |  3 of 4 epochs"
        );
        let png = render_run(&run).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
    }

    #[test]
    fn run_errors_name_the_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        std::fs::create_dir_all(&dir).unwrap();
        let err = read_run(&dir).unwrap_err().to_string();
        let info = dir.join(RUN_JSON).display().to_string();
        assert!(
            err.starts_with(&format!("`{info}` is missing: is `")),
            "{err}"
        );
        write_run(&dir, &[line(1, "1"), "{\"epoch\": 2,".into()]);
        let err = read_run(&dir).unwrap_err().to_string();
        let metrics = dir.join(METRICS_JSONL).display().to_string();
        assert!(err.starts_with(&format!("{metrics}:2:")), "{err}");
        std::fs::remove_file(dir.join(METRICS_JSONL)).unwrap();
        let run = read_run(&dir).unwrap();
        assert!(run.epochs.is_empty(), "no metrics yet: no epoch");
        assert!(matches!(render_run(&run), Err(PlotError::NoEpochs(_))));
        std::fs::write(
            dir.join(RUN_JSON),
            "{\n  \"profile\": \"x\",\n  \"data\": \"d\"\n}\n",
        )
        .unwrap();
        let err = read_run(&dir).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{info}:4:")), "{err}");
        assert!(err.ends_with("missing field `model`"), "{err}");
    }
}
