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
        SuiteName::Net | SuiteName::Vm2vm => net::steps(b),
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

#[cfg(test)]
mod tests {
    use super::super::progress::Progress;
    use super::super::results::Recorder;
    use super::super::runner::{guest_cmdline, guest_script, Artifacts, MAX_CMDLINE};
    use super::super::{BenchArgs, CompareWith};
    use super::*;

    pub(super) fn bench(quick: bool) -> Bench {
        Bench {
            args: BenchArgs {
                suites: vec![],
                runs: 100,
                quick,
                compare: Some(CompareWith::Qemu),
                out: "/x".into(),
            },
            artifacts: Artifacts {
                kernel: "/k".into(),
                bench_initrd: "/i".into(),
                boot_initrd: "/b".into(),
                payloads: "/p".into(),
            },
            host_cpus: 64,
            in_testhost: false,
            qemu_unavailable: None,
            progress: Progress::new(0),
            rec: Recorder::default(),
            env: Default::default(),
        }
    }

    /// The guest takes its workload on the kernel command line: every suite's script must fit,
    /// at the most runs and the biggest machine.
    #[test]
    fn every_guest_script_fits_the_kernel_command_line() {
        for quick in [true, false] {
            let b = bench(quick);
            let scripts = [
                cpu::script(&b, &[1, 64, 96, 128]),
                mem::script(&b),
                disk::script(&b),
                concurrency::script(&b),
            ];
            for s in scripts {
                let spec = bench_guest(&b, Target::Kvmrun, 1, s.clone(), 1.0);
                let len = guest_cmdline(&guest_script(&spec)).len();
                assert!(len <= MAX_CMDLINE, "{len} bytes for:\n{s}");
            }
        }
    }

    #[test]
    fn a_missing_qemu_is_a_skip_with_its_reason_not_a_silent_drop() {
        let mut b = bench(true);
        b.qemu_unavailable = Some("qemu-system-x86_64 not found".into());
        assert_eq!(b.guest_targets(), [Target::Kvmrun]);
        b.note_qemu_skip("cpu");
        assert!(
            matches!(&b.rec.outcomes[..], [super::super::results::Outcome::Skipped(u)]
            if u.target == Some(Target::Qemu) && u.reason.contains("not found"))
        );
        // Without --compare qemu nothing is said about QEMU.
        let mut b = bench(true);
        b.args.compare = None;
        assert_eq!(b.guest_targets(), [Target::Kvmrun]);
        b.note_qemu_skip("cpu");
        assert!(b.rec.outcomes.is_empty());
    }

    #[test]
    fn steps_count_every_host_run_and_guest_boot() {
        let b = bench(true);
        // cpu: host + one guest per target (kvmrun, qemu); quick has no overcommit guests.
        assert_eq!(steps(SuiteName::Cpu, &b), 3);
        // boot: per target one warm-up + runs boots.
        assert_eq!(steps(SuiteName::Boot, &b), 2 * 101);
        // net: one script run.
        assert_eq!(steps(SuiteName::Net, &b), 1);
    }
}
