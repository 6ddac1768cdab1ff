//! What a benchmark run found: every outcome (measured, failed, skipped), the ratios taken in the
//! same run, and the environment, as written to `results.json` (schema `kvmrun-bench/1`).
//!
//! Stable to diff: outcomes keep the order the suites produced them in, parameters and the
//! environment are sorted maps, and nothing time-dependent is written apart from `started`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stats::Summary;

pub const SCHEMA: &str = "kvmrun-bench/1";

/// Where a figure was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The machine the guests run on (inside the test host: the test host itself).
    Host,
    /// A kvmrun guest.
    Kvmrun,
    /// A QEMU/KVM guest with the same kernel, initramfs, vCPUs and memory.
    Qemu,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Host, Target::Kvmrun, Target::Qemu];

    pub fn label(self) -> &'static str {
        match self {
            Target::Host => "host",
            Target::Kvmrun => "kvmrun",
            Target::Qemu => "qemu",
        }
    }
}

/// One figure of one suite on one target, with its runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub suite: String,
    /// Names the figure within its suite, the same on every target (e.g. `matmul/t1/n256`), so
    /// that ratios pair up by name.
    pub name: String,
    pub target: Target,
    pub unit: String,
    pub higher_is_better: bool,
    /// Every run's value, in the order taken.
    pub values: Vec<f64>,
    #[serde(flatten)]
    pub summary: Summary,
    /// What was run: vCPUs, threads, sizes, ... (sorted keys).
    pub params: BTreeMap<String, String>,
}

/// What could not be measured, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmeasured {
    pub suite: String,
    pub name: String,
    pub target: Option<Target>,
    pub reason: String,
}

/// One outcome in the order the suites produced them: the TAP report is written from these.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Measured(Measurement),
    Failed(Unmeasured),
    Skipped(Unmeasured),
}

/// A ratio of two medians taken in the same run: of two targets' values of the same figure
/// (`name`), or of two NIC models' figures on one target (`name` over `denominator_name`, e.g.
/// `virtio/g2h` over `e1000/g2h`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub suite: String,
    pub name: String,
    pub numerator: Target,
    pub denominator: Target,
    /// The denominator's figure when it is not `name` (NIC model ratios).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator_name: Option<String>,
    pub value: f64,
}

impl Ratio {
    /// What is divided by what, e.g. `kvmrun/qemu` or `virtio/e1000 (kvmrun)`.
    pub fn label(&self) -> String {
        match &self.denominator_name {
            Some(d) => format!(
                "{}/{} ({})",
                self.name.split('/').next().unwrap_or(""),
                d.split('/').next().unwrap_or(""),
                self.numerator.label()
            ),
            None => format!("{}/{}", self.numerator.label(), self.denominator.label()),
        }
    }
}

/// The NIC models compared on one target: a figure `virtio/X` is divided by `e1000/X`.
const NIC_PAIR: (&str, &str) = ("virtio/", "e1000/");

/// The whole of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub schema: String,
    /// Where the guests ran, and what the figures may be read as.
    pub context: String,
    /// The command that produced this.
    pub command: String,
    pub started: String,
    pub git_revision: String,
    pub environment: BTreeMap<String, String>,
    pub measurements: Vec<Measurement>,
    pub ratios: Vec<Ratio>,
    pub failures: Vec<Unmeasured>,
    pub skipped: Vec<Unmeasured>,
}

/// Collects outcomes while the suites run.
#[derive(Debug, Default)]
pub struct Recorder {
    pub outcomes: Vec<Outcome>,
}

impl Recorder {
    /// Records a measurement from its runs' values; no value (or a non-finite or negative one)
    /// becomes a failure naming the measurement, never a figure.
    #[allow(clippy::too_many_arguments)]
    pub fn measured(
        &mut self,
        suite: &str,
        name: &str,
        target: Target,
        unit: &str,
        higher_is_better: bool,
        values: Vec<f64>,
        params: &[(&str, String)],
    ) {
        match Summary::of(&values) {
            Some(summary) if values.iter().all(|v| *v >= 0.0) => {
                self.outcomes.push(Outcome::Measured(Measurement {
                    suite: suite.into(),
                    name: name.into(),
                    target,
                    unit: unit.into(),
                    higher_is_better,
                    values,
                    summary,
                    params: params
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                }))
            }
            _ => self.failed(
                suite,
                name,
                Some(target),
                &format!("no usable value (got {values:?})"),
            ),
        }
    }

