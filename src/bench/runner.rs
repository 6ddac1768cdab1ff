//! Running one workload: a shell script run on the host, in a kvmrun guest or in a QEMU/KVM
//! guest (same kernel, initramfs, vCPUs and memory), with a time limit, its output captured.
//!
//! A workload is one sh script for all three places: the payloads are on PATH (the payload
//! directory on the host, /usr/bin in the benchmark guest) and `$BENCH_DEV` names the disk under
//! test (the image file on the host, /dev/vda in a guest). Its results are the `@@BENCH` lines
//! the payloads print (see resources/bench/payloads/).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::results::Target;

/// What the guests boot and the host runs, built on the host by the resources scripts (empty
/// paths when no selected suite boots a guest).
#[derive(Debug, Clone, Default)]
pub struct Artifacts {
    pub kernel: PathBuf,
    /// The benchmark guest: default userland + fio, iperf3 and the payloads.
    pub bench_initrd: PathBuf,
    /// The default (small) initramfs, for boot timings.
    pub boot_initrd: PathBuf,
    /// The directory of the static payload binaries, for the host runs.
    pub payloads: PathBuf,
}

/// One guest to boot.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub vmm: Target,
    pub cpus: u32,
    pub memory_mib: u32,
    pub initrd: PathBuf,
    /// A raw image as the guest's first virtio-blk disk, host cache bypassed.
    pub disk: Option<PathBuf>,
    pub script: String,
    pub timeout: Duration,
}

/// How a run ended and what it printed.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub what: String,
    /// The script ran to its end with status 0 (for QEMU: isa-debug-exit's (0 << 1) | 1).
    pub success: bool,
    pub status: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl RunOutput {
    /// A diagnostic for a failed run: how it ended and the last lines it printed.
    pub fn diagnostic(&self) -> String {
        let how = if self.timed_out {
            format!("timed out after {:.0} s", self.elapsed.as_secs_f64())
        } else {
            format!("exit status {:?}", self.status)
        };
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
            lines[lines.len().saturating_sub(8)..].join("\n")
        };
        format!(
            "{}: {how}\nlast output:\n{}\n{}",
            self.what,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    pub fn bench_lines(&self, payload: &str) -> Vec<BTreeMap<String, String>> {
        bench_lines(&self.stdout, payload)
    }

    /// The value of a `@@ENV KEY VALUE` line the script printed (e.g. the guest's kernel).
    pub fn env_value(&self, key: &str) -> Option<String> {
        self.stdout.lines().find_map(|l| {
            let rest = l.trim_end_matches('\r').split("@@ENV ").nth(1)?;
            let (k, v) = rest.split_once(' ')?;
            (k == key).then(|| v.trim().to_string())
        })
    }
}

/// The `@@BENCH PAYLOAD key=value ...` lines of `payload` in `text`, as maps.
pub fn bench_lines(text: &str, payload: &str) -> Vec<BTreeMap<String, String>> {
    let tag = format!("@@BENCH {payload} ");
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').split(tag.as_str()).nth(1))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// The line a workload prints at a start barrier (see [`BARRIER`]).
pub const READY: &str = "@@READY";

/// A start barrier for workloads that must begin together (several guests at once): the script
/// announces it is ready, then waits for a line on its console (the run's stdin) before going on.
pub const BARRIER: &str = "echo @@READY; read -r _go";

/// A started run.
pub struct Running {
    what: String,
    child: Child,
    started: Instant,
    timeout: Duration,
    expected_status: i32,
    stdin: Option<ChildStdin>,
    /// stdout as it arrives, so a barrier can watch for [`READY`].
    stdout_so_far: Arc<Mutex<Vec<u8>>>,
    stdout: JoinHandle<()>,
    stderr: JoinHandle<Vec<u8>>,
}

impl Running {
    fn spawn(
        what: String,
        mut cmd: Command,
        timeout: Duration,
        expected_status: i32,
    ) -> Result<Running, String> {
        // stdin is a pipe held open until the end: the guest's console input, or the host
        // script's, for a start barrier (kvmrun and QEMU see no input until one is sent).
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{what}: cannot start: {e}"))?;
        // Drained while running: a guest printing more than a pipe holds would otherwise stall.
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout_so_far = Arc::new(Mutex::new(Vec::new()));
        let stdout = {
            let buf = stdout_so_far.clone();
            let mut out = child.stdout.take();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Some(Ok(n @ 1..)) = out.as_mut().map(|o| o.read(&mut chunk)) {
                    buf.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            })
        };
        let stderr = drain(child.stderr.take().map(|s| Box::new(s) as _));
        Ok(Running {
            what,
            stdin: child.stdin.take(),
            child,
            started,
            timeout,
            expected_status,
            stdout_so_far,
            stdout,
            stderr,
        })
    }

    /// Whether the run has printed `needle` (e.g. [`READY`]) so far.
    pub fn printed(&self, needle: &str) -> bool {
        let buf = self.stdout_so_far.lock().unwrap();
        String::from_utf8_lossy(&buf).contains(needle)
    }

    /// Whether the run has ended (or failed to be waited for).
    pub fn ended(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Lets a workload waiting at its [`BARRIER`] go on.
    pub fn release(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"go\n").and_then(|_| stdin.flush());
        }
    }

    /// Waits for the end (killing the run at its time limit) and returns what happened.
    pub fn finish(mut self) -> RunOutput {
        let deadline = self.started + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break None,
            }
        };
        let elapsed = self.started.elapsed();
        drop(self.stdin.take());
        let _ = self.stdout.join();
        let stdout = std::mem::take(&mut *self.stdout_so_far.lock().unwrap());
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).replace('\r', "");
        let code = status.and_then(|s| s.code());
        RunOutput {
            what: self.what,
            success: !timed_out && code == Some(self.expected_status),
            status: code,
            timed_out,
            stdout: text(stdout),
            stderr: text(self.stderr.join().unwrap_or_default()),
            elapsed,
        }
    }
}

