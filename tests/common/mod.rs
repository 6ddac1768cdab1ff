//! Shared helpers for kvmrun's integration tests: running the binary, and tiny payload guests.

#![allow(dead_code)]

pub mod api;
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Standard base64 (RFC 4648), for passing a script through the kernel command line.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The kvmrun binary under test.
pub fn kvmrun() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmrun"));
    c.stdin(Stdio::null());
    c
}

/// Runs kvmrun with `args` and a time limit; panics (failing the test) if it hangs.
pub fn run_kvmrun(args: &[&str], limit: Duration) -> Output {
    let mut cmd = kvmrun();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("start kvmrun");
    wait_with_limit(child, limit)
}

/// Something the host does once the guest prints a line containing `.0`.
pub type Reaction = (String, Box<dyn FnOnce() + Send>);

/// `wait_with_limit`, running `action` once, as soon as a line of the child's stdout contains
/// `trigger` (e.g. the guest saying it is ready for the host to break something). The
/// returned stdout has every line read, with `\r` removed.
pub fn wait_reacting(
    child: std::process::Child,
    limit: Duration,
    trigger: &str,
    action: Box<dyn FnOnce() + Send>,
) -> Output {
    wait_reacting_all(child, limit, vec![(trigger.to_string(), action)])
}

/// `wait_reacting` with several triggers, each acted on once.
pub fn wait_reacting_all(
    child: std::process::Child,
    limit: Duration,
    reactions: Vec<Reaction>,
) -> Output {
    let (out, timed_out) = reacting_or_stop(child, limit, reactions);
    if timed_out {
        panic!(
            "kvmrun did not exit within {limit:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `wait_reacting_all` that returns instead of panicking (see `wait_or_stop`).
pub fn reacting_or_stop(
    mut child: std::process::Child,
    limit: Duration,
    reactions: Vec<Reaction>,
) -> (Output, bool) {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout piped");
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut pending: Vec<Option<Reaction>> = reactions.into_iter().map(Some).collect();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            for slot in pending.iter_mut() {
                if slot
                    .as_ref()
                    .is_some_and(|(t, _)| line.contains(t.as_str()))
                {
                    if let Some((_, action)) = slot.take() {
                        action();
                    }
                }
            }
            seen.push_str(&line.replace('\r', ""));
            seen.push('\n');
        }
        seen
    });
    let (mut out, timed_out) = wait_or_stop(child, limit);
    out.stdout = reader.join().unwrap_or_default().into_bytes();
    (out, timed_out)
}

