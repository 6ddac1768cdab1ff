//! Where the benchmark runs: the artifacts it needs, and re-running `kvmrun bench` inside the
//! test host where this machine's /dev/kvm is PVM.
//!
//! The artifacts are built here on the host (the cache persists here, not in the throw-away
//! test host) and handed in through `KVMRUN_BENCH_*` variables; `KVMRUN_BENCH_INNER` tells the
//! inner run that it is the inner one, so it never starts a test host of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::runner::Artifacts;
use super::{arg_words, env, BenchArgs, BenchError, SuiteName};
use crate::resources;

/// Where the inner run finds the scratch disk (ext4 on this machine's disk, attached with
/// cache=none): tmpfs, the test host's /tmp, has no O_DIRECT.
const INNER_DISK_DIR: &str = "/mnt/kvmrun-bench";

fn var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).map(PathBuf::from)
}

/// The benchmark's artifacts: from `KVMRUN_BENCH_*` when the outer run passed them, else built
/// (and cached) by the resources scripts.
pub fn artifacts() -> Result<Artifacts, BenchError> {
    if let (Some(kernel), Some(bench_initrd), Some(boot_initrd), Some(payloads)) = (
        var("KVMRUN_BENCH_KERNEL"),
        var("KVMRUN_BENCH_INITRD"),
        var("KVMRUN_BENCH_BOOT_INITRD"),
        var("KVMRUN_BENCH_PAYLOADS"),
    ) {
        return Ok(Artifacts {
            kernel,
            bench_initrd,
            boot_initrd,
            payloads,
        });
    }
    eprintln!("bench: preparing the benchmark guest and payloads (built once, then cached)");
    let first = |script: &str| -> Result<Vec<PathBuf>, BenchError> {
        resources::build(script, &[]).map_err(BenchError::Artifacts)
    };
    let kernel = first("guest/build-kernel.sh")?
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "bzImage"))
        .ok_or_else(|| BenchError::Artifacts("the kernel builder printed no bzImage".into()))?;
    Ok(Artifacts {
        kernel,
        bench_initrd: first("guest/build-bench-initramfs.sh")?.remove(0),
        boot_initrd: first("guest/build-initramfs.sh")?.remove(0),
        payloads: first("bench/build-payloads.sh")?.remove(0),
    })
}

/// A scratch ext4 image on this machine's disk for the disk suite, removed when dropped.
struct ScratchDisk {
    dir: PathBuf,
    image: PathBuf,
}

impl ScratchDisk {
    fn create() -> Result<ScratchDisk, BenchError> {
        let base = var("KVMRUN_BENCH_DISK_DIR").unwrap_or_else(|| "/var/tmp".into());
        let dir = base.join(format!("kvmrun-bench-disk.{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| BenchError::Io {
            what: "creating the scratch disk directory",
            path: dir.clone(),
            source,
        })?;
        let image = dir.join("scratch.img");
        let file = std::fs::File::create(&image).map_err(|source| BenchError::Io {
            what: "creating the scratch disk",
            path: image.clone(),
            source,
        })?;
        // Sparse: the 256 MiB test image plus room for the file system.
        file.set_len(1 << 30).map_err(|source| BenchError::Io {
            what: "sizing the scratch disk",
            path: image.clone(),
            source,
        })?;
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "kvmrun-bench"])
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success());
        let disk = ScratchDisk { dir, image };
        if !ok {
            return Err(BenchError::TestHost(format!(
                "mkfs.ext4 {} failed (apt-get install e2fsprogs)",
                disk.image.display()
            )));
        }
        Ok(disk)
    }
}

impl Drop for ScratchDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Re-runs this `kvmrun bench` inside the test host; returns its exit status.
pub fn run_inside(args: &BenchArgs) -> Result<i32, BenchError> {
    let script = resources::dir().join("testhost/run.sh");
    if !script.is_file() {
        return Err(BenchError::TestHost(format!(
            "{} not found",
            script.display()
        )));
    }
    let a = artifacts()?;
    let exe =
        std::env::current_exe().map_err(|e| BenchError::TestHost(format!("own path: {e}")))?;
    let scratch = if args.suites.contains(&SuiteName::Disk) {
        Some(ScratchDisk::create()?)
    } else {
        None
    };
    eprintln!(
        "bench: /dev/kvm here is PVM, so the benchmark runs inside the test host (QEMU TCG with \
         nested SVM): only ratios taken in the same run mean anything there"
    );
    let timeout = if args.quick { 1800 } else { 4 * 3600 };
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .args(["--timeout", &timeout.to_string()])
        .arg("--share")
        .arg(&args.out);
    if let Some(d) = &scratch {
        cmd.arg("--disk")
            .arg(format!("{}:{INNER_DISK_DIR}", d.image.display()));
    }
    let envs: [(&str, String); 9] = [
        ("KVMRUN_BENCH_INNER", "1".into()),
        ("KVMRUN_BENCH_KERNEL", path(&a.kernel)),
        ("KVMRUN_BENCH_INITRD", path(&a.bench_initrd)),
        ("KVMRUN_BENCH_BOOT_INITRD", path(&a.boot_initrd)),
        ("KVMRUN_BENCH_PAYLOADS", path(&a.payloads)),
        ("KVMRUN_BENCH_DISK_DIR", INNER_DISK_DIR.into()),
        ("KVMRUN_BENCH_GIT", env::git_revision()),
        ("KVMRUN_BENCH_OUTER_CPU", env::cpu_model()),
        ("KVMRUN_BENCH_OUTER_KERNEL", env::kernel_release()),
    ];
    for (k, v) in envs {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    cmd.arg("--").arg(&exe).args(arg_words(args));
    log::info!("test host: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| BenchError::TestHost(format!("cannot run {}: {e}", script.display())))?;
    drop(scratch);
    Ok(status.code().unwrap_or(1))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::super::{CompareWith, SuiteName};
    use super::*;

    #[test]
    fn the_inner_run_gets_the_same_bench() {
        let a = BenchArgs {
            suites: vec![SuiteName::Cpu, SuiteName::Disk],
            runs: 5,
            quick: true,
            compare: Some(CompareWith::Qemu),
            out: "/var/tmp/x".into(),
        };
        assert_eq!(
            arg_words(&a).join(" "),
            "bench --suite cpu,disk --runs 5 --quick --compare qemu --out /var/tmp/x"
        );
    }
}
