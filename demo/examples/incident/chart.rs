//! Draws the incident as an SVG chart, like the original Graphite graph.

use std::path::Path;

use plotters::prelude::*;

use super::run::{Fault, Report};

/// Top: each variant's p99 latency per second (log scale). Bottom: records ignored and Kafka
/// errors per second for each variant. The failure window is shaded.
pub(crate) fn draw(path: &Path, reports: &[Report]) -> Result<(), tower::BoxError> {
    let secs = reports.iter().map(|r| r.seconds.len()).max().unwrap_or(1) as u32;
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);

    let max_us = reports
        .iter()
        .flat_map(|r| r.seconds.iter().map(|s| s.p99_felt_us))
        .max()
        .unwrap_or(1000)
        .max(1000) as f64;
    let failure: Vec<(u32, u32)> = failure_windows(reports.first());

    let mut latency = ChartBuilder::on(&top)
        .caption(
            "p99 latency of the service per second (a client timeout counts as the timeout)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..secs, (50f64..max_us * 2.0).log_scale())?;
    latency
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("p99 (µs, log)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for &(from, to) in &failure {
        latency.draw_series(std::iter::once(Rectangle::new(
            [(from, 50.0), (to, max_us * 2.0)],
            RGBColor(255, 200, 200).mix(0.35).filled(),
        )))?;
    }
    for (report, color) in reports.iter().zip([RED, BLUE]) {
        let points = report
            .seconds
            .iter()
            .map(|s| (s.at, (s.p99_felt_us.max(51)) as f64));
        latency
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("{} p99", report.variant))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    latency
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let max_count = reports
        .iter()
        .flat_map(|r| r.seconds.iter().map(|s| s.ignored.max(s.kafka_errors)))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut counts = ChartBuilder::on(&bottom)
        .caption(
            "records ignored and Kafka errors per second (shaded: Kafka frozen, then down)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..secs, 0u64..max_count + max_count / 10 + 1)?;
    counts
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("records")
        .draw()?;
    for &(from, to) in &failure {
        counts.draw_series(std::iter::once(Rectangle::new(
            [(from, 0), (to, max_count + max_count / 10 + 1)],
            RGBColor(255, 200, 200).mix(0.35).filled(),
        )))?;
    }
    let series = [
        (0, "ignored", GREEN, false),
        (0, "kafka errors", MAGENTA, true),
        (1, "ignored", CYAN, false),
        (1, "kafka errors", BLACK, true),
    ];
    for (index, what, color, errors) in series {
        let Some(report) = reports.get(index) else {
            continue;
        };
        let points = report.seconds.iter().map(|s| {
            let value = if errors { s.kafka_errors } else { s.ignored };
            (s.at, value)
        });
        counts
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("{} {what}", report.variant))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    counts
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The seconds during which a fault was injected, as `[from, to)` ranges.
fn failure_windows(report: Option<&Report>) -> Vec<(u32, u32)> {
    let mut windows = Vec::new();
    let Some(report) = report else {
        return windows;
    };
    let mut open: Option<u32> = None;
    for second in &report.seconds {
        let failing = second.fault.is_some_and(|f| f != Fault::None);
        match (failing, open) {
            (true, None) => open = Some(second.at),
            (false, Some(from)) => {
                windows.push((from, second.at));
                open = None;
            }
            _ => {}
        }
    }
    if let Some(from) = open {
        windows.push((from, report.seconds.len() as u32));
    }
    windows
}
