//! Integration tests that boot real Linux guests. They need a /dev/kvm that runs Linux (hardware
//! KVM, or the test host), so a plain `cargo test` skips them; `resources/run-tests.sh` runs them
//! with `--ignored` in the right place and passes the guest artifacts in KVMRUN_TEST_* variables.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{base64, run_kvmrun, scratch_dir};

const BOOT_LIMIT: Duration = Duration::from_secs(120);

fn artifact(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the guest tests through resources/run-tests.sh")
    })
}

struct Guest {
    status: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Boots `kernel` + `initrd` running the shell `script` as the init's command; returns what
/// happened. The script travels base64-encoded: the kernel splits init's arguments at spaces
/// and panics past 32 of them, and this keeps any script to four.
fn boot(kernel: &str, initrd: &str, extra: &[&str], script: &str) -> Guest {
    let mut args = vec!["--kernel", kernel, "--initrd", initrd];
    args.extend_from_slice(extra);
    boot_vm(&args, script)
}

/// Runs kvmrun with `vm_args` (kernel and all) and `script` as the init's command.
/// The `--append` that makes the default guest's init run the shell `script`.
fn append_for(script: &str) -> String {
    format!(
        "-- sh -c 'eval \"$(echo {} | base64 -d)\"'",
        base64(script.as_bytes())
    )
}

fn boot_vm(vm_args: &[&str], script: &str) -> Guest {
    let append = append_for(script);
    // The boot report on stderr says how the run ended, should a test fail.
    let mut args = vec!["run", "--boot-report", "json", "--append", &append];
    args.extend_from_slice(vm_args);
    let t = Instant::now();
    let out = run_kvmrun(&args, BOOT_LIMIT);
    let g = Guest {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).replace('\r', ""),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: t.elapsed(),
    };
    eprintln!(
        "guest ({:?}, status {:?}):\n{}\n{}",
        g.elapsed, g.status, g.stdout, g.stderr
    );
    g
}

/// From the guest's request to stop (reset, S5, debug-exit) to all vCPUs joined and the run
/// over: under a second, measured by kvmrun's own boot report.
fn assert_stops_within_a_second(g: &Guest) {
    let line = g
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("JSON report");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let (stop, exit) = (
        v["stop_ms"].as_f64().unwrap(),
        v["exit_ms"].as_f64().unwrap(),
    );
    assert!(
        exit - stop < 1000.0,
        "stopping took {} ms: {line}",
        exit - stop
    );
}

fn default_guest(extra: &[&str], command: &str) -> Guest {
    boot(
        &artifact("KVMRUN_TEST_BZIMAGE"),
        &artifact("KVMRUN_TEST_INITRD"),
        extra,
        command,
    )
}

/// The value printed after `key=` on a line of the guest's output.
fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .unwrap_or_else(|| panic!("no '{key}' line in guest output:\n{out}"))
        .trim()
}

