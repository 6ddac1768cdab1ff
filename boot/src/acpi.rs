//! ACPI tables at `ACPI_START`: RSDP → XSDT → {FADT → DSDT, MADT}.
//!
//! The platform is hardware-reduced ACPI (ACPI 6.5 section 4.1): no PM1/GPE blocks, no SCI,
//! no PM timer. Power-off goes through the sleep control register (section 4.8.3.7) at
//! `ACPI_SLEEP_CONTROL_PORT` with the SLP_TYP that the DSDT's `\_S5_` object names. Fixed
//! tables are laid out by hand here; the DSDT's AML is generated with `acpi_tables::aml`.
//!
//! Interrupt model (kept consistent with the MP table, see `mptable`): ISA IRQ n = GSI n on the
//! one IOAPIC, so there is no interrupt source override; PCI INTx are routed by `_PRT` to the
//! GSIs given in [`AcpiPciConfig`].

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Name, PackageBuilder,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{
    ACPI_END, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_START,
    COM2_IRQ, IOAPIC_ADDR, LAPIC_ADDR, PCI_MMIO32_END, PCI_MMIO32_START, SERIAL_IRQ,
};
pub use crate::PciIrqRoute;
use crate::{Error, Result};

/// PCI interrupt routing to describe in the DSDT's `_PRT`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcpiPciConfig {
    /// One entry per (device, pin) that has an interrupt.
    pub irq_routes: Vec<PciIrqRoute>,
    /// Also describe COM2 (0x2f8, IRQ 3). A hardware-reduced ACPI platform has no legacy ISA
    /// interrupts, so Linux can only use a UART's IRQ when the DSDT names it.
    pub com2: bool,
}

/// First GSI used for PCI INTx: the IOAPIC pins above the 16 ISA IRQs.
pub const PCI_GSI_BASE: u8 = 16;
/// Number of GSIs PCI INTx are spread over (16..=23).
pub const PCI_GSI_COUNT: u8 = 8;

/// The conventional swizzle for `slots` on bus 0: INTx of slot s → GSI 16 + (s + x) mod 8,
/// so neighbouring devices using INTA# land on different IOAPIC pins. Pass the routes for the
/// populated slots to `write_mptable` (the 1 KiB EBDA cannot hold all 124) and either those or
/// `pci_irq_routes(1..32)` to `write_acpi_tables`.
pub fn pci_irq_routes(slots: impl IntoIterator<Item = u8>) -> Vec<PciIrqRoute> {
    slots
        .into_iter()
        .flat_map(|device| {
            (0..4u8).map(move |pin| PciIrqRoute {
                device,
                pin,
                gsi: PCI_GSI_BASE + (device.wrapping_add(pin) % PCI_GSI_COUNT),
            })
        })
        .collect()
}

// Identifiers in every table header (ACPI 6.5 section 5.2.6).
const OEM_ID: [u8; 6] = *b"KVMRUN";
const OEM_TABLE_ID: [u8; 8] = *b"KVMRUN  ";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: [u8; 4] = *b"KVMR";
const CREATOR_REVISION: u32 = 1;
/// Size of the System Description Table header (section 5.2.6, table 5.4).
pub const HEADER_SIZE: usize = 36;
/// Size of the RSDP of revision 2 (section 5.2.5.3, table 5.3).
pub const RSDP_SIZE: usize = 36;
/// Size of the FADT of ACPI 6.x (section 5.2.9, table 5.9).
pub const FADT_SIZE: usize = 276;
/// FADT major/minor version for ACPI 6.5.
const FADT_REVISION: u8 = 6;
const FADT_MINOR_REVISION: u8 = 5;
/// MADT revision of ACPI 6.5 (section 5.2.12).
const MADT_REVISION: u8 = 5;
/// DSDT revision 2: integers are 64 bits (section 5.2.11.1).
const DSDT_REVISION: u8 = 2;

