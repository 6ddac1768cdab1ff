//! boot: the default guest (small kernel + busybox initramfs) booted `--runs` times per VMM,
//! running `true` and leaving through the debug-exit port, as resources/bench/boot.sh does:
//! wall time from start to exit for every VMM, and kvmrun's own boot-complete time (VMM start
//! to init's write to port 0x502). One untimed boot per VMM first warms the caches.

use super::super::results::Target;
use super::super::runner::{self, GuestSpec};
use super::super::Bench;

const SUITE: &str = "boot";

fn spec(b: &Bench, vmm: Target) -> GuestSpec {
    GuestSpec {
        vmm,
        cpus: 1,
        memory_mib: 256,
        initrd: b.artifacts.boot_initrd.clone(),
        disk: None,
        script: "true".into(),
        timeout: b.limit(10.0),
    }
}

pub fn steps(b: &Bench) -> usize {
    b.guest_targets().len() * (b.args.runs as usize + 1)
}

pub fn run(b: &mut Bench) {
    b.note_qemu_skip(SUITE);
    let runs = b.args.runs;
    for target in b.guest_targets() {
        let spec = spec(b, target);
        b.progress.step(&format!(
            "boot: {} warm-up boot (not timed)",
            target.label()
        ));
        let warm = runner::run_guest(&b.artifacts, &spec);
        if !warm.success {
            log::warn!("boot warm-up: {}", warm.diagnostic());
        }
        let (mut to_exit, mut to_complete) = (Vec::new(), Vec::new());
        let mut failure = None;
        for i in 1..=runs {
            b.progress
                .step(&format!("boot: {} boot {i}/{runs}", target.label()));
            let out = runner::run_guest(&b.artifacts, &spec);
            if !out.success {
                failure = Some(out.diagnostic());
                continue;
            }
            to_exit.push(out.elapsed.as_secs_f64() * 1000.0);
            if let Some(ms) = boot_complete_ms(&out.stderr) {
                to_complete.push(ms);
            }
        }
        let params = [
            ("vcpus", "1".to_string()),
            ("memory_mib", "256".to_string()),
            ("initrd", "default (busybox)".to_string()),
        ];
        if let Some(why) = failure {
            b.rec.failed(SUITE, "start-to-exit", Some(target), &why);
            continue;
        }
        b.rec.measured(
            SUITE,
            "start-to-exit",
            target,
            "ms",
            false,
            to_exit,
            &params,
        );
        if target == Target::Kvmrun {
            b.rec.measured(
                SUITE,
                "start-to-boot-complete",
                target,
                "ms",
                false,
                to_complete,
                &params,
            );
        }
    }
}

/// `boot_complete_ms` from kvmrun's `--boot-report json` line on stderr.
fn boot_complete_ms(stderr: &str) -> Option<f64> {
    stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())?
        .get("boot_complete_ms")?
        .as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_complete_is_read_from_the_boot_report() {
        let err = "warn: x\n{\"kernel_entry_ms\":2.1,\"boot_complete_ms\":310.5,\"exit_ms\":320}\n";
        assert_eq!(boot_complete_ms(err), Some(310.5));
        assert_eq!(boot_complete_ms("{\"exit_ms\":1}\n"), None);
    }
}
