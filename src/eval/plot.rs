//! Plots of a run: `loss.png` from its `metrics.jsonl`, `pr.png` from an evaluation result.
//!
//! metrics.jsonl holds one JSON object a line, told apart by `kind`:
//! - `step`: `iter`, `epoch`, `loc_per_pos`, `cls_per_pos`, `total`, `lr` (and more, unread);
//! - `eval`: `iter`, `epoch`, `map_voc07`, `map_area`;
//! - other kinds (`epoch`, ...) are skipped. null numbers (NaN in the writer) are not drawn.
//!
//! Text needs a TrueType font: `TCHCV_FONT` when set, else DejaVu Sans (Debian's
//! fonts-dejavu-core) or another common sans font, else what `fc-match sans-serif` names.
//! Without one the plot fails with an error saying so.

use std::ffi::OsString;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use image::{ImageFormat, RgbImage};
use plotters::chart::DualCoordChartContext;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use super::draw::class_color;
use super::voc::VocEvalResult;
use crate::bail_input;

/// One training step of metrics.jsonl.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRecord {
    pub iter: u64,
    /// Smooth-L1 loss per positive anchor.
    pub loc_per_pos: f64,
    /// Classification loss per positive anchor.
    pub cls_per_pos: f64,
    pub total: f64,
    /// NaN when absent.
    pub lr: f64,
}

/// One evaluation of metrics.jsonl.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalRecord {
    pub iter: u64,
    pub map_voc07: f64,
    pub map_area: f64,
}

/// What the plots read from metrics.jsonl.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
}

fn number(v: &Value, name: &str, at: &dyn Fn() -> String) -> Result<f64> {
    match v.get(name) {
        None => bail_input!("{}: no {name:?}", at()),
        Some(Value::Null) => Ok(f64::NAN),
        Some(x) => match x.as_f64() {
            Some(f) => Ok(f),
            None => bail_input!("{}: {name:?} is {x}, expected a number", at()),
        },
    }
}

fn iteration(v: &Value, at: &dyn Fn() -> String) -> Result<u64> {
    match v.get("iter").and_then(Value::as_u64) {
        Some(i) => Ok(i),
        None => bail_input!("{}: \"iter\" missing or not a non-negative integer", at()),
    }
}

/// Parse metrics.jsonl text; `file` names it in errors (`file:line: ...`). A last line that is
/// incomplete (no newline, not JSON: a write in progress) is skipped.
pub fn parse_metrics(text: &str, file: &Path) -> Result<Metrics> {
    let mut metrics = Metrics::default();
    let n_lines = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", file.display(), i + 1);
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if i + 1 == n_lines && !text.ends_with('\n') => break,
            Err(e) => bail_input!("{}: not JSON: {e}", at()),
        };
        match v.get("kind").and_then(Value::as_str) {
            Some("step") => metrics.steps.push(StepRecord {
                iter: iteration(&v, &at)?,
                loc_per_pos: number(&v, "loc_per_pos", &at)?,
                cls_per_pos: number(&v, "cls_per_pos", &at)?,
                total: number(&v, "total", &at)?,
                lr: number(&v, "lr", &at).unwrap_or(f64::NAN),
            }),
            Some("eval") => metrics.evals.push(EvalRecord {
                iter: iteration(&v, &at)?,
                map_voc07: number(&v, "map_voc07", &at)?,
                map_area: number(&v, "map_area", &at)?,
            }),
            Some(_) => {}
            None => bail_input!("{}: no \"kind\"", at()),
        }
    }
    Ok(metrics)
}

/// Read a run's metrics.jsonl ([`parse_metrics`]).
pub fn read_metrics(path: &Path) -> Result<Metrics> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::bad_input(format!("{}: {e}", path.display())))?;
    parse_metrics(&text, path)
}

/// Centred moving average over `2 * half + 1` points (fewer at the ends), skipping
/// non-finite values; NaN where the window holds none.
pub fn moving_average(values: &[f64], half: usize) -> Vec<f64> {
    let mut sum = vec![0.0; values.len() + 1];
    let mut count = vec![0usize; values.len() + 1];
    for (i, &v) in values.iter().enumerate() {
        let ok = v.is_finite();
        sum[i + 1] = sum[i] + if ok { v } else { 0.0 };
        count[i + 1] = count[i] + usize::from(ok);
    }
    (0..values.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(values.len());
            let n = count[hi] - count[lo];
            if n == 0 {
                f64::NAN
            } else {
                (sum[hi] - sum[lo]) / n as f64
            }
        })
        .collect()
}

