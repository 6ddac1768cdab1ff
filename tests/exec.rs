//! `kvmrun exec` with the default guest (Linux): status and output of real commands, dir=
//! disks, the API with a guest that listens, and 8 runs at once. They need a /dev/kvm that
//! runs Linux, so a plain `cargo test` skips them; `resources/run-tests.sh` runs them with
//! `--ignored` (inside the test host where /dev/kvm is PVM).

mod common;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::api::Api;
use common::{run_kvmrun, scratch_dir, wait_with_limit};

const LIMIT: Duration = Duration::from_secs(180);

fn artifact(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the guest tests through resources/run-tests.sh")
    })
}

/// `kvmrun exec` of the default guest's kernel and initramfs with `opts`, then `-- command`.
fn exec_args(opts: &[&str], command: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "exec".into(),
        "--kernel".into(),
        artifact("KVMRUN_TEST_BZIMAGE"),
        "--initrd".into(),
        artifact("KVMRUN_TEST_INITRD"),
    ];
    a.extend(opts.iter().map(|s| s.to_string()));
    a.push("--".into());
    a.extend(command.iter().map(|s| s.to_string()));
    a
}

fn exec(opts: &[&str], command: &[&str]) -> Output {
    let args = exec_args(opts, command);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let out = run_kvmrun(&args, LIMIT);
    eprintln!(
        "exec {command:?} ({:?}, status {:?})\nstdout: {}\nstderr: {}",
        t.elapsed(),
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn command_status_and_output_come_back_unmixed() {
    let out = exec(&[], &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    // Nothing but the command on stdout: no kernel messages, no \r.
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err\n"));

    assert_eq!(exec(&[], &["true"]).status.code(), Some(0));
    let out = exec(&[], &["false"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn a_kernel_panic_exits_with_123_and_says_so() {
    // No init in the initramfs under that name and no root device: the kernel panics.
    let out = exec(&["--append", "rdinit=/no-such-init"], &["true"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(123));
    assert!(
        stderr.contains("kvmrun: the guest kernel panicked: Kernel panic - not syncing"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn a_command_that_hangs_times_out_with_124() {
    let t = Instant::now();
    let out = exec(
        &["--timeout", "15s"],
        &["sh", "-c", "echo started; sleep 600"],
    );
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(text(&out.stdout), "started\n");
    assert!(text(&out.stderr).contains("--timeout"));
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn arguments_arrive_exactly_as_given() {
    let out = exec(
        &[],
        &[
            "printf",
            "[%s]",
            "a b",
            "",
            "it's \"quoted\"",
            "$HOME",
            "x\ny",
            "--",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "[a b][][it's \"quoted\"][$HOME][x\ny][--]"
    );
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn long_commands_and_many_arguments_get_through() {
    // Far more than the kernel command line holds (it goes on a disk of its own) and more
    // arguments than the kernel passes to init.
    let long = "x".repeat(6000);
    let mut command = vec![
        "sh",
        "-c",
        "printf '%s %s\\n' \"$#\" \"${#1}\"",
        "sh",
        &long,
    ];
    let many: Vec<String> = (0..99).map(|i| format!("a{i}")).collect();
    command.extend(many.iter().map(String::as_str));
    let out = exec(&[], &command);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "100 6000\n");
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn a_dir_disk_carries_input_in_and_results_out() {
    let host = scratch_dir("exec-dir");
    std::fs::write(host.join("in.txt"), "from the host\n").unwrap();
    let ro = scratch_dir("exec-dir-ro");
    std::fs::write(ro.join("data"), "read only\n").unwrap();
    let rw_spec = format!("dir={},mount=/work", host.display());
    let ro_spec = format!("dir={},readonly=on", ro.display());
    let script = "cat /work/in.txt /mnt/vdb/data > /work/out.txt && mkdir -p /work/sub && \
                  echo nested > /work/sub/f && ! touch /mnt/vdb/nope 2>/dev/null";
    let out = exec(
        &["--disk", &rw_spec, "--disk", &ro_spec],
        &["sh", "-c", script],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(host.join("out.txt")).unwrap(),
        "from the host\nread only\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("sub/f")).unwrap(),
        "nested\n"
    );
    assert!(!ro.join("nope").exists());
    let _ = std::fs::remove_dir_all(&host);
    let _ = std::fs::remove_dir_all(&ro);
}

fn spawn_exec(opts: &[&str], command: &[&str]) -> std::process::Child {
    common::kvmrun()
        .args(exec_args(opts, command))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn pause_and_resume_lose_no_output_or_disk_data() {
    let dir = scratch_dir("exec-pause");
    let sock = dir.join("api.sock");
    let out_dir = scratch_dir("exec-pause-out");
    let disk = format!("dir={},mount=/out", out_dir.display());
    // Each line goes to stdout and, synced, to a file on a dir= disk.
    let script = "i=0; while [ $i -lt 40 ]; do echo line$i; echo line$i >> /out/log; \
                  sync; i=$((i+1)); sleep 0.05; done";
    let child = spawn_exec(
        &[
            "--api-socket",
            sock.to_str().unwrap(),
            "--cpus",
            "2",
            "--disk",
            &disk,
        ],
        &["sh", "-c", script],
    );
    let mut api = Api::connect(&sock, LIMIT);
    api.wait_for_boot();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert_eq!(api.call(r#"{"cmd":"pause"}"#)["state"], "paused");
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(api.call(r#"{"cmd":"resume"}"#)["state"], "running");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = wait_with_limit(child, LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let want: String = (0..40).map(|i| format!("line{i}\n")).collect();
    assert_eq!(text(&out.stdout), want);
    assert_eq!(std::fs::read_to_string(out_dir.join("log")).unwrap(), want);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn graceful_shutdown_terminates_the_command() {
    let dir = scratch_dir("exec-graceful");
    let sock = dir.join("api.sock");
    let script = "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.1; done";
    let child = spawn_exec(
        &["--api-socket", sock.to_str().unwrap()],
        &["sh", "-c", script],
    );
    let mut api = Api::connect(&sock, LIMIT);
    api.wait_for_boot();
    std::thread::sleep(Duration::from_secs(1));
    let r = api.call(r#"{"cmd":"shutdown","grace_ms":60000}"#);
    assert_eq!(r["guest_asked"], true, "{r}");
    let t = Instant::now();
    let out = wait_with_limit(child, LIMIT);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ready\ngot TERM\n");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn eight_concurrent_runs_all_succeed() {
    let children: Vec<_> = (0..8)
        .map(|i| {
            let script = format!("echo run{i} $((6 * 7)); exit {i}");
            spawn_exec(&["--memory", "128M"], &["sh", "-c", &script])
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = wait_with_limit(child, Duration::from_secs(600));
        assert_eq!(
            out.status.code(),
            Some(i as i32),
            "run {i}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), format!("run{i} 42\n"));
    }
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn boot_report_and_events_time_the_run() {
    let out = exec(&["--boot-report", "json", "--events", "json"], &["true"]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with("{\"event\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
    let report: serde_json::Value = serde_json::from_str(
        stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("{\"kernel_entry_ms\""))
            .expect("boot report"),
    )
    .unwrap();
    let (done, exit) = (
        report["boot_complete_ms"].as_f64().unwrap(),
        report["exit_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < done && done < exit, "{report}");
}
