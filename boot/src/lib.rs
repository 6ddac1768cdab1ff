//! Kernel loading and the boot-time view of the machine.
//!
//! Everything here only *produces data*: bytes written into guest memory and kvm-bindings
//! structs. The `kvmrun` binary performs the KVM ioctls, so this crate has no dependency on
//! kvm-ioctls and every function can be tested in-process against a `GuestMemoryMmap`.
//!
//! The guest physical memory layout is defined in `docs/architecture.md` and mirrored by the
//! constants in [`layout`].

pub mod acpi;
pub mod cpu;
pub mod error;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod gdt;
pub mod initrd;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod params;
pub mod xsave;

pub use error::{Error, Result};

/// One PCI interrupt route: the INTx pin of the device in `device` (slot number on bus 0) is
/// wired to IOAPIC input `gsi`. Shared by the MP table (PCI interrupt entries) and the ACPI
/// DSDT (`_PRT`), so both describe the same wiring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIrqRoute {
    /// PCI device (slot) number on bus 0, 0..=31.
    pub device: u8,
    /// Interrupt pin: 0 = INTA#, 1 = INTB#, 2 = INTC#, 3 = INTD#.
    pub pin: u8,
    /// Global system interrupt = IOAPIC input pin (GSI base is 0).
    pub gsi: u8,
}

impl PciIrqRoute {
    /// Checks the ranges that both the MP table and the `_PRT` encode.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.device > 31 || self.pin > 3 || u64::from(self.gsi) >= layout::IOAPIC_NUM_PINS {
            return Err(Error::InvalidPciIrqRoute {
                device: self.device,
                pin: self.pin,
                gsi: self.gsi,
            });
        }
        Ok(())
    }
}
