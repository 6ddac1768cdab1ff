//! The project's resource scripts (guest builders, the test host), found and run from the binary.
//!
//! Each builder script prints its progress on stderr (shown to the user as it happens) and the
//! path(s) it produced, separated by spaces, on the last line of stdout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::Error;

/// The `resources/` directory: `$KVMRUN_RESOURCES`, else the one in the source tree kvmrun was
/// built from.
pub fn dir() -> PathBuf {
    std::env::var_os("KVMRUN_RESOURCES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("resources"))
}

/// Runs a builder script under `resources/` and returns the paths it printed last.
pub fn build(script: &str, args: &[&str]) -> Result<Vec<PathBuf>, String> {
    let path = dir().join(script);
    if !path.is_file() {
        return Err(format!(
            "{} not found: set KVMRUN_RESOURCES to the kvmrun source tree's resources/ directory",
            path.display()
        ));
    }
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", path.display(), out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let paths: Vec<PathBuf> = last.split_whitespace().map(PathBuf::from).collect();
    if paths.is_empty() || paths.iter().any(|p| !p.exists()) {
        return Err(format!(
            "{} printed no existing path on its last line (got '{last}')",
            path.display()
        ));
    }
    Ok(paths)
}

/// The default guest: kernel (bzImage) and initramfs, built on first use and cached.
pub fn default_guest() -> Result<(PathBuf, PathBuf), Error> {
    eprintln!("kvmrun: preparing the default guest (built once, then cached)");
    locate_default_guest()
}

/// `default_guest` without the announcement (exec's stderr belongs to the command). Safe to
/// call from many processes at once: the builders build under a lock and rename into place.
pub fn locate_default_guest() -> Result<(PathBuf, PathBuf), Error> {
    let kernel = build("guest/build-kernel.sh", &[]).map_err(Error::DefaultGuest)?;
    let initrd = build("guest/build-initramfs.sh", &[]).map_err(Error::DefaultGuest)?;
    // The kernel builder prints the bzImage and the ELF vmlinux of one build. The default guest
    // boots the vmlinux: loaded as it will run, it skips the bzImage's in-guest decompression
    // (about a fifth of an `exec -- true` in the test host; README, exec measurements).
    let vmlinux = kernel
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "vmlinux"))
        .ok_or_else(|| Error::DefaultGuest("the kernel builder printed no vmlinux path".into()))?;
    Ok((vmlinux, initrd[0].clone()))
}
