//! Many threads allocating at once under the filters: glibc must not look up the CPU count
//! (an `openat` of /sys/devices/system/cpu/online) when it needs a ninth malloc arena.
//! Re-runs itself in a child process, as `blk_test` does: filters cannot be removed.

use std::sync::{Arc, Barrier};

use super::{apply, enable, ThreadKind};

const CHILD_ENV: &str = "KVMRUN_TEST_SECCOMP_ARENA_CHILD";
/// More threads allocating at the same time than glibc's first arena limit (8).
const THREADS: usize = 24;

#[test]
fn many_threads_allocate_under_the_filters() {
    super::child_test::run_in_child(
        concat!(module_path!(), "::many_threads_allocate_under_the_filters"),
        CHILD_ENV,
        "arena test child: done",
        child,
    );
}

fn child() -> ! {
    enable().unwrap();
    // As in kvmrun: a vCPU thread (which may create threads) starts device threads, each of
    // which installs the worker filter first and then allocates, all alive at once.
    let vcpu = std::thread::spawn(|| {
        apply(ThreadKind::Vcpu, "vcpu0").unwrap();
        let barrier = Arc::new(Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let b = barrier.clone();
                std::thread::spawn(move || {
                    apply(ThreadKind::Worker, "worker").unwrap();
                    let v = vec![i as u8; 4096 + i];
                    b.wait();
                    let w = vec![v[0]; 100_000];
                    w.len()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .sum::<usize>()
    });
    assert_eq!(vcpu.join().unwrap(), THREADS * 100_000);
    eprintln!("arena test child: done");
    std::process::exit(0);
}
