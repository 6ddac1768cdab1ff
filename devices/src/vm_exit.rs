//! How devices (and the VMM itself) stop the VM.
//!
//! Every way out of the guest becomes one [`ExitReason`]; the first one recorded wins, so a
//! later event (say a vCPU error while the VM is being torn down after a guest `poweroff`)
//! cannot change the exit status. The main loop waits on [`ExitSignal::eventfd`]; vCPU threads
//! check the cheap [`ExitSignal::is_requested`] after each exit.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use vmm_sys_util::eventfd::EventFd;

/// Why the VM stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 command 0xFE, e.g. Linux `reboot` with `reboot=k`).
    Reset,
    /// The guest entered ACPI S5 (soft off), e.g. Linux `poweroff`.
    PowerOff,
    /// The guest wrote this byte to the debug-exit port.
    DebugExit(u8),
    /// The user pressed the console escape.
    Quit,
    /// A vCPU failed (triple fault, internal error, failed entry); details logged by the VMM.
    Fatal,
    /// The run's time limit passed before the guest stopped.
    Timeout,
    /// The VMM's controller (e.g. its API socket) stopped the VM at once.
    Stopped,
    /// A host signal (SIGTERM, SIGINT, SIGHUP) to the VMM stopped the VM: the guest did not
    /// shut down within its grace period, or a second signal came.
    Signal(i32),
}

impl ExitReason {
    /// The process exit status for this reason.
    pub fn exit_status(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::PowerOff | ExitReason::Quit | ExitReason::Stopped => 0,
            ExitReason::DebugExit(n) => i32::from(*n),
            ExitReason::Fatal => 2,
            // As timeout(1) does.
            ExitReason::Timeout => 124,
            // As a shell reports a process killed by signal N.
            ExitReason::Signal(n) => 128 + n,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Reset => f.write_str("reset"),
            ExitReason::PowerOff => f.write_str("poweroff"),
            ExitReason::DebugExit(n) => write!(f, "debug-exit {n}"),
            ExitReason::Quit => f.write_str("quit"),
            ExitReason::Fatal => f.write_str("vcpu-error"),
            ExitReason::Timeout => f.write_str("timeout"),
            ExitReason::Stopped => f.write_str("stopped"),
            ExitReason::Signal(n) => write!(f, "signal {n}"),
        }
    }
}

/// The VM's stop request: the first reason recorded, a flag, and an eventfd to wake the main
/// loop. Share it as `Arc<ExitSignal>`.
#[derive(Debug)]
pub struct ExitSignal {
    reason: OnceLock<ExitReason>,
    requested: AtomicBool,
    eventfd: EventFd,
}

impl ExitSignal {
    /// A signal with no reason recorded yet. The eventfd is non-blocking.
    pub fn new() -> io::Result<Self> {
        Ok(ExitSignal {
            reason: OnceLock::new(),
            requested: AtomicBool::new(false),
            eventfd: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Asks the VM to stop for `reason`. Only the first reason is kept; every call still
    /// writes the eventfd so a waiter never misses a wake-up.
    pub fn request(&self, reason: ExitReason) {
        if self.reason.set(reason).is_ok() {
            log::info!("VM exit requested: {reason}");
        } else {
            log::debug!(
                "VM exit {reason} requested after {:?}; keeping the first",
                self.reason()
            );
        }
        // The reason is stored before the flag (Release), so a thread that sees the flag
        // (Acquire) also sees the reason.
        self.requested.store(true, Ordering::Release);
        if let Err(e) = self.eventfd.write(1) {
            // Only fails if the counter would overflow (it is then readable anyway).
            log::debug!("exit eventfd write: {e}");
        }
    }

    /// The first reason recorded, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.get().copied()
    }

    /// True once a stop was requested. One atomic load: fine to call after every vCPU exit.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Readable once a stop was requested (the main loop epolls on it).
    pub fn eventfd(&self) -> &EventFd {
        &self.eventfd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn exit_status() {
        assert_eq!(ExitReason::Reset.exit_status(), 0);
        assert_eq!(ExitReason::PowerOff.exit_status(), 0);
        assert_eq!(ExitReason::Quit.exit_status(), 0);
        assert_eq!(ExitReason::Fatal.exit_status(), 2);
        assert_eq!(ExitReason::Timeout.exit_status(), 124);
        assert_eq!(ExitReason::Stopped.exit_status(), 0);
        for n in [0u8, 1, 3, 255] {
            assert_eq!(ExitReason::DebugExit(n).exit_status(), i32::from(n));
        }
        assert_eq!(ExitReason::DebugExit(7).to_string(), "debug-exit 7");
    }

    #[test]
    fn first_reason_wins_and_eventfd_readable() {
        let s = ExitSignal::new().unwrap();
        assert!(!s.is_requested());
        assert_eq!(s.reason(), None);
        // Nothing to read yet (non-blocking).
        assert_eq!(
            s.eventfd().read().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );

        s.request(ExitReason::PowerOff);
        assert!(s.is_requested());
        assert_eq!(s.reason(), Some(ExitReason::PowerOff));
        assert_eq!(s.eventfd().read().unwrap(), 1);

        s.request(ExitReason::Fatal);
        s.request(ExitReason::DebugExit(3));
        assert_eq!(s.reason(), Some(ExitReason::PowerOff));
        // Every request writes the eventfd.
        assert_eq!(s.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn concurrent_requests_keep_one_reason() {
        let s = Arc::new(ExitSignal::new().unwrap());
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || s.request(ExitReason::DebugExit(i)))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let first = s.reason().unwrap();
        assert!(matches!(first, ExitReason::DebugExit(n) if n < 8));
        assert_eq!(s.eventfd().read().unwrap(), 8);
    }
}
