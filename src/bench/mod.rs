//! `kvmrun bench`: the reference experiments (docs: /work/shared/reference-experiments.md) run on
//! the host, in kvmrun guests and in QEMU/KVM guests, with min/median/max over repeated runs,
//! ratios taken in the same run, and a report (TAP, JSON, Markdown, SVG plots) in `--out`.
//!
//! Where /dev/kvm cannot run Linux (PVM), the whole benchmark re-runs itself inside the test
//! host (see `testhost.rs`); "host" figures are then the test host's own.

mod env;
mod plot;
mod progress;
mod report;
pub mod results;
mod runner;
pub mod stats;
mod suites;
pub mod tap;
mod testhost;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use crate::error::Error;
use crate::host_check::KvmFlavor;
use progress::Progress;
use results::{Recorder, Target};
use runner::Artifacts;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("building the benchmark guest: {0}")]
    Artifacts(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("test host: {0}")]
    TestHost(String),
    #[error("plot {0}: {1}")]
    Plot(String, String),
}

/// The suites, in the order they run unless `--suite` orders them otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SuiteName {
    Cpu,
    Mem,
    Boot,
    Disk,
    Concurrency,
    Net,
    Vm2vm,
}

impl SuiteName {
    /// Every suite, in order: what runs without `--suite`.
    pub const ALL: [SuiteName; 7] = [
        SuiteName::Cpu,
        SuiteName::Mem,
        SuiteName::Boot,
        SuiteName::Disk,
        SuiteName::Concurrency,
        SuiteName::Net,
        SuiteName::Vm2vm,
    ];

    /// What `--quick` runs without `--suite`: net and vm2vm boot a guest per VMM and NIC and
    /// move data through emulated NICs (minutes in the test host), which would take the quick
    /// run past its 10 minutes; they run when named.
    pub const QUICK_DEFAULT: [SuiteName; 5] = [
        SuiteName::Cpu,
        SuiteName::Mem,
        SuiteName::Boot,
        SuiteName::Disk,
        SuiteName::Concurrency,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SuiteName::Cpu => "cpu",
            SuiteName::Mem => "mem",
            SuiteName::Boot => "boot",
            SuiteName::Disk => "disk",
            SuiteName::Concurrency => "concurrency",
            SuiteName::Net => "net",
            SuiteName::Vm2vm => "vm2vm",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareWith {
    Qemu,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Suites to run, comma-separated [default: all; with --quick all but net and vm2vm].
    #[arg(long = "suite", value_delimiter = ',')]
    pub suites: Vec<SuiteName>,

    /// How often each figure is taken (min / median / max over these).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,

    /// Smaller sizes and shorter runs (under 10 minutes in the test host): what CI runs.
    #[arg(long)]
    pub quick: bool,

    /// Also run every guest workload in a QEMU/KVM guest with the same kernel, initramfs,
    /// vCPUs and memory.
    #[arg(long, value_name = "VMM")]
    pub compare: Option<CompareWith>,

    /// Where results.tap, results.json, report.md and the plots go (created if missing).
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub out: PathBuf,
}

/// Everything a suite needs while it runs.
pub struct Bench {
    pub args: BenchArgs,
    pub artifacts: Artifacts,
    /// CPUs of the machine the guests run on (the test host's, there).
    pub host_cpus: u32,
    pub in_testhost: bool,
    /// Why QEMU cannot be compared (None: it can, or was not asked for).
    pub qemu_unavailable: Option<String>,
    pub progress: Progress,
    pub rec: Recorder,
    pub env: BTreeMap<String, String>,
}

impl Bench {
    /// The guest targets of this run: kvmrun, and QEMU with `--compare qemu` when present.
    pub fn guest_targets(&self) -> Vec<Target> {
        let mut t = vec![Target::Kvmrun];
        if self.args.compare == Some(CompareWith::Qemu) && self.qemu_unavailable.is_none() {
            t.push(Target::Qemu);
        }
        t
    }

    /// Records QEMU as skipped for `suite` when it was asked for and is missing.
    pub fn note_qemu_skip(&mut self, suite: &str) {
        if let Some(why) = self.qemu_unavailable.clone() {
            self.rec.skipped(suite, "all", Some(Target::Qemu), &why);
        }
    }

    /// Records `key` = `value` in the environment once (first one wins).
    pub fn env_once(&mut self, key: &str, value: Option<String>) {
        if let Some(v) = value {
            self.env.entry(key.to_string()).or_insert(v);
        }
    }

    /// A time limit for one guest or host run that should take `expected_s`: generous, since
    /// the test host runs everything under emulation and other engineers share the machine.
    pub fn limit(&self, expected_s: f64) -> std::time::Duration {
        let factor = if self.in_testhost { 8.0 } else { 4.0 };
        std::time::Duration::from_secs_f64(120.0 + expected_s * factor)
    }
}

/// `kvmrun bench`: runs here on hardware KVM (or when already inside the test host), else
/// re-runs itself inside the test host. Returns the exit status: 0 when every measurement that
/// ran completed, 1 when any failed.
pub fn run(mut args: BenchArgs) -> Result<i32, Error> {
    if args.suites.is_empty() {
        args.suites = default_suites(args.quick);
    }
    let mut seen = Vec::new();
    args.suites.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });
    std::fs::create_dir_all(&args.out).map_err(|source| BenchError::Io {
        what: "creating the output directory",
        path: args.out.clone(),
        source,
    })?;
    args.out = args.out.canonicalize().map_err(|source| BenchError::Io {
        what: "resolving the output directory",
        path: args.out.clone(),
        source,
    })?;

