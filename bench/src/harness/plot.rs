//! SVG plots of a report (plotters, SVG backend only).

use std::path::Path;

use plotters::prelude::*;

use crate::HarnessError;
use crate::report::Report;
use crate::scenario::Measurement;

const COLOURS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x94, 0x67, 0xbd),
];

type Series = (String, Vec<(f64, f64)>);

/// Writes `<name>-load.svg`, `-cpu.svg`, `-sticky.svg` and `-latency.svg`.
pub fn all(report: &Report, dir: &Path) -> Result<(), HarnessError> {
    let series = |pick: &dyn Fn(&Measurement) -> Option<(f64, f64)>, sticky: bool| -> Vec<Series> {
        report
            .implementations
            .iter()
            .map(|r| {
                let steps = if sticky { &r.sticky } else { &r.load };
                (r.name.to_owned(), steps.iter().filter_map(pick).collect())
            })
            .collect()
    };
    let mpps = |x: f64| x / 1e6;
    chart(
        &dir.join(format!("{}-load.svg", report.name)),
        "Forwarded vs offered load",
        "offered Mpps",
        "forwarded Mpps",
        false,
        &series(
            &|m| Some((mpps(m.offered_pps), mpps(m.delivered_pps))),
            false,
        ),
    )?;
    chart(
        &dir.join(format!("{}-cpu.svg", report.name)),
        "CPU per forwarded packet",
        "offered Mpps",
        "ns per packet",
        false,
        &series(
            &|m| Some((mpps(m.offered_pps), m.cost_ns_per_packet)),
            false,
        ),
    )?;
    chart(
        &dir.join(format!("{}-latency.svg", report.name)),
        "p99 latency",
        "offered Mpps",
        "p99 us",
        false,
        &series(
            &|m| {
                m.latency_p99_ns
                    .map(|l| (mpps(m.offered_pps), l as f64 / 1e3))
            },
            false,
        ),
    )?;
    chart(
        &dir.join(format!("{}-sticky.svg", report.name)),
        "Clients that stayed on one backend",
        "clients (log10)",
        "sticky %",
        true,
        &series(
            &|m| m.sticky_share.map(|s| (m.clients as f64, s * 100.0)),
            true,
        ),
    )
}

fn chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    series: &[Series],
) -> Result<(), HarnessError> {
    let err = |e: &dyn std::fmt::Display| HarnessError::Plot(path.to_owned(), e.to_string());
    let tx = |x: f64| if log_x { x.max(1.0).log10() } else { x };
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    let mut x_min = f64::MAX;
    for &(x, y) in points {
        x_max = x_max.max(tx(x));
        x_min = x_min.min(tx(x));
        y_max = y_max.max(y);
    }
    if x_min > x_max {
        x_min = 0.0;
    }
    let x_lo = if log_x { x_min.floor() } else { 0.0 };
    let x_hi = (x_max * 1.1).max(x_lo + 1e-3);
    let y_hi = (y_max * 1.1).max(1e-3);
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_lo..x_hi, 0.0..y_hi)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (tx(x), y)).collect();
        c.draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
        c.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| err(&e))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