/// The smoothing half-window for `n` points: about 1% of the run each side, at most 250.
pub(super) fn smoothing_half_window(n: usize) -> usize {
    (n / 100).min(250)
}

/// Well-known places of a sans-serif TrueType font.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// The font file for plots: `explicit` (TCHCV_FONT) if given, else the first candidate that
/// exists, else (with `ask_fontconfig`) what `fc-match sans-serif` names.
pub(crate) fn find_font(
    explicit: Option<OsString>,
    candidates: &[&str],
    ask_fontconfig: bool,
) -> std::result::Result<PathBuf, String> {
    if let Some(path) = explicit.map(PathBuf::from) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("TCHCV_FONT={}: no such font file", path.display()))
        };
    }
    if let Some(path) = candidates.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Ok(path);
    }
    if ask_fontconfig {
        let out = std::process::Command::new("fc-match")
            .args(["-f", "%{file}", "sans-serif"])
            .output();
        if let Ok(out) = out {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let ttf = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("ttf") || e.eq_ignore_ascii_case("otf"));
            if out.status.success() && ttf && path.is_file() {
                return Ok(path);
            }
        }
    }
    Err(format!(
        "no TrueType font found for the plot text: install one (Debian/Ubuntu: apt-get install \
         fonts-dejavu-core) or set TCHCV_FONT=/path/to/font.ttf (looked at {} and fc-match)",
        candidates.join(", ")
    ))
}

/// Find and register the plot font once per process.
fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let found = FONT.get_or_init(|| {
        let path = find_font(std::env::var_os("TCHCV_FONT"), FONT_CANDIDATES, true)?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps fonts for the whole process; this happens once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a usable TrueType font", path.display()))?;
        Ok(path)
    });
    found.as_ref().map(|_| ()).map_err(|e| anyhow!("{e}"))
}

pub(super) fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

pub(super) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draw with `draw` on a white `width x height` canvas and write it as a PNG, atomically.
pub(super) fn render_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area) -> Result<()>,
) -> Result<()> {
    ensure_font()?;
    let mut buffer = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let image = RgbImage::from_raw(width, height, buffer)
        .ok_or_else(|| anyhow!("plot buffer of the wrong size"))?;
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .context("encoding PNG")?;
    crate::io::write_bytes_atomic(path, &png).with_context(|| format!("writing {}", path.display()))
}

const LOC_COLOR: RGBColor = RGBColor(31, 119, 180);
const CLS_COLOR: RGBColor = RGBColor(255, 127, 14);
const TOTAL_COLOR: RGBColor = RGBColor(50, 50, 50);
const LR_COLOR: RGBColor = RGBColor(214, 39, 40);
const MAP07_COLOR: RGBColor = RGBColor(44, 160, 44);
const MAP_AREA_COLOR: RGBColor = RGBColor(148, 103, 189);

pub(super) fn font(size: f64) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&BLACK)
}

/// The value below which `q` of the finite values lie (nearest rank); None when there are none.
pub(super) fn quantile(values: impl Iterator<Item = f64>, q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    Some(v[k])
}

pub(super) fn legend_line(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
}

/// `loss.png`: loc and cls per positive and the total per iteration (raw points faint, a
/// centred moving average bold), the learning rate on the right axis, and, when the run has
/// evaluations, their mAP in a panel below.
pub fn plot_loss(metrics: &Metrics, path: &Path, title: &str) -> Result<()> {
    if metrics.steps.is_empty() {
        bail_input!("{}: no step records to plot", path.display());
    }
    let with_evals = !metrics.evals.is_empty();
    let size = (1200, if with_evals { 820 } else { 620 });
    render_png(path, size, |root| {
        let root = root.titled(title, font(26.0)).map_err(plot_err)?;
        let (top, bottom) = if with_evals {
            let (t, b) = root.split_vertically(560);
            (t, Some(b))
        } else {
            (root, None)
        };
        draw_loss_panel(&top, metrics)?;
        if let Some(bottom) = bottom {
            draw_map_panel(&bottom, metrics)?;
        }
        Ok(())
    })
}

fn iteration_range(metrics: &Metrics) -> std::ops::Range<f64> {
    let iters = metrics
        .steps
        .iter()
        .map(|s| s.iter)
        .chain(metrics.evals.iter().map(|e| e.iter));
    let lo = iters.clone().min().unwrap_or(0) as f64;
    let hi = iters.max().unwrap_or(1) as f64;
    lo..hi.max(lo + 1.0)
}

type IterationChart<'a, 'b> = DualCoordChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<RangedCoordf64, RangedCoordf64>,
    Cartesian2d<RangedCoordf64, RangedCoordf64>,