    pub fn failed(&mut self, suite: &str, name: &str, target: Option<Target>, reason: &str) {
        log::debug!("{suite}/{name}: failed: {reason}");
        self.outcomes.push(Outcome::Failed(Unmeasured {
            suite: suite.into(),
            name: name.into(),
            target,
            reason: reason.into(),
        }));
    }

    pub fn skipped(&mut self, suite: &str, name: &str, target: Option<Target>, reason: &str) {
        self.outcomes.push(Outcome::Skipped(Unmeasured {
            suite: suite.into(),
            name: name.into(),
            target,
            reason: reason.into(),
        }));
    }

    pub fn measurements(&self) -> impl Iterator<Item = &Measurement> {
        self.outcomes.iter().filter_map(|o| match o {
            Outcome::Measured(m) => Some(m),
            _ => None,
        })
    }

    /// kvmrun/host, qemu/host and kvmrun/qemu for every figure measured on both targets, then
    /// virtio/e1000 on each target for every NIC figure measured with both models.
    pub fn ratios(&self) -> Vec<Ratio> {
        let pairs = [
            (Target::Kvmrun, Target::Host),
            (Target::Qemu, Target::Host),
            (Target::Kvmrun, Target::Qemu),
        ];
        let mut out = Vec::new();
        for m in self.measurements().filter(|m| m.target == Target::Kvmrun) {
            for (num, den) in pairs {
                let find = |t: Target| {
                    self.measurements()
                        .find(|x| x.suite == m.suite && x.name == m.name && x.target == t)
                };
                if let (Some(a), Some(b)) = (find(num), find(den)) {
                    if b.summary.median != 0.0 {
                        out.push(Ratio {
                            suite: m.suite.clone(),
                            name: m.name.clone(),
                            numerator: num,
                            denominator: den,
                            denominator_name: None,
                            value: a.summary.median / b.summary.median,
                        });
                    }
                }
            }
        }
        for m in self.measurements() {
            let Some(rest) = m.name.strip_prefix(NIC_PAIR.0) else {
                continue;
            };
            let other = format!("{}{rest}", NIC_PAIR.1);
            let den = self
                .measurements()
                .find(|x| x.suite == m.suite && x.name == other && x.target == m.target);
            if let Some(d) = den.filter(|d| d.summary.median != 0.0) {
                out.push(Ratio {
                    suite: m.suite.clone(),
                    name: m.name.clone(),
                    numerator: m.target,
                    denominator: m.target,
                    denominator_name: Some(other),
                    value: m.summary.median / d.summary.median,
                });
            }
        }
        out
    }