// FADT fixed feature flags (section 5.2.9, table 5.10).
/// WBINVD works (required to be set on ACPI 2.0+ platforms).
const FADT_F_WBINVD: u32 = 1 << 0;
/// The RESET_REG is supported.
const FADT_F_RESET_REG_SUP: u32 = 1 << 10;
/// Hardware-reduced ACPI.
pub const FADT_F_HW_REDUCED_ACPI: u32 = 1 << 20;
// IA-PC boot architecture flags (section 5.2.9.3, table 5.11): no VGA and no CMOS RTC to
// probe. "8042" is left clear: the i8042 only implements reset, so the OS must not look for a
// keyboard controller.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// i8042 reset: writing 0xFE to port 0x64 pulses the reset line (see the port map).
const RESET_PORT: u64 = 0x64;
const RESET_VALUE: u8 = 0xfe;

// FADT field offsets (table 5.9).
const FADT_OFF_DSDT: usize = 40;
const FADT_OFF_IAPC_BOOT_ARCH: usize = 109;
const FADT_OFF_FLAGS: usize = 112;
const FADT_OFF_RESET_REG: usize = 116;
const FADT_OFF_RESET_VALUE: usize = 128;
const FADT_OFF_MINOR_VERSION: usize = 131;
const FADT_OFF_X_DSDT: usize = 140;
const FADT_OFF_SLEEP_CONTROL_REG: usize = 244;
const FADT_OFF_SLEEP_STATUS_REG: usize = 256;

/// Generic Address Structure address space ID for system I/O (section 5.2.3.2, table 5.1).
const GAS_SYSTEM_IO: u8 = 1;
/// GAS access size 1 = byte access.
const GAS_ACCESS_BYTE: u8 = 1;

// MADT (section 5.2.12).
/// MADT flag PCAT_COMPAT: the system also has dual 8259s (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_LAPIC_ENABLED: u32 = 1;

/// Alignment of each table in the ACPI area. The RSDP needs 16 (section 5.2.5.1: the scan
/// looks at 16-byte boundaries); the others use it too for tidiness.
const TABLE_ALIGN: usize = 16;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A System Description Table under construction: header then body, checksum set by `finish`.
struct Sdt(Vec<u8>);

impl Sdt {
    fn new(signature: &[u8; 4], revision: u8) -> Self {
        let mut v = Vec::with_capacity(256);
        v.extend_from_slice(signature);
        v.extend_from_slice(&0u32.to_le_bytes()); // length, set in finish()
        v.push(revision);
        v.push(0); // checksum, set in finish()
        v.extend_from_slice(&OEM_ID);
        v.extend_from_slice(&OEM_TABLE_ID);
        v.extend_from_slice(&OEM_REVISION.to_le_bytes());
        v.extend_from_slice(&CREATOR_ID);
        v.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
        debug_assert_eq!(v.len(), HEADER_SIZE);
        Sdt(v)
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[4..8].copy_from_slice(&len.to_le_bytes());
        self.0[9] = 0;
        self.0[9] = checksum(&self.0);
        self.0
    }
}

/// Generic Address Structure for an 8-bit I/O port (section 5.2.3.2).
fn gas_io8(port: u64) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_IO;
    g[1] = 8; // register bit width
    g[2] = 0; // bit offset
    g[3] = GAS_ACCESS_BYTE;
    g[4..12].copy_from_slice(&port.to_le_bytes());
    g
}

fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut t = Sdt::new(b"FACP", FADT_REVISION);
    t.0.resize(FADT_SIZE, 0);
    let b = &mut t.0;
    // FIRMWARE_CTRL/X_FIRMWARE_CTRL stay 0: no FACS on hardware-reduced platforms (5.2.10).
    // DSDT (32-bit) must be 0 when X_DSDT is used (table 5.9).
    b[FADT_OFF_DSDT..FADT_OFF_DSDT + 4].copy_from_slice(&0u32.to_le_bytes());
    b[FADT_OFF_IAPC_BOOT_ARCH..FADT_OFF_IAPC_BOOT_ARCH + 2].copy_from_slice(
        &(IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT).to_le_bytes(),
    );
    b[FADT_OFF_FLAGS..FADT_OFF_FLAGS + 4].copy_from_slice(
        &(FADT_F_WBINVD | FADT_F_RESET_REG_SUP | FADT_F_HW_REDUCED_ACPI).to_le_bytes(),
    );
    b[FADT_OFF_RESET_REG..FADT_OFF_RESET_REG + 12].copy_from_slice(&gas_io8(RESET_PORT));
    b[FADT_OFF_RESET_VALUE] = RESET_VALUE;
    b[FADT_OFF_MINOR_VERSION] = FADT_MINOR_REVISION;
    b[FADT_OFF_X_DSDT..FADT_OFF_X_DSDT + 8].copy_from_slice(&dsdt_addr.to_le_bytes());
    b[FADT_OFF_SLEEP_CONTROL_REG..FADT_OFF_SLEEP_CONTROL_REG + 12]
        .copy_from_slice(&gas_io8(ACPI_SLEEP_CONTROL_PORT));
    b[FADT_OFF_SLEEP_STATUS_REG..FADT_OFF_SLEEP_STATUS_REG + 12]
        .copy_from_slice(&gas_io8(ACPI_SLEEP_STATUS_PORT));
    t.finish()
}

fn build_madt(num_cpus: u8) -> Vec<u8> {
    let mut t = Sdt::new(b"APIC", MADT_REVISION);
    t.0.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    t.0.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for cpu in 0..num_cpus {
        // Processor Local APIC (5.2.12.2): UID = APIC ID = vCPU index, enabled.
        t.0.extend_from_slice(&[MADT_LOCAL_APIC, 8, cpu, cpu]);
        t.0.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
    }
    // I/O APIC (5.2.12.3): ID after the CPUs' (as in the MP table), GSI base 0.
    t.0.extend_from_slice(&[MADT_IO_APIC, 12, num_cpus, 0]);
    t.0.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    t.0.extend_from_slice(&0u32.to_le_bytes());
    // Local APIC NMI (5.2.12.7): LINT1 of all processors (UID 0xff), flags "conforms".
    t.0.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    t.finish()
}

fn build_xsdt(entries: &[u64]) -> Vec<u8> {
    let mut t = Sdt::new(b"XSDT", 1);
    for e in entries {
        t.0.extend_from_slice(&e.to_le_bytes());
    }
    t.finish()
}

