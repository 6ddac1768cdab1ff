//! The suites: each knows how many steps (host runs and guest boots) it takes, and runs them,
//! recording every outcome in the bench's recorder.

mod boot;
mod concurrency;
mod cpu;
mod disk;
mod mem;
mod net;

use super::results::Target;
use super::runner::{self, GuestSpec, RunOutput};
use super::{Bench, SuiteName};

pub fn steps(s: SuiteName, b: &Bench) -> usize {
    match s {
        SuiteName::Cpu => cpu::steps(b),
        SuiteName::Mem => mem::steps(b),
        SuiteName::Boot => boot::steps(b),
        SuiteName::Disk => disk::steps(b),
        SuiteName::Concurrency => concurrency::steps(b),
        SuiteName::Net | SuiteName::Vm2vm => 0,
    }
}

pub fn run(s: SuiteName, b: &mut Bench) {
    match s {
        SuiteName::Cpu => cpu::run(b),
        SuiteName::Mem => mem::run(b),
        SuiteName::Boot => boot::run(b),
        SuiteName::Disk => disk::run(b),
        SuiteName::Concurrency => concurrency::run(b),
        SuiteName::Net => net::run_net(b),
        SuiteName::Vm2vm => net::run_vm2vm(b),
    }
}

/// The benchmark guest with `cpus` vCPUs running `script` on `vmm`, as a spec.
pub(crate) fn bench_guest(
    b: &Bench,
    vmm: Target,
    cpus: u32,
    script: String,
    expected_s: f64,
) -> GuestSpec {
    GuestSpec {
        vmm,
        cpus,
        // fio's libraries make the benchmark initramfs about 90 MiB unpacked.
        memory_mib: 512,
        initrd: b.artifacts.bench_initrd.clone(),
        disk: None,
        script,
        timeout: b.limit(expected_s),
    }
}

/// Runs a guest; records the guest kernel release it reports.
pub(crate) fn run_guest(b: &mut Bench, spec: &GuestSpec) -> RunOutput {
    let out = runner::run_guest(&b.artifacts, spec);
    b.env_once("guest_kernel_release", out.env_value("guest_kernel"));
    if !out.success {
        log::warn!("{}", out.diagnostic());
    }
    out
}

/// The values of `field` (a number) in the `@@BENCH payload` lines whose other fields match
/// `filter`.
pub(crate) fn values(
    out: &RunOutput,
    payload: &str,
    filter: &[(&str, String)],
    field: &str,
) -> Vec<f64> {
    out.bench_lines(payload)
        .iter()
        .filter(|l| filter.iter().all(|(k, v)| l.get(*k) == Some(v)))
        .filter_map(|l| l.get(field)?.parse().ok())
        .collect()
}

/// Records a measurement from `out`, or a failure with the run's diagnostic if it has no values
/// (or the run itself failed, in which case partial values are not trusted).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    b: &mut Bench,
    suite: &str,
    name: &str,
    target: Target,
    unit: &str,
    higher_is_better: bool,
    out: &RunOutput,
    vals: Vec<f64>,
    params: &[(&str, String)],
) {
    if !out.success || vals.is_empty() {
        let why = if out.success {
            format!("no result line in the output\n{}", out.diagnostic())
        } else {
            out.diagnostic()
        };
        b.rec.failed(suite, name, Some(target), &why);
    } else {
        b.rec
            .measured(suite, name, target, unit, higher_is_better, vals, params);
    }
}
