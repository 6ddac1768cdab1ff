//! Host signals that end a run (SIGTERM, SIGINT, SIGHUP): the handler only records the signal and
//! writes the exit eventfd, which is all a signal handler may safely do; the main loop does the
//! rest (the first signal asks the guest to shut down, a second one stops it at once).

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use vmm_sys_util::signal::register_signal_handler;

/// The eventfd the main loop watches; -1 until `install` runs.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The first terminating signal received; 0 for none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// How many terminating signals arrived.
static COUNT: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(signo: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = RECEIVED.compare_exchange(0, signo, Ordering::SeqCst, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is a local u64 as eventfd requires.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Routes SIGTERM, SIGINT and SIGHUP to `wake_fd` (an eventfd that outlives the run).
pub fn install(wake_fd: i32) -> std::io::Result<()> {
    WAKE_FD.store(wake_fd, Ordering::SeqCst);
    for signo in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        register_signal_handler(signo, on_signal).map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// The terminating signal received so far, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// How many terminating signals arrived so far.
pub fn count() -> u32 {
    COUNT.load(Ordering::SeqCst)
}
