//! concurrency: N single-vCPU guests at once (N processes on the host), each running the same
//! fixed amount of CPU work (the `cycles` payload: pi by the midpoint rule, timed with RDTSC and
//! the monotonic clock). Per instance: seconds and Mcycles; per N: the spread of the instances'
//! times, (max - min) / median in %, per run. N = host CPUs (full load); full runs add N = 1 and
//! 2 x host CPUs (overcommit), as the reference experiments' 1, 8 and 17 guests. The instances
//! boot first and start their work together, at a start barrier on their consoles.

use super::super::results::Target;
use super::super::runner::{self, RunOutput};
use super::super::stats::spread_percent;
use super::super::Bench;
use super::{bench_guest, record, values};

const SUITE: &str = "concurrency";

fn counts(b: &Bench) -> Vec<u32> {
    if b.args.quick {
        vec![b.host_cpus]
    } else {
        let mut c = vec![1, b.host_cpus, 2 * b.host_cpus];
        c.dedup();
        c
    }
}

fn iterations(b: &Bench) -> u64 {
    // About 0.05 s (quick) or 0.25 s natively per run; tens of times that under emulation.
    if b.args.quick {
        20_000_000
    } else {
        100_000_000
    }
}

/// Waits at the start barrier (so that every instance's work overlaps, not its boot), then runs.
pub(super) fn script(b: &Bench) -> String {
    format!(
        "{}\ncycles {} {}",
        runner::BARRIER,
        iterations(b),
        b.args.runs
    )
}

fn expected_s(b: &Bench, n: u32) -> f64 {
    f64::from(n) * f64::from(b.args.runs) * iterations(b) as f64 / 2e7 * 2.0 + 30.0
}

pub fn steps(b: &Bench) -> usize {
    counts(b).len() * (1 + b.guest_targets().len())
}

pub fn run(b: &mut Bench) {
    b.note_qemu_skip(SUITE);
    let mut targets = vec![Target::Host];
    targets.extend(b.guest_targets());
    for n in counts(b) {
        for &target in &targets {
            b.progress.step(&format!(
                "concurrency: {n} {} at once, cycles payload",
                if target == Target::Host {
                    "host processes".to_string()
                } else {
                    format!("{} guests (1 vCPU each)", target.label())
                }
            ));
            let outs = run_many(b, target, n);
            collect(b, target, n, &outs);
        }
    }
}

/// Starts `n` instances, lets them all begin their work at once when every one has reached the
/// start barrier (booted), and waits for all of them.
fn run_many(b: &mut Bench, target: Target, n: u32) -> Vec<RunOutput> {
    let limit = b.limit(expected_s(b, n));
    let mut started: Vec<_> = (0..n)
        .map(|_| {
            if target == Target::Host {
                runner::start_host(&b.artifacts, &script(b), None, limit)
            } else {
                let spec = bench_guest(b, target, 1, script(b), expected_s(b, n));
                runner::start_guest(&b.artifacts, &spec)
            }
        })
        .collect();
    let deadline = std::time::Instant::now() + limit;
    loop {
        let waiting = started.iter_mut().any(|r| match r {
            Ok(r) => !r.printed(runner::READY) && !r.ended(),
            Err(_) => false,
        });
        if !waiting || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for r in started.iter_mut().flatten() {
        r.release();
    }
    let outs: Vec<RunOutput> = started
        .into_iter()
        .map(|r| match r {
            Ok(r) => r.finish(),
            Err(e) => RunOutput {
                what: target.label().into(),
                success: false,
                status: None,
                timed_out: false,
                stdout: String::new(),
                stderr: e,
                elapsed: Default::default(),
            },
        })
        .collect();
    for o in &outs {
        b.env_once("guest_kernel_release", o.env_value("guest_kernel"));
    }
    outs
}

fn collect(b: &mut Bench, target: Target, n: u32, outs: &[RunOutput]) {
    let params = [
        ("instances", n.to_string()),
        ("iterations", iterations(b).to_string()),
        ("vcpus_each", "1".to_string()),
    ];
    let mut per_instance = Vec::new();
    for (i, out) in outs.iter().enumerate() {
        let secs = values(out, "cycles", &[], "seconds");
        let mcycles = values(out, "cycles", &[], "mcycles");
        let name = format!("pi/n{n}/instance{}", i + 1);
        record(
            b,
            SUITE,
            &format!("{name}/seconds"),
            target,
            "s",
            false,
            out,
            secs.clone(),
            &params,
        );
        record(
            b,
            SUITE,
            &format!("{name}/mcycles"),
            target,
            "Mcycles",
            false,
            out,
            mcycles,
            &params,
        );
        per_instance.push((out.success, secs));
    }
    if n < 2 {
        return;
    }
    // The spread over instances, run by run: run r of every instance ran at about the same time.
    let runs = b.args.runs as usize;
    let complete = per_instance.iter().all(|(ok, s)| *ok && s.len() == runs);
    let name = format!("pi/n{n}/spread");
    if !complete {
        b.rec.failed(
            SUITE,
            &name,
            Some(target),
            "not every instance gave every run",
        );
        return;
    }
    let spreads: Vec<f64> = (0..runs)
        .filter_map(|r| {
            let at: Vec<f64> = per_instance.iter().map(|(_, s)| s[r]).collect();
            spread_percent(&at)
        })
        .collect();
    b.rec
        .measured(SUITE, &name, target, "%", false, spreads, &params);
}
