//! Running kvmrun itself inside the project's test host (Linux under QEMU TCG with nested SVM),
//! the way to boot Linux guests where this machine's /dev/kvm is PVM.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use crate::error::Error;

/// Re-runs this kvmrun, with `args`, inside the test host; returns its exit status.
pub fn run_inside(args: Vec<OsString>) -> Result<i32, Error> {
    let script = crate::resources::dir().join("testhost/run.sh");
    if !script.is_file() {
        return Err(Error::TestHost(format!("{} not found", script.display())));
    }
    let exe = std::env::current_exe().map_err(|e| Error::TestHost(format!("own path: {e}")))?;
    eprintln!(
        "kvmrun: booting inside the test host (QEMU TCG with nested SVM; about 5 s to start)"
    );
    let status = Command::new("bash")
        .arg(&script)
        .arg("--")
        .arg(&exe)
        .args(&args)
        .current_dir(std::env::current_dir().unwrap_or_else(|_| Path::new("/").into()))
        .status()
        .map_err(|e| Error::TestHost(format!("cannot run {}: {e}", script.display())))?;
    Ok(status.code().unwrap_or(1))
}

/// The command line again, without `--testhost` and with the default guest spelled out (built
/// here on the host, where the cache persists, rather than inside the throwaway test host).
pub fn forwarded_args(
    original: impl Iterator<Item = OsString>,
    kernel: &Path,
    initrd: Option<&Path>,
) -> Vec<OsString> {
    let mut out: Vec<OsString> = original.skip(1).filter(|a| a != "--testhost").collect();
    if !out
        .iter()
        .any(|a| a == "--kernel" || a.to_string_lossy().starts_with("--kernel="))
    {
        // Insert right after the `run` subcommand so it precedes any trailing arguments.
        let at = out
            .iter()
            .position(|a| a == "run" || a == "exec")
            .map_or(out.len(), |i| i + 1);
        let mut extra = vec![OsString::from("--kernel"), kernel.as_os_str().to_owned()];
        if let Some(i) = initrd {
            extra.push("--initrd".into());
            extra.push(i.as_os_str().to_owned());
        }
        out.splice(at..at, extra);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn testhost_flag_is_dropped_and_default_guest_spelled_out() {
        let args = os(&[
            "kvmrun",
            "--log-level",
            "info",
            "run",
            "--testhost",
            "--cpus",
            "2",
        ]);
        let out = forwarded_args(args.into_iter(), Path::new("/k"), Some(Path::new("/i")));
        assert_eq!(
            out,
            os(&[
                "--log-level",
                "info",
                "run",
                "--kernel",
                "/k",
                "--initrd",
                "/i",
                "--cpus",
                "2"
            ])
        );
    }

    #[test]
    fn exec_gets_the_default_guest_before_its_command() {
        let args = os(&["kvmrun", "exec", "--testhost", "--", "echo", "run"]);
        let out = forwarded_args(args.into_iter(), Path::new("/k"), Some(Path::new("/i")));
        assert_eq!(
            out,
            os(&["exec", "--kernel", "/k", "--initrd", "/i", "--", "echo", "run"])
        );
    }

    #[test]
    fn an_explicit_kernel_is_kept() {
        let args = os(&["kvmrun", "run", "--kernel", "/mine", "--testhost"]);
        let out = forwarded_args(args.into_iter(), Path::new("/k"), None);
        assert_eq!(out, os(&["run", "--kernel", "/mine"]));
    }
}