fn build_rsdp(xsdt_addr: u64) -> [u8; RSDP_SIZE] {
    let mut r = [0u8; RSDP_SIZE];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(&OEM_ID);
    r[15] = 2; // revision 2: ACPI 2.0+ with XSDT
               // RsdtAddress (16..20) = 0: only the XSDT is provided.
    r[20..24].copy_from_slice(&(RSDP_SIZE as u32).to_le_bytes());
    r[24..32].copy_from_slice(&xsdt_addr.to_le_bytes());
    // Checksum covers the ACPI 1.0 part (first 20 bytes), extended checksum the whole.
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// `_PRT` address field: device in the high word, 0xFFFF = any function (section 6.2.13).
fn prt_address(device: u8) -> u32 {
    (u32::from(device) << 16) | 0xffff
}

/// The DSDT: `\_S5_`, `\_SB.PCI0` (host bridge with `_CRS` and `_PRT`), `\_SB.COM1` and,
/// when asked, `\_SB.COM2`.
pub fn build_dsdt(pci: &AcpiPciConfig) -> Result<Vec<u8>> {
    for (i, r) in pci.irq_routes.iter().enumerate() {
        r.validate()?;
        if pci.irq_routes[..i]
            .iter()
            .any(|o| o.device == r.device && o.pin == r.pin)
        {
            // Two `_PRT` entries for one pin would be ambiguous.
            return Err(Error::InvalidPciIrqRoute {
                device: r.device,
                pin: r.pin,
                gsi: r.gsi,
            });
        }
    }
    let mut body = Vec::new();

    // \_S5_ (section 7.4.2): Package {SLP_TYPa, SLP_TYPb, reserved, reserved}. On a
    // hardware-reduced platform the OS writes SLP_TYPa to the sleep control register.
    let slp_typ = ACPI_S5_SLP_TYP as u8;
    let mut s5 = PackageBuilder::new();
    for v in [slp_typ, slp_typ, 0, 0] {
        s5.add_element(&v);
    }
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);

    // PCI host bridge (PCI Firmware spec 3.x section 4.1; ACPI 6.5 section 6.1, 6.4, 6.5).
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg_io = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_window = AddressSpace::<u16>::new_io(0x1000, 0xffff, None);
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_START as u32,
        (PCI_MMIO32_END - 1) as u32,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &cfg_io, &io_window, &mmio32]);
    let mut prt = PackageBuilder::new();
    for r in &pci.irq_routes {
        // {Address, Pin, Source = 0 (GSI mode), Source Index = GSI}.
        let mut e = PackageBuilder::new();
        e.add_element(&prt_address(r.device));
        e.add_element(&r.pin);
        e.add_element(&aml::ZERO);
        e.add_element(&u32::from(r.gsi));
        prt.add_element(&e);
    }
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
    let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
    let adr = Name::new("_ADR".into(), &aml::ZERO);
    let seg = Name::new("_SEG".into(), &aml::ZERO);
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let bbn = Name::new("_BBN".into(), &aml::ZERO);
    let crs_name = Name::new("_CRS".into(), &crs);
    let prt_name = Name::new("_PRT".into(), &prt);
    let pci0 = Device::new(
        "PCI0".into(),
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs_name, &prt_name],
    );

    // COM1 (PNP0501, a 16550-compatible UART): 8 ports at 0x3f8, edge IRQ 4 active high.
    let com_hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let com_uid = Name::new("_UID".into(), &aml::ZERO);
    let com_io = IO::new(0x3f8, 0x3f8, 1, 8);
    let com_irq = Interrupt::new(true, true, false, false, SERIAL_IRQ as u32);
    let com_crs = ResourceTemplate::new(vec![&com_io, &com_irq]);
    let com_crs_name = Name::new("_CRS".into(), &com_crs);
    let com1 = Device::new("COM1".into(), vec![&com_hid, &com_uid, &com_crs_name]);

    // COM2 likewise: 8 ports at 0x2f8, edge IRQ 3 active high.
    let com2_uid = Name::new("_UID".into(), &aml::ONE);
    let com2_io = IO::new(0x2f8, 0x2f8, 1, 8);
    let com2_irq = Interrupt::new(true, true, false, false, COM2_IRQ as u32);
    let com2_crs = ResourceTemplate::new(vec![&com2_io, &com2_irq]);
    let com2_crs_name = Name::new("_CRS".into(), &com2_crs);
    let com2 = Device::new("COM2".into(), vec![&com_hid, &com2_uid, &com2_crs_name]);

    let mut devices: Vec<&dyn Aml> = vec![&pci0, &com1];
    if pci.com2 {
        devices.push(&com2);
    }
    Scope::new("\\_SB_".into(), devices).to_aml_bytes(&mut body);

    let mut t = Sdt::new(b"DSDT", DSDT_REVISION);
    t.0.extend_from_slice(&body);
    Ok(t.finish())
}

fn align(x: usize) -> usize {
    x.next_multiple_of(TABLE_ALIGN)
}

