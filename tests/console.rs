//! The serial console on a real terminal (a tmux pane): raw mode while the guest runs, the
//! terminal's settings restored on every way out, and Ctrl-A x quitting.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{scratch_dir, write_payload, PayloadEnd};

/// Runs `kvmrun_args` in a fresh tmux pane, sends `keys` after the guest printed, and returns
/// (exit status, terminal settings before, terminal settings after).
fn in_terminal(dir: &Path, kvmrun_args: &str, keys: &[&str]) -> (String, String, String) {
    let session = format!(
        "kvmrun-test-{}-{}",
        std::process::id(),
        dir.file_name().unwrap().to_string_lossy()
    );
    let (before, after, status) = (dir.join("before"), dir.join("after"), dir.join("status"));
    let script = format!(
        "stty -g > {b}; {exe} run --allow-pvm {kvmrun_args}; echo $? > {s}.tmp; stty -g > {a}; mv {s}.tmp {s}; sleep 60",
        b = before.display(),
        a = after.display(),
        s = status.display(),
        exe = env!("CARGO_BIN_EXE_kvmrun"),
    );
    let ok = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "100",
            "-y",
            "20",
            &script,
        ])
        .status()
        .expect("tmux (Debian package tmux) is installed")
        .success();
    assert!(ok, "tmux could not start a session");
    std::thread::sleep(Duration::from_millis(700));
    for k in keys {
        Command::new("tmux")
            .args(["send-keys", "-t", &session])
            .args(k.split(' '))
            .status()
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !status.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    (read(&status), read(&before), read(&after))
}

#[test]
fn ctrl_a_x_quits_and_restores_the_terminal() {
    let dir = scratch_dir("tty-quit");
    let k = write_payload(&dir, "hang.elf", b"waiting\n", false, PayloadEnd::Hang);
    let (status, before, after) =
        in_terminal(&dir, &format!("--kernel {}", k.display()), &["C-a x"]);
    assert_eq!(status, "0", "Ctrl-A x did not end the run");
    assert!(!before.is_empty());
    assert_eq!(before, after, "terminal settings not restored");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn guest_exit_restores_the_terminal() {
    let dir = scratch_dir("tty-exit");
    let k = write_payload(&dir, "exit.elf", b"bye\n", false, PayloadEnd::DebugExit(9));
    let (status, before, after) = in_terminal(&dir, &format!("--kernel {}", k.display()), &[]);
    assert_eq!(status, "9");
    assert_eq!(before, after, "terminal settings not restored");
    let _ = std::fs::remove_dir_all(&dir);
}
