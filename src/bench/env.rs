//! The environment every report records: host CPU and kernel, where the guests ran, versions,
//! and the git revision of the kvmrun that measured.

use std::collections::BTreeMap;
use std::process::Command;

/// The first line a command prints, if it runs.
pub fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim().to_string();
    (out.status.success() && !line.is_empty()).then_some(line)
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `uname -a`-like: system, node, release, version, machine.
pub fn uname() -> String {
    // SAFETY: uname fills the zeroed struct; the fields are NUL-terminated C strings.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let f = |s: &[libc::c_char]| {
        let bytes: Vec<u8> = s
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!(
        "{} {} {} {} {}",
        f(&u.sysname),
        f(&u.nodename),
        f(&u.release),
        f(&u.version),
        f(&u.machine)
    )
}

pub fn online_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// The git revision of the source tree kvmrun was built from (`KVMRUN_BENCH_GIT` when the
/// outer run already found it: the test host has no git metadata to spare).
pub fn git_revision() -> String {
    if let Ok(r) = std::env::var("KVMRUN_BENCH_GIT") {
        return r;
    }
    command_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ],
    )
    .unwrap_or_else(|| "unknown".into())
}

/// The environment fields that do not depend on the suites.
pub fn base(in_testhost: bool) -> BTreeMap<String, String> {
    let mut e = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        e.insert(k.to_string(), v);
    };
    put("host_cpu", cpu_model());
    put("host_cpus", online_cpus().to_string());
    put("host_kernel", kernel_release());
    if let Some(mib) = crate::host_check::host_memory_bytes().map(|b| b >> 20) {
        put("host_memory_mib", mib.to_string());
    }
    put("kvmrun_version", env!("CARGO_PKG_VERSION").to_string());
    put(
        "qemu_version",
        command_line("qemu-system-x86_64", &["--version"]).unwrap_or_else(|| "not found".into()),
    );
    put(
        "fio_version",
        command_line("fio", &["--version"]).unwrap_or_else(|| "not found".into()),
    );
    if in_testhost {
        put(
            "outer_machine_cpu",
            std::env::var("KVMRUN_BENCH_OUTER_CPU").unwrap_or_else(|_| "unknown".into()),
        );
        put(
            "outer_machine_kernel",
            std::env::var("KVMRUN_BENCH_OUTER_KERNEL").unwrap_or_else(|_| "unknown".into()),
        );
    }
    e
}

/// Now as an ISO 8601 UTC timestamp, without a date crate.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_now_is_iso_8601() {
        let t = utc_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
