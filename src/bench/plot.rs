//! SVG plots (plotters, SVG backend only): matrix multiplication MFLOP/s over matrix size per
//! target and thread count, throughput bars (memory bandwidth; disk relative to the host;
//! network), and the boot time distribution. Each plot's file name starts with its suite's name.

use std::path::Path;

use plotters::prelude::*;

use super::results::{Measurement, Results, Target};
use super::BenchError;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Writes every plot the results have data for; returns (title, file name) pairs.
pub fn all(r: &Results, dir: &Path) -> Result<Vec<(String, String)>, BenchError> {
    let mut out = Vec::new();
    let mut add = |title: &str, file: &str, made: bool| {
        if made {
            out.push((title.to_string(), file.to_string()));
        }
    };
    add(
        "MFLOP/s over matrix size",
        "cpu-matmul.svg",
        matmul(r, &dir.join("cpu-matmul.svg"))?,
    );
    add(
        "memory bandwidth",
        "mem-stream.svg",
        bars(
            r,
            "mem",
            None,
            "STREAM bandwidth (median)",
            "MB/s",
            None,
            &dir.join("mem-stream.svg"),
        )?,
    );
    add(
        "disk throughput relative to the host",
        "disk-fio.svg",
        bars(
            r,
            "disk",
            None,
            "fio, O_DIRECT: median relative to the host",
            "x host",
            Some(Target::Host),
            &dir.join("disk-fio.svg"),
        )?,
    );
    add(
        "fixed work per instance, all at once",
        "concurrency-pi.svg",
        bars(
            r,
            "concurrency",
            Some("s"),
            "same work, instances at once: seconds per instance (median)",
            "s",
            None,
            &dir.join("concurrency-pi.svg"),
        )?,
    );
    add(
        "network throughput",
        "net-throughput.svg",
        bars(
            r,
            "net",
            Some("MB/s"),
            "TCP between guest and host, NIC/workload (median)",
            "MB/s",
            None,
            &dir.join("net-throughput.svg"),
        )?,
    );
    add(
        "guest to guest throughput",
        "vm2vm-throughput.svg",
        bars(
            r,
            "vm2vm",
            Some("MB/s"),
            "TCP between two guests on a bridge (median)",
            "MB/s",
            None,
            &dir.join("vm2vm-throughput.svg"),
        )?,
    );
    add(
        "boot time distribution",
        "boot-times.svg",
        boot(r, &dir.join("boot-times.svg"))?,
    );
    Ok(out)
}

fn plot_err(path: &Path) -> impl Fn(String) -> BenchError + '_ {
    move |e| BenchError::Plot(path.display().to_string(), e)
}

/// One line of a line plot: its label, its style and its (x, y) points.
type Line = (String, ShapeStyle, Vec<(f64, f64)>);

/// The color of a target, the same in every plot.
fn target_color(t: Target) -> RGBColor {
    COLORS[Target::ALL.iter().position(|x| *x == t).unwrap_or(0)]
}

/// MFLOP/s (median) over matrix size (log scale), one line per target and thread count: color
/// by target, fainter with more threads.
fn matmul(r: &Results, path: &Path) -> Result<bool, BenchError> {
    let mut series: Vec<Line> = Vec::new();
    let mut shades: Vec<(Target, f64)> = Vec::new();
    for m in r.measurements.iter().filter(|m| m.suite == "cpu") {
        let (Some(t), Some(n)) = (param(m, "threads"), param(m, "n")) else {
            continue;
        };
        let label = format!("{} {t} thread(s)", m.target.label());
        let point = (n, m.summary.median);
        match series.iter_mut().find(|(l, _, _)| *l == label) {
            Some((_, _, pts)) => pts.push(point),
            None => {
                let k = shades.iter().filter(|(x, _)| *x == m.target).count();
                shades.push((m.target, t));
                let style = target_color(m.target)
                    .mix(1.0 - 0.3 * k.min(2) as f64)
                    .stroke_width(2);
                series.push((label, style, vec![point]));
            }
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    let xs = series.iter().flat_map(|(_, _, p)| p.iter().map(|x| x.0));
    let (x0, x1) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let ymax = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|x| x.1))
        .fold(0f64, f64::max);
    let e = plot_err(path);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "matrix multiplication: MFLOP/s over matrix size (median)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        // Headroom above the lines for the legend.
        .build_cartesian_2d((x0 * 0.9..x1 * 1.1).log_scale(), 0f64..ymax * 1.5)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("matrix size N (N x N doubles)")
        .y_desc("MFLOP/s")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (label, style, pts) in &series {
        let style = *style;
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(|x| e(x.to_string()))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, style.filled())))
            .map_err(|x| e(x.to_string()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))?;
    Ok(true)
}