const REPORT: &str = r#"echo cpus=$(grep -c ^processor /proc/cpuinfo)
echo online=$(cat /sys/devices/system/cpu/online)
echo memkb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
echo serialirqs=$(grep ttyS0 /proc/interrupts | sed 's/^ *[0-9]*: *//; s/[^0-9 ].*//' | tr -s ' ' +)0
"#;

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn one_vcpu_guest_sees_one_cpu_and_its_memory() {
    let g = default_guest(&["--memory", "256M"], REPORT);
    assert_eq!(g.status, Some(0));
    assert_eq!(value(&g.stdout, "cpus="), "1");
    let memkb: u64 = value(&g.stdout, "memkb=").parse().unwrap();
    // The kernel keeps some for itself; what it reports must still be most of 256 MiB and no more.
    assert!(
        memkb > 200 * 1024 && memkb <= 256 * 1024,
        "MemTotal {memkb} kB"
    );
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn serial_console_is_interrupt_driven() {
    let g = default_guest(&[], REPORT);
    assert_eq!(g.status, Some(0));
    // ttyS0's per-CPU interrupt counts joined with '+': the 8250 driver got interrupts through
    // the IOAPIC (GSI 4; Linux may number it otherwise), so it is not polling the UART.
    let expr = value(&g.stdout, "serialirqs=");
    let total: u64 = expr
        .split('+')
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum();
    assert!(total > 0, "no serial interrupts: {expr}");
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn two_vcpu_guest_has_two_cpus_online_and_both_run_work() {
    let g = default_guest(
        &["--cpus", "2"],
        r#"echo cpus=$(grep -c ^processor /proc/cpuinfo)
echo online=$(cat /sys/devices/system/cpu/online)
for c in 0 1; do
  taskset -c $c sh -c "i=0; while [ \$i -lt 3000 ]; do i=\$((i+1)); done; echo ran-on-cpu$c" &
done
wait"#,
    );
    assert_eq!(g.status, Some(0));
    assert_eq!(value(&g.stdout, "cpus="), "2");
    assert_eq!(value(&g.stdout, "online="), "0-1");
    assert!(
        g.stdout.contains("ran-on-cpu0") && g.stdout.contains("ran-on-cpu1"),
        "{}",
        g.stdout
    );
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn memory_above_the_hole_is_used() {
    let g = default_guest(&["--memory", "3584M"], REPORT);
    assert_eq!(g.status, Some(0));
    let memkb: u64 = value(&g.stdout, "memkb=").parse().unwrap();
    // 3.5 GiB only fits with 512 MiB mapped above 4 GiB, past the 3-4 GiB MMIO hole.
    assert!(memkb > 3 * 1024 * 1024, "MemTotal {memkb} kB");
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn elf_vmlinux_boots_too() {
    let g = boot(
        &artifact("KVMRUN_TEST_VMLINUX"),
        &artifact("KVMRUN_TEST_INITRD"),
        &[],
        "echo vmlinux-ok",
    );
    assert_eq!(g.status, Some(0));
    assert!(g.stdout.contains("vmlinux-ok"));
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn command_exit_status_passes_through() {
    let g = default_guest(&[], "exit 3");
    assert_eq!(g.status, Some(3));
    let g = default_guest(&[], "false");
    assert_eq!(g.status, Some(1));
}

/// The guest runs `command`; kvmrun must end with status 0, for `reason`, within a second of
/// the guest's request.
fn assert_clean_exit(command: &str, reason: &str) {
    let g = default_guest(&[], command);
    assert_eq!(g.status, Some(0), "{}", g.stderr);
    let expected = format!("\"exit_reason\":\"{reason}\"");
    assert!(g.stderr.contains(&expected), "{}", g.stderr);
    assert_stops_within_a_second(&g);
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn guest_reboot_ends_the_run_with_status_zero() {
    assert_clean_exit("reboot -f", "reset");
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn guest_poweroff_ends_the_run_with_status_zero() {
    assert_clean_exit("poweroff -f", "poweroff");
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn boot_report_has_every_milestone() {
    let g = default_guest(&[], "true");
    assert_eq!(g.status, Some(0));
    let line = g
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("JSON report");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let ms = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {line}"))
    };
    assert!(ms("kernel_entry_ms") <= ms("first_console_byte_ms"));
    assert!(ms("first_console_byte_ms") <= ms("boot_complete_ms"));
    assert!(ms("boot_complete_ms") <= ms("exit_ms"));
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn debian_stock_kernel_boots_with_its_modules() {
    let g = boot(
        &artifact("KVMRUN_TEST_DISTRO_KERNEL"),
        &artifact("KVMRUN_TEST_DISTRO_INITRD"),
        &["--memory", "512M", "--cpus", "2"],
        "echo cpus=$(grep -c ^processor /proc/cpuinfo); uname -r; lsmod | grep -c virtio",
    );
    assert_eq!(g.status, Some(0));
    assert_eq!(value(&g.stdout, "cpus="), "2");
}

#[test]
fn base64_matches_rfc4648_vectors() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}

// ---- virtio-blk ----

/// Deterministic pseudo-random bytes (xorshift64), so host and guest can agree on content.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn md5_of(path: &std::path::Path) -> String {
    let out = std::process::Command::new("md5sum")
        .arg(path)
        .output()
        .expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn disk_arg(path: &std::path::Path, opts: &str) -> String {
    format!("path={}{opts}", path.display())
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn guest_writes_reach_the_image_after_flush() {
    let dir = scratch_dir("blk-write");
    let img = dir.join("data.img");
    common::sparse_file(&img, 4 << 20);
    let disk = disk_arg(&img, "");
    let g = default_guest(
        &["--disk", &disk],
        "printf 'kvmrun-pattern-%04d\\n' $(seq 0 999) > /tmp/p && dd if=/tmp/p of=/dev/vda bs=4096 conv=fsync 2>/dev/null && echo written",
    );
    assert_eq!(g.status, Some(0));
    assert!(g.stdout.contains("written"));
    let expected: String = (0..1000)
        .map(|i| format!("kvmrun-pattern-{i:04}\n"))
        .collect();
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[..expected.len()], expected.as_bytes());
    assert!(
        data[expected.len()..].iter().all(|&b| b == 0),
        "bytes past the pattern changed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn guest_reads_what_the_host_wrote() {
    let dir = scratch_dir("blk-read");
    let img = dir.join("data.img");
    std::fs::write(&img, pseudo_random(3 << 20, 7)).unwrap();
    let disk = disk_arg(&img, ",serial=kvmrun-disk-7");
    let g = default_guest(
        &["--disk", &disk],
        "echo md5=$(md5sum /dev/vda); echo serial=$(cat /sys/block/vda/serial)",
    );
    assert_eq!(g.status, Some(0));
    assert_eq!(
        value(&g.stdout, "md5=").split_whitespace().next().unwrap(),
        md5_of(&img)
    );
    assert_eq!(value(&g.stdout, "serial="), "kvmrun-disk-7");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn readonly_disk_refuses_writes_and_stays_unchanged() {
    let dir = scratch_dir("blk-ro");
    let img = dir.join("ro.img");
    std::fs::write(&img, pseudo_random(1 << 20, 3)).unwrap();
    let before = md5_of(&img);
    let disk = disk_arg(&img, ",readonly=on");
    let g = default_guest(
        &["--disk", &disk],
        "echo ro=$(cat /sys/block/vda/ro); if dd if=/dev/zero of=/dev/vda bs=4096 count=4 conv=fsync 2>/dev/null; then echo write=ok; else echo write=failed; fi",
    );
    assert_eq!(g.status, Some(0));
    assert_eq!(value(&g.stdout, "ro="), "1");
    assert_eq!(value(&g.stdout, "write="), "failed");
    assert_eq!(md5_of(&img), before, "the read-only image changed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn two_disks_with_two_vcpus_doing_io_on_both() {
    let dir = scratch_dir("blk-two");
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    std::fs::write(&a, pseudo_random(2 << 20, 11)).unwrap();
    common::sparse_file(&b, 2 << 20);
    let (da, db) = (disk_arg(&a, ""), disk_arg(&b, ""));
    // vCPU 0 copies vda into vdb while vCPU 1 hashes vda, at once.
    let g = default_guest(
        &["--cpus", "2", "--disk", &da, "--disk", &db],
        "taskset -c 0 dd if=/dev/vda of=/dev/vdb bs=64k conv=fsync 2>/dev/null & \
         taskset -c 1 sh -c 'echo md5a=$(md5sum /dev/vda)' & wait; echo md5b=$(md5sum /dev/vdb)",
    );
    assert_eq!(g.status, Some(0));
    let want = md5_of(&a);
    assert_eq!(
        value(&g.stdout, "md5a=").split_whitespace().next().unwrap(),
        want
    );
    assert_eq!(
        value(&g.stdout, "md5b=").split_whitespace().next().unwrap(),
        want
    );
    assert_eq!(md5_of(&b), want, "the copy did not reach the second image");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn root_file_system_on_virtio_blk() {
    let rootfs = artifact("KVMRUN_TEST_ROOTFS");
    let disk = format!("path={rootfs},readonly=on");
    let bz = artifact("KVMRUN_TEST_BZIMAGE");
    let g = boot_vm(
        &[
            "--kernel",
            &bz,
            "--disk",
            &disk,
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1 root=/dev/vda ro rootfstype=ext4 rootwait init=/init",
        ],
        "echo root=$(awk '$2 == \"/\" {print $1, $3}' /proc/mounts)",
    );
    assert_eq!(g.status, Some(0));
    let root = value(&g.stdout, "root=");
    assert!(
        root.ends_with("ext4") && (root.starts_with("/dev/root") || root.starts_with("/dev/vda")),
        "{root}"
    );
}

/// Boots the default guest with a fresh 1 MiB image as /dev/vda, runs `script` and, when the
/// guest prints `ready`, sends kvmrun `signal`. Returns the image path, kvmrun's output and the
/// time from the signal to kvmrun's end (None: the guest never got ready).
fn signal_when_ready(
    tag: &str,
    script: &str,
    ready: &str,
    signal: i32,
) -> (std::path::PathBuf, std::process::Output, Option<Duration>) {
    let dir = scratch_dir(tag);
    let img = dir.join("data.img");
    common::sparse_file(&img, 1 << 20);
    let sent: Arc<Mutex<Option<Instant>>> = Arc::default();
    let s = sent.clone();
    // The pid is known once kvmrun runs; the action only runs after that.
    let pid = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let p = pid.clone();
    let out = boot_with_disk_reacting_pid(
        &disk_arg(&img, ""),
        script,
        ready,
        Box::new(move || {
            // SAFETY: signalling our own child, not yet reaped (wait_reacting reaps it later).
            unsafe { libc::kill(p.load(std::sync::atomic::Ordering::SeqCst), signal) };
            *s.lock().unwrap() = Some(Instant::now());
        }),
        &pid,
    );
    let took = sent.lock().unwrap().map(|t| t.elapsed());
    (img, out, took)
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn flushed_data_survives_kill_9_of_kvmrun() {
    let script = "printf 'durable-%04d\\n' $(seq 0 499) > /tmp/p && dd if=/tmp/p of=/dev/vda bs=4096 conv=fsync 2>/dev/null && echo flushed-and-waiting && sleep 600";
    // SIGKILL: no chance for kvmrun to flush anything itself.
    let (img, out, took) =
        signal_when_ready("blk-kill9", script, "flushed-and-waiting", libc::SIGKILL);
    assert!(
        took.is_some(),
        "the guest never reported its flush: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: String = (0..500).map(|i| format!("durable-{i:04}\n")).collect();
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[..expected.len()], expected.as_bytes());
    let _ = std::fs::remove_dir_all(img.parent().unwrap());
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn sigterm_shuts_the_guest_down_and_its_unflushed_writes_reach_the_image() {
    // Written through the guest's page cache and not flushed: only a shutdown that lets the
    // guest sync gets it to the image.
    let script = "printf 'graceful-%04d\\n' $(seq 0 499) > /tmp/p && dd if=/tmp/p of=/dev/vda bs=4096 2>/dev/null && echo written-not-flushed && sleep 600";
    let (img, out, took) =
        signal_when_ready("blk-sigterm", script, "written-not-flushed", libc::SIGTERM);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let took = took.unwrap_or_else(|| panic!("the guest never reported its write: {stderr}"));
    // The command died of the SIGTERM the guest's init passed on (143), the guest synced and
    // reported it: well before the 10 s grace period would have stopped the VM (also 143).
    assert_eq!(out.status.code(), Some(143), "stderr: {stderr}");
    assert!(
        took < Duration::from_secs(8),
        "took {took:?}; stderr: {stderr}"
    );
    assert!(!stderr.contains("did not shut down"), "{stderr}");
    let expected: String = (0..500).map(|i| format!("graceful-{i:04}\n")).collect();
    let data = std::fs::read(&img).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&data[..expected.len()]),
        expected,
        "the guest's unflushed writes did not reach the image"
    );
    let _ = std::fs::remove_dir_all(img.parent().unwrap());
}

/// Runs `cmd` (a host tool the fault tests need, as root); panics naming it on failure.
fn host_tool(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (the fault tests need it, and root)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed (the fault tests need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Boots the default guest with `disk` as /dev/vda, runs `script`, and runs `action` when the
/// guest prints `trigger`.
fn boot_with_disk_reacting(
    disk: &str,
    script: &str,
    trigger: &str,
    action: Box<dyn FnOnce() + Send>,
) -> std::process::Output {
    boot_with_disk_reacting_pid(disk, script, trigger, action, &Default::default())
}

/// `boot_with_disk_reacting`, storing kvmrun's pid in `pid` before any action can run.
fn boot_with_disk_reacting_pid(
    disk: &str,
    script: &str,
    trigger: &str,
    action: Box<dyn FnOnce() + Send>,
    pid: &std::sync::atomic::AtomicI32,
) -> std::process::Output {
    let append = append_for(script);
    let (bz, initrd) = (
        artifact("KVMRUN_TEST_BZIMAGE"),
        artifact("KVMRUN_TEST_INITRD"),
    );
    let child = common::kvmrun()
        .args([
            "run", "--kernel", &bz, "--initrd", &initrd, "--disk", disk, "--append", &append,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    pid.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
    common::wait_reacting(child, BOOT_LIMIT, trigger, action)
}

#[test]
#[ignore = "boots a Linux guest; needs root (mounts a tmpfs): run through resources/run-tests.sh"]
fn host_disk_full_gives_the_guest_io_errors_and_kvmrun_keeps_running() {
    let dir = scratch_dir("blk-full");
    let fs = dir.join("small-fs");
    std::fs::create_dir_all(&fs).unwrap();
    // A 4 MiB file system holding a sparse 64 MiB image: it fills after 4 MiB of writes.
    host_tool(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "tmpfs",
            fs.to_str().unwrap(),
        ],
    );
    let img = fs.join("data.img");
    common::sparse_file(&img, 64 << 20);
    let script =
        "dd if=/dev/zero of=/dev/vda bs=1M count=16 oflag=direct 2>/dev/null; echo write-status=$?
dd if=/dev/vda of=/dev/null bs=1M count=2 iflag=direct 2>/dev/null && echo read-ok
exit 5";
    let out = boot_with_disk_reacting(&disk_arg(&img, ""), script, "never", Box::new(|| {}));
    let _ = host_tool("umount", &[fs.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("write-status=1"),
        "the write did not fail: {stdout}"
    );
    assert!(
        stdout.contains("read-ok"),
        "reads stopped working: {stdout}"
    );
    // The guest finished its script: kvmrun kept running and reported the error once.
    assert_eq!(out.status.code(), Some(5), "stderr: {stderr}");
    assert!(
        stderr.contains("No space left on device")
            && stderr.contains("reported to the guest as IOERR"),
        "kvmrun did not report the host error: {stderr}"
    );
}

#[test]
#[ignore = "boots a Linux guest; needs root (a loop device): run through resources/run-tests.sh"]
fn disk_made_read_only_mid_run_gives_the_guest_io_errors_and_kvmrun_keeps_running() {
    let dir = scratch_dir("blk-setro");
    let img = dir.join("data.img");
    common::sparse_file(&img, 8 << 20);
    let _ = std::process::Command::new("modprobe").arg("loop").status();
    let loopdev = host_tool("losetup", &["--find", "--show", img.to_str().unwrap()]);
    // The disk is the loop device; once the guest has written, the host makes it read-only
    // (BLKROSET): the writes on kvmrun's open descriptor fail from then on.
    let script = "dd if=/dev/zero of=/dev/vda bs=64k count=1 oflag=direct 2>/dev/null && echo first-write-ok
for i in $(seq 1 40); do
  dd if=/dev/zero of=/dev/vda bs=64k count=1 seek=1 oflag=direct 2>/dev/null || { echo write-failed; break; }
  sleep 0.5
done
dd if=/dev/vda of=/dev/null bs=64k count=2 iflag=direct 2>/dev/null && echo read-ok
exit 6";
    let dev = loopdev.clone();
    let out = boot_with_disk_reacting(
        &format!("path={loopdev}"),
        script,
        "first-write-ok",
        Box::new(move || {
            host_tool("blockdev", &["--setro", &dev]);
        }),
    );
    let _ = host_tool("losetup", &["-d", &loopdev]);
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("first-write-ok"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("write-failed"),
        "writes kept working: {stdout}"
    );
    assert!(
        stdout.contains("read-ok"),
        "reads stopped working: {stdout}"
    );
    assert_eq!(out.status.code(), Some(6), "stderr: {stderr}");
    assert!(
        stderr.contains("reported to the guest as IOERR"),
        "kvmrun did not report the host error: {stderr}"
    );
}
