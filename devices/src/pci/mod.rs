//! PCI bus, configuration space, MSI-X (PCI Local Bus 3.0).