/// Starts `script` on the host with the payloads on PATH and `$BENCH_DEV` set to `dev`.
pub fn start_host(
    a: &Artifacts,
    script: &str,
    dev: Option<&Path>,
    timeout: Duration,
) -> Result<Running, String> {
    let mut cmd = Command::new("sh");
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.arg("-c")
        .arg(script)
        .env("PATH", format!("{}:{path}", a.payloads.display()))
        .env("BENCH_DEV", dev.unwrap_or(Path::new("/dev/null")));
    Running::spawn("host".into(), cmd, timeout, 0)
}

/// Runs `script` on the host to its end.
pub fn run_host(a: &Artifacts, script: &str, dev: Option<&Path>, timeout: Duration) -> RunOutput {
    match start_host(a, script, dev, timeout) {
        Ok(r) => r.finish(),
        Err(e) => start_failure("host", e),
    }
}

/// The longest kernel command line the guest kernel takes (x86 COMMAND_LINE_SIZE - 1).
pub const MAX_CMDLINE: usize = 2047;

/// The kernel command line that makes the default guest's init run `script` (base64 in one
/// `sh -c` word: the kernel splits init's arguments at spaces and panics past 32 of them).
pub fn guest_cmdline(script: &str) -> String {
    format!(
        "console=ttyS0 reboot=k panic=-1 quiet -- sh -c 'eval \"$(echo {} | base64 -d)\"'",
        crate::exec::base64(script.as_bytes())
    )
}

/// The whole guest script: `$BENCH_DEV`, the guest's kernel release for the report, the
/// workload, then a console drain so that nothing printed is lost at power-off.
pub fn guest_script(spec: &GuestSpec) -> String {
    format!(
        "BENCH_DEV=/dev/vda\necho \"@@ENV guest_kernel $(uname -r)\"\n{}\ns=$?\nt=$(stty -g) && stty \"$t\"\nexit $s",
        spec.script
    )
}

