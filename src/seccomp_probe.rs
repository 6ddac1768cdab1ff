//! A test hook that proves the seccomp filters hold: with `KVMRUN_TEST_SECCOMP_PROBE=1` in
//! kvmrun's environment, a write-only port [`PORT`] appears; a guest byte written to it makes
//! a thread of kvmrun attempt a system call its filter forbids (`openat` of /etc/hostname,
//! what an attacker reading host files would do):
//! - [`FROM_VCPU`]: the vCPU thread that made the write, at once;
//! - [`FROM_WORKER`]: a device-worker thread (started like the real ones, through
//!   `devices::worker_hook`, so it runs under the worker filter).
//!
//! With filters on, kvmrun must die with one line naming the thread and the call (see
//! [`crate::seccomp`]); with `--seccomp=off` the call succeeds and the guest goes on. The port
//! does not exist without the variable; it gives a guest no power it does not already have
//! over its own VMM (ending it). Used by `tests/seccomp.rs`.

use std::sync::Arc;

use devices::bus::BusDevice;
use vmm_sys_util::eventfd::EventFd;

/// The probe's port, next to the debug-exit (0x501) and boot-complete (0x502) ports.
pub const PORT: u64 = 0x503;
pub const FROM_VCPU: u8 = 1;
pub const FROM_WORKER: u8 = 2;
const ENV: &str = "KVMRUN_TEST_SECCOMP_PROBE";

/// The probe device, when the environment asks for it.
pub fn from_env() -> Option<Arc<dyn BusDevice>> {
    if std::env::var_os(ENV).is_none_or(|v| v != "1") {
        return None;
    }
    log::warn!("{ENV}=1: the seccomp test probe is on port {PORT:#x}");
    let wake = EventFd::new(0).ok()?;
    let worker_wake = wake.try_clone().ok()?;
    std::thread::Builder::new()
        .name("seccomp-probe".into())
        .spawn(move || {
            devices::worker_hook::worker_started("seccomp-probe");
            // Blocks until the guest asks; the thread lives as long as the process.
            if worker_wake.read().is_ok() {
                forbidden_call();
            }
        })
        .ok()?;
    Some(Arc::new(Probe { wake }))
}

struct Probe {
    wake: EventFd,
}

/// A call no filter allows.
fn forbidden_call() {
    match std::fs::read_to_string("/etc/hostname") {
        Ok(_) => log::warn!("seccomp probe: openat was allowed (filters off)"),
        Err(e) => log::warn!("seccomp probe: openat failed: {e}"),
    }
}

impl BusDevice for Probe {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&self, _offset: u64, data: &[u8]) {
        match data.first() {
            Some(&FROM_VCPU) => forbidden_call(),
            Some(&FROM_WORKER) => {
                let _ = self.wake.write(1);
            }
            _ => {}
        }
    }
}
