//! The pictures of `tchcv compare`: AP per class per run (grouped bars, classes by frequency),
//! the runs' loss per positive and mAP over iterations overlaid, and the PR curves of one
//! class across runs.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::plot::{
    font, legend_line, moving_average, plot_color, plot_err, pr_axes, quantile, render_png,
    smoothing_half_window, Area, Metrics,
};
use super::voc::ClassAp;
use crate::bail_input;

/// One experiment's AP per class: `(mean, spread)` in the plot's class order (NaN: none).
#[derive(Debug, Clone)]
pub struct ApSeries {
    pub name: String,
    pub ap: Vec<(f64, Option<f64>)>,
}

/// One run's curves.
#[derive(Debug, Clone)]
pub struct RunCurve {
    pub name: String,
    pub metrics: Metrics,
}

fn legend(chart_area: &Area, names: &[String], x: i32, y: i32) -> Result<()> {
    for (i, name) in names.iter().enumerate() {
        let y = y + 22 * i as i32;
        chart_area
            .draw(&PathElement::new(
                vec![(x, y + 8), (x + 26, y + 8)],
                plot_color(i).stroke_width(5),
            ))
            .map_err(plot_err)?;
        chart_area
            .draw(&Text::new(name.clone(), (x + 34, y), font(15.0)))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// `compare-ap.png`: for each class (in the given order, most frequent first), one bar per
/// series at its mean AP, with a whisker of +- its spread.
pub fn plot_ap_bars(classes: &[String], series: &[ApSeries], path: &Path) -> Result<()> {
    if classes.is_empty() || series.is_empty() {
        bail_input!("{}: no classes or runs to plot", path.display());
    }
    let width = (260 + classes.len() as u32 * (40 + 22 * series.len() as u32)).clamp(900, 4000);
    let legend_h = 30 + 22 * series.len() as u32;
    render_png(path, (width, 620 + legend_h), |root| {
        let (top, bottom) = root.split_vertically(620);
        let mut chart = ChartBuilder::on(&top)
            .caption(
                "VOC07 AP per class (classes by object count, most first)",
                font(24.0),
            )
            .margin(16)
            .x_label_area_size(90)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..classes.len() as f64, 0.0..1.05)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("AP")
            .label_style(font(15.0))
            .axis_desc_style(font(18.0))
            .draw()
            .map_err(plot_err)?;
        let slot = 0.8 / series.len() as f64;
        for (s, run) in series.iter().enumerate() {
            for (k, &(mean, spread)) in run.ap.iter().enumerate() {
                if !mean.is_finite() {
                    continue;
                }
                let x0 = k as f64 + 0.1 + s as f64 * slot;
                let color = plot_color(s);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, 0.0), (x0 + slot * 0.9, mean)],
                        color.filled(),
                    )))
                    .map_err(plot_err)?;
                if let Some(d) = spread {
                    let xm = x0 + slot * 0.45;
                    chart
                        .draw_series(LineSeries::new(
                            [(xm, (mean - d).max(0.0)), (xm, (mean + d).min(1.05))],
                            BLACK.stroke_width(2),
                        ))
                        .map_err(plot_err)?;
                }
            }
        }
        for (k, class) in classes.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(k as f64 + 0.5, 0.0));
            top.draw(&Text::new(
                class.clone(),
                (px, py + 12),
                font(15.0).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Top,
                )),
            ))
            .map_err(plot_err)?;
        }
        let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
        legend(&bottom, &names, 90, 10)
    })
}

/// The smoothed `value` of each step record, as `(iteration, value)` points.
fn smoothed(metrics: &Metrics, value: fn(&super::plot::StepRecord) -> f64) -> Vec<(f64, f64)> {
    let raw: Vec<f64> = metrics.steps.iter().map(value).collect();
    let smooth = moving_average(&raw, smoothing_half_window(raw.len()));
    metrics
        .steps
        .iter()
        .zip(smooth)
        .filter(|(_, v)| v.is_finite())
        .map(|(s, v)| (s.iter as f64, v))
        .collect()
}

