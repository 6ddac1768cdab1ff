//! Tiny payload guests: a few dozen instructions of 64-bit code that write to the serial port
//! and leave by one of the machine's exits. They test vCPU set-up, the run loop, the serial
//! device and every exit path directly on this machine's /dev/kvm (PVM included), in seconds.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{run_kvmrun, scratch_dir, write_payload, PayloadEnd};

const LIMIT: Duration = Duration::from_secs(30);

fn run_payload(name: &str, end: PayloadEnd, extra: &[&str]) -> (std::process::Output, String) {
    let dir = scratch_dir(name);
    let kernel = write_payload(&dir, "payload.elf", b"hello from payload\n", true, end);
    let kernel = kernel.to_str().unwrap().to_string();
    let mut args = vec!["run", "--allow-pvm", "--kernel", &kernel];
    args.extend_from_slice(extra);
    let out = run_kvmrun(&args, LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    (out, stdout)
}

#[test]
fn debug_exit_port_sets_the_exit_status() {
    for status in [0u8, 1, 42, 255] {
        let (out, stdout) =
            run_payload(&format!("exit{status}"), PayloadEnd::DebugExit(status), &[]);
        assert_eq!(
            out.status.code(),
            Some(i32::from(status)),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("hello from payload"), "stdout: {stdout}");
    }
}

#[test]
fn i8042_reset_exits_with_status_zero_quickly() {
    let t = Instant::now();
    let (out, stdout) = run_payload("reset", PayloadEnd::I8042Reset, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hello from payload"));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn acpi_s5_powers_off_with_status_zero() {
    let (out, stdout) = run_payload("poweroff", PayloadEnd::AcpiPowerOff, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hello from payload"));
}

#[test]
fn triple_fault_is_a_clear_nonzero_exit() {
    let (out, stdout) = run_payload("triple", PayloadEnd::TripleFault, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stdout.contains("hello from payload"));
    assert!(stderr.contains("triple-fault"), "stderr: {stderr}");
}

#[test]
fn pit_is_there_only_when_asked_for() {
    let status = |mode: &str| {
        let (out, _) = run_payload(
            &format!("pit-{mode}"),
            PayloadEnd::PitStatusExit,
            &["--pit", mode],
        );
        out.status.code().expect("exit status")
    };
    // The 8254's status byte after programming counter 0 as lo/hi byte, mode 0, binary.
    assert_eq!(status("on") & 0x3f, 0x30, "--pit on: KVM's PIT answers");
    // No device on ports 0x40-0x43: reads float high.
    assert_eq!(status("off"), 0xff, "--pit off: no PIT");
}

#[test]
fn several_vcpus_start_and_all_threads_are_joined() {
    let (out, stdout) = run_payload("smp", PayloadEnd::DebugExit(7), &["--cpus", "4"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hello from payload"));
}

#[test]
fn console_file_receives_the_output() {
    let dir = scratch_dir("console-file");
    let log = dir.join("console.log");
    let spec = format!("file={}", log.display());
    let (out, stdout) = run_payload(
        "console-file-run",
        PayloadEnd::DebugExit(0),
        &["--console", &spec],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(!stdout.contains("hello from payload"));
    let written = std::fs::read_to_string(&log).unwrap();
    assert_eq!(written, "hello from payload\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn boot_report_json_has_ordered_milestones() {
    let (out, _) = run_payload(
        "report",
        PayloadEnd::DebugExit(0),
        &["--boot-report", "json"],
    );
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
    let ms = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {line}"))
    };
    let (entry, first, done, exit) = (
        ms("kernel_entry_ms"),
        ms("first_console_byte_ms"),
        ms("boot_complete_ms"),
        ms("exit_ms"),
    );
    assert!(
        0.0 < entry && entry <= first && first <= done && done <= exit,
        "{line}"
    );
    assert_eq!(v["exit_status"], 0);
    assert_eq!(v["exit_reason"], "debug-exit 0");
}

/// Starts a 2-vCPU payload guest ending with `end`, sends it `signals`
/// SIGTERMs 100 ms apart, and returns its output and the time from the first signal to its exit.
fn signalled(name: &str, end: PayloadEnd, signals: u32, extra: &[&str]) -> (Output, Duration) {
    let dir = scratch_dir(name);
    let kernel = write_payload(&dir, "payload.elf", b"started\n", false, end);
    let child = common::kvmrun()
        .args([
            "run",
            "--allow-pvm",
            "--cpus",
            "2",
            "--kernel",
            kernel.to_str().unwrap(),
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Time for the signal handlers to be in place (they are, before the vCPUs start); the
    // guest may or may not have reached its end yet, which these tests do not depend on.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    for i in 0..signals {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let out = common::wait_with_limit(child, Duration::from_secs(20));
    let took = t.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    (out, took)
}

#[test]
fn sigterm_asks_the_guest_on_com2_and_its_shutdown_sets_the_status() {
    // With a disk: the image is flushed at exit by the main thread, under its seccomp filter.
    let dir = scratch_dir("sigterm-ask-disk");
    let img = dir.join("disk.img");
    common::sparse_file(&img, 1 << 20);
    let disk = format!("path={}", img.display());
    let (out, took) = signalled(
        "sigterm-ask",
        PayloadEnd::WaitCom2ThenExit(7),
        1,
        &["--disk", &disk],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "stderr: {stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(stderr.contains("asked the guest to shut down"), "{stderr}");
}

#[test]
fn sigterm_stops_a_guest_that_ignores_it_after_the_grace_period() {
    let (out, took) = signalled(
        "sigterm-grace",
        PayloadEnd::Hang,
        1,
        &["--shutdown-grace", "1500ms"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert!(stderr.contains("did not shut down within"), "{stderr}");
}

#[test]
fn second_sigterm_stops_a_hung_guest_at_once_and_joins_its_vcpus() {
    let (out, took) = signalled("sigterm-twice", PayloadEnd::Hang, 2, &[]);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
    // Well within the default 10 s grace.
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn zero_shutdown_grace_stops_at_the_first_signal() {
    let (out, took) = signalled(
        "sigterm-zero",
        PayloadEnd::WaitCom2ThenExit(7),
        1,
        &["--shutdown-grace", "0"],
    );
    // Stopped by kvmrun, not by the guest (which would have said 7).
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn run_serves_the_control_api_too() {
    let dir = scratch_dir("run-api");
    let kernel = write_payload(&dir, "hang.elf", b"up\n", true, PayloadEnd::Hang);
    let sock = dir.join("api.sock");
    let child = common::kvmrun()
        .args(["run", "--allow-pvm", "--kernel", kernel.to_str().unwrap()])
        .args(["--api-socket", sock.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut api = common::api::Api::connect(&sock, LIMIT);
    api.wait_for_boot();
    assert_eq!(api.call(r#"{"cmd":"query"}"#)["state"], "running");
    assert_eq!(api.call(r#"{"cmd":"pause"}"#)["state"], "paused");
    assert_eq!(api.call(r#"{"cmd":"resume"}"#)["state"], "running");
    assert_eq!(
        api.call(r#"{"cmd":"shutdown","mode":"force"}"#)["state"],
        "stopping"
    );
    let out = common::wait_with_limit(child, LIMIT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sock.exists(), "the socket file was left behind");
    let _ = std::fs::remove_dir_all(&dir);
}
