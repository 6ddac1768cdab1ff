//! `report.md`: the environment, one table per suite (min / median / max per target side by side,
//! and the ratios of medians taken in the same run), what failed or was skipped, and the plots.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::results::{Measurement, Results, Target};
use super::tap::fmt_value;

pub fn markdown(r: &Results, plots: &[(String, String)]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# kvmrun bench\n");
    let _ = writeln!(
        md,
        "`{}`  \nstarted {}, kvmrun {}\n",
        r.command, r.started, r.git_revision
    );
    let _ = writeln!(md, "**Where:** {}\n", r.context);
    let _ = writeln!(md, "| environment | |\n|---|---|");
    for (k, v) in &r.environment {
        let _ = writeln!(md, "| {k} | {} |", v.replace('|', "/"));
    }
    if !r.ratios.is_empty() {
        let _ = writeln!(md, "\n## Ratios at a glance\n");
        let _ = writeln!(
            md,
            "Geometric mean, per suite, of the ratios of medians over its figures (for ms, s, \
             Mcycles and % lower is better, for the others higher).\n"
        );
        let _ = writeln!(
            md,
            "| suite | ratio | figures | geometric mean | range |\n|---|---|---|---|---|"
        );
        for (suite, label, vals) in ratio_groups(r) {
            let gm = (vals.iter().map(|v| v.ln()).sum::<f64>() / vals.len() as f64).exp();
            let (lo, hi) = vals
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
            let _ = writeln!(
                md,
                "| {suite} | {label} | {} | {gm:.3} | {lo:.3} .. {hi:.3} |",
                vals.len()
            );
        }
    }
    let mut suites: Vec<&str> = Vec::new();
    for m in &r.measurements {
        if !suites.contains(&m.suite.as_str()) {
            suites.push(&m.suite);
        }
    }
    for suite in suites {
        let _ = writeln!(md, "\n## {suite}\n");
        let _ = writeln!(
            md,
            "min / median / max over the runs; ratios of medians (for ms, s, Mcycles and % lower \
             is better, for the others higher).\n"
        );
        let _ = writeln!(
            md,
            "| figure | unit | host | kvmrun | qemu | kvmrun/host | kvmrun/qemu |\n|---|---|---|---|---|---|---|"
        );
        // Rows by name, in the order measured.
        let mut rows: Vec<(&str, BTreeMap<Target, &Measurement>)> = Vec::new();
        for m in r.measurements.iter().filter(|m| m.suite == suite) {
            match rows.iter_mut().find(|(n, _)| *n == m.name) {
                Some((_, map)) => {
                    map.insert(m.target, m);
                }
                None => rows.push((&m.name, BTreeMap::from([(m.target, m)]))),
            }
        }
        for (name, by_target) in rows {
            let unit = by_target.values().next().map_or("", |m| m.unit.as_str());
            let cell = |t: Target| {
                by_target.get(&t).map_or("-".to_string(), |m| {
                    let s = &m.summary;
                    format!(
                        "{} / **{}** / {}",
                        fmt_value(s.min),
                        fmt_value(s.median),
                        fmt_value(s.max)
                    )
                })
            };
            let ratio = |n: Target, d: Target| {
                r.ratios
                    .iter()
                    .find(|x| {
                        x.suite == suite
                            && x.name == name
                            && x.numerator == n
                            && x.denominator == d
                            && x.denominator_name.is_none()
                    })
                    .map_or("-".to_string(), |x| format!("{:.3}", x.value))
            };
            let _ = writeln!(
                md,
                "| {name} | {unit} | {} | {} | {} | {} | {} |",
                cell(Target::Host),
                cell(Target::Kvmrun),
                cell(Target::Qemu),
                ratio(Target::Kvmrun, Target::Host),
                ratio(Target::Kvmrun, Target::Qemu)
            );
        }
        let nic: Vec<_> = r
            .ratios
            .iter()
            .filter(|x| x.suite == suite && x.denominator_name.is_some())
            .collect();
        if !nic.is_empty() {
            let _ = writeln!(
                md,
                "\nNIC models on the same VMM, ratios of medians:\n\n| figure | ratio | value |\n|---|---|---|"
            );
            for x in nic {
                let figure = x.name.split_once('/').map_or(x.name.as_str(), |(_, f)| f);
                let _ = writeln!(md, "| {figure} | {} | {:.3} |", x.label(), x.value);
            }
        }
        for (title, file) in plots.iter().filter(|(_, f)| f.starts_with(suite)) {
            let _ = writeln!(md, "\n![{title}]({file})");
        }
    }
    if !r.failures.is_empty() {
        let _ = writeln!(md, "\n## Failed\n");
        for u in &r.failures {
            let target = u
                .target
                .map_or(String::new(), |t| format!(" {}", t.label()));
            let first = u.reason.lines().next().unwrap_or("");
            let _ = writeln!(md, "- {}/{}{target}: {first}", u.suite, u.name);
        }
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(md, "\n## Skipped\n");
        for u in &r.skipped {
            let target = u
                .target
                .map_or(String::new(), |t| format!(" {}", t.label()));
            let _ = writeln!(md, "- {}/{}{target}: {}", u.suite, u.name, u.reason);
        }
    }
    md
}