/// Starts a guest as `spec` says.
pub fn start_guest(a: &Artifacts, spec: &GuestSpec) -> Result<Running, String> {
    let cmdline = guest_cmdline(&guest_script(spec));
    let what = format!("{} guest ({} vCPUs)", spec.vmm.label(), spec.cpus);
    if cmdline.len() > MAX_CMDLINE {
        return Err(format!(
            "{what}: the workload script makes a {}-byte kernel command line (at most {MAX_CMDLINE})",
            cmdline.len()
        ));
    }
    match spec.vmm {
        Target::Kvmrun => {
            let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
            let mut cmd = Command::new(exe);
            cmd.arg("run")
                .arg("--kernel")
                .arg(&a.kernel)
                .arg("--initrd")
                .arg(&spec.initrd)
                .arg("--cmdline")
                .arg(&cmdline)
                .args(["--cpus", &spec.cpus.to_string()])
                .args(["--memory", &format!("{}M", spec.memory_mib)])
                .args(["--console", "stdio", "--boot-report", "json"]);
            if let Some(d) = &spec.disk {
                cmd.arg("--disk")
                    .arg(format!("path={},direct=on", d.display()));
            }
            Running::spawn(what, cmd, spec.timeout, 0)
        }
        Target::Qemu => {
            let mut cmd = Command::new("qemu-system-x86_64");
            cmd.args(qemu_args(a, spec, &cmdline));
            // isa-debug-exit: status N leaves QEMU with (N << 1) | 1.
            Running::spawn(what, cmd, spec.timeout, 1)
        }
        Target::Host => Err("a guest cannot run on target host".into()),
    }
}

/// QEMU's options for the same machine kvmrun gives: the same kernel, initramfs, command line,
/// vCPUs and memory; -M pc; virtio-blk on PCI with cache=none (O_DIRECT) for the disk; the
/// debug-exit port where kvmrun has it.
pub fn qemu_args(a: &Artifacts, spec: &GuestSpec, cmdline: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "-accel",
        "kvm",
        "-M",
        "pc",
        "-cpu",
        "host",
        "-nographic",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        "stdio",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "-m".into(),
        spec.memory_mib.to_string(),
        "-smp".into(),
        spec.cpus.to_string(),
        "-kernel".into(),
        a.kernel.display().to_string(),
        "-initrd".into(),
        spec.initrd.display().to_string(),
        "-append".into(),
        cmdline.into(),
        "-device".into(),
        "isa-debug-exit,iobase=0x501,iosize=1".into(),
    ]);
    if let Some(d) = &spec.disk {
        args.extend([
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=d,cache=none,aio=threads",
                d.display().to_string().replace(',', ",,")
            ),
            "-device".into(),
            "virtio-blk-pci,drive=d".into(),
        ]);
    }
    args
}

/// Boots a guest and runs it to its end.
pub fn run_guest(a: &Artifacts, spec: &GuestSpec) -> RunOutput {
    match start_guest(a, spec) {
        Ok(r) => r.finish(),
        Err(e) => start_failure(spec.vmm.label(), e),
    }
}

fn start_failure(what: &str, e: String) -> RunOutput {
    RunOutput {
        what: what.into(),
        success: false,
        status: None,
        timed_out: false,
        stdout: String::new(),
        stderr: e,
        elapsed: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_are_parsed_from_console_noise() {
        let text = "boot noise\r\n@@BENCH matmul threads=1 n=64 run=1 mflops=12.5\r\n\
                    [  1.0] x @@BENCH matmul threads=2 n=64 run=1 mflops=20\n\
                    @@BENCH stream kernel=copy mbps=3\n";
        let lines = bench_lines(text, "matmul");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["mflops"], "12.5");
        assert_eq!(lines[1]["threads"], "2");
    }

    #[test]
    fn qemu_gets_the_same_machine() {
        let a = Artifacts {
            kernel: "/k".into(),
            bench_initrd: "/i".into(),
            boot_initrd: "/b".into(),
            payloads: "/p".into(),
        };
        let spec = GuestSpec {
            vmm: Target::Qemu,
            cpus: 2,
            memory_mib: 512,
            initrd: "/i".into(),
            disk: Some("/d,x.img".into()),
            script: "true".into(),
            timeout: Duration::from_secs(1),
        };
        let args = qemu_args(&a, &spec, "c").join(" ");
        assert!(args.contains("-m 512 -smp 2 -kernel /k -initrd /i -append c"));
        assert!(args.contains("file=/d,,x.img,format=raw,if=none,id=d,cache=none"));
        assert!(args.contains("isa-debug-exit,iobase=0x501"));
    }
}