/// Waits for `child`, collecting its output; past `limit`, stops it (and panics: a hang).
pub fn wait_with_limit(child: std::process::Child, limit: Duration) -> Output {
    let (out, timed_out) = wait_or_stop(child, limit);
    if timed_out {
        panic!(
            "kvmrun did not exit within {limit:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `wait_with_limit` that returns instead of panicking: the output, and whether the child had
/// to be stopped at `limit`.
pub fn wait_or_stop(mut child: std::process::Child, limit: Duration) -> (Output, bool) {
    // Drain stdout and stderr while waiting: a guest that prints more than a pipe holds would
    // otherwise block kvmrun's console writes and look like a hang.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    );
    let deadline = std::time::Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            // SIGTERM first: kvmrun then stops its vCPUs, logs where each one was and flushes
            // the console, which tells a hung guest from a slow one. SIGKILL if that hangs too.
            // Twice: the first asks the guest to shut down, the second stops it at once.
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: as above (the child has not been reaped).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let term_deadline = std::time::Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none()
                && std::time::Instant::now() < term_deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            timed_out = true;
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    (out, timed_out)
}

/// A scratch directory unique to one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvmrun-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Creates (or truncates) `path` as a sparse file of `len` bytes: a disk image, a big initrd.
pub fn sparse_file(path: &Path, len: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// What a payload does after printing its message.
#[derive(Debug, Clone, Copy)]
pub enum PayloadEnd {
    /// Writes the status to kvmrun's debug-exit port (0x501).
    DebugExit(u8),
    /// Pulses the reset line through the i8042 (0xFE to port 0x64), as Linux's reboot=k does.
    I8042Reset,
    /// Enters ACPI S5 through the hardware-reduced sleep control register (port 0x600).
    AcpiPowerOff,
    /// Executes ud2 with an empty IDT: #UD cannot be delivered, which escalates to a triple fault.
    TripleFault,
    /// Halts with interrupts off: never comes back on its own.
    Hang,
    /// Writes byte `value` to `port`, then halts like `Hang`.
    OutByte(u16, u8),
    /// Writes to `port` in an endless loop: one VM exit per iteration, for as long as it runs.
    OutLoop(u16),
    /// Prints '.' on the UART forever, one every `n` iterations of a delay loop.
    Spin(u32),
    /// Polls COM2's line status until a byte arrives (e.g. kvmrun's shutdown request), then
    /// writes this status to the debug-exit port.
    WaitCom2ThenExit(u8),
    /// Programs the PIT's counter 0 (mode 0, low then high byte), reads its status back (8254
    /// read-back command) and leaves with that byte as the debug-exit status: 0x30 in the low
    /// six bits from a PIT, 0xff from a machine without one.
    PitStatusExit,
}

/// Address the payload is linked and loaded at: 1 MiB, where kvmrun loads ELF kernels.
const LOAD_ADDR: u64 = 0x10_0000;

/// 64-bit code that kvmrun enters in long mode: writes `message` to the UART at 0x3f8 one byte
/// at a time, optionally signals boot-complete (port 0x502), then does `end`.
pub fn payload_code(message: &[u8], boot_complete: bool, end: PayloadEnd) -> Vec<u8> {
    let mut code: Vec<u8> = Vec::new();
    code.extend_from_slice(&[0x66, 0xBA, 0xF8, 0x03]); // mov dx, 0x3f8
    let lea_at = code.len();
    code.extend_from_slice(&[0x48, 0x8D, 0x35, 0, 0, 0, 0]); // lea rsi, [rip + msg]
    code.push(0xB9); // mov ecx, len
    code.extend_from_slice(&(message.len() as u32).to_le_bytes());
    if !message.is_empty() {
        let top = code.len();
        code.push(0xAC); // lodsb
        code.push(0xEE); // out dx, al
        code.extend_from_slice(&[0xFF, 0xC9]); // dec ecx
        let rel = top as i64 - (code.len() as i64 + 2);
        code.extend_from_slice(&[0x75, rel as i8 as u8]); // jnz top
    }
    if boot_complete {
        code.extend_from_slice(&[0x66, 0xBA, 0x02, 0x05, 0xB0, 0x01, 0xEE]); // out 0x502, 1
    }
    match end {
        PayloadEnd::DebugExit(s) => {
            code.extend_from_slice(&[0x66, 0xBA, 0x01, 0x05, 0xB0, s, 0xEE])
        }
        PayloadEnd::I8042Reset => {
            code.extend_from_slice(&[0x66, 0xBA, 0x64, 0x00, 0xB0, 0xFE, 0xEE])
        }
        // SLP_EN (bit 5) | SLP_TYP 5 (bits 4:2) = 0x34.
        PayloadEnd::AcpiPowerOff => {
            code.extend_from_slice(&[0x66, 0xBA, 0x00, 0x06, 0xB0, 0x34, 0xEE])
        }
        PayloadEnd::TripleFault => code.extend_from_slice(&[0x0F, 0x0B]),
        PayloadEnd::Hang => {}
        PayloadEnd::OutLoop(port) => {
            let [lo, hi] = port.to_le_bytes();
            code.extend_from_slice(&[0x66, 0xBA, lo, hi]); // mov dx, port
            code.extend_from_slice(&[0xEE, 0xEB, 0xFD]); // top: out dx, al; jmp top
        }
        PayloadEnd::OutByte(port, value) => {
            let [lo, hi] = port.to_le_bytes();
            code.extend_from_slice(&[0x66, 0xBA, lo, hi, 0xB0, value, 0xEE]) // out port, value
        }
        PayloadEnd::WaitCom2ThenExit(status) => {
            code.extend_from_slice(&[0x66, 0xBA, 0xFD, 0x02]); // mov dx, 0x2fd (COM2 LSR)
                                                               // top: in al, dx; test al, 1 (data ready); jz top
            code.extend_from_slice(&[0xEC, 0xA8, 0x01, 0x74, 0xFB]);
            code.extend_from_slice(&[0x66, 0xBA, 0x01, 0x05, 0xB0, status, 0xEE]);
            // out 0x501
        }
        PayloadEnd::PitStatusExit => {
            code.extend_from_slice(&[0xB0, 0x30, 0xE6, 0x43]); // counter 0, lo/hi, mode 0, binary
            code.extend_from_slice(&[0xB0, 0xE2, 0xE6, 0x43]); // read-back: status of counter 0
            code.extend_from_slice(&[0xE4, 0x40]); // in al, 0x40
            code.extend_from_slice(&[0x66, 0xBA, 0x01, 0x05, 0xEE]); // out 0x501, al
        }
        PayloadEnd::Spin(n) => {
            code.extend_from_slice(&[0x66, 0xBA, 0xF8, 0x03]); // mov dx, 0x3f8
            let top = code.len();
            code.push(0xB9); // mov ecx, n
            code.extend_from_slice(&n.to_le_bytes());
            code.extend_from_slice(&[0xFF, 0xC9, 0x75, 0xFC]); // delay: dec ecx; jnz delay
            code.extend_from_slice(&[0xB0, b'.', 0xEE]); // mov al, '.'; out dx, al
            let rel = top as i64 - (code.len() as i64 + 2);
            code.extend_from_slice(&[0xEB, rel as i8 as u8]); // jmp top
        }
    }
    let hlt = code.len();
    code.push(0xF4); // hlt
    let rel = hlt as i64 - (code.len() as i64 + 2);
    code.extend_from_slice(&[0xEB, rel as i8 as u8]); // jmp hlt
    let msg_at = code.len();
    let disp = (msg_at as i64 - (lea_at as i64 + 7)) as i32;
    code[lea_at + 3..lea_at + 7].copy_from_slice(&disp.to_le_bytes());
    code.extend_from_slice(message);
    code
}

/// Wraps code in a minimal ELF64 executable with one PT_LOAD segment at LOAD_ADDR.
pub fn elf64(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let offset = (EHDR + PHDR) as u64;
    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // ELF64, little endian, v1
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(f.len(), EHDR);
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    f.extend_from_slice(&offset.to_le_bytes()); // p_offset
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    assert_eq!(f.len(), EHDR + PHDR);
    f.extend_from_slice(code);
    f
}

/// Writes a payload ELF into `dir` and returns its path.
pub fn write_payload(
    dir: &Path,
    name: &str,
    message: &[u8],
    boot_complete: bool,
    end: PayloadEnd,
) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, elf64(&payload_code(message, boot_complete, end)))
        .expect("write payload");
    path
}

/// A process's resource use, read from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcUse {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

/// Reads `pid`'s CPU time, RSS, threads and open descriptors.
pub fn proc_use(pid: u32) -> ProcUse {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may contain spaces), from field 3 on.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| {
        f[i - 3]
            .parse::<u64>()
            .expect("numeric /proc/PID/stat field")
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count() as u64;
    ProcUse {
        // proc(5): utime is field 14, stime field 15.
        cpu_ticks: num(14) + num(15),
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
    }
}

/// Clock ticks per second (for `ProcUse::cpu_ticks`).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(t > 0, "sysconf(_SC_CLK_TCK)");
    t as u64
}
