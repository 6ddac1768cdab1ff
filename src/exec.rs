//! `kvmrun exec`: boot a guest, run one command in it, and exit with the command's status.
//!
//! How the command gets in and its output out (the default guest's init, exec mode):
//! - the command travels on the kernel command line as `kvmrun.exec=_B64,_B64,...`, each
//!   argument base64-encoded (so spaces, quotes and newlines survive; the kernel does not hand
//!   dotted parameters to init, so its 32-argument limit does not apply). An encoding longer
//!   than 1 KiB goes instead on a small raw disk of its own (`kvmrun.exec=@vdX:LEN`), since the
//!   whole command line holds at most 2047 bytes;
//! - the command's stdout goes to the guest's second UART (ttyS1, COM2), which kvmrun writes to
//!   its own stdout byte for byte; the command's stderr goes to the console (ttyS0), which
//!   `--console` sends to kvmrun's stderr by default. The guest boots with `quiet`, so the
//!   console carries only kernel warnings and panics besides the command's stderr, and nothing
//!   but the command ever writes to stdout;
//! - init writes the command's exit status to the debug-exit port, which ends the run.

use std::ffi::OsString;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::boot_report::BootTimeline;
use crate::cli::{BootReportFormat, ConsoleMode, DEFAULT_CMDLINE};
use crate::dir_disk::DirImage;
use crate::error::Error;
use crate::events::EventLog;
use crate::exec_args::{ExecArgs, ExecConsole, ExecDisk};
use crate::run_control::RunControl;

/// The guest stopped (powered off, reset, stopped through the API) without the command's status.
pub const EXIT_COMMAND_LOST: i32 = 122;
/// The guest kernel panicked, or the VM crashed (triple fault, KVM error).
pub const EXIT_GUEST_PANIC: i32 = 123;
/// `--timeout` passed (as timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;
/// kvmrun itself failed (bad options, missing files, KVM errors) before or around the run.
pub const EXIT_KVMRUN_ERROR: i32 = 125;

/// Runs `kvmrun exec` with `raw` (the words after `exec`); returns the process exit status.
pub fn main(raw: &[OsString], start: Instant) -> i32 {
    let args = match crate::config::effective(raw) {
        Ok(e) => e.args,
        Err(e) => {
            eprintln!("kvmrun: error: {e}");
            return EXIT_KVMRUN_ERROR;
        }
    };
    match run(args, start) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("kvmrun: error: {e}");
            EXIT_KVMRUN_ERROR
        }
    }
}

