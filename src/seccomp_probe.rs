//! A test hook that proves the seccomp filters hold: with `KVMRUN_TEST_SECCOMP_PROBE=1` in
//! kvmrun's environment, a write-only port [`PORT`] appears; a guest byte written to it makes
//! a thread of kvmrun attempt a system call its filter forbids:
//! - [`FROM_VCPU`]: the vCPU thread that made the write opens /etc/hostname (`openat`, what an
//!   attacker reading host files would do);
//! - [`FROM_WORKER`]: a device-worker thread, started like the real ones: by the vCPU thread
//!   that made the write (as a guest's DRIVER_OK write starts a virtio worker), installing the
//!   worker filter through `devices::worker_hook` on top of the vCPU filter it inherits. It
//!   then tries KVM_RUN (an `ioctl` the vCPU filter allows and the worker filter does not: a
//!   worker cannot run a vCPU), so the test also shows the worker filter is in place.
//!
//! With filters on, kvmrun must die with one line naming the thread and the call (see
//! [`crate::seccomp`]); with `--seccomp=off` the call succeeds and the guest goes on. The port
//! does not exist without the variable; it gives a guest no power it does not already have
//! over its own VMM (ending it). Used by `tests/seccomp.rs`.

use std::sync::Arc;

use devices::bus::BusDevice;

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
    Some(Arc::new(Probe))
}

struct Probe;

/// A call no filter allows.
fn open_a_host_file() {
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
            Some(&FROM_VCPU) => open_a_host_file(),
            Some(&FROM_WORKER) => {
                // Not joined: the call ends the process, or (filters off) the thread ends.
                let spawned = std::thread::Builder::new()
                    .name("seccomp-probe".into())
                    .spawn(|| {
                        devices::worker_hook::worker_started("seccomp-probe");
                        // On no descriptor: harmless (EBADF) when the filters are off.
                        // SAFETY: an ioctl on an invalid descriptor touches no memory.
                        let r = unsafe { libc::ioctl(-1, crate::seccomp::KVM_RUN as _, 0) };
                        log::warn!("seccomp probe: KVM_RUN ioctl was allowed (filters off): {r}");
                    });
                if let Err(e) = spawned {
                    log::error!("seccomp probe: cannot start its worker: {e}");
                }
            }
            _ => {}
        }
    }
}
