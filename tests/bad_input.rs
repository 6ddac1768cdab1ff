//! Host-side bad input: each gets one clear error line naming the thing, and a non-zero status.

mod common;

use std::time::Duration;

use common::{run_kvmrun, scratch_dir, write_payload, PayloadEnd};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs kvmrun expecting failure; returns (status, stderr).
fn fails(args: &[&str]) -> (i32, String) {
    let out = run_kvmrun(args, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().expect("exited normally");
    assert_ne!(code, 0, "kvmrun {args:?} succeeded; stderr: {stderr}");
    (code, stderr)
}

fn payload(dir: &std::path::Path) -> String {
    write_payload(dir, "p.elf", b"x", false, PayloadEnd::DebugExit(0))
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn missing_kernel_names_the_file() {
    let (code, err) = fails(&["run", "--allow-pvm", "--kernel", "/nonexistent/bzImage"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("kernel /nonexistent/bzImage") && err.contains("No such file"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn garbage_kernel_is_rejected_as_such() {
    let dir = scratch_dir("garbage");
    let k = dir.join("garbage");
    std::fs::write(&k, vec![0x5au8; 64 * 1024]).unwrap();
    let (code, err) = fails(&["run", "--allow-pvm", "--kernel", k.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.to_lowercase().contains("kernel"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn initrd_that_does_not_fit_is_rejected() {
    let dir = scratch_dir("big-initrd");
    let k = payload(&dir);
    let initrd = dir.join("initrd");
    // Sparse: 100 MiB of apparent size, nothing written.
    common::sparse_file(&initrd, 100 << 20);
    let (code, err) = fails(&[
        "run",
        "--allow-pvm",
        "--kernel",
        &k,
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory",
        "64M",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("initrd") && err.contains("does not fit"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_initrd_names_the_file() {
    let dir = scratch_dir("no-initrd");
    let k = payload(&dir);
    let (_, err) = fails(&[
        "run",
        "--allow-pvm",
        "--kernel",
        &k,
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert!(err.contains("initrd /nonexistent/initrd"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_sizes_and_options_are_rejected() {
    let (_, err) = fails(&["run", "--memory", "12X"]);
    assert!(err.contains("not a memory size"), "{err}");
    let (_, err) = fails(&["run", "--cpus", "0"]);
    assert!(err.contains("--cpus"), "{err}");
    let (_, err) = fails(&["run", "--console", "tty"]);
    assert!(err.contains("not a console mode"), "{err}");
    let (_, err) = fails(&["run", "--frobnicate"]);
    assert!(err.contains("--frobnicate"), "{err}");
}

#[test]
fn memory_too_small_or_too_large_is_rejected() {
    let dir = scratch_dir("mem");
    let k = payload(&dir);
    let (code, err) = fails(&["run", "--allow-pvm", "--kernel", &k, "--memory", "1M"]);
    assert_eq!(code, 1);
    assert!(err.contains("memory"), "{err}");
    let (code, err) = fails(&["run", "--allow-pvm", "--kernel", &k, "--memory", "64T"]);
    assert_eq!(code, 1);
    assert!(err.contains("memory"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pvm_host_is_detected_before_boot() {
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists()
        || !std::fs::read_to_string("/proc/cpuinfo")
            .unwrap()
            .split_whitespace()
            .any(|f| f == "vmx" || f == "svm");
    let dir = scratch_dir("pvm");
    let k = payload(&dir);
    let out = run_kvmrun(&["run", "--kernel", &k], LIMIT);
    let err = String::from_utf8_lossy(&out.stderr);
    if pvm {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("PVM") && err.contains("--testhost"), "{err}");
    } else {
        // Hardware KVM: the payload just runs.
        assert_eq!(out.status.code(), Some(0), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_dev_kvm_is_one_clear_line() {
    let dir = scratch_dir("nokvm");
    let k = payload(&dir);
    // A private mount namespace where /dev/kvm is /dev/null: open works, KVM ioctls do not;
    // and one where it is gone altogether.
    for setup in [
        "mount --bind /dev/null /dev/kvm",
        "mount -t tmpfs none /dev",
    ] {
        let script = format!("{setup} && exec \"$0\" run --allow-pvm --kernel {k}");
        let out = std::process::Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                env!("CARGO_BIN_EXE_kvmrun"),
            ])
            .output()
            .expect("unshare (util-linux) runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{setup}: {err}");
        assert!(err.contains("/dev/kvm"), "{setup}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn disk_problems_are_named() {
    let dir = scratch_dir("disk-bad");
    let k = payload(&dir);
    let (code, err) = fails(&[
        "run",
        "--allow-pvm",
        "--kernel",
        &k,
        "--disk",
        "path=/nonexistent/disk.img",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/disk.img"), "{err}");
    let d = dir.to_str().unwrap().to_string();
    let (_, err) = fails(&[
        "run",
        "--allow-pvm",
        "--kernel",
        &k,
        "--disk",
        &format!("path={d}"),
    ]);
    assert!(err.contains(&d), "{err}");
    let (code, err) = fails(&[
        "run",
        "--allow-pvm",
        "--kernel",
        &k,
        "--disk",
        "readonly=on",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("path=FILE"), "{err}");
    let (_, err) = fails(&[
        "run",
        "--allow-pvm",
        "--kernel",
        &k,
        "--disk",
        "path=/x,cache=none",
    ]);
    assert!(err.contains("unknown"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn disk_image_in_use_by_another_vm_is_refused() {
    let dir = scratch_dir("disk-busy");
    let hang = write_payload(&dir, "hang.elf", b"up\n", false, PayloadEnd::Hang);
    let k = payload(&dir);
    let img = dir.join("busy.img");
    common::sparse_file(&img, 1 << 20);
    let disk = format!("path={}", img.display());
    let mut first = common::kvmrun()
        .args([
            "run",
            "--allow-pvm",
            "--console",
            "none",
            "--kernel",
            hang.to_str().unwrap(),
            "--disk",
            &disk,
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (code, err) = fails(&["run", "--allow-pvm", "--kernel", &k, "--disk", &disk]);
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(code, 1);
    assert!(
        err.contains("busy.img") && err.to_lowercase().contains("in use"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn disk_image_without_permission_is_named() {
    let dir = scratch_dir("disk-perm");
    let k = payload(&dir);
    let img = dir.join("noperm.img");
    common::sparse_file(&img, 1 << 20);
    std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    // Root would override file modes: run without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH so the
    // permission check applies as for any user.
    let out = std::process::Command::new("setpriv")
        .args([
            "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search",
            env!("CARGO_BIN_EXE_kvmrun"),
            "run",
            "--allow-pvm",
            "--console",
            "none",
            "--kernel",
            &k,
            "--disk",
            &format!("path={}", img.display()),
        ])
        .output()
        .expect("setpriv (util-linux) runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("noperm.img") && err.contains("permission denied"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
