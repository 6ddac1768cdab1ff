//! cpu: matrix multiplication (the `matmul` payload), MFLOP/s over sizes from in-cache to
//! in-memory, with 1 thread and with threads = vCPUs = host CPUs; in full runs also overcommitted,
//! 1.5x and 2x as many threads (and vCPUs) as host CPUs, as in the reference experiments.

use super::super::results::Target;
use super::super::runner;
use super::super::Bench;
use super::{bench_guest, record, run_guest, values};

const SUITE: &str = "cpu";

fn sizes(b: &Bench) -> Vec<u32> {
    if b.args.quick {
        vec![64, 128, 256]
    } else if b.in_testhost {
        // Under emulation 2048 alone would take the better part of an hour.
        vec![64, 128, 256, 512, 1024]
    } else {
        vec![64, 128, 256, 512, 1024, 2048]
    }
}

fn min_seconds(b: &Bench) -> f64 {
    if b.args.quick {
        0.2
    } else {
        0.5
    }
}

/// (vCPUs of the guest, thread counts run in it): 1 thread and full load in one guest with as
/// many vCPUs as host CPUs, then the overcommitted guests.
fn guests(b: &Bench) -> Vec<(u32, Vec<u32>)> {
    let n = b.host_cpus;
    let mut g = vec![(n, if n > 1 { vec![1, n] } else { vec![1] })];
    if !b.args.quick {
        let unbalanced = (3 * n).div_ceil(2);
        if unbalanced != n {
            g.push((unbalanced, vec![unbalanced]));
        }
        g.push((2 * n, vec![2 * n]));
    }
    g
}

/// A rough duration of one matmul invocation, for time limits: every size takes at least
/// `min_seconds` per run, the big ones longer under emulation.
fn expected_s(b: &Bench, threads: usize) -> f64 {
    let sizes = sizes(b).len() as f64;
    threads as f64 * sizes * f64::from(b.args.runs + 1) * min_seconds(b) * 3.0
}

pub(super) fn script(b: &Bench, threads: &[u32]) -> String {
    let sizes: Vec<String> = sizes(b).iter().map(|s| s.to_string()).collect();
    threads
        .iter()
        .map(|t| {
            format!(
                "matmul {t} {} {} {} || exit $?",
                b.args.runs,
                min_seconds(b),
                sizes.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn steps(b: &Bench) -> usize {
    1 + guests(b).len() * b.guest_targets().len()
}

pub fn run(b: &mut Bench) {
    b.note_qemu_skip(SUITE);
    if b.args.quick {
        b.rec.skipped(
            SUITE,
            "matmul/overcommit",
            None,
            "--quick: the 1.5x and 2x overcommitted runs are only in full runs",
        );
    }
    // The host: every thread count any guest runs.
    let mut all_threads: Vec<u32> = guests(b).into_iter().flat_map(|(_, t)| t).collect();
    all_threads.dedup();
    b.progress.step(&format!(
        "cpu: host, matmul with {all_threads:?} threads, sizes {:?}",
        sizes(b)
    ));
    let limit = b.limit(expected_s(b, all_threads.len()));
    let out = runner::run_host(&b.artifacts, &script(b, &all_threads), None, limit);
    for (vcpus, threads) in guests(b) {
        collect(b, Target::Host, &out, &threads, vcpus);
    }
    for target in b.guest_targets() {
        for (vcpus, threads) in guests(b) {
            b.progress.step(&format!(
                "cpu: {} guest, {vcpus} vCPUs, matmul with {threads:?} threads",
                target.label()
            ));
            let spec = bench_guest(
                b,
                target,
                vcpus,
                script(b, &threads),
                expected_s(b, threads.len()),
            );
            let out = run_guest(b, &spec);
            collect(b, target, &out, &threads, vcpus);
        }
    }
}

fn collect(b: &mut Bench, target: Target, out: &runner::RunOutput, threads: &[u32], vcpus: u32) {
    for &t in threads {
        for n in sizes(b) {
            let filter = [("threads", t.to_string()), ("n", n.to_string())];
            let vals = values(out, "matmul", &filter, "mflops");
            let mut params = vec![
                ("threads", t.to_string()),
                ("n", n.to_string()),
                ("min_seconds", min_seconds(b).to_string()),
            ];
            if target != Target::Host {
                params.push(("vcpus", vcpus.to_string()));
            }
            let name = format!("matmul/t{t}/n{n}");
            record(b, SUITE, &name, target, "MFLOP/s", true, out, vals, &params);
        }
    }
}