>;

/// A chart over the run's iterations with `0..y_top` on the left (labelled `y_desc`, mesh
/// drawn) and `0..right_top` on the right (axes drawn by the caller, if at all). Every panel
/// keeps a right label area, so stacked panels share their x scale.
fn iteration_chart<'a, 'b>(
    area: &'a Area<'b>,
    metrics: &Metrics,
    y_top: f64,
    y_desc: &str,
    right_top: f64,
) -> Result<IterationChart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .right_y_label_area_size(90)
        .build_cartesian_2d(iteration_range(metrics), 0.0..y_top)
        .map_err(plot_err)?
        .set_secondary_coord(iteration_range(metrics), 0.0..right_top);
    chart
        .configure_mesh()
        .x_desc("iteration")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc(y_desc)
        .label_style(font(15.0))
        .axis_desc_style(font(18.0))
        .light_line_style(RGBColor(244, 244, 244))
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

fn draw_legend<'a, 'b: 'a>(
    chart: &mut IterationChart<'a, 'b>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(font(16.0))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(plot_err)
}

fn draw_loss_panel(area: &Area, metrics: &Metrics) -> Result<()> {
    let x: Vec<f64> = metrics.steps.iter().map(|s| s.iter as f64).collect();
    let series: [(&str, RGBColor, Vec<f64>); 3] = [
        (
            "loc per positive",
            LOC_COLOR,
            metrics.steps.iter().map(|s| s.loc_per_pos).collect(),
        ),
        (
            "cls per positive",
            CLS_COLOR,
            metrics.steps.iter().map(|s| s.cls_per_pos).collect(),
        ),
        (
            "total",
            TOTAL_COLOR,
            metrics.steps.iter().map(|s| s.total).collect(),
        ),
    ];
    let half = smoothing_half_window(x.len());
    let smoothed: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, _, v)| moving_average(v, half))
        .collect();
    // The top of the axis: the 99th percentile of the raw points or the highest smoothed
    // value, so a few early spikes do not flatten the rest (they are cut at the top).
    let raw_top = quantile(series.iter().flat_map(|(_, _, v)| v.iter().copied()), 0.99);
    let smooth_top = quantile(smoothed.iter().flatten().copied(), 1.0);
    let y_top = match (raw_top, smooth_top) {
        (Some(a), Some(b)) => a.max(b) * 1.08,
        (Some(a), None) | (None, Some(a)) => a * 1.08,
        (None, None) => 1.0,
    };
    let y_top = if y_top > 0.0 { y_top } else { 1.0 };
    let lr_top = quantile(metrics.steps.iter().map(|s| s.lr), 1.0).filter(|&v| v > 0.0);
    let mut chart = iteration_chart(area, metrics, y_top, "loss", lr_top.unwrap_or(1.0) * 1.1)?;
    let clip = |v: f64| v.min(y_top);
    for (_, color, raw) in &series {
        let points = x
            .iter()
            .zip(raw)
            .filter(|(_, v)| v.is_finite())
            .map(|(&i, &v)| (i, clip(v)));
        chart
            .draw_series(LineSeries::new(points, color.mix(0.25).stroke_width(1)))
            .map_err(plot_err)?;
    }
    for ((name, color, _), smooth) in series.iter().zip(&smoothed) {
        let points = x
            .iter()
            .zip(smooth)
            .filter(|(_, v)| v.is_finite())
            .map(|(&i, &v)| (i, clip(v)));
        let color = *color;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(3)))
            .map_err(plot_err)?
            .label(format!("{name} (smoothed)"))
            .legend(legend_line(color));
    }
    if lr_top.is_some() {
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .label_style(font(15.0))
            .axis_desc_style(font(18.0))
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()
            .map_err(plot_err)?;
        let points = metrics
            .steps
            .iter()
            .filter(|s| s.lr.is_finite())
            .map(|s| (s.iter as f64, s.lr));
        chart
            .draw_secondary_series(LineSeries::new(points, LR_COLOR.stroke_width(2)))
            .map_err(plot_err)?
            .label("learning rate (right axis)")
            .legend(legend_line(LR_COLOR));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn draw_map_panel(area: &Area, metrics: &Metrics) -> Result<()> {
    let top = quantile(
        metrics.evals.iter().flat_map(|e| [e.map_voc07, e.map_area]),
        1.0,
    )
    .unwrap_or(1.0);
    let y_top = (top * 1.15).clamp(0.05, 1.0);
    let mut chart = iteration_chart(area, metrics, y_top, "mAP", y_top)?;
    type Series = (&'static str, RGBColor, fn(&EvalRecord) -> f64);
    let metrics_of: [Series; 2] = [
        ("mAP VOC07 11-point", MAP07_COLOR, |e| e.map_voc07),
        ("mAP area", MAP_AREA_COLOR, |e| e.map_area),
    ];
    for (name, color, get) in metrics_of {
        let points: Vec<(f64, f64)> = metrics
            .evals
            .iter()
            .map(|e| (e.iter as f64, get(e)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name)
            .legend(legend_line(color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(plot_err)?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// Precision (0 to 1.02) over recall (0 to 1) axes with their mesh on `area`, with `caption`.
pub(super) fn pr_axes<'a, 'b>(
    area: &'a Area<'b>,
    caption: Option<String>,
) -> Result<PrChart<'a, 'b>> {
    let mut builder = ChartBuilder::on(area);
    if let Some(caption) = caption {
        builder.caption(caption, font(24.0));
    }
    let mut chart = builder
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, 0.0..1.02)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("recall")
        .y_desc("precision")
        .label_style(font(15.0))
        .axis_desc_style(font(18.0))
        .light_line_style(RGBColor(244, 244, 244))
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// A chart of [`pr_axes`].
pub(super) type PrChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The class colour of the drawn boxes, darkened where it would be too light on white.
pub(super) fn plot_color(class: usize) -> RGBColor {
    let c = class_color(class).map(f64::from);
    let luma = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
    let k = if luma > 150.0 { 150.0 / luma } else { 1.0 };
    let [r, g, b] = c.map(|v| (v * k) as u8);
    RGBColor(r, g, b)
}

/// `pr.png`: the precision-recall curve of every class, with a legend of class names and
/// their AP (area, and VOC07 in brackets).
pub fn plot_pr(result: &VocEvalResult, path: &Path, title: &str) -> Result<()> {
    let n = result.classes.len().max(1);
    let row = (620 / n).clamp(14, 26) as i32;
    let height = (row as u32 * n as u32 + 160).max(760);
    render_png(path, (1180, height), |root| {
        let root = root.titled(title, font(24.0)).map_err(plot_err)?;
        let (left, right) = root.split_horizontally(820);
        let mut chart = pr_axes(&left, None)?;
        for (i, class) in result.classes.iter().enumerate() {
            let curve = &class.curve;
            if curve.recall.is_empty() {
                continue;
            }
            // Drawn from recall 0 at the first precision, so a class found by its first
            // detection (a single point) still shows as a line.
            let start = (0.0, curve.precision[0]);
            let points = std::iter::once(start).chain(
                curve
                    .recall
                    .iter()
                    .copied()
                    .zip(curve.precision.iter().copied()),
            );
            chart
                .draw_series(LineSeries::new(points, plot_color(i).stroke_width(2)))
                .map_err(plot_err)?;
        }
        let text = |s: &str, x: i32, y: i32, size: f64, color: RGBColor| {
            right
                .draw(&Text::new(
                    s.to_string(),
                    (x, y),
                    ("sans-serif", size).into_font().color(&color),
                ))
                .map_err(plot_err)
        };
        let size = (row as f64 * 0.62).clamp(11.0, 16.0);
        text("class: AP area (VOC07)", 10, 24, size + 1.0, BLACK)?;
        for (i, class) in result.classes.iter().enumerate() {
            let y = 56 + i as i32 * row;
            let color = plot_color(i);
            right
                .draw(&PathElement::new(
                    vec![(10, y + row / 3), (38, y + row / 3)],
                    color.stroke_width(4),
                ))
                .map_err(plot_err)?;
            let label = if class.ap_area.is_nan() {
                format!("{}: no ground truth", class.class)
            } else {
                format!(
                    "{}: {:.3} ({:.3})",
                    class.class, class.ap_area, class.ap_voc07
                )
            };
            let shade = if class.ap_area.is_nan() {
                RGBColor(140, 140, 140)
            } else {
                BLACK
            };
            text(&label, 46, y, size, shade)?;
        }
        Ok(())
    })
}

/// The title line of a PR plot: the mAPs and the matching rule.
pub fn pr_title(result: &VocEvalResult) -> String {
    format!(
        "Precision-recall: mAP {:.4} (area), {:.4} (VOC07), IoU >= {}{}",
        result.map_area,
        result.map_voc07,
        result.config.iou_threshold,
        if result.config.legacy_plus_one {
            ", +1 px"
        } else {
            ""
        }
    )
}

/// What [`plot_run`] wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunPlots {
    /// `loss.png`, when the run has a metrics.jsonl.
    pub loss: Option<PathBuf>,
    /// `pr.png`, when the run has an eval.json.
    pub pr: Option<PathBuf>,
}

/// Plot a run folder into `out` (default: the run folder): `loss.png` from `metrics.jsonl`
/// and `pr.png` from `eval.json` (a [`VocEvalResult`]), each when its input exists.
pub fn plot_run(run: &Path, out: Option<&Path>) -> Result<RunPlots> {
    if !run.is_dir() {
        bail_input!("{}: not a run folder", run.display());
    }
    let out = out.unwrap_or(run);
    let name = run
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| run.display().to_string());
    let mut plots = RunPlots::default();
    let metrics_path = run.join("metrics.jsonl");
    if metrics_path.is_file() {
        let metrics = read_metrics(&metrics_path)?;
        let path = out.join("loss.png");
        plot_loss(&metrics, &path, &format!("{name}: training loss"))?;
        plots.loss = Some(path);
    }
    let eval_path = run.join("eval.json");
    // (A region proposal network's eval.json is a proposal recall: no PR curves.)
    if eval_path.is_file() && !super::recall::is_recall_file(&eval_path) {
        let result = VocEvalResult::read_json(&eval_path)?;
        let path = out.join("pr.png");
        plot_pr(&result, &path, &format!("{name}: {}", pr_title(&result)))?;
        plots.pr = Some(path);
    }
    if plots.loss.is_none() && plots.pr.is_none() {
        bail_input!(
            "{}: nothing to plot (no metrics.jsonl or eval.json)",
            run.display()
        );
    }
    Ok(plots)
}

/// A horizontal bar chart: one bar per `(label, value)`, the value printed at its end, and a
/// vertical rule at `rule` (e.g. 1.0 for speed-ups). Written as a PNG, atomically.
pub fn plot_bars(
    bars: &[(String, f64)],
    path: &Path,
    title: &str,
    x_label: &str,
    rule: Option<f64>,
) -> Result<()> {
    if bars.is_empty() {
        bail_input!("{}: no bars to plot", path.display());
    }
    let finite_max = bars
        .iter()
        .map(|b| b.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let x_max = finite_max.max(rule.unwrap_or(0.0)) * 1.15 + 1e-9;
    let n = bars.len();
    let height = 140 + 46 * n as u32;
    render_png(path, (1100, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(24.0))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(470)
            .build_cartesian_2d(0.0..x_max, 0.0..n as f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc(x_label)
            .axis_desc_style(font(18.0))
            .label_style(font(15.0))
            .draw()
            .map_err(plot_err)?;
        for (i, (label, value)) in bars.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let v = if value.is_finite() { *value } else { 0.0 };
            let color = if rule.is_some_and(|r| v < r) {
                CLS_COLOR
            } else {
                LOC_COLOR
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y + 0.15), (v, y + 0.85)],
                    color.filled(),
                )))
                .map_err(plot_err)?;
            let text = if value.is_finite() {
                format!("{value:.2}")
            } else {
                "n/a".into()
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (v + x_max * 0.01, y + 0.65),
                    font(15.0),
                )))
                .map_err(plot_err)?;
            // Labels left of the axis, outside the plotting area (which clips).
            let (px, py) = chart.backend_coord(&(0.0, y + 0.5));
            let anchor = Pos::new(HPos::Right, VPos::Center);
            root.draw(&Text::new(
                label.clone(),
                (px - 8, py),
                font(15.0).pos(anchor),
            ))
            .map_err(plot_err)?;
        }
        if let Some(r) = rule {
            chart
                .draw_series(LineSeries::new(
                    [(r, 0.0), (r, n as f64)],
                    BLACK.stroke_width(2),
                ))
                .map_err(plot_err)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_font_errors_clearly_when_there_is_none() {
        let err = find_font(None, &["/nonexistent/font.ttf"], false).unwrap_err();
        assert!(err.contains("no TrueType font found"), "{err}");
        assert!(err.contains("TCHCV_FONT"), "{err}");
        let err = find_font(Some("/nonexistent/x.ttf".into()), &[], false).unwrap_err();
        assert!(err.contains("TCHCV_FONT=/nonexistent/x.ttf"), "{err}");
    }

    #[test]
    fn moving_average_skips_non_finite_values() {
        let v = [1.0, f64::NAN, 3.0, 5.0];
        assert_eq!(moving_average(&v, 0)[2], 3.0);
        assert!(moving_average(&v, 0)[1].is_nan());
        assert_eq!(moving_average(&v, 1), vec![1.0, 2.0, 4.0, 4.0]);
    }
}
