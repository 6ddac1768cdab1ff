//! Device models for kvmrun.
//!
//! Every device sits behind [`bus::BusDevice`] on a [`bus::Bus`]. The bus is built once before
//! the vCPUs start and is then shared read-only, so vCPU threads dispatch without a global lock;
//! each device guards its own state with its own lock.
//!
//! The guest is untrusted: every access (any offset, any length, any value) is handled without
//! panicking. Accesses that hit no register read as all ones (the floating-bus value of the PC
//! AT I/O space, which is also what a driver probing for an absent device expects) and are
//! logged once per address.

pub mod acpi_pm;
pub mod bus;
pub mod debug_port;
pub mod e1000;
#[cfg(test)]
mod fuzz_corpus;
pub mod i8042;
pub mod log_once;
pub mod net;
pub mod pci;
pub mod serial;
#[cfg(any(test, feature = "fuzz"))]
pub mod serial_fuzz;
pub mod virtio;
pub mod vm_exit;
pub mod worker_hook;

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning.
///
/// A panic while a device lock is held would already be a bug; turning every later guest access
/// into a second panic on a vCPU thread would only make it worse, and device state stays
/// consistent byte by byte, so the guard is taken back as is.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Answers a read of an 8-bit register: `value` goes to the first byte; any further bytes of a
/// wider access read as all ones.
///
/// On the PC AT bus every port is 8 bits wide; a wider `in` is split by the chipset into byte
/// cycles to the following ports. Those cycles are not modelled as separate register reads
/// (that could, say, pop a second byte off the UART's receive FIFO behind the driver's back),
/// so the extra bytes get the floating-bus value. A zero-length access reads nothing.
pub(crate) fn read_reg8(data: &mut [u8], value: u8) {
    if let Some((first, rest)) = data.split_first_mut() {
        *first = value;
        rest.fill(0xff);
    }
}
