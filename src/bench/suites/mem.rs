//! mem: STREAM-style memory bandwidth (the `stream` payload): copy, scale, add and triad in MB/s,
//! one thread, on the host and in a 1-vCPU guest.

use super::super::results::Target;
use super::super::runner;
use super::super::Bench;
use super::{bench_guest, record, run_guest, values};

const SUITE: &str = "mem";
const KERNELS: [&str; 4] = ["copy", "scale", "add", "triad"];

/// Array lengths (doubles): three arrays of 16 MB (quick) or 64 MB, well past a last-level
/// cache; full runs add 2 MB arrays, which stay in cache on most machines.
fn lengths(b: &Bench) -> Vec<u64> {
    if b.args.quick {
        vec![2_000_000]
    } else {
        vec![250_000, 8_000_000]
    }
}

fn min_seconds(b: &Bench) -> f64 {
    if b.args.quick {
        0.2
    } else {
        0.5
    }
}

pub(super) fn script(b: &Bench) -> String {
    lengths(b)
        .iter()
        .map(|n| format!("stream {n} {} {} || exit $?", b.args.runs, min_seconds(b)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn expected_s(b: &Bench) -> f64 {
    lengths(b).len() as f64 * 4.0 * f64::from(b.args.runs + 1) * min_seconds(b) * 3.0
}

pub fn steps(b: &Bench) -> usize {
    1 + b.guest_targets().len()
}

pub fn run(b: &mut Bench) {
    b.note_qemu_skip(SUITE);
    b.progress
        .step(&format!("mem: host, stream over {:?} doubles", lengths(b)));
    let limit = b.limit(expected_s(b));
    let out = runner::run_host(&b.artifacts, &script(b), None, limit);
    collect(b, Target::Host, &out);
    for target in b.guest_targets() {
        b.progress
            .step(&format!("mem: {} guest, 1 vCPU, stream", target.label()));
        let spec = bench_guest(b, target, 1, script(b), expected_s(b));
        let out = run_guest(b, &spec);
        collect(b, target, &out);
    }
}

fn collect(b: &mut Bench, target: Target, out: &runner::RunOutput) {
    for n in lengths(b) {
        for k in KERNELS {
            let filter = [("kernel", k.to_string()), ("n", n.to_string())];
            let vals = values(out, "stream", &filter, "mbps");
            let mib = 3 * 8 * n / (1 << 20);
            let params = [
                ("kernel", k.to_string()),
                ("array_doubles", n.to_string()),
                ("footprint_mib", mib.to_string()),
                ("threads", "1".to_string()),
            ];
            let name = format!("stream/{k}/{mib}MiB");
            record(b, SUITE, &name, target, "MB/s", true, out, vals, &params);
        }
    }
}