fn run(args: ExecArgs, start: Instant) -> Result<i32, Error> {
    if args.command.is_empty() {
        return Err(Error::Exec(
            "no command: kvmrun exec [OPTIONS] -- COMMAND [ARGS...]".into(),
        ));
    }
    let (kernel, initrd) = match &args.kernel {
        Some(k) => (k.clone(), args.initrd.clone()),
        None => {
            let (k, i) = crate::resources::locate_default_guest()?;
            (k, Some(args.initrd.clone().unwrap_or(i)))
        }
    };
    if args.testhost {
        let forwarded =
            crate::testhost::forwarded_args(std::env::args_os(), &kernel, initrd.as_deref());
        return crate::testhost::run_inside(forwarded);
    }

    // Images of dir= disks live until the end of this function, then are deleted.
    let mut images: Vec<DirImage> = Vec::new();
    let mut disks = Vec::new();
    let mut mounts = Vec::new();
    for (index, disk) in args.disk.iter().enumerate() {
        let letter = char::from(b'a' + u8::try_from(index).unwrap_or(25).min(25));
        match disk {
            ExecDisk::Image(spec) => disks.push(spec.clone()),
            ExecDisk::Dir(spec) => {
                let img = DirImage::build(spec).map_err(|e| Error::Disk(e.to_string()))?;
                disks.push(crate::cli::DiskSpec {
                    path: img.path().to_path_buf(),
                    readonly: spec.readonly,
                    direct: false,
                    serial: None,
                    io_threads: devices::virtio::block::DEFAULT_IO_THREADS,
                });
                let at = spec.mount.clone().unwrap_or(format!("/mnt/vd{letter}"));
                let mode = if spec.readonly { "ro" } else { "rw" };
                mounts.push(format!(
                    "kvmrun.mount=vd{letter}:{mode}:{}",
                    base64(at.as_bytes())
                ));
                images.push(img);
            }
        }
    }

    // A long command goes on a small read-only disk of its own, after the others.
    let encoded = encode_command(&args.command);
    let mut _command_disk = None;
    let exec_word = if encoded.len() <= INLINE_COMMAND_MAX {
        format!("kvmrun.exec={encoded}")
    } else {
        let letter = char::from(b'a' + u8::try_from(disks.len()).unwrap_or(25).min(25));
        let file = command_disk(&encoded)
            .map_err(|e| Error::Exec(format!("cannot write the command's disk: {e}")))?;
        disks.push(crate::cli::DiskSpec {
            path: file.to_path_buf(),
            readonly: true,
            direct: false,
            serial: None,
            // Read once, front to back.
            io_threads: 1,
        });
        _command_disk = Some(file);
        format!("kvmrun.exec=@vd{letter}:{}", encoded.len())
    };
    let mut cmdline = format!("{DEFAULT_CMDLINE} quiet {exec_word}");
    for m in &mounts {
        cmdline.push(' ');
        cmdline.push_str(m);
    }
    if let Some(extra) = &args.append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    if cmdline.len() > CMDLINE_MAX {
        return Err(Error::Exec(format!(
            "the kernel command line would be {} bytes, more than the kernel's {CMDLINE_MAX}: shorten --append or the dir= mount paths",
            cmdline.len()
        )));
    }

    let events = match &args.events {
        Some(spec) => Some(Arc::new(
            EventLog::open(spec, start)
                .map_err(|e| Error::Exec(format!("--events {spec}: {e}")))?,
        )),
        None => None,
    };
    let console: Box<dyn Write + Send> = match &args.console {
        ExecConsole::Stderr => Box::new(std::io::stderr()),
        ExecConsole::None => Box::new(std::io::sink()),
        ExecConsole::File(p) => {
            Box::new(std::fs::File::create(p).map_err(Error::file("console file", p))?)
        }
    };
    let panic = PanicWatch::new(console);
    let panic_line = panic.seen.clone();

    let cfg = crate::vm::VmConfig {
        kernel,
        initrd,
        cmdline,
        cpus: args.cpus,
        mem_size: args.memory.0,
        console: ConsoleMode::None,
        disks,
        nets: args.net.clone(),
        allow_pvm: args.allow_pvm,
        pit: args.pit,
    };
    let ctl = RunControl {
        timeout: args.timeout.map(|t| t.0),
        events: events.clone(),
        api_socket: args.api_socket.clone(),
        console_out: Some(Box::new(panic)),
        com2_out: Some(Box::new(std::io::stdout())),
        shutdown_grace: Some(args.shutdown_grace.0),
    };
    if args.seccomp == crate::cli::SeccompMode::On {
        crate::seccomp::enable()?;
    }
    let timeline = Arc::new(BootTimeline::new(start));
    let outcome = crate::vm::run_with(&cfg, timeline.clone(), ctl)?;
    let panicked = panic_line.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (status, problem) = judge(&outcome, panicked.as_deref(), &args);

    // Results come back only from a command that finished; after a crash the file system may
    // be half-written.
    if problem.is_none() {
        for img in images.iter().filter(|i| !i.spec.readonly) {
            img.copy_back().map_err(|e| Error::Disk(e.to_string()))?;
        }
    }
    let _ = std::io::stdout().flush();
    if let Some(p) = &problem {
        eprintln!("kvmrun: {p}");
    }
    crate::events::emit(
        &events,
        "exited",
        serde_json::json!({ "status": status, "reason": outcome.reason, "problem": problem }),
    );
    if args.boot_report == Some(BootReportFormat::Json) {
        let report = timeline.report(status, &outcome.reason);
        eprintln!("{}", serde_json::to_string(&report).unwrap_or_default());
    }
    Ok(status)
}

/// The exit status for how the run ended, and the one-line reason when it was not the
/// command's own status.
fn judge(
    outcome: &crate::vm::RunOutcome,
    panic_line: Option<&str>,
    args: &ExecArgs,
) -> (i32, Option<String>) {
    let reason = outcome.reason.as_str();
    if reason.starts_with("debug-exit") {
        return (outcome.status, None);
    }
    if let Some(line) = panic_line {
        return (
            EXIT_GUEST_PANIC,
            Some(format!("the guest kernel panicked: {line}")),
        );
    }
    match reason {
        "timeout" => (
            EXIT_TIMEOUT,
            Some(format!(
                "the command did not finish within --timeout {:?}; stopped the guest",
                args.timeout.map(|t| t.0).unwrap_or_default()
            )),
        ),
        "vcpu-error" => (
            EXIT_GUEST_PANIC,
            Some("the guest crashed (triple fault or KVM error; see above)".into()),
        ),
        r if r.starts_with("signal ") => (outcome.status, Some(format!("stopped by {r}"))),
        "stopped" => (
            EXIT_COMMAND_LOST,
            Some("the guest was stopped through the API before the command finished".into()),
        ),
        other => (
            EXIT_COMMAND_LOST,
            Some(format!(
                "the guest stopped ({other}) without reporting the command's exit status"
            )),
        ),
    }
}

