//! `results.tap`: the outcomes as TAP in the Tapper style of the reference experiments: header
//! lines `# Tapper-uname:` and `# Tapper-cpuinfo:`, then per suite a `# Tapper-section: NAME`
//! line, a plan `1..N` and N numbered lines (`ok`, `not ok` with a diagnostic, or `ok ... # SKIP
//! reason`).

use std::fmt::Write;

use super::results::{Measurement, Outcome, Unmeasured};

/// TAP text for `outcomes`, one section per suite in `suites` order (a suite without outcomes
/// gets a `1..0` plan).
pub fn render(uname: &str, cpuinfo: &str, suites: &[&str], outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "TAP version 13");
    let _ = writeln!(out, "# Tapper-suite-name: kvmrun-bench");
    let _ = writeln!(out, "# Tapper-uname: {}", one_line(uname));
    let _ = writeln!(out, "# Tapper-cpuinfo: {}", one_line(cpuinfo));
    for suite in suites {
        let items: Vec<&Outcome> = outcomes.iter().filter(|o| suite_of(o) == *suite).collect();
        let _ = writeln!(out, "# Tapper-section: {suite}");
        let _ = writeln!(out, "1..{}", items.len());
        for (i, o) in items.iter().enumerate() {
            let n = i + 1;
            match o {
                Outcome::Measured(m) => {
                    let _ = writeln!(out, "ok {n} - {}", describe(m));
                }
                Outcome::Failed(u) => {
                    let _ = writeln!(out, "not ok {n} - {}", title(u));
                    for line in u.reason.lines() {
                        let _ = writeln!(out, "# {}", line.trim_end());
                    }
                }
                Outcome::Skipped(u) => {
                    let _ = writeln!(out, "ok {n} - {} # SKIP {}", title(u), one_line(&u.reason));
                }
            }
        }
    }
    out
}

fn suite_of(o: &Outcome) -> &str {
    match o {
        Outcome::Measured(m) => &m.suite,
        Outcome::Failed(u) | Outcome::Skipped(u) => &u.suite,
    }
}

fn describe(m: &Measurement) -> String {
    let s = &m.summary;
    format!(
        "{}/{} {}: median {} {} (min {}, max {}, {} runs)",
        m.suite,
        m.name,
        m.target.label(),
        fmt_value(s.median),
        m.unit,
        fmt_value(s.min),
        fmt_value(s.max),
        s.runs
    )
}

fn title(u: &Unmeasured) -> String {
    one_line(&match u.target {
        Some(t) => format!("{}/{} {}", u.suite, u.name, t.label()),
        None => format!("{}/{}", u.suite, u.name),
    })
}

/// Significant digits that suit any magnitude, without exponent noise for ordinary figures.
pub fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// TAP descriptions and directives are single lines; `#` would start a directive.
fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('#', "no.")
}

/// A parsed section: its name, its plan, and the numbers and kinds of its test lines.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub plan: usize,
    pub numbers: Vec<usize>,
    pub ok: usize,
    pub not_ok: usize,
    pub skipped: usize,
}

/// Reads Tapper-style TAP back into sections (for the tests).
/// Errors on a test line outside a section, a section without a plan, or a plan that does not
/// match the number of test lines.
#[cfg(test)]
pub fn parse(text: &str) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    let mut planned = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# Tapper-section: ") {
            sections.push(Section {
                name: name.to_string(),
                plan: 0,
                numbers: vec![],
                ok: 0,
                not_ok: 0,
                skipped: 0,
            });
            planned = false;
        } else if let Some(plan) = line.strip_prefix("1..") {
            let s = sections.last_mut().ok_or("plan before any section")?;
            let n = plan.split_whitespace().next().unwrap_or("");
            s.plan = n.parse().map_err(|_| format!("bad plan line '{line}'"))?;
            planned = true;
        } else if line.starts_with("ok ") || line.starts_with("not ok ") {
            let s = sections.last_mut().ok_or("test line before any section")?;
            if !planned {
                return Err(format!("section {}: test line before its plan", s.name));
            }
            let rest = line.trim_start_matches("not ").trim_start_matches("ok ");
            let num: usize = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("test line without a number: '{line}'"))?;
            s.numbers.push(num);
            if line.starts_with("not ok") {
                s.not_ok += 1;
            } else if line.contains(" # SKIP") {
                s.skipped += 1;
            } else {
                s.ok += 1;
            }
        }
    }
    for s in &sections {
        let expected: Vec<usize> = (1..=s.plan).collect();
        if s.numbers != expected {
            return Err(format!(
                "section {}: plan 1..{} but test numbers {:?}",
                s.name, s.plan, s.numbers
            ));
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::super::results::{Recorder, Target};
    use super::*;

    #[test]
    fn sections_have_plans_matching_their_lines() {
        let mut r = Recorder::default();
        r.measured(
            "cpu",
            "matmul/t1/n64",
            Target::Host,
            "MFLOP/s",
            true,
            vec![1.0, 2.0, 3.0],
            &[],
        );
        r.measured(
            "cpu",
            "matmul/t1/n64",
            Target::Kvmrun,
            "MFLOP/s",
            true,
            vec![1.5],
            &[],
        );
        r.failed(
            "cpu",
            "matmul/t2/n64",
            Some(Target::Qemu),
            "guest printed nothing\nlast line: x",
        );
        r.skipped("net", "tcp #1", None, "virtio-net is being fixed");
        let text = render(
            "Linux h 6.1",
            "2 cores [X]",
            &["cpu", "mem", "net"],
            &r.outcomes,
        );
        assert!(text.contains("# Tapper-uname: Linux h 6.1\n"));
        assert!(text.contains("# Tapper-cpuinfo: 2 cores [X]\n"));
        let sections = parse(&text).unwrap();
        let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["cpu", "mem", "net"]);
        assert_eq!(
            (sections[0].plan, sections[0].ok, sections[0].not_ok),
            (3, 2, 1)
        );
        assert_eq!(sections[1].plan, 0);
        assert_eq!((sections[2].plan, sections[2].skipped), (1, 1));
        assert!(text.contains("ok 2 - cpu/matmul/t1/n64 kvmrun: median 1.50 MFLOP/s"));
        assert!(text.contains(
            "not ok 3 - cpu/matmul/t2/n64 qemu\n# guest printed nothing\n# last line: x\n"
        ));
        // A '#' in a name must not turn into a directive.
        assert!(text.contains("ok 1 - net/tcp no.1 # SKIP virtio-net is being fixed"));
    }

    #[test]
    fn a_plan_that_does_not_match_is_rejected() {
        let bad = "# Tapper-section: cpu\n1..2\nok 1 - a\n";
        assert!(parse(bad).is_err());
        let unplanned = "# Tapper-section: cpu\nok 1 - a\n1..1\n";
        assert!(parse(unplanned).is_err());
    }
}
