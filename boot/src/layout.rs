//! Guest physical memory layout and port numbers, exactly as in `docs/architecture.md`.

use vm_memory::GuestAddress;

use crate::{Error, Result};

/// GDT: 4 entries (null, code64, data, TSS).
pub const GDT_START: u64 = 0x500;
/// IDT: one empty entry, limit 0.
pub const IDT_START: u64 = 0x520;
/// The zero page (`struct boot_params`); `%rsi` points here at the 64-bit entry
/// (Documentation/x86/boot.rst, "64-bit Boot Protocol").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer. The kernel switches to its own stack almost at once.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 (the value loaded into CR3).
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table: 4 entries used, one per GiB.
pub const PDPT_START: u64 = 0xa000;
/// First of 4 page directories (0xb000-0xefff) of 2 MiB pages, identity-mapping 0-4 GiB.
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room for the command line including its NUL terminator.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Extended BIOS data area, 1 KiB below 640 KiB; holds the MP table and is reserved in e820.
pub const EBDA_START: u64 = 0x9fc00;
/// End (exclusive) of conventional memory; 0xa0000-0xfffff is the legacy VGA/BIOS area.
pub const EBDA_END: u64 = 0xa0000;
/// MP floating pointer structure followed by the MP configuration table. The MP spec 1.4
/// section 4 lets the floating pointer live in the first KiB of the EBDA, which Linux scans.
pub const MPTABLE_START: u64 = EBDA_START;
/// ACPI RSDP and tables. The RSDP is found through `boot_params.acpi_rsdp_addr` and, as a
/// fallback, by the legacy scan of 0xe0000-0xfffff (ACPI 6.x section 5.2.5.1).
pub const ACPI_START: u64 = 0xe0000;
/// End (exclusive) of the ACPI area.
pub const ACPI_END: u64 = 0x10_0000;
/// Start of high memory: the kernel is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB (no RAM from here to [`MMIO_HOLE_END`]).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of the MMIO hole: RAM beyond 3 GiB is placed from here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Start of the 32-bit PCI MMIO window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit PCI MMIO window; the last byte is 0xfebf_ffff as in the
/// architecture document. The IOAPIC follows directly.
pub const PCI_MMIO32_END: u64 = 0xfec0_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// For KVM_SET_IDENTITY_MAP_ADDR (one page).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// For KVM_SET_TSS_ADDR (three pages).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Hardware-reduced ACPI sleep control register (ACPI 6.x section 4.8.3.7).
pub const ACPI_SLEEP_CONTROL_PORT: u64 = 0x600;
/// Hardware-reduced ACPI sleep status register (ACPI 6.x section 4.8.3.8).
pub const ACPI_SLEEP_STATUS_PORT: u64 = 0x601;
/// SLP_TYP value of the `\_S5_` package: writing SLP_EN | (5 << 2) to the control port means
/// "power off".
pub const ACPI_S5_SLP_TYP: u64 = 5;
/// COM1 interrupt (ISA IRQ 4 = IOAPIC pin 4).
pub const SERIAL_IRQ: u64 = 4;
/// COM2 interrupt (ISA IRQ 3 = IOAPIC pin 3).
pub const COM2_IRQ: u64 = 3;
/// Number of IOAPIC inputs (the KVM in-kernel IOAPIC has 24).
pub const IOAPIC_NUM_PINS: u64 = 24;

/// Smallest guest memory accepted: a kernel, its decompression space and an initrd need room.
pub const MIN_MEM_SIZE: u64 = 32 << 20;
/// Largest guest memory accepted. 256 GiB of RAM plus the 1 GiB hole stays below 2^39, the
/// smallest physical address width of x86-64 hosts KVM runs on, so every guest physical
/// address is representable; the e820 design (two RAM ranges) has no other limit.
pub const MAX_MEM_SIZE: u64 = 256 << 30;

/// Checks that `mem_size` is usable with this layout.
pub fn validate_mem_size(mem_size: u64) -> Result<()> {
    let err = |reason: String| Error::InvalidMemSize {
        size: mem_size,
        mib: mem_size >> 20,
        reason,
    };
    if mem_size < MIN_MEM_SIZE {
        return Err(err(format!(
            "too small: the minimum is {} MiB",
            MIN_MEM_SIZE >> 20
        )));
    }
    if mem_size > MAX_MEM_SIZE {
        return Err(err(format!(
            "too large: the maximum is {} GiB",
            MAX_MEM_SIZE >> 30
        )));
    }
    if !mem_size.is_multiple_of(4096) {
        return Err(err("not a multiple of the 4 KiB page size".to_string()));
    }
    Ok(())
}

/// Bytes of RAM below the MMIO hole for a guest of `mem_size` bytes.
pub fn low_ram_size(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

/// The guest RAM regions: `[0, min(size, 3 GiB))` and, if `mem_size` > 3 GiB,
/// `[4 GiB, 4 GiB + (size - 3 GiB))`.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let mut regions = vec![(GuestAddress(0), low_ram_size(mem_size) as usize)];
    if mem_size > MMIO_HOLE_START {
        regions.push((
            GuestAddress(MMIO_HOLE_END),
            (mem_size - MMIO_HOLE_START) as usize,
        ));
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_regions_below_hole() {
        assert_eq!(ram_regions(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        assert_eq!(
            ram_regions(MMIO_HOLE_START),
            vec![(GuestAddress(0), MMIO_HOLE_START as usize)]
        );
    }

    #[test]
    fn ram_regions_above_hole() {
        assert_eq!(
            ram_regions(5 << 30),
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 2 << 30)]
        );
    }

    #[test]
    fn mem_size_validation() {
        assert!(validate_mem_size(32 << 20).is_ok());
        assert!(validate_mem_size(8 << 30).is_ok());
        let e = validate_mem_size(1 << 20).unwrap_err().to_string();
        assert!(e.contains("too small"), "{e}");
        let e = validate_mem_size(1 << 40).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        let e = validate_mem_size((64 << 20) + 1).unwrap_err().to_string();
        assert!(e.contains("page size"), "{e}");
    }

    #[test]
    fn layout_is_consistent() {
        // Compile-time facts of the layout that the other modules rely on.
        const _: () = assert!(IDT_START >= GDT_START + 4 * 8);
        const _: () = assert!(PD_START + 4 * 0x1000 <= 0xf000);
        const _: () = assert!(BOOT_STACK_POINTER < PML4_START);
        const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
        const _: () = assert!(PCI_MMIO32_END <= IOAPIC_ADDR);
        const _: () = assert!(KVM_TSS_ADDR + 3 * 0x1000 <= MMIO_HOLE_END);
    }
}
