//! `kvmrun exec` with tiny payload guests, directly on this machine's /dev/kvm (PVM included):
//! exit statuses, --timeout, --events, --config and the API socket. The payloads cannot run a
//! command; they leave by the exits a Linux guest would take, which is what exec judges.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::api::Api;
use common::{run_kvmrun, scratch_dir, wait_with_limit, write_payload, PayloadEnd};

const LIMIT: Duration = Duration::from_secs(30);

fn payload(dir: &Path, message: &[u8], end: PayloadEnd) -> String {
    write_payload(dir, "payload.elf", message, true, end)
        .to_str()
        .unwrap()
        .to_string()
}

fn exec(kernel: &str, extra: &[&str]) -> Output {
    let mut args = vec!["exec", "--allow-pvm", "--kernel", kernel];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "true"]);
    run_kvmrun(&args, LIMIT)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_guests_status_is_the_exit_status_and_the_console_stays_off_stdout() {
    let dir = scratch_dir("exec-status");
    for status in [0u8, 3, 77] {
        let k = payload(&dir, b"console line\n", PayloadEnd::DebugExit(status));
        let out = exec(&k, &[]);
        assert_eq!(
            out.status.code(),
            Some(i32::from(status)),
            "{}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains("console line"),
            "{}",
            text(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn com2_output_is_kvmruns_stdout_byte_for_byte() {
    let dir = scratch_dir("exec-com2");
    // The usual payload with its UART port moved from COM1 (0x3f8) to COM2 (0x2f8).
    let message = b"to stdout\r\nraw\n";
    let mut code = common::payload_code(message, true, PayloadEnd::DebugExit(0));
    assert_eq!(&code[..4], &[0x66, 0xBA, 0xF8, 0x03], "mov dx, 0x3f8 first");
    code[3] = 0x02;
    let k = dir.join("com2.elf");
    std::fs::write(&k, common::elf64(&code)).unwrap();
    let out = exec(k.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, message);
    assert!(!text(&out.stderr).contains("to stdout"));
    // `run` has no COM2: the same writes go nowhere.
    let out = run_kvmrun(
        &["run", "--allow-pvm", "--kernel", k.to_str().unwrap()],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_hung_guest_times_out_with_124_and_a_reason() {
    let dir = scratch_dir("exec-timeout");
    let k = payload(&dir, b"hanging\n", PayloadEnd::Hang);
    let t = Instant::now();
    let out = exec(&k, &["--timeout", "700ms", "--cpus", "2"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("--timeout"), "{stderr}");
    assert!(t.elapsed() >= Duration::from_millis(700));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_kernel_panic_exits_with_123_naming_it() {
    let dir = scratch_dir("exec-panic");
    let msg = b"Kernel panic - not syncing: Attempted to kill init!\r\n";
    let k = payload(&dir, msg, PayloadEnd::I8042Reset);
    let out = exec(&k, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(123), "{stderr}");
    assert!(
        stderr.contains("kvmrun: the guest kernel panicked: Kernel panic - not syncing: Attempted to kill init!"),
        "{stderr}"
    );
    let k = payload(&dir, b"x\n", PayloadEnd::TripleFault);
    assert_eq!(exec(&k, &[]).status.code(), Some(123));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_that_stops_without_a_status_exits_with_122() {
    let dir = scratch_dir("exec-lost");
    let k = payload(&dir, b"bye\n", PayloadEnd::AcpiPowerOff);
    let out = exec(&k, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(122), "{stderr}");
    assert!(
        stderr.contains("without reporting the command's exit status"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kvmrun_errors_exit_with_125() {
    let out = exec("/nonexistent/kernel", &[]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/nonexistent/kernel"));
    let out = run_kvmrun(&["exec", "--cpus", "0", "--", "true"], LIMIT);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let long = "x".repeat(3000);
    let out = exec("/nonexistent/kernel", &["--append", &long]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("more than the kernel's 2047"),
        "{}",
        text(&out.stderr)
    );
    let out = run_kvmrun(&["exec", "--allow-pvm", "--kernel", "/x"], LIMIT);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("no command"),
        "{}",
        text(&out.stderr)
    );
}

fn events_of(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with("{\"event\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn events_tell_the_lifecycle_in_order_with_timestamps() {
    let dir = scratch_dir("exec-events");
    let k = payload(&dir, b"hi\n", PayloadEnd::DebugExit(5));
    let file = dir.join("events.jsonl");
    let spec = format!("file={}", file.display());
    let out = exec(&k, &["--events", &spec]);
    assert_eq!(out.status.code(), Some(5));
    let events = events_of(&std::fs::read_to_string(&file).unwrap());
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "created",
            "kernel-loaded",
            "vcpus-started",
            "boot-complete",
            "exited"
        ]
    );
    let times: Vec<f64> = events
        .iter()
        .map(|e| e["elapsed_ms"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(events.iter().all(|e| e["unix_ms"].as_u64().is_some()));
    assert_eq!(events[4]["status"], 5);
    assert_eq!(events[4]["reason"], "debug-exit 5");
    // `json` puts the same stream on stderr.
    let out = exec(&k, &["--events", "json"]);
    let on_stderr = events_of(&text(&out.stderr));
    assert_eq!(on_stderr.len(), 5, "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_file_applies_and_config_print_round_trips() {
    let dir = scratch_dir("exec-config");
    let k = payload(&dir, b"cfg\n", PayloadEnd::DebugExit(9));
    let cfg = dir.join("vm.toml");
    std::fs::write(
        &cfg,
        format!("kernel = \"{k}\"\nallow-pvm = true\ncpus = 2\ntimeout = \"20s\"\n"),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let out = run_kvmrun(&["exec", "--config", cfg_s, "--", "true"], LIMIT);
    assert_eq!(out.status.code(), Some(9), "{}", text(&out.stderr));

    let out = run_kvmrun(
        &["config", "print", "--config", cfg_s, "--cpus", "3"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["cpus"], 3);
    assert_eq!(printed["kernel"], k.as_str());
    assert_eq!(printed["timeout"], "20s");
    let json = dir.join("printed.json");
    std::fs::write(&json, &out.stdout).unwrap();
    let again = run_kvmrun(
        &["config", "print", "--config", json.to_str().unwrap()],
        LIMIT,
    );
    assert_eq!(text(&again.stdout), text(&out.stdout));

    std::fs::write(&cfg, "cpus = 2\n\n memroy = \"1G\"\n").unwrap();
    let out = run_kvmrun(&["exec", "--config", cfg_s, "--", "true"], LIMIT);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("line 3") && stderr.contains("'memroy'"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn file_len(p: &PathBuf) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn wait_for_growth(p: &PathBuf, from: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = file_len(p);
        if n > from {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "no console output from the guest"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn api_pauses_resumes_and_stops_the_guest() {
    let dir = scratch_dir("exec-api");
    let k = payload(&dir, b"spinning\n", PayloadEnd::Spin(20_000));
    let sock = dir.join("api.sock");
    let console = dir.join("console.log");
    let child = common::kvmrun()
        .args([
            "exec",
            "--allow-pvm",
            "--cpus",
            "2",
            "--kernel",
            &k,
            "--api-socket",
        ])
        .arg(&sock)
        .arg("--console")
        .arg(format!("file={}", console.display()))
        .args(["--timeout", "60s", "--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut api = Api::connect(&sock, LIMIT);
    let q = api.call(r#"{"cmd":"query"}"#);
    assert_eq!(
        (q["ok"].clone(), q["state"].clone()),
        (true.into(), "running".into()),
        "{q}"
    );
    assert_eq!(q["vcpus"], 2);
    let before = wait_for_growth(&console, 0);
    wait_for_growth(&console, before);

    let r = api.call(r#"{"cmd":"pause"}"#);
    assert_eq!(r["state"], "paused", "{r}");
    let frozen = file_len(&console);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(file_len(&console), frozen, "the guest ran while paused");
    assert_eq!(api.call(r#"{"cmd":"query"}"#)["state"], "paused");

    let r = api.call(r#"{"cmd":"resume"}"#);
    assert_eq!(r["state"], "running", "{r}");
    wait_for_growth(&console, frozen);

    let bad = api.call(r#"{"cmd":"reboot"}"#);
    assert_eq!(bad["ok"], false);
    assert!(
        bad["error"].as_str().unwrap().contains("bad request"),
        "{bad}"
    );

    let r = api.call(r#"{"cmd":"shutdown","mode":"force"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let out = wait_with_limit(child, LIMIT);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(122), "{stderr}");
    assert!(stderr.contains("through the API"), "{stderr}");
    assert!(!sock.exists(), "the socket file outlived the run");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn graceful_shutdown_stops_a_deaf_guest_after_the_grace_period() {
    let dir = scratch_dir("exec-grace");
    let k = payload(&dir, b"deaf\n", PayloadEnd::Hang);
    let sock = dir.join("api.sock");
    let child = common::kvmrun()
        .args(["exec", "--allow-pvm", "--kernel", &k, "--api-socket"])
        .arg(&sock)
        .args(["--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut api = Api::connect(&sock, LIMIT);
    let t = Instant::now();
    let r = api.call(r#"{"cmd":"shutdown","grace_ms":400}"#);
    assert_eq!(
        (r["ok"].clone(), r["guest_asked"].clone()),
        (true.into(), true.into()),
        "{r}"
    );
    let out = wait_with_limit(child, LIMIT);
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(out.status.code(), Some(122), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
