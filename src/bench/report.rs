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
                        x.suite == suite && x.name == name && x.numerator == n && x.denominator == d
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
        for (title, file) in plots.iter().filter(|(_, f)| f.starts_with(suite)) {
            let _ = writeln!(md, "\n![{title}]({file})");
        }
    }
    if !r.failures.is_empty() {
        let _ = writeln!(md, "\n## Failed\n");
        for u in &r.failures {
            let target = u.target.map_or("", |t| t.label());
            let first = u.reason.lines().next().unwrap_or("");
            let _ = writeln!(md, "- {}/{} {target}: {first}", u.suite, u.name);
        }
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(md, "\n## Skipped\n");
        for u in &r.skipped {
            let target = u.target.map_or("", |t| t.label());
            let _ = writeln!(md, "- {}/{} {target}: {}", u.suite, u.name, u.reason);
        }
    }
    md
}
