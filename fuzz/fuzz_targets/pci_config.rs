//! Fuzzes PCI configuration mechanism #1 and BAR dispatch: BAR sizing and moves, the command
//! register, the virtio-pci MSI-X table and PBA, the e1000's BARs. See
//! `devices/src/pci/fuzz.rs` for the input layout and the checked invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = devices::pci::fuzz::run(data);
});