    let inner = std::env::var_os("KVMRUN_BENCH_INNER").is_some();
    // Every suite boots guests (net and vm2vm through their scripts, which run here).
    if !inner && KvmFlavor::detect() == KvmFlavor::Pvm {
        return Ok(testhost::run_inside(&args)?);
    }
    let artifacts = testhost::artifacts()?;
    run_here(args, artifacts, inner)
}

fn run_here(args: BenchArgs, artifacts: Artifacts, in_testhost: bool) -> Result<i32, Error> {
    let started = env::utc_now();
    let qemu_unavailable = match args.compare {
        Some(CompareWith::Qemu) => env::command_line("qemu-system-x86_64", &["--version"])
            .is_none()
            .then(|| "qemu-system-x86_64 not found (apt-get install qemu-system-x86)".to_string()),
        None => None,
    };
    let mut b = Bench {
        host_cpus: env::online_cpus(),
        in_testhost,
        qemu_unavailable,
        progress: Progress::new(0),
        rec: Recorder::default(),
        env: env::base(in_testhost),
        artifacts,
        args,
    };
    let where_ = if in_testhost {
        format!(
            "inside the test host (QEMU TCG with nested SVM, {} CPUs) on {}: every guest and \
             \"host\" figure is distorted by emulation; only ratios taken in this run mean anything",
            b.host_cpus,
            b.env
                .get("outer_machine_cpu")
                .cloned()
                .unwrap_or_default()
        )
    } else {
        format!("hardware KVM on {}: absolute figures", env::cpu_model())
    };
    b.env.insert("where".into(), where_.clone());
    b.env.insert(
        "guest_kernel".into(),
        b.artifacts.kernel.display().to_string(),
    );
    b.env.insert(
        "guest_initrd".into(),
        b.artifacts.bench_initrd.display().to_string(),
    );
    b.env
        .insert("nic_model".into(), "none (net suite not run)".into());

    let total: usize = b.args.suites.iter().map(|s| suites::steps(*s, &b)).sum();
    b.progress = Progress::new(total);
    b.progress.note(&format!(
        "{} suite(s), {} run(s) each{}, {total} steps; {where_}",
        b.args.suites.len(),
        b.args.runs,
        if b.args.quick { ", quick" } else { "" }
    ));
    for s in b.args.suites.clone() {
        suites::run(s, &mut b);
    }

    let suite_names: Vec<&str> = b.args.suites.iter().map(|s| s.as_str()).collect();
    let tap = tap::render(
        &env::uname(),
        &format!("{} cores [{}]", b.host_cpus, env::cpu_model()),
        &suite_names,
        &b.rec.outcomes,
    );
    let failed = b
        .rec
        .outcomes
        .iter()
        .filter(|o| matches!(o, results::Outcome::Failed(_)))
        .count();
    let out = b.args.out.clone();
    write(&out.join("results.tap"), &tap)?;
    let command = command_line(&b.args);
    let results = b
        .rec
        .into_results(where_, command, started, env::git_revision(), b.env);
    let json = serde_json::to_string_pretty(&results).unwrap_or_default() + "\n";
    write(&out.join("results.json"), &json)?;
    let plots = plot::all(&results, &out)?;
    write(&out.join("report.md"), &report::markdown(&results, &plots))?;
    eprintln!(
        "bench: {} measurements, {} failed, {} skipped; results in {}",
        results.measurements.len(),
        failed,
        results.skipped.len(),
        out.display()
    );
    Ok(if failed == 0 { 0 } else { 1 })
}

/// The suites run when `--suite` is not given.
pub fn default_suites(quick: bool) -> Vec<SuiteName> {
    if quick {
        SuiteName::QUICK_DEFAULT.to_vec()
    } else {
        SuiteName::ALL.to_vec()
    }
}

/// The arguments that reproduce this run, from `bench` on (the output directory absolute).
pub fn arg_words(a: &BenchArgs) -> Vec<String> {
    let suites: Vec<&str> = a.suites.iter().map(|s| s.as_str()).collect();
    let mut w = vec![
        "bench".to_string(),
        "--suite".into(),
        suites.join(","),
        "--runs".into(),
        a.runs.to_string(),
    ];
    if a.quick {
        w.push("--quick".into());
    }
    if a.compare.is_some() {
        w.extend(["--compare".into(), "qemu".into()]);
    }
    w.extend(["--out".into(), a.out.display().to_string()]);
    w
}

/// The command line that reproduces this run (as recorded in the reports).
pub fn command_line(a: &BenchArgs) -> String {
    format!("kvmrun {}", arg_words(a).join(" "))
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    })
}