/// A chart of overlaid lines `(name, [(x, y)])` alone, in a 1200 x 720 PNG (`tchcv bench
/// train`'s mAP over training time).
pub fn plot_lines(
    lines: &[(String, Vec<(f64, f64)>)],
    [title, x_desc, y_desc]: [&str; 3],
    path: &Path,
) -> Result<()> {
    if lines.iter().all(|(_, p)| p.is_empty()) {
        bail_input!("{}: no points to plot", path.display());
    }
    render_png(path, (1200, 720), |root| {
        curve_panel(root, [title, x_desc, y_desc], lines, true)
    })
}

/// One panel of overlaid per-run lines, titled `[title, x axis, y axis]`.
fn curve_panel(
    area: &Area,
    [title, x_desc, y_desc]: [&str; 3],
    lines: &[(String, Vec<(f64, f64)>)],
    markers: bool,
) -> Result<()> {
    let x_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(1.0f64, f64::max);
    let y_top = quantile(lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)), 0.99)
        .map_or(1.0, |t| (t * 1.1).max(1e-6));
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(20.0))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style(font(14.0))
        .axis_desc_style(font(16.0))
        .light_line_style(RGBColor(244, 244, 244))
        .draw()
        .map_err(plot_err)?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = plot_color(i);
        let clipped: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x, y.min(y_top))).collect();
        chart
            .draw_series(LineSeries::new(clipped.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name.clone())
            .legend(legend_line(color));
        if markers {
            chart
                .draw_series(
                    clipped
                        .into_iter()
                        .map(|p| Circle::new(p, 4, color.filled())),
                )
                .map_err(plot_err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(font(14.0))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(plot_err)
}

/// `compare-loss.png`: the runs' loc and cls loss per positive (smoothed) and, when evaluated
/// during training, their VOC07 mAP over iterations, overlaid.
pub fn plot_loss_curves(runs: &[RunCurve], path: &Path) -> Result<()> {
    if runs.iter().all(|r| r.metrics.steps.is_empty()) {
        bail_input!("{}: the runs have no step records to plot", path.display());
    }
    let lines = |f: fn(&super::plot::StepRecord) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        runs.iter()
            .map(|r| (r.name.clone(), smoothed(&r.metrics, f)))
            .collect()
    };
    let maps: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let points = r.metrics.evals.iter().map(|e| (e.iter as f64, e.map_voc07));
            (r.name.clone(), points.filter(|p| p.1.is_finite()).collect())
        })
        .collect();
    let with_map = maps.iter().any(|(_, p)| !p.is_empty());
    let height = if with_map { 1200 } else { 820 };
    render_png(path, (1200, height), |root| {
        let panels = root.split_evenly((if with_map { 3 } else { 2 }, 1));
        curve_panel(
            &panels[0],
            ["loc loss per positive (smoothed)", "iteration", "loss"],
            &lines(|s| s.loc_per_pos),
            false,
        )?;
        curve_panel(
            &panels[1],
            ["cls loss per positive (smoothed)", "iteration", "loss"],
            &lines(|s| s.cls_per_pos),
            false,
        )?;
        if with_map {
            curve_panel(
                &panels[2],
                ["mAP VOC07 during training", "iteration", "mAP"],
                &maps,
                true,
            )?;
        }
        Ok(())
    })
}

/// `compare-pr.png`: `class`'s precision-recall curve in each run, with its AP.
pub fn plot_pr_of_class(class: &str, runs: &[(String, ClassAp)], path: &Path) -> Result<()> {
    if runs.is_empty() {
        bail_input!("{}: no evaluated runs to plot", path.display());
    }
    render_png(path, (1000, 760), |root| {
        let caption = format!("Precision-recall of the rarest class, {class}");
        let mut chart = pr_axes(root, Some(caption))?;
        for (i, (name, ap)) in runs.iter().enumerate() {
            let curve = &ap.curve;
            let color = plot_color(i);
            let start = curve.precision.first().map(|&p| (0.0, p));
            let points: Vec<(f64, f64)> = start
                .into_iter()
                .chain(
                    curve
                        .recall
                        .iter()
                        .copied()
                        .zip(curve.precision.iter().copied()),
                )
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(format!("{name}: AP {:.3} (VOC07)", ap.ap_voc07))
                .legend(legend_line(color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .label_font(font(15.0))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(plot_err)
    })
}