/// All tables laid out from `ACPI_START`: (guest address, bytes), RSDP first.
pub fn build_acpi_tables(num_cpus: u8, pci: &AcpiPciConfig) -> Result<Vec<(u64, Vec<u8>)>> {
    if num_cpus == 0 {
        return Err(Error::NoCpus);
    }
    if num_cpus > 254 {
        return Err(Error::TooManyCpus(
            num_cpus.into(),
            "the IOAPIC takes APIC ID num_cpus and 255 is broadcast".into(),
        ));
    }
    let dsdt = build_dsdt(pci)?;
    let madt = build_madt(num_cpus);

    let base = ACPI_START as usize;
    let xsdt_at = align(base + RSDP_SIZE);
    let xsdt_len = HEADER_SIZE + 2 * 8;
    let fadt_at = align(xsdt_at + xsdt_len);
    let madt_at = align(fadt_at + FADT_SIZE);
    let dsdt_at = align(madt_at + madt.len());
    let end = dsdt_at + dsdt.len();
    let avail = (ACPI_END - ACPI_START) as usize;
    if end - base > avail {
        return Err(Error::AcpiTooBig {
            size: end - base,
            avail,
            start: ACPI_START,
        });
    }
    let fadt = build_fadt(dsdt_at as u64);
    let xsdt = build_xsdt(&[fadt_at as u64, madt_at as u64]);
    debug_assert_eq!(xsdt.len(), xsdt_len);
    let rsdp = build_rsdp(xsdt_at as u64);
    Ok(vec![
        (ACPI_START, rsdp.to_vec()),
        (xsdt_at as u64, xsdt),
        (fadt_at as u64, fadt),
        (madt_at as u64, madt),
        (dsdt_at as u64, dsdt),
    ])
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT into 0xe0000-0xfffff; returns the RSDP address
/// (also what `params` puts in `boot_params.acpi_rsdp_addr`).
pub fn write_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    num_cpus: u8,
    pci: &AcpiPciConfig,
) -> Result<GuestAddress> {
    let tables = build_acpi_tables(num_cpus, pci)?;
    // Zero the area first so padding and stale data are deterministic.
    let zeros = vec![0u8; (ACPI_END - ACPI_START) as usize];
    mem.write_slice(&zeros, GuestAddress(ACPI_START))
        .map_err(Error::mem("ACPI area", ACPI_START))?;
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(Error::mem("ACPI table", *addr))?;
    }
    Ok(GuestAddress(ACPI_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::mem;
    use vm_memory::GuestMemoryMmap;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// Reads one SDT from guest memory, checking signature, length and checksum.
    fn read_sdt(m: &GuestMemoryMmap<()>, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        assert!((ACPI_START..ACPI_END).contains(&addr), "{addr:#x}");
        let mut hdr = [0u8; HEADER_SIZE];
        m.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
        assert_eq!(&hdr[0..4], sig);
        let len = u32_at(&hdr, 4) as usize;
        assert!(len >= HEADER_SIZE);
        assert!(addr + len as u64 <= ACPI_END);
        let mut t = vec![0u8; len];
        m.read_slice(&mut t, GuestAddress(addr)).unwrap();
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        assert_eq!(&t[10..16], b"KVMRUN");
        t
    }

    struct Tables {
        fadt: Vec<u8>,
        madt: Vec<u8>,
        dsdt: Vec<u8>,
    }

    fn walk(m: &GuestMemoryMmap<()>, rsdp_addr: GuestAddress) -> Tables {
        let mut rsdp = [0u8; RSDP_SIZE];
        m.read_slice(&mut rsdp, rsdp_addr).unwrap();
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
        assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2);
        assert_eq!(u32_at(&rsdp, 16), 0);
        assert_eq!(u32_at(&rsdp, 20), 36);
        let xsdt = read_sdt(m, u64_at(&rsdp, 24), b"XSDT");
        let entries: Vec<u64> = (HEADER_SIZE..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = read_sdt(m, entries[0], b"FACP");
        let madt = read_sdt(m, entries[1], b"APIC");
        let dsdt = read_sdt(m, u64_at(&fadt, FADT_OFF_X_DSDT), b"DSDT");
        assert_eq!(dsdt[8], 2);
        Tables { fadt, madt, dsdt }
    }

    fn cfg() -> AcpiPciConfig {
        AcpiPciConfig {
            com2: false,
            irq_routes: pci_irq_routes(1..32),
        }
    }

    #[test]
    fn chain_and_fadt() {
        let m = mem(64 << 20);
        let rsdp = write_acpi_tables(&m, 2, &cfg()).unwrap();
        assert_eq!(rsdp, GuestAddress(0xe0000));
        let t = walk(&m, rsdp);
        // The DSDT reached through the chain is the one build_dsdt makes.
        assert_eq!(t.dsdt, build_dsdt(&cfg()).unwrap());
        let f = &t.fadt;
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6);
        assert_eq!(f[FADT_OFF_MINOR_VERSION], 5);
        assert_eq!(u32_at(f, FADT_OFF_DSDT), 0);
        let flags = u32_at(f, FADT_OFF_FLAGS);
        assert_ne!(flags & FADT_F_HW_REDUCED_ACPI, 0);
        // No SCI, no PM timer, no PM1 blocks.
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 0);
        assert_eq!(u32_at(f, 76), 0);
        assert_eq!(f[91], 0);
        assert!(f[148..244].iter().all(|&b| b == 0));
        // Sleep control / status: SystemIO, 8 bits, byte access.
        assert_eq!(&f[244..248], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 248), 0x600);
        assert_eq!(&f[256..260], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 260), 0x601);
        // Reset register: i8042.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 120), 0x64);
        assert_eq!(f[128], 0xfe);
    }

    #[test]
    fn madt_lists_every_cpu() {
        for n in [1u8, 4, 254] {
            let m = mem(64 << 20);
            let t = walk(&m, write_acpi_tables(&m, n, &cfg()).unwrap());
            let a = &t.madt;
            assert_eq!(u32_at(a, 36), 0xfee0_0000);
            assert_eq!(u32_at(a, 40) & 1, 1, "PCAT_COMPAT");
            let mut off = 44;
            let mut lapics = vec![];
            let mut ioapics = vec![];
            let mut nmis = 0;
            while off < a.len() {
                let (ty, len) = (a[off], a[off + 1] as usize);
                match ty {
                    0 => {
                        assert_eq!(len, 8);
                        assert_eq!(u32_at(a, off + 4), 1);
                        lapics.push((a[off + 2], a[off + 3]));
                    }
                    1 => {
                        assert_eq!(len, 12);
                        ioapics.push((a[off + 2], u32_at(a, off + 4), u32_at(a, off + 8)));
                    }
                    4 => {
                        assert_eq!(len, 6);
                        assert_eq!(a[off + 5], 1);
                        nmis += 1;
                    }
                    2 => panic!("no interrupt source override expected"),
                    t => panic!("unexpected MADT entry {t}"),
                }
                off += len;
            }
            assert_eq!(off, a.len());
            assert_eq!(lapics.len(), n as usize);
            for (i, (uid, id)) in lapics.iter().enumerate() {
                assert_eq!((*uid as usize, *id as usize), (i, i));
            }
            assert_eq!(ioapics, vec![(n, 0xfec0_0000, 0)]);
            assert_eq!(nmis, 1);
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn dsdt_contents() {
        let d = build_dsdt(&cfg()).unwrap();
        // NameOp "_S5_" PackageOp len 4 elements: BytePrefix 5, BytePrefix 5, Zero, Zero.
        let s5 = find(&d, b"\x08_S5_\x12").unwrap();
        assert_eq!(&d[s5 + 7..s5 + 13], &[4, 0x0a, 5, 0x0a, 5, 0]);
        assert!(find(&d, b"PCI0").is_some());
        assert!(find(&d, b"COM1").is_some());
        assert!(find(&d, b"COM2").is_none());
        let with_com2 = build_dsdt(&AcpiPciConfig {
            com2: true,
            ..cfg()
        })
        .unwrap();
        assert!(find(&with_com2, b"COM2").is_some());
        assert!(find(&d, b"_PRT").is_some());
        // EISAID("PNP0A08") = 0x080ad041, ("PNP0A03") = 0x030ad041, ("PNP0501") = 0x0105d041.
        assert!(find(&d, &[0x0c, 0x41, 0xd0, 0x0a, 0x08]).is_some());
        assert!(find(&d, &[0x0c, 0x41, 0xd0, 0x0a, 0x03]).is_some());
        assert!(find(&d, &[0x0c, 0x41, 0xd0, 0x05, 0x01]).is_some());
        // A _PRT entry: PackageOp, PkgLength 12, 4 elements {0x001fffff, 3, Zero, 16 + (31+3)%8 = 18}.
        assert!(find(
            &d,
            &[0x12, 0x0c, 4, 0x0c, 0xff, 0xff, 0x1f, 0, 0x0a, 3, 0, 0x0a, 18]
        )
        .is_some());
        // The 32-bit MMIO window: min 0xc0000000, max 0xfebfffff.
        let mut w = Vec::new();
        w.extend_from_slice(&0xc000_0000u32.to_le_bytes());
        w.extend_from_slice(&0xfebf_ffffu32.to_le_bytes());
        assert!(find(&d, &w).is_some());
    }

    #[test]
    fn bad_routes_and_cpu_counts() {
        let dup = AcpiPciConfig {
            com2: false,
            irq_routes: vec![
                PciIrqRoute {
                    device: 1,
                    pin: 0,
                    gsi: 16,
                },
                PciIrqRoute {
                    device: 1,
                    pin: 0,
                    gsi: 17,
                },
            ],
        };
        assert!(matches!(
            build_dsdt(&dup),
            Err(Error::InvalidPciIrqRoute { .. })
        ));
        let bad_pin = AcpiPciConfig {
            com2: false,
            irq_routes: vec![PciIrqRoute {
                device: 1,
                pin: 4,
                gsi: 16,
            }],
        };
        assert!(build_dsdt(&bad_pin).is_err());
        assert!(matches!(build_acpi_tables(0, &cfg()), Err(Error::NoCpus)));
        assert!(build_acpi_tables(255, &cfg()).is_err());
        // Everything fits even at the extremes.
        let t = build_acpi_tables(254, &cfg()).unwrap();
        let (last_addr, last) = t.last().unwrap();
        assert!(last_addr + last.len() as u64 <= ACPI_END);
    }

    #[test]
    fn route_swizzle() {
        let r = pci_irq_routes([1u8, 2]);
        assert_eq!(r.len(), 8);
        assert_eq!(
            r[0],
            PciIrqRoute {
                device: 1,
                pin: 0,
                gsi: 17
            }
        );
        assert_eq!(r[3].gsi, 20);
        assert_eq!(r[4].gsi, 18);
        assert!(pci_irq_routes(1..32)
            .iter()
            .all(|r| (16..24).contains(&r.gsi)));
    }

    /// Disassembles the tables with ACPICA's `iasl` when it is installed (Debian package
    /// `acpica-tools`); the byte-level tests above do not depend on it.
    #[test]
    fn iasl_disassembles_tables() {
        let Ok(out) = std::process::Command::new("iasl").arg("-v").output() else {
            eprintln!("iasl not found: skipping the ACPICA disassembly test");
            return;
        };
        assert!(out.status.success() || !out.stdout.is_empty());
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/kvmrun-acpi").unwrap();
        let tables = build_acpi_tables(4, &cfg()).unwrap();
        for ((_, bytes), name) in tables.iter().skip(2).zip(["facp", "apic", "dsdt"]) {
            let aml = dir.as_path().join(format!("{name}.dat"));
            std::fs::write(&aml, bytes).unwrap();
            let out = std::process::Command::new("iasl")
                .arg("-d")
                .arg(&aml)
                .current_dir(dir.as_path())
                .output()
                .unwrap();
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "iasl -d {name}: {log}");
            let dsl = std::fs::read_to_string(dir.as_path().join(format!("{name}.dsl"))).unwrap();
            match name {
                "dsdt" => {
                    for needle in [
                        "Name (_S5, Package (0x04)",
                        "Device (PCI0)",
                        "EisaId (\"PNP0A08\")",
                        "EisaId (\"PNP0A03\")",
                        "Name (_PRT, Package (0x7C)",
                        "0x001FFFFF",
                        "0xFEBFFFFF",
                        "Device (COM1)",
                        "EisaId (\"PNP0501\")",
                    ] {
                        assert!(dsl.contains(needle), "{needle:?} not in:\n{dsl}");
                    }
                }
                "facp" => {
                    // Wording differs between iasl versions ("(ACPI 5)" / "(V5)").
                    assert!(
                        dsl.lines().any(
                            |l| l.contains("Hardware Reduced") && l.trim_end().ends_with(": 1")
                        ),
                        "{dsl}"
                    );
                    assert!(dsl.contains("Sleep Control Register"), "{dsl}");
                }
                "apic" => {
                    assert_eq!(dsl.matches("Processor Local APIC").count(), 4, "{dsl}");
                }
                _ => unreachable!(),
            }
        }
    }
}