/// Grouped bars: one group per figure of `suite` (in `unit`, if given), one bar per target;
/// medians, or medians over the `relative_to` target's median.
#[allow(clippy::too_many_arguments)]
fn bars(
    r: &Results,
    suite: &str,
    unit: Option<&str>,
    caption: &str,
    y_desc: &str,
    relative_to: Option<Target>,
    path: &Path,
) -> Result<bool, BenchError> {
    let ms: Vec<&Measurement> = r
        .measurements
        .iter()
        .filter(|m| m.suite == suite && unit.is_none_or(|u| m.unit == u))
        .collect();
    let mut names: Vec<&str> = Vec::new();
    for m in &ms {
        if !names.contains(&m.name.as_str()) {
            names.push(&m.name);
        }
    }
    let targets: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|t| ms.iter().any(|m| m.target == *t))
        .collect();
    let value = |name: &str, t: Target| -> Option<f64> {
        let get = |t| {
            ms.iter()
                .find(|m| m.name == name && m.target == t)
                .map(|m| m.summary.median)
        };
        let v = get(t)?;
        match relative_to {
            Some(base) => get(base).filter(|b| *b > 0.0).map(|b| v / b),
            None => Some(v),
        }
    };
    let ymax = names
        .iter()
        .flat_map(|n| targets.iter().filter_map(|t| value(n, *t)))
        .fold(0f64, f64::max);
    if names.is_empty() || ymax <= 0.0 {
        return Ok(false);
    }
    let e = plot_err(path);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let groups = names.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups, 0f64..ymax * 1.15)
        .map_err(|x| e(x.to_string()))?;
    let labels: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < labels.len() {
                labels[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    let width = 0.8 / targets.len() as f64;
    for (ti, t) in targets.iter().enumerate() {
        let color = target_color(*t);
        let rects: Vec<Rectangle<(f64, f64)>> = names
            .iter()
            .enumerate()
            .filter_map(|(gi, n)| {
                let v = value(n, *t)?;
                let x = gi as f64 + 0.1 + ti as f64 * width;
                Some(Rectangle::new(
                    [(x, 0.0), (x + width * 0.95, v)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(|x| e(x.to_string()))?
            .label(t.label())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))?;
    Ok(true)
}

/// Every boot's time to exit, one column of dots per target, with the median as a bar.
fn boot(r: &Results, path: &Path) -> Result<bool, BenchError> {
    let ms: Vec<&Measurement> = r
        .measurements
        .iter()
        .filter(|m| m.suite == "boot" && m.name == "start-to-exit")
        .collect();
    if ms.is_empty() {
        return Ok(false);
    }
    let ymax = ms.iter().map(|m| m.summary.max).fold(0f64, f64::max);
    let e = plot_err(path);
    let root = SVGBackend::new(path, (600, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let labels: Vec<String> = ms.iter().map(|m| m.target.label().to_string()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("boot: start to exit, every run", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..ms.len() as f64, 0f64..ymax * 1.15)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(ms.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < labels.len() {
                labels[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc("ms")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (i, m) in ms.iter().enumerate() {
        let color = target_color(m.target);
        let n = m.values.len().max(1) as f64;
        chart
            .draw_series(m.values.iter().enumerate().map(|(k, v)| {
                let x = i as f64 + 0.3 + 0.4 * (k as f64 + 0.5) / n;
                Circle::new((x, *v), 4, color.filled())
            }))
            .map_err(|x| e(x.to_string()))?;
        let med = m.summary.median;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(i as f64 + 0.2, med), (i as f64 + 0.8, med)],
                BLACK.stroke_width(2),
            )))
            .map_err(|x| e(x.to_string()))?;
    }
    root.present().map_err(|x| e(x.to_string()))?;
    Ok(true)
}

fn param(m: &Measurement, key: &str) -> Option<f64> {
    m.params.get(key)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::super::results::Recorder;
    use super::*;

    #[test]
    fn plots_are_svg_files_for_the_suites_with_data() {
        let mut rec = Recorder::default();
        for (t, f) in [(Target::Host, 1.0), (Target::Kvmrun, 0.9)] {
            for n in [64, 128] {
                let p = [("threads", "1".to_string()), ("n", n.to_string())];
                let name = format!("matmul/t1/n{n}");
                rec.measured(
                    "cpu",
                    &name,
                    t,
                    "MFLOP/s",
                    true,
                    vec![100.0 * f, 90.0 * f],
                    &p,
                );
            }
            rec.measured(
                "disk",
                "fio/seqread-1MiB",
                t,
                "MB/s",
                true,
                vec![500.0 * f],
                &[],
            );
        }
        rec.measured(
            "boot",
            "start-to-exit",
            Target::Kvmrun,
            "ms",
            false,
            vec![5.0, 7.0],
            &[],
        );
        let r = rec.into_results(
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            Default::default(),
        );
        let dir = std::env::temp_dir().join(format!("kvmrun-plot-test.{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = all(&r, &dir).unwrap();
        let files: Vec<&str> = made.iter().map(|(_, f)| f.as_str()).collect();
        assert_eq!(files, ["cpu-matmul.svg", "disk-fio.svg", "boot-times.svg"]);
        for f in files {
            let svg = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{f}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
