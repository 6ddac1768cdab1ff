//! kvmrun's own ports: debug-exit (0x501) and boot-complete (0x502).
//!
//! Neither exists on a PC; they are paravirtual conveniences (like QEMU's isa-debug-exit) that
//! let a test guest end the run with a chosen status and timestamp the end of its boot.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::bus::BusDevice;
use crate::log_once::LogOnce;
use crate::vm_exit::{ExitReason, ExitSignal};

/// Port of [`DebugExit`].
pub const DEBUG_EXIT_PORT: u64 = 0x501;
/// Port of [`BootComplete`].
pub const BOOT_COMPLETE_PORT: u64 = 0x502;

fn log_unknown(unknown: &LogOnce, dev: &str, what: &str, offset: u64, len: usize) {
    if unknown.first(offset) {
        log::debug!("{dev}: unhandled {what} of {len} byte(s) at offset {offset:#x}");
    }
}

/// Debug-exit port (1 byte): writing byte N stops the VM with exit status N. Reads return 0.
pub struct DebugExit {
    exit: Arc<ExitSignal>,
    unknown: LogOnce,
}

impl DebugExit {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        DebugExit {
            exit,
            unknown: LogOnce::new("debug-exit"),
        }
    }
}

impl BusDevice for DebugExit {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset == 0 {
            data.fill(0);
        } else {
            data.fill(0xff);
            log_unknown(&self.unknown, "debug-exit", "read", offset, data.len());
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset != 0 {
            log_unknown(&self.unknown, "debug-exit", "write", offset, data.len());
            return;
        }
        // A wider `out` (outw/outl) uses its low byte: the status is a byte either way.
        if let Some(&status) = data.first() {
            self.exit.request(ExitReason::DebugExit(status));
        }
    }
}

type BootHook = Box<dyn FnOnce(Instant) + Send>;

/// Boot-complete port (1 byte): the first write records when it happened and runs the hook;
/// later writes are ignored. Reads return 0.
pub struct BootComplete {
    at: OnceLock<Instant>,
    hook: Mutex<Option<BootHook>>,
    unknown: LogOnce,
}

impl BootComplete {
    pub fn new(hook: Option<BootHook>) -> Self {
        BootComplete {
            at: OnceLock::new(),
            hook: Mutex::new(hook),
            unknown: LogOnce::new("boot-complete"),
        }
    }

    /// When the guest first wrote the port, if it did.
    pub fn completed_at(&self) -> Option<Instant> {
        self.at.get().copied()
    }
}

impl BusDevice for BootComplete {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset == 0 {
            data.fill(0);
        } else {
            data.fill(0xff);
            log_unknown(&self.unknown, "boot-complete", "read", offset, data.len());
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset != 0 {
            log_unknown(&self.unknown, "boot-complete", "write", offset, data.len());
            return;
        }
        if data.is_empty() {
            return;
        }
        let now = Instant::now();
        if self.at.set(now).is_err() {
            return; // not the first write
        }
        log::info!("guest signalled boot complete");
        // Only the thread that won `set` gets here, so the hook runs once; take it out of the
        // lock before running it.
        let hook = crate::lock(&self.hook).take();
        if let Some(hook) = hook {
            hook(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn signal() -> Arc<ExitSignal> {
        Arc::new(ExitSignal::new().unwrap())
    }

    #[test]
    fn debug_exit_status_values() {
        for n in [0u8, 1, 255] {
            let exit = signal();
            let dev = DebugExit::new(exit.clone());
            let mut d = [0xaau8];
            dev.read(0, &mut d);
            assert_eq!(d, [0]);
            assert!(!exit.is_requested());
            dev.write(0, &[n]);
            assert!(exit.is_requested());
            assert_eq!(exit.reason(), Some(ExitReason::DebugExit(n)));
            assert_eq!(exit.reason().unwrap().exit_status(), i32::from(n));
            assert_eq!(exit.eventfd().read().unwrap(), 1);
        }
    }

    #[test]
    fn debug_exit_odd_accesses() {
        let exit = signal();
        let dev = DebugExit::new(exit.clone());
        dev.write(0, &[]);
        dev.write(1, &[5]);
        dev.write(u64::MAX, &[5]);
        assert!(!exit.is_requested());
        let mut d = [0xaau8; 4];
        dev.read(0, &mut d);
        assert_eq!(d, [0; 4]);
        dev.read(1, &mut d);
        assert_eq!(d, [0xff; 4]);
        // outw 0x0107: low byte is the status.
        dev.write(0, &[7, 1]);
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(7)));
    }

    #[test]
    fn boot_complete_first_write_wins() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(None));
        let (c, s) = (calls.clone(), seen.clone());
        let dev = BootComplete::new(Some(Box::new(move |at| {
            c.fetch_add(1, Ordering::SeqCst);
            *s.lock().unwrap() = Some(at);
        })));
        assert_eq!(dev.completed_at(), None);
        let mut d = [0xaau8];
        dev.read(0, &mut d);
        assert_eq!(d, [0]);
        dev.write(0, &[]); // zero-length: not a write of anything
        dev.write(1, &[1]); // outside the port
        assert_eq!(dev.completed_at(), None);

        let before = Instant::now();
        dev.write(0, &[1]);
        let first = dev.completed_at().unwrap();
        assert!(first >= before);
        assert_eq!(*seen.lock().unwrap(), Some(first));
        dev.write(0, &[2]);
        dev.write(0, &[3, 4]);
        assert_eq!(dev.completed_at(), Some(first));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn boot_complete_without_hook() {
        let dev = BootComplete::new(None);
        dev.write(0, &[0]);
        assert!(dev.completed_at().is_some());
    }
}