    pub fn into_results(
        self,
        context: String,
        command: String,
        started: String,
        git_revision: String,
        environment: BTreeMap<String, String>,
    ) -> Results {
        let ratios = self.ratios();
        let mut measurements = Vec::new();
        let mut failures = Vec::new();
        let mut skipped = Vec::new();
        for o in self.outcomes {
            match o {
                Outcome::Measured(m) => measurements.push(m),
                Outcome::Failed(u) => failures.push(u),
                Outcome::Skipped(u) => skipped.push(u),
            }
        }
        Results {
            schema: SCHEMA.into(),
            context,
            command,
            started,
            git_revision,
            environment,
            measurements,
            ratios,
            failures,
            skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Recorder {
        let mut r = Recorder::default();
        let p = [("vcpus", "2".to_string())];
        r.measured(
            "cpu",
            "matmul/t1/n64",
            Target::Host,
            "MFLOP/s",
            true,
            vec![100.0, 110.0, 90.0],
            &p,
        );
        r.measured(
            "cpu",
            "matmul/t1/n64",
            Target::Kvmrun,
            "MFLOP/s",
            true,
            vec![95.0, 96.0, 97.0],
            &p,
        );
        r.measured(
            "cpu",
            "matmul/t1/n64",
            Target::Qemu,
            "MFLOP/s",
            true,
            vec![80.0],
            &p,
        );
        r.measured(
            "cpu",
            "matmul/t1/n128",
            Target::Kvmrun,
            "MFLOP/s",
            true,
            vec![],
            &p,
        );
        r.skipped(
            "net",
            "tcp/guest-to-host",
            None,
            "virtio-net bulk TCP is being fixed",
        );
        r
    }

    #[test]
    fn ratios_pair_medians_of_the_same_figure() {
        let ratios = sample().ratios();
        let get = |n, d| {
            ratios
                .iter()
                .find(|r| r.numerator == n && r.denominator == d)
                .map(|r| r.value)
        };
        assert_eq!(ratios.len(), 3);
        assert!((get(Target::Kvmrun, Target::Host).unwrap() - 0.96).abs() < 1e-12);
        assert!((get(Target::Qemu, Target::Host).unwrap() - 0.8).abs() < 1e-12);
        assert!((get(Target::Kvmrun, Target::Qemu).unwrap() - 1.2).abs() < 1e-12);
    }

    #[test]
    fn nic_figures_give_virtio_over_e1000_per_target() {
        let mut r = Recorder::default();
        for (name, t, v) in [
            ("virtio/g2h", Target::Kvmrun, 6.0),
            ("e1000/g2h", Target::Kvmrun, 2.0),
            ("virtio/g2h", Target::Qemu, 4.0),
            ("e1000/g2h", Target::Qemu, 4.0),
            ("virtio/cpu", Target::Kvmrun, 50.0),
        ] {
            r.measured("net", name, t, "MB/s", true, vec![v], &[]);
        }
        let nic: Vec<Ratio> = r
            .ratios()
            .into_iter()
            .filter(|x| x.denominator_name.is_some())
            .collect();
        assert_eq!(nic.len(), 2, "{nic:?}");
        assert_eq!(nic[0].name, "virtio/g2h");
        assert_eq!(nic[0].denominator_name.as_deref(), Some("e1000/g2h"));
        assert_eq!((nic[0].numerator, nic[0].value), (Target::Kvmrun, 3.0));
        assert_eq!(nic[0].label(), "virtio/e1000 (kvmrun)");
        assert_eq!((nic[1].numerator, nic[1].value), (Target::Qemu, 1.0));
        // kvmrun/qemu pairs by name as for every suite.
        assert!(r.ratios().iter().any(|x| x.label() == "kvmrun/qemu"
            && x.name == "e1000/g2h"
            && (x.value - 0.5).abs() < 1e-12));
    }

    #[test]
    fn a_measurement_without_values_is_a_failure() {
        let r = sample();
        assert!(r.outcomes.iter().any(|o| matches!(o,
            Outcome::Failed(u) if u.name == "matmul/t1/n128" && u.target == Some(Target::Kvmrun))));
    }

    #[test]
    fn json_has_the_documented_schema_and_round_trips() {
        let results = sample().into_results(
            "test".into(),
            "kvmrun bench".into(),
            "2026-01-01T00:00:00Z".into(),
            "abc123".into(),
            BTreeMap::from([("host_cpu".to_string(), "x".to_string())]),
        );
        let text = serde_json::to_string_pretty(&results).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["git_revision"], "abc123");
        let m = &v["measurements"][0];
        for key in [
            "suite", "name", "target", "unit", "values", "runs", "min", "median", "max", "mean",
            "stddev", "params",
        ] {
            assert!(!m[key].is_null(), "measurement lacks {key}: {m}");
        }
        assert_eq!(m["target"], "host");
        assert_eq!(m["runs"], 3);
        assert_eq!(m["median"], 100.0);
        assert_eq!(v["failures"].as_array().unwrap().len(), 1);
        assert_eq!(
            v["skipped"][0]["reason"],
            "virtio-net bulk TCP is being fixed"
        );
        let back: Results = serde_json::from_str(&text).unwrap();
        assert_eq!(back, results);
        // Stable to diff: the same results give the same text.
        assert_eq!(serde_json::to_string_pretty(&back).unwrap(), text);
    }
}
