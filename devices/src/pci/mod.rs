//! PCI: configuration space, MSI-X, configuration mechanism #1 and BAR dispatch (PCI Local Bus
//! Specification 3.0).

pub mod bus;
pub mod config_space;
pub mod msix;

#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;

pub use bus::{
    intx_gsi, BarAllocator, PciBarObserver, PciDevice, PciError, PciHostBridge, PciRoot, PciWindow,
    WindowSpace,
};
pub use config_space::{BarKind, BarReprogram, PciBar, PciConfigError, PciConfigSpace, PciHeader};
pub use msix::{MsiMessage, MsiVectorRouter, Msix, MsixCapability, MsixError};
