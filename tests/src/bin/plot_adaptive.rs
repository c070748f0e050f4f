//! Draws the adaptive runs' curves (`docs/adaptive-*.csv`, written by the adaptive tests) as PNGs
//! beside them: the slot limit in force, queries in flight at the fake, and 429s and throttled
//! answers per second. Usage: projector-plot-adaptive [CSV ...] (default: docs/adaptive-*.csv).
//! Labels use DejaVu Sans from /usr/share/fonts (Debian's fonts-dejavu-core).

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

struct Sample {
    t: f64,
    limit: f64,
    in_flight: f64,
    rejected_429: f64,
    throttled: f64,
}

fn read(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("no column {name} in {}", path.display()));
    let (t, limit, in_flight, r429, thr) =
        (col("t_s")?, col("limit_in_force")?, col("in_flight")?, col("rejected_429_total")?, col("throttled_total")?);
    lines
        .map(|line| {
            let v: Vec<f64> = line.split(',').map(|x| x.parse().unwrap_or(0.0)).collect();
            let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
            Ok(Sample { t: get(t), limit: get(limit), in_flight: get(in_flight), rejected_429: get(r429), throttled: get(thr) })
        })
        .collect()
}

/// Per-second rate of a running total, from consecutive samples.
fn per_second(samples: &[Sample], total: fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    samples.windows(2).map(|w| (w[1].t, ((total(&w[1]) - total(&w[0])) / (w[1].t - w[0].t).max(1e-3)).max(0.0))).collect()
}

fn plot(csv: &Path) -> anyhow::Result<PathBuf> {
    let samples = read(csv)?;
    let out = csv.with_extension("png");
    let root = BitMapBackend::new(&out, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(320);
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let title = csv.file_stem().and_then(|s| s.to_str()).unwrap_or("adaptive");

    let y_max = samples.iter().map(|s| s.limit.max(s.in_flight)).fold(10.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("{title}: slot limit in force and queries in flight"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart.configure_mesh().x_desc("seconds").y_desc("queries").draw()?;
    chart
        .draw_series(LineSeries::new(samples.iter().map(|s| (s.t, s.limit)), BLUE.stroke_width(2)))?
        .label("limit in force")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(samples.iter().map(|s| (s.t, s.in_flight)), GREEN))?
        .label("in flight at the service")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREEN));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    let r429 = per_second(&samples, |s| s.rejected_429);
    let thr = per_second(&samples, |s| s.throttled);
    let r_max = r429.iter().chain(&thr).map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("429s and throttled answers per second", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..t_max, 0.0..r_max)?;
    chart.configure_mesh().x_desc("seconds").y_desc("per second").draw()?;
    chart.draw_series(LineSeries::new(r429, RED))?.label("429").legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart.draw_series(LineSeries::new(thr, MAGENTA))?.label("throttled").legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], MAGENTA));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(csv.with_extension("png"))
}

fn main() -> anyhow::Result<()> {
    let font = std::fs::read(FONT).with_context(|| format!("reading the label font {FONT} (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow::anyhow!("{FONT} is not a font plotters can read"))?;
    let mut csvs: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if csvs.is_empty() {
        let docs = projector_tests::manifest_path("../docs");
        for entry in std::fs::read_dir(&docs).with_context(|| format!("listing {}", docs.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with("adaptive-") && name.ends_with(".csv") {
                csvs.push(path);
            }
        }
        csvs.sort();
    }
    for csv in csvs {
        println!("{}", plot(&csv)?.display());
    }
    Ok(())
}