/// The longest command encoding passed on the kernel command line itself; longer ones go on a
/// disk, leaving the command line (at most `CMDLINE_MAX` bytes) room for the rest.
const INLINE_COMMAND_MAX: usize = 1024;
/// The x86 kernel's command line limit (COMMAND_LINE_SIZE 2048, with the NUL).
const CMDLINE_MAX: usize = 2047;

/// `_ARG1,_ARG2,...`: each argument base64-encoded behind a `_` (so an empty argument is still
/// a field).
fn encode_command(command: &[String]) -> String {
    let words: Vec<String> = command
        .iter()
        .map(|a| format!("_{}", base64(a.as_bytes())))
        .collect();
    words.join(",")
}

/// A raw disk image holding `encoded` from its first byte, padded to whole sectors; init reads
/// it with `head -c LEN /dev/vdX`. Deleted when dropped.
fn command_disk(encoded: &str) -> std::io::Result<tempfile::TempPath> {
    let mut f = tempfile::Builder::new()
        .prefix("kvmrun-cmd-")
        .suffix(".img")
        .tempfile()?;
    f.write_all(encoded.as_bytes())?;
    f.as_file()
        .set_len((encoded.len() as u64).next_multiple_of(512))?;
    Ok(f.into_temp_path())
}

/// Standard base64 (RFC 4648) with padding.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

/// The console writer, watching for the kernel's panic line on its way through.
struct PanicWatch {
    inner: Box<dyn Write + Send>,
    line: Vec<u8>,
    seen: Arc<Mutex<Option<String>>>,
}

const PANIC_MARK: &str = "Kernel panic - not syncing";

impl PanicWatch {
    fn new(inner: Box<dyn Write + Send>) -> Self {
        PanicWatch {
            inner,
            line: Vec::new(),
            seen: Arc::new(Mutex::new(None)),
        }
    }

    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        if let Some(at) = text.find(PANIC_MARK) {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.get_or_insert_with(|| text[at..].trim().to_string());
        }
        self.line.clear();
    }
}

impl Write for PanicWatch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            match b {
                b'\n' => self.end_line(),
                b'\r' => {}
                // A line longer than this is no panic line; keep memory bounded.
                _ if self.line.len() < 512 => self.line.push(b),
                _ => {}
            }
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // The UART flushes after every byte: not a line end.
        self.inner.flush()
    }
}

impl Drop for PanicWatch {
    /// The VM is gone: a last line without a newline counts too.
    fn drop(&mut self) {
        self.end_line();
    }
}

/// Where exec's own words start in this process's arguments: after `exec` (or `config print`)
/// and the global options before it.
pub fn words_after(args: &[OsString], path: &[&str]) -> Vec<OsString> {
    let mut i = 1;
    let mut matched = 0;
    while i < args.len() && matched < path.len() {
        let a = args[i].to_string_lossy();
        if a == "--log-level" {
            i += 2;
            continue;
        }
        if a == path[matched] {
            matched += 1;
        }
        i += 1;
    }
    args[i.min(args.len())..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn every_argument_is_one_field_even_when_empty() {
        let p = encode_command(&["sh".into(), "-c".into(), "echo a b".into(), String::new()]);
        assert_eq!(p, "_c2g=,_LWM=,_ZWNobyBhIGI=,_");
        assert!(!p.contains(' '));
    }

    #[test]
    fn a_panic_line_is_noticed_across_writes() {
        let mut w = PanicWatch::new(Box::new(std::io::sink()));
        w.write_all(b"[ 1.0] ok\r\n[ 2.0] Kernel panic - not sy")
            .unwrap();
        // The UART flushes after every byte; that must not end the line.
        w.flush().unwrap();
        assert!(w.seen.lock().unwrap().is_none());
        w.write_all(b"ncing: VFS: Unable to mount root fs\r\n")
            .unwrap();
        assert_eq!(
            w.seen.lock().unwrap().as_deref(),
            Some("Kernel panic - not syncing: VFS: Unable to mount root fs")
        );
    }

    #[test]
    fn exec_words_follow_the_subcommand() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let a = os(&[
            "kvmrun",
            "--log-level",
            "exec",
            "exec",
            "--cpus",
            "2",
            "--",
            "true",
        ]);
        assert_eq!(
            words_after(&a, &["exec"]),
            os(&["--cpus", "2", "--", "true"])
        );
        let a = os(&["kvmrun", "config", "print", "--cpus", "2"]);
        assert_eq!(words_after(&a, &["config", "print"]), os(&["--cpus", "2"]));
    }
}