/// The ratios grouped by suite and pair (in the order first seen), positive values only
/// (a spread of 0 % has no meaningful ratio).
pub fn ratio_groups(r: &Results) -> Vec<(String, String, Vec<f64>)> {
    let mut groups: Vec<(String, String, Vec<f64>)> = Vec::new();
    for x in r
        .ratios
        .iter()
        .filter(|x| x.value > 0.0 && x.value.is_finite())
    {
        let label = x.label();
        match groups
            .iter_mut()
            .find(|(s, l, _)| *s == x.suite && *l == label)
        {
            Some((_, _, v)) => v.push(x.value),
            None => groups.push((x.suite.clone(), label, vec![x.value])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::super::results::Recorder;
    use super::*;

    #[test]
    fn tables_put_targets_side_by_side_with_their_ratios() {
        let mut rec = Recorder::default();
        for (t, v) in [
            (Target::Host, 100.0),
            (Target::Kvmrun, 90.0),
            (Target::Qemu, 60.0),
        ] {
            rec.measured(
                "cpu",
                "matmul/t1/n64",
                t,
                "MFLOP/s",
                true,
                vec![v, v + 2.0, v - 2.0],
                &[],
            );
        }
        rec.skipped("net", "virtio/tcp", None, "being fixed");
        let r = rec.into_results(
            "ctx".into(),
            "kvmrun bench".into(),
            "t".into(),
            "g".into(),
            Default::default(),
        );
        let md = markdown(&r, &[("MFLOP/s".into(), "cpu-matmul.svg".into())]);
        assert!(md.contains("| matmul/t1/n64 | MFLOP/s | 98.00 / **100** / 102 | 88.00 / **90.00** / 92.00 | 58.00 / **60.00** / 62.00 | 0.900 | 1.500 |"), "{md}");
        assert!(
            md.contains("| cpu | kvmrun/host | 1 | 0.900 | 0.900 .. 0.900 |"),
            "{md}"
        );
        assert!(md.contains("![MFLOP/s](cpu-matmul.svg)"));
        assert!(md.contains("- net/virtio/tcp: being fixed"));
    }

    #[test]
    fn nic_ratios_get_their_own_rows_and_summary() {
        let mut rec = Recorder::default();
        for (name, v) in [("virtio/g2h", 8.0), ("e1000/g2h", 2.0)] {
            rec.measured("net", name, Target::Kvmrun, "MB/s", true, vec![v], &[]);
        }
        let r = rec.into_results(
            "ctx".into(),
            "kvmrun bench".into(),
            "t".into(),
            "g".into(),
            Default::default(),
        );
        let md = markdown(&r, &[]);
        assert!(
            md.contains("| g2h | virtio/e1000 (kvmrun) | 4.000 |"),
            "{md}"
        );
        assert!(
            md.contains("| net | virtio/e1000 (kvmrun) | 1 | 4.000 | 4.000 .. 4.000 |"),
            "{md}"
        );
        // No kvmrun/qemu figure was taken: the table's ratio columns stay empty.
        assert!(
            md.contains("| virtio/g2h | MB/s | - | 8.00 / **8.00** / 8.00 | - | - | - |"),
            "{md}"
        );
    }
}
