//! Running a filter test in a child process: filters and the SIGSYS handler are for the whole
//! process and cannot be removed, so such a test re-runs itself alone in a child, which does
//! the filtered work when `env` is set and ends by printing `done`; a forbidden call ends the
//! child with status 159 and the one-line report, which the parent shows.

use std::process::Command;

/// In the child (`env` set): runs `work`, which must exit the process. In the parent: runs the
/// test `path` (its `module_path!()::name`) in a child and checks that it printed `done`.
pub fn run_in_child(path: &str, env: &str, done: &str, work: fn() -> !) {
    if std::env::var_os(env).is_some() {
        work();
    }
    let name = path.split_once("::").map_or(path, |(_, rest)| rest);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "child stderr:\n{stderr}");
    assert!(stderr.contains(done), "{stderr}");
}
