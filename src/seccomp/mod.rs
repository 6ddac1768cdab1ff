//! seccomp-BPF filters per thread kind: each thread of a running VM may make only the system
//! calls its job needs (lists in [`filters`]).
//!
//! - vCPU threads install theirs as they start, before the first KVM_RUN;
//! - device workers install theirs as they start (through [`devices::worker_hook`]);
//! - the main thread installs its own once every vCPU thread runs, before its event loop.
//!
//! A forbidden call is trapped (SECCOMP_RET_TRAP): the kernel does not run it and sends SIGSYS
//! to the thread, whose handler prints one line
//! `kvmrun: seccomp: thread vcpu0 made forbidden syscall 257 (openat)` and ends the process
//! with status 159 (128 + SIGSYS, what a shell shows for a SIGSYS death). A call made while the
//! thread blocks SIGSYS (glibc blocks every signal inside `pthread_create`) cannot reach the
//! handler: the kernel then kills the process with SIGSYS (still 159 to a shell, no line).
//! SECCOMP_RET_KILL_PROCESS would be as safe (the call never runs either way) but leaves only
//! "Bad system call" with no thread or syscall named, which is what one needs to fix a list
//! or to recognise an attack. The handler cannot be removed afterwards: rt_sigaction is in
//! no thread's list. The handler uses only write and exit_group, which every list allows.
//!
//! `kvmrun run --seccomp=off` runs without filters (for debugging, e.g. under strace with
//! a new code path).

#[cfg(test)]
mod arena_test;
#[cfg(test)]
mod blk_test;
#[cfg(test)]
mod child_test;
mod filters;
mod syscall_names;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use filters::KVM_RUN;
pub use syscall_names::syscall_name;

/// The kinds of thread in a running VM, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Main,
    Vcpu,
    Worker,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0:?} filter: {1}")]
    Build(ThreadKind, String),
    #[error("cannot install the {0:?} filter: {1}")]
    Install(ThreadKind, String),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(String),
}

/// Exit status after a forbidden call: 128 + SIGSYS.
pub const VIOLATION_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The thread's name for the violation report (set when its filter is installed; a
    /// `const` thread-local without destructor, so reading it in the signal handler is safe).
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// Turns filtering on for the rest of the process: installs the SIGSYS handler and the
/// device-worker hook. Call once on the main thread before any VM thread starts.
pub fn enable() -> Result<(), SeccompError> {
    set_malloc_parameters();
    install_sigsys_handler()?;
    // Build every filter now, so a bad list fails here with a clear error and threads only
    // install a ready program.
    for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Worker] {
        program(kind)?;
    }
    devices::worker_hook::set(worker_hook);
    ENABLED.store(true, Ordering::Release);
    Ok(())
}

/// glibc's allocator opens files of its own the first time it needs to know something, and under
/// the filters that `openat` is forbidden and kills kvmrun: it reads
/// /sys/devices/system/cpu/online to size its arena limit when more than eight threads first
/// allocate at once (16 virtio-blk I/O threads did, in the test host), and
/// /proc/sys/vm/overcommit_memory the first time it shrinks a thread arena's heap (seen in
/// `arena_test`). Set the arena limit now, to glibc's own default of 8 per online CPU, and the
/// trim threshold high enough that heaps are never shrunk (freed memory stays for reuse; only
/// trimming, not mmap'd large blocks, is affected; kvmrun's own heap is a few MiB).
fn set_malloc_parameters() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: sysconf (glibc: get_nprocs) and mallopt have no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.clamp(1, 1 << 20) as i32;
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cpus * 8);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
    }
}

/// Installs the filter of `kind` on the calling thread, named `name` in reports; does nothing
/// when filtering is off.
pub fn apply(kind: ThreadKind, name: &str) -> Result<(), SeccompError> {
    if !ENABLED.load(Ordering::Acquire) {
        return Ok(());
    }
    let mut n = [0u8; 16];
    let len = name.len().min(n.len());
    n[..len].copy_from_slice(&name.as_bytes()[..len]);
    THREAD_NAME.with(|t| t.set(n));
    seccompiler::apply_filter(program(kind)?)
        .map_err(|e| SeccompError::Install(kind, e.to_string()))
}

/// Run first on every device worker thread: a worker never runs unfiltered.
fn worker_hook(name: &str) {
    if let Err(e) = apply(ThreadKind::Worker, name) {
        eprintln!("kvmrun: error: {name} worker: {e}");
        std::process::exit(1);
    }
}

fn program(kind: ThreadKind) -> Result<&'static BpfProgram, SeccompError> {
    static PROGRAMS: [OnceLock<BpfProgram>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = &PROGRAMS[kind as usize];
    if let Some(p) = slot.get() {
        return Ok(p);
    }
    let filter = SeccompFilter::new(
        filters::rules(kind),
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind, e.to_string()))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(kind, e.to_string()))?;
    Ok(slot.get_or_init(|| prog))
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn of the SA_SIGINFO
    // signature and only makes async-signal-safe calls.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(
                std::io::Error::last_os_error().to_string(),
            ));
        }
    }
    Ok(())
}

/// Offset of `si_syscall` in a SIGSYS siginfo on x86_64: the union starts at 16, and
/// `_sigsys` is { void *_call_addr; int _syscall; unsigned int _arch; } (asm-generic/siginfo.h).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS with SA_SIGINFO.
    let nr = unsafe {
        std::ptr::read_unaligned((info as *const u8).add(SI_SYSCALL_OFFSET) as *const i32)
    };
    let name = THREAD_NAME.with(|t| t.get());
    let mut line = Line::default();
    line.push(b"kvmrun: seccomp: thread ");
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    line.push(if len == 0 { b"?" } else { &name[..len] });
    line.push(b" made forbidden syscall ");
    line.push_number(i64::from(nr));
    line.push(b" (");
    line.push(syscall_name(i64::from(nr)).as_bytes());
    line.push(b")\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is valid for its length.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(VIOLATION_EXIT_STATUS);
    }
}

/// A fixed buffer for formatting in the signal handler (no allocation there).
struct Line {
    buf: [u8; 128],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; 128],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: i64) {
        if v < 0 {
            self.push(b"-");
            v = -v;
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Worker] {
            program(kind).unwrap();
        }
    }

    #[test]
    fn workers_may_not_run_vcpus_or_start_threads() {
        let w = filters::rules(ThreadKind::Worker);
        assert!(!w.contains_key(&libc::SYS_clone3));
        assert!(!w.contains_key(&libc::SYS_openat));
        assert!(filters::rules(ThreadKind::Vcpu).contains_key(&libc::SYS_ioctl));
        assert!(!filters::rules(ThreadKind::Main).contains_key(&libc::SYS_clone3));
    }

    #[test]
    fn syscall_names_come_from_the_table() {
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(257), "openat");
        assert_eq!(syscall_name(-1), "unknown");
        assert_eq!(syscall_name(100_000), "unknown");
    }

    #[test]
    fn numbers_format_without_allocation() {
        let mut l = Line::default();
        l.push_number(0);
        l.push(b" ");
        l.push_number(-42);
        l.push(b" ");
        l.push_number(i64::MAX);
        assert_eq!(&l.buf[..l.len], b"0 -42 9223372036854775807");
    }
}
