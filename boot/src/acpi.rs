//! ACPI tables: RSDP → XSDT → {FADT → DSDT, MADT}, hand-written.
//!
//! The machine is described as *hardware-reduced ACPI* (ACPI 6.5 §4.1): there are no PM1
//! event/control blocks, no PM timer, no GPE blocks and no SMI command port. Power-off is done
//! through the FADT sleep control register (§4.8.3.7) at [`layout::ACPI_SLEEP_CONTROL_PORT`],
//! with the SLP_TYP the DSDT's `\_S5_` object names (§7.4.2).
//!
//! All tables live in the BIOS read-only area `layout::ACPI_START..layout::ACPI_END`, which the
//! e820 map reserves; the RSDP sits at its start, on a 16-byte boundary, where an OS that is not
//! told the RSDP address searches for it (§5.2.5.1).
//!
//! Section numbers refer to the ACPI Specification 6.5.

use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::{Error, Result};

pub use crate::PciIrqRoute;

/// PCI description for the DSDT.
#[derive(Debug, Clone, Default)]
pub struct AcpiPciConfig {
    /// INTx routing of the devices on bus 0, described by the host bridge's `_PRT`.
    pub routes: Vec<PciIrqRoute>,
}

/// OEM fields of every table header (§5.2.6, Table 5.4).
const OEM_ID: [u8; 6] = *b"KVMRUN";
const OEM_TABLE_ID: [u8; 8] = *b"KVMRUN  ";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: [u8; 4] = *b"KVMR";
const CREATOR_REVISION: u32 = 1;

/// Size of the System Description Table Header (§5.2.6).
const HEADER_LEN: usize = 36;
/// Size of the ACPI 2.0+ RSDP (§5.2.5.3).
const RSDP_LEN: usize = 36;
/// FADT revision 6 (ACPI 6.0 and later) is 276 bytes (§5.2.9, Table 5.9).
const FADT_LEN: usize = 276;
const FADT_REVISION: u8 = 6;
/// FADT Minor Version: 6.5.
const FADT_MINOR_REVISION: u8 = 5;
/// MADT revision in ACPI 6.5 (§5.2.12, Table 5.19).
const MADT_REVISION: u8 = 5;
/// DSDT revision 2: AML integers are 64 bits wide (§5.2.11.1).
const DSDT_REVISION: u8 = 2;
const XSDT_REVISION: u8 = 1;

/// SCI interrupt reported in the FADT. Nothing raises it (there are no fixed-feature events in
/// hardware-reduced mode), but OSes still install a handler on it; 9 is the PC convention.
const SCI_INT: u16 = 9;

/// FADT Fixed Feature Flags (§5.2.9, Table 5.10).
const FADT_F_WBINVD: u32 = 1 << 0;
/// C1 (HLT) is supported on all processors.
const FADT_F_PROC_C1: u32 = 1 << 2;
/// No fixed-feature power button (1 = control method or absent).
const FADT_F_PWR_BUTTON: u32 = 1 << 4;
/// No fixed-feature sleep button.
const FADT_F_SLP_BUTTON: u32 = 1 << 5;
/// Hardware-reduced ACPI (§4.1): no fixed hardware, sleep via the sleep registers.
const FADT_F_HW_REDUCED_ACPI: u32 = 1 << 20;

/// IA-PC Boot Architecture Flags (§5.2.9.3, Table 5.11).
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// There is no CMOS RTC at ports 0x70/0x71 (the guest gets its time from kvmclock).
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// Generic Address Structure address space IDs and access sizes (§5.2.3.2, Table 5.1).
const GAS_SYSTEM_IO: u8 = 1;
const GAS_ACCESS_BYTE: u8 = 1;

/// MADT flags: the machine also has dual 8259s (§5.2.12, Table 5.20).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT Interrupt Controller Structure types (§5.2.12, Table 5.21).
const MADT_TYPE_LOCAL_APIC: u8 = 0;
const MADT_TYPE_IOAPIC: u8 = 1;
const MADT_TYPE_INT_SRC_OVERRIDE: u8 = 2;
const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
/// Local APIC Flags: Enabled (§5.2.12.2, Table 5.23).
const MADT_LAPIC_ENABLED: u32 = 1;
/// MPS INTI flags (§5.2.12.5, Table 5.26): polarity active high (bits 1:0 = 01), trigger edge
/// (bits 3:2 = 01).
const MPS_INTI_ACTIVE_HIGH_EDGE: u16 = 0b0101;
/// Processor UID 0xff in a Local APIC NMI structure means "all processors" (§5.2.12.7).
const ALL_PROCESSORS: u8 = 0xff;

/// Alignment of each table after the RSDP (the XSDT holds 64-bit entries).
const TABLE_ALIGN: u64 = 16;

/// Writes the RSDP, XSDT, FADT, MADT and DSDT from [`layout::ACPI_START`] upward and returns the
/// guest address of the RSDP.
///
/// The MADT describes `num_cpus` processors with APIC IDs 0..num_cpus and one IOAPIC with ID
/// `num_cpus`; the DSDT describes the PCI host bridge (with `pci.routes` as its `_PRT`), COM1 and
/// the S5 sleep state.
pub fn write_acpi_tables<M: vm_memory::GuestMemory>(
    mem: &M,
    num_cpus: u8,
    pci: &AcpiPciConfig,
) -> Result<GuestAddress> {
    let tables = build_tables(num_cpus, pci, layout::ACPI_START, layout::ACPI_END)?;
    for (addr, bytes) in &tables.blobs {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(Error::mem("ACPI tables", *addr))?;
    }
    Ok(GuestAddress(tables.rsdp))
}

/// The tables' bytes and where each goes.
struct Tables {
    rsdp: u64,
    blobs: Vec<(u64, Vec<u8>)>,
}

fn align_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

/// Lays the tables out in `start..end`: RSDP, XSDT, FADT, MADT, DSDT.
fn build_tables(num_cpus: u8, pci: &AcpiPciConfig, start: u64, end: u64) -> Result<Tables> {
    if num_cpus == 0 {
        return Err(Error::NoCpus);
    }
    // xAPIC IDs are 8 bits and 0xff is the broadcast ID; the IOAPIC takes ID num_cpus.
    if num_cpus == u8::MAX {
        return Err(Error::TooManyCpus(
            usize::from(num_cpus),
            "the MADT gives APIC IDs 0..=num_cpus to the vCPUs and the IOAPIC, and 0xff is \
             the xAPIC broadcast ID (at most 254 vCPUs)"
                .to_string(),
        ));
    }
    for (i, r) in pci.routes.iter().enumerate() {
        r.validate()?;
        // One _PRT entry per (device, pin) (§6.2.13): a second one would be ambiguous.
        if pci.routes[..i]
            .iter()
            .any(|o| o.device == r.device && o.pin == r.pin)
        {
            return Err(Error::InvalidPciIrqRoute {
                device: r.device,
                pin: r.pin,
                gsi: r.gsi,
            });
        }
    }

    let dsdt_body = dsdt_aml(&pci.routes);
    let madt_body = madt_entries(num_cpus);

    let rsdp_addr = start;
    let xsdt_addr = align_up(rsdp_addr + RSDP_LEN as u64, TABLE_ALIGN);
    let xsdt_len = HEADER_LEN + 2 * 8;
    let fadt_addr = align_up(xsdt_addr + xsdt_len as u64, TABLE_ALIGN);
    let madt_addr = align_up(fadt_addr + FADT_LEN as u64, TABLE_ALIGN);
    let madt_len = HEADER_LEN + 8 + madt_body.len();
    let dsdt_addr = align_up(madt_addr + madt_len as u64, TABLE_ALIGN);
    let dsdt_len = HEADER_LEN + dsdt_body.len();
    let tables_end = dsdt_addr + dsdt_len as u64;
    if tables_end > end {
        return Err(Error::AcpiTooBig {
            size: (tables_end - start) as usize,
            avail: (end - start) as usize,
            start,
        });
    }

    let dsdt = sdt(*b"DSDT", DSDT_REVISION, &dsdt_body);
    let madt = {
        let mut body = Vec::with_capacity(8 + madt_body.len());
        // Local Interrupt Controller Address and Flags (§5.2.12, Table 5.19).
        body.extend_from_slice(&(layout::LAPIC_ADDR as u32).to_le_bytes());
        body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
        body.extend_from_slice(&madt_body);
        sdt(*b"APIC", MADT_REVISION, &body)
    };
    let fadt = sdt(*b"FACP", FADT_REVISION, &fadt_body(dsdt_addr));
    let xsdt = {
        // Entries are 64-bit physical addresses of the other tables (§5.2.8).
        let mut body = Vec::with_capacity(16);
        body.extend_from_slice(&fadt_addr.to_le_bytes());
        body.extend_from_slice(&madt_addr.to_le_bytes());
        sdt(*b"XSDT", XSDT_REVISION, &body)
    };
    let rsdp = rsdp(xsdt_addr);
    debug_assert_eq!(xsdt.len(), xsdt_len);
    debug_assert_eq!(fadt.len(), FADT_LEN);
    debug_assert_eq!(madt.len(), madt_len);
    debug_assert_eq!(dsdt.len(), dsdt_len);

    Ok(Tables {
        rsdp: rsdp_addr,
        blobs: vec![
            (rsdp_addr, rsdp),
            (xsdt_addr, xsdt),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (dsdt_addr, dsdt),
        ],
    })
}

/// The byte that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// A System Description Table: header (§5.2.6, Table 5.4) followed by `body`, checksummed so
/// that the whole table sums to zero.
fn sdt(signature: [u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(&signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, patched below
    t.extend_from_slice(&OEM_ID);
    t.extend_from_slice(&OEM_TABLE_ID);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(&CREATOR_ID);
    t.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The Root System Description Pointer, revision 2 (§5.2.5.3, Table 5.3). The first checksum
/// covers the ACPI 1.0 part (bytes 0..20), the extended checksum the whole structure. The RSDT
/// address is 0: revision-2 consumers use the XSDT.
fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_LEN);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum
    r.extend_from_slice(&OEM_ID);
    r.push(2); // revision
    r.extend_from_slice(&0u32.to_le_bytes()); // RsdtAddress
    r.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// A Generic Address Structure for a byte-wide I/O port (§5.2.3.2, Table 5.1).
fn gas_io_byte(port: u64) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_IO;
    g[1] = 8; // register bit width
    g[2] = 0; // register bit offset
    g[3] = GAS_ACCESS_BYTE;
    g[4..].copy_from_slice(&port.to_le_bytes());
    g
}

/// The FADT after its header (§5.2.9, Table 5.9); offsets below are from the table start.
fn fadt_body(dsdt_addr: u64) -> Vec<u8> {
    let mut f = vec![0u8; FADT_LEN];
    let put = |f: &mut Vec<u8>, off: usize, b: &[u8]| f[off..off + b.len()].copy_from_slice(b);
    // FIRMWARE_CTRL (36) and X_FIRMWARE_CTRL (132) stay 0: no FACS in hardware-reduced mode
    // (§5.2.10). DSDT (40) stays 0 since X_DSDT is used.
    // SCI_INT (46).
    put(&mut f, 46, &SCI_INT.to_le_bytes());
    // SMI_CMD (48), PM1x/PM2/PM_TMR/GPE blocks (56..96): all 0 = not present (§4.1).
    // IAPC_BOOT_ARCH (109).
    let boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT;
    put(&mut f, 109, &boot_arch.to_le_bytes());
    // Flags (112).
    let flags = FADT_F_WBINVD
        | FADT_F_PROC_C1
        | FADT_F_PWR_BUTTON
        | FADT_F_SLP_BUTTON
        | FADT_F_HW_REDUCED_ACPI;
    put(&mut f, 112, &flags.to_le_bytes());
    // RESET_REG (116) stays zero: RESET_REG_SUP is clear and reset goes through the i8042.
    // FADT Minor Version (131).
    f[131] = FADT_MINOR_REVISION;
    // X_DSDT (140).
    put(&mut f, 140, &dsdt_addr.to_le_bytes());
    // SLEEP_CONTROL_REG (244) and SLEEP_STATUS_REG (256) (§4.8.3.7, §4.8.3.8).
    put(&mut f, 244, &gas_io_byte(layout::ACPI_SLEEP_CONTROL_PORT));
    put(&mut f, 256, &gas_io_byte(layout::ACPI_SLEEP_STATUS_PORT));
    // Hypervisor Vendor Identity (268): optional, left 0.
    f.split_off(HEADER_LEN)
}

/// The MADT's Interrupt Controller Structures (§5.2.12).
fn madt_entries(num_cpus: u8) -> Vec<u8> {
    let mut e = Vec::new();
    // Processor Local APIC (§5.2.12.2, Table 5.22): UID = APIC ID = vCPU index, enabled.
    for id in 0..num_cpus {
        e.extend_from_slice(&[MADT_TYPE_LOCAL_APIC, 8, id, id]);
        e.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
    }
    // I/O APIC (§5.2.12.3, Table 5.24): ID after the vCPUs', GSIs start at 0.
    e.extend_from_slice(&[MADT_TYPE_IOAPIC, 12, num_cpus, 0]);
    e.extend_from_slice(&(layout::IOAPIC_ADDR as u32).to_le_bytes());
    e.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt Source Override (§5.2.12.5, Table 5.25): ISA IRQ 0 (the PIT) is IOAPIC pin 2,
    // as on PCs and as KVM's in-kernel PIT is wired.
    e.extend_from_slice(&[
        MADT_TYPE_INT_SRC_OVERRIDE,
        10,
        0, /* ISA */
        0, /* IRQ0 */
    ]);
    e.extend_from_slice(&2u32.to_le_bytes());
    e.extend_from_slice(&MPS_INTI_ACTIVE_HIGH_EDGE.to_le_bytes());
    // Local APIC NMI (§5.2.12.7, Table 5.27): NMI arrives on LINT1 of every processor.
    e.extend_from_slice(&[MADT_TYPE_LOCAL_APIC_NMI, 6, ALL_PROCESSORS]);
    e.extend_from_slice(&MPS_INTI_ACTIVE_HIGH_EDGE.to_le_bytes());
    e.push(1); // LINT#
    e
}

/// The DSDT's AML definition block (§5.2.11.1, §20):
///
/// ```text
/// Name (\_S5, Package () { 5, 5, 0, 0 })
/// Scope (\_SB) {
///     Device (PCI0) { _HID, _CID, _ADR, _SEG, _UID, _BBN, _CRS, _PRT }
///     Device (COM1) { _HID, _UID, _CRS }
/// }
/// ```
fn dsdt_aml(routes: &[PciIrqRoute]) -> Vec<u8> {
    let mut a = Vec::new();
    // \_S5 (§7.4.2.5): SLP_TYP for PM1a and PM1b (only the first is used with the sleep control
    // register, §4.8.3.7), then two reserved values.
    let s5 = layout::ACPI_S5_SLP_TYP;
    a.extend(aml::name(
        "_S5_",
        &aml::package(&[aml::int(s5), aml::int(s5), aml::int(0), aml::int(0)]),
    ));

    let mut sb = Vec::new();
    sb.extend(aml::device("PCI0", &pci0(routes)));
    sb.extend(aml::device("COM1", &com1()));
    a.extend(aml::scope("\\_SB_", &sb));
    a
}

/// The PCI host bridge, a PCI Express root (§6.1.5 _HID, §6.1.2 _CID, §6.5.5 _BBN, §6.5.6 _SEG,
/// §6.2.13 _PRT, §6.2.2 _CRS).
fn pci0(routes: &[PciIrqRoute]) -> Vec<u8> {
    use aml::res;
    let mut d = Vec::new();
    d.extend(aml::name("_HID", &aml::eisa_id("PNP0A08")));
    d.extend(aml::name("_CID", &aml::eisa_id("PNP0A03")));
    d.extend(aml::name("_ADR", &aml::int(0)));
    d.extend(aml::name("_SEG", &aml::int(0)));
    d.extend(aml::name("_UID", &aml::int(0)));
    d.extend(aml::name("_BBN", &aml::int(0)));

    // The resources the bridge decodes (producer windows handed to its children, §6.4.3.5).
    let mut crs = Vec::new();
    crs.extend(res::word_bus_number(0, 0));
    crs.extend(res::io(0xcf8, 0xcf8, 1, 8));
    crs.extend(res::word_io(0x0d00, 0xffff));
    crs.extend(res::dword_memory(
        layout::PCI_MMIO32_START as u32,
        (layout::PCI_MMIO32_END - 1) as u32,
    ));
    d.extend(aml::name("_CRS", &res::template(&crs)));

    // _PRT (§6.2.13, Table 6.19): { Address (device << 16 | 0xffff = any function), Pin,
    // Source = 0 (so Source Index is the GSI), Source Index }.
    let prt: Vec<Vec<u8>> = routes
        .iter()
        .map(|r| {
            aml::package(&[
                aml::int(u64::from(r.device) << 16 | 0xffff),
                aml::int(r.pin.into()),
                aml::int(0),
                aml::int(r.gsi.into()),
            ])
        })
        .collect();
    d.extend(aml::name("_PRT", &aml::package(&prt)));
    d
}

/// COM1, a 16550A (PNP0501) at 0x3f8 on IRQ 4.
fn com1() -> Vec<u8> {
    use aml::res;
    let mut d = Vec::new();
    d.extend(aml::name("_HID", &aml::eisa_id("PNP0501")));
    d.extend(aml::name("_UID", &aml::int(0)));
    let mut crs = Vec::new();
    crs.extend(res::io(0x3f8, 0x3f8, 0, 8));
    crs.extend(res::irq_no_flags(layout::SERIAL_IRQ as u8));
    d.extend(aml::name("_CRS", &res::template(&crs)));
    d
}

/// Just enough of an AML encoder for the DSDT (ACPI 6.5 §20.2).
mod aml {
    const ZERO_OP: u8 = 0x00;
    const ONE_OP: u8 = 0x01;
    const NAME_OP: u8 = 0x08;
    const BYTE_PREFIX: u8 = 0x0a;
    const WORD_PREFIX: u8 = 0x0b;
    const DWORD_PREFIX: u8 = 0x0c;
    const QWORD_PREFIX: u8 = 0x0e;
    const SCOPE_OP: u8 = 0x10;
    const BUFFER_OP: u8 = 0x11;
    const PACKAGE_OP: u8 = 0x12;
    const DUAL_NAME_PREFIX: u8 = 0x2e;
    const MULTI_NAME_PREFIX: u8 = 0x2f;
    const ROOT_CHAR: u8 = b'\\';
    const EXT_OP_PREFIX: u8 = 0x5b;
    const DEVICE_OP: u8 = 0x82;

    /// PkgLength (§20.2.4): the length of the package *including* the PkgLength bytes. One byte
    /// holds up to 63; otherwise bits 7:6 of the lead byte give the count of following bytes,
    /// its bits 3:0 the low nibble, and the following bytes the rest, least significant first.
    pub fn pkg_length(body_len: usize) -> Vec<u8> {
        if body_len < 0x3f {
            return vec![(body_len + 1) as u8];
        }
        let (n, total) = if body_len + 2 <= 0xfff {
            (1, body_len + 2)
        } else if body_len + 3 <= 0xf_ffff {
            (2, body_len + 3)
        } else {
            assert!(body_len + 4 <= 0xfff_ffff, "AML package too long");
            (3, body_len + 4)
        };
        let mut v = vec![((n as u8) << 6) | (total & 0xf) as u8];
        for i in 0..n {
            v.push((total >> (4 + 8 * i)) as u8);
        }
        v
    }

    /// NameSeg (§20.2.2): four characters, padded with '_'.
    fn name_seg(s: &str) -> [u8; 4] {
        assert!(!s.is_empty() && s.len() <= 4, "bad AML NameSeg {s:?}");
        let mut seg = [b'_'; 4];
        seg[..s.len()].copy_from_slice(s.as_bytes());
        seg
    }

    /// NameString (§20.2.2): optional root prefix, then one NameSeg, a DualNamePath or a
    /// MultiNamePath.
    pub fn name_string(path: &str) -> Vec<u8> {
        let mut v = Vec::new();
        let rel = match path.strip_prefix('\\') {
            Some(rest) => {
                v.push(ROOT_CHAR);
                rest
            }
            None => path,
        };
        let segs: Vec<[u8; 4]> = rel.split('.').map(name_seg).collect();
        match segs.len() {
            1 => {}
            2 => v.push(DUAL_NAME_PREFIX),
            n => {
                v.push(MULTI_NAME_PREFIX);
                v.push(n as u8);
            }
        }
        for s in segs {
            v.extend_from_slice(&s);
        }
        v
    }

    /// An Integer in its shortest encoding (§20.2.3 ComputationalData, §20.2.5.3 ZeroOp/OneOp).
    pub fn int(x: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(9);
        match x {
            0 => v.push(ZERO_OP),
            1 => v.push(ONE_OP),
            2..=0xff => v.extend_from_slice(&[BYTE_PREFIX, x as u8]),
            0x100..=0xffff => {
                v.push(WORD_PREFIX);
                v.extend_from_slice(&(x as u16).to_le_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                v.push(DWORD_PREFIX);
                v.extend_from_slice(&(x as u32).to_le_bytes());
            }
            _ => {
                v.push(QWORD_PREFIX);
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        v
    }

    /// The 32-bit compressed EISA ID that ASL's EisaId() produces (§19.6.35): three letters of
    /// 5 bits each (`'A'` = 1) packed big-endian into 16 bits, then four hex digits, stored as
    /// the bytes in that order.
    pub fn eisa_id_value(id: &str) -> u32 {
        let b = id.as_bytes();
        assert!(
            b.len() == 7 && b[..3].iter().all(u8::is_ascii_uppercase),
            "bad EISA ID {id}"
        );
        let vendor = b[..3]
            .iter()
            .fold(0u16, |acc, &c| (acc << 5) | u16::from(c - 0x40));
        let product = u16::from_str_radix(&id[3..], 16).expect("bad EISA ID product number");
        let [v0, v1] = vendor.to_be_bytes();
        let [p0, p1] = product.to_be_bytes();
        u32::from_le_bytes([v0, v1, p0, p1])
    }

    pub fn eisa_id(id: &str) -> Vec<u8> {
        let mut v = vec![DWORD_PREFIX];
        v.extend_from_slice(&eisa_id_value(id).to_le_bytes());
        v
    }

    /// DefName := NameOp NameString DataRefObject (§20.2.5.1).
    pub fn name(path: &str, obj: &[u8]) -> Vec<u8> {
        let mut v = vec![NAME_OP];
        v.extend(name_string(path));
        v.extend_from_slice(obj);
        v
    }

    /// DefPackage := PackageOp PkgLength NumElements PackageElementList (§20.2.5.4).
    pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
        assert!(
            elements.len() <= 0xff,
            "AML Package too long for NumElements"
        );
        let mut body = vec![elements.len() as u8];
        for e in elements {
            body.extend_from_slice(e);
        }
        wrap(&[PACKAGE_OP], &body)
    }

    /// DefBuffer := BufferOp PkgLength BufferSize ByteList (§20.2.5.4).
    pub fn buffer(bytes: &[u8]) -> Vec<u8> {
        let mut body = int(bytes.len() as u64);
        body.extend_from_slice(bytes);
        wrap(&[BUFFER_OP], &body)
    }

    /// DefScope := ScopeOp PkgLength NameString TermList (§20.2.5.1).
    pub fn scope(path: &str, terms: &[u8]) -> Vec<u8> {
        let mut body = name_string(path);
        body.extend_from_slice(terms);
        wrap(&[SCOPE_OP], &body)
    }

    /// DefDevice := DeviceOp PkgLength NameString TermList, DeviceOp = ExtOpPrefix 0x82
    /// (§20.2.5.2).
    pub fn device(path: &str, terms: &[u8]) -> Vec<u8> {
        let mut body = name_string(path);
        body.extend_from_slice(terms);
        wrap(&[EXT_OP_PREFIX, DEVICE_OP], &body)
    }

    fn wrap(op: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = op.to_vec();
        v.extend(pkg_length(body.len()));
        v.extend_from_slice(body);
        v
    }

    /// Resource data descriptors (§6.4).
    pub mod res {
        /// Large resource item names (§6.4.3, Table 6.40).
        const LARGE_DWORD_ADDRESS_SPACE: u8 = 0x87;
        const LARGE_WORD_ADDRESS_SPACE: u8 = 0x88;
        /// Small resource tags: item name in bits 6:3, length in bits 2:0 (§6.4.2).
        const SMALL_IRQ_NO_FLAGS: u8 = (0x04 << 3) | 2;
        const SMALL_IO: u8 = (0x08 << 3) | 7;
        const SMALL_END_TAG: u8 = (0x0f << 3) | 1;

        /// Address space resource types (§6.4.3.5.2, Table 6.47).
        const RESOURCE_TYPE_MEMORY: u8 = 0;
        const RESOURCE_TYPE_IO: u8 = 1;
        const RESOURCE_TYPE_BUS: u8 = 2;
        /// General flags: _MAF and _MIF fixed (bits 3, 2), positive decode (bit 1 = 0),
        /// ResourceProducer (bit 0 = 0): a bridge window.
        const GENERAL_FLAGS_PRODUCER_FIXED: u8 = 0b1100;
        /// I/O type-specific flags: _RNG = EntireRange (§6.4.3.5.5, Table 6.50).
        const IO_FLAGS_ENTIRE_RANGE: u8 = 0b11;
        /// Memory type-specific flags: _RW read-write (bit 0), _MEM non-cacheable (bits 2:1 = 0),
        /// _MTP AddressRangeMemory (bits 4:3 = 0) (§6.4.3.5.5, Table 6.49).
        const MEM_FLAGS_RW_NON_CACHEABLE: u8 = 0b1;

        /// IO (Decode16, min, max, align, len) — I/O Port Descriptor (§6.4.2.5, Table 6.35).
        pub fn io(min: u16, max: u16, align: u8, len: u8) -> Vec<u8> {
            let mut v = vec![SMALL_IO, 1 /* decodes 16 address bits */];
            v.extend_from_slice(&min.to_le_bytes());
            v.extend_from_slice(&max.to_le_bytes());
            v.extend_from_slice(&[align, len]);
            v
        }

        /// IRQNoFlags () {irq} — the 2-byte IRQ Descriptor: edge, active high (§6.4.2.1).
        pub fn irq_no_flags(irq: u8) -> Vec<u8> {
            let mut v = vec![SMALL_IRQ_NO_FLAGS];
            v.extend_from_slice(&(1u16 << irq).to_le_bytes());
            v
        }

        /// Word Address Space Descriptor (§6.4.3.5.3, Table 6.45).
        fn word_address(rtype: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
            let mut v = vec![LARGE_WORD_ADDRESS_SPACE];
            v.extend_from_slice(&13u16.to_le_bytes());
            v.extend_from_slice(&[rtype, GENERAL_FLAGS_PRODUCER_FIXED, type_flags]);
            let len = max.wrapping_sub(min).wrapping_add(1);
            // granularity, min, max, translation offset, length
            for x in [0, min, max, 0, len] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v
        }

        /// WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, ...).
        pub fn word_bus_number(min: u16, max: u16) -> Vec<u8> {
            word_address(RESOURCE_TYPE_BUS, 0, min, max)
        }

        /// WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...).
        pub fn word_io(min: u16, max: u16) -> Vec<u8> {
            word_address(RESOURCE_TYPE_IO, IO_FLAGS_ENTIRE_RANGE, min, max)
        }

        /// DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable,
        /// ReadWrite, ...) — DWord Address Space Descriptor (§6.4.3.5.2, Table 6.44).
        pub fn dword_memory(min: u32, max: u32) -> Vec<u8> {
            let mut v = vec![LARGE_DWORD_ADDRESS_SPACE];
            v.extend_from_slice(&23u16.to_le_bytes());
            v.extend_from_slice(&[
                RESOURCE_TYPE_MEMORY,
                GENERAL_FLAGS_PRODUCER_FIXED,
                MEM_FLAGS_RW_NON_CACHEABLE,
            ]);
            let len = max.wrapping_sub(min).wrapping_add(1);
            for x in [0, min, max, 0, len] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v
        }

        /// ResourceTemplate () { ... }: a Buffer of descriptors closed by an End Tag whose
        /// checksum byte is 0, meaning "treat as checksummed" (§6.4.2.9).
        pub fn template(descriptors: &[u8]) -> Vec<u8> {
            let mut v = descriptors.to_vec();
            v.extend_from_slice(&[SMALL_END_TAG, 0]);
            super::buffer(&v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn guest_mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    /// Reads the table at `addr`, checking its signature, length and checksum.
    fn table(mem: &GuestMemoryMmap<()>, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        assert!((layout::ACPI_START..layout::ACPI_END).contains(&addr));
        let hdr = read(mem, addr, HEADER_LEN);
        assert_eq!(&hdr[..4], sig);
        let len = u32_at(&hdr, 4) as usize;
        assert!(addr + len as u64 <= layout::ACPI_END);
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        assert_eq!(&t[10..16], b"KVMRUN");
        t
    }

    struct Parsed {
        fadt: Vec<u8>,
        madt: Vec<u8>,
        dsdt: Vec<u8>,
    }

    /// Follows RSDP → XSDT → FADT/MADT → DSDT.
    fn parse(mem: &GuestMemoryMmap<()>, rsdp_addr: GuestAddress) -> Parsed {
        assert_eq!(rsdp_addr.0, layout::ACPI_START);
        assert_eq!(rsdp_addr.0 % 16, 0);
        let rsdp = read(mem, rsdp_addr.0, RSDP_LEN);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
        assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "RSDP revision");
        assert_eq!(u32_at(&rsdp, 20), RSDP_LEN as u32);
        let xsdt = table(mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), HEADER_LEN + 16);
        let fadt = table(mem, u64_at(&xsdt, 36), b"FACP");
        let madt = table(mem, u64_at(&xsdt, 44), b"APIC");
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "FADT revision");
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
        let dsdt = table(mem, u64_at(&fadt, 140), b"DSDT");
        Parsed { fadt, madt, dsdt }
    }

    fn write(num_cpus: u8, pci: &AcpiPciConfig) -> (GuestMemoryMmap<()>, Parsed) {
        let mem = guest_mem();
        let rsdp = write_acpi_tables(&mem, num_cpus, pci).unwrap();
        let p = parse(&mem, rsdp);
        (mem, p)
    }

    fn route(device: u8, pin: u8, gsi: u8) -> PciIrqRoute {
        PciIrqRoute { device, pin, gsi }
    }

    fn routes() -> AcpiPciConfig {
        AcpiPciConfig {
            routes: vec![
                route(1, 0, 5),
                route(2, 0, 10),
                route(3, 1, 11),
                route(31, 3, 23),
            ],
        }
    }

    /// MADT Interrupt Controller Structures.
    fn madt_structs(madt: &[u8]) -> Vec<&[u8]> {
        let mut v = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(len >= 2 && off + len <= madt.len());
            v.push(&madt[off..off + len]);
            off += len;
        }
        assert_eq!(off, madt.len());
        v
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn acpi_chain_and_checksums() {
        for cpus in [1u8, 2, 4, 64, 254] {
            write(cpus, &routes());
            write(cpus, &AcpiPciConfig::default());
        }
    }

    #[test]
    fn acpi_tables_stay_in_the_bios_area() {
        let t = build_tables(254, &routes(), layout::ACPI_START, layout::ACPI_END).unwrap();
        let mut prev_end = layout::ACPI_START;
        for (addr, bytes) in &t.blobs {
            assert!(*addr >= prev_end, "tables overlap");
            prev_end = addr + bytes.len() as u64;
        }
        assert!(prev_end <= layout::ACPI_END);
    }

    #[test]
    fn acpi_madt_describes_cpus_and_ioapic() {
        for cpus in [1u8, 3, 254] {
            let (_, p) = write(cpus, &AcpiPciConfig::default());
            let m = &p.madt;
            assert_eq!(u32_at(m, 36) as u64, layout::LAPIC_ADDR);
            assert_eq!(u32_at(m, 40), 1, "PCAT_COMPAT");
            let s = madt_structs(m);
            let lapics: Vec<_> = s.iter().filter(|e| e[0] == 0).collect();
            assert_eq!(lapics.len(), cpus as usize);
            for (i, e) in lapics.iter().enumerate() {
                assert_eq!(e.len(), 8);
                assert_eq!(e[2] as usize, i, "processor UID");
                assert_eq!(e[3] as usize, i, "APIC ID");
                assert_eq!(u32_at(e, 4), 1, "enabled");
            }
            let ioapics: Vec<_> = s.iter().filter(|e| e[0] == 1).collect();
            assert_eq!(ioapics.len(), 1);
            let io = ioapics[0];
            assert_eq!(io.len(), 12);
            assert_eq!(io[2], cpus, "IOAPIC id");
            assert_eq!(u32_at(io, 4) as u64, layout::IOAPIC_ADDR);
            assert_eq!(u32_at(io, 8), 0, "GSI base");
            let isos: Vec<_> = s.iter().filter(|e| e[0] == 2).collect();
            assert_eq!(isos.len(), 1);
            assert_eq!(isos[0].to_vec(), [2, 10, 0, 0, 2, 0, 0, 0, 5, 0]);
            let nmis: Vec<_> = s.iter().filter(|e| e[0] == 4).collect();
            assert_eq!(nmis.len(), 1);
            assert_eq!(nmis[0].to_vec(), [4, 6, 0xff, 5, 0, 1]);
            assert_eq!(s.len(), cpus as usize + 3);
        }
    }

    #[test]
    fn acpi_fadt_is_hardware_reduced_with_sleep_registers() {
        let (_, p) = write(2, &AcpiPciConfig::default());
        let f = &p.fadt;
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_eq!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(u16_at(f, 46), 9, "SCI_INT");
        assert_eq!(u32_at(f, 76), 0, "no PM timer");
        assert_eq!(f[91], 0, "PM_TMR_LEN");
        assert_eq!(u64_at(f, 208 + 4), 0, "no X_PM_TMR_BLK");
        let boot_arch = u16_at(f, 109);
        assert_ne!(boot_arch & (1 << 2), 0, "VGA not present");
        assert_eq!(boot_arch & (1 << 3), 0, "MSI not disabled");
        for (off, port) in [
            (244, layout::ACPI_SLEEP_CONTROL_PORT),
            (256, layout::ACPI_SLEEP_STATUS_PORT),
        ] {
            assert_eq!(f[off], 1, "SystemIO");
            assert_eq!(f[off + 1], 8, "bit width");
            assert_eq!(f[off + 2], 0, "bit offset");
            assert_eq!(f[off + 3], 1, "byte access");
            assert_eq!(u64_at(f, off + 4), port);
        }
        assert_eq!(u64_at(f, 244 + 4), 0x600);
        assert_eq!(u64_at(f, 256 + 4), 0x601);
    }

    #[test]
    fn acpi_dsdt_aml_bytes() {
        let (_, p) = write(1, &routes());
        let d = &p.dsdt;
        assert_eq!(d[8], 2, "DSDT revision");
        // Name(_S5_, Package(4){5, 5, 0, 0}) exactly.
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 5, 0x0a, 5, 0, 0,
        ];
        assert!(contains(d, &s5));
        // The body is Name(_S5_, ...) (14 bytes), then Scope(\_SB_).
        assert_eq!(d[36..36 + 14], s5);
        assert_eq!(d[36 + 14], 0x10);
        assert_eq!(d[36 + 14 + 3], b'\\', "PkgLength of the scope is 2 bytes");
        // Name(_HID, EisaId("PNP0A08")) = DWordConst 0x080AD041, and _CID, COM1's _HID.
        assert!(contains(
            d,
            &[0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x08]
        ));
        assert!(contains(
            d,
            &[0x08, b'_', b'C', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03]
        ));
        assert!(contains(
            d,
            &[0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x05, 0x01]
        ));
        // Device(PCI0) and Device(COM1).
        assert!(contains(d, b"PCI0"));
        assert!(contains(d, b"COM1"));
        // A _PRT entry: Package(4){0x3ffff, One, Zero, 0x0b}.
        assert!(contains(
            d,
            &[0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x03, 0x00, 0x01, 0x00, 0x0a, 0x0b]
        ));
        // The COM1 resources: IO(Decode16, 0x3f8, 0x3f8, 0, 8), IRQNoFlags{4}, End Tag.
        assert!(contains(
            d,
            &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00]
        ));
        // The PCI config ports and the MMIO window.
        assert!(contains(
            d,
            &[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]
        ));
        let mut mem_desc = vec![0x87, 23, 0, 0, 0x0c, 0x01, 0, 0, 0, 0];
        mem_desc.extend_from_slice(&(layout::PCI_MMIO32_START as u32).to_le_bytes());
        mem_desc.extend_from_slice(&((layout::PCI_MMIO32_END - 1) as u32).to_le_bytes());
        mem_desc.extend_from_slice(&0u32.to_le_bytes());
        mem_desc.extend_from_slice(
            &((layout::PCI_MMIO32_END - layout::PCI_MMIO32_START) as u32).to_le_bytes(),
        );
        assert!(contains(d, &mem_desc));
    }

    #[test]
    fn acpi_aml_encodings() {
        use aml::*;
        assert_eq!(eisa_id_value("PNP0A08"), 0x080a_d041);
        assert_eq!(eisa_id_value("PNP0A03"), 0x030a_d041);
        assert_eq!(eisa_id_value("PNP0501"), 0x0105_d041);
        // PkgLength boundaries (§20.2.4).
        assert_eq!(pkg_length(0), [1]);
        assert_eq!(pkg_length(62), [63]);
        assert_eq!(pkg_length(63), [0x41, 0x04]); // 65 = 0x41
        assert_eq!(pkg_length(0xffd), [0x4f, 0xff]);
        assert_eq!(pkg_length(0xffe), [0x81, 0x00, 0x01]); // 0x1001
        assert_eq!(pkg_length(0xf_fffc), [0x8f, 0xff, 0xff]);
        assert_eq!(pkg_length(0xf_fffd), [0xc1, 0x00, 0x00, 0x01]); // 0x100001
        assert_eq!(name_string("_S5_"), b"_S5_");
        assert_eq!(name_string("\\_SB_"), b"\\_SB_");
        assert_eq!(name_string("\\_SB.PCI0"), b"\\\x2e_SB_PCI0");
        assert_eq!(name_string("A.B.C"), b"\x2f\x03A___B___C___");
        assert_eq!(int(0), [0]);
        assert_eq!(int(1), [1]);
        assert_eq!(int(2), [0x0a, 2]);
        assert_eq!(int(0x1234), [0x0b, 0x34, 0x12]);
        assert_eq!(int(0x1ffff), [0x0c, 0xff, 0xff, 0x01, 0x00]);
        assert_eq!(int(1 << 32), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
        // A buffer longer than 63 bytes uses the two-byte PkgLength.
        let b = buffer(&[0u8; 100]);
        assert_eq!(b[..5], [0x11, 0x48, 0x06, 0x0a, 100]); // PkgLength 0x68 = 102 + 2
        assert_eq!(b.len(), 1 + 2 + 2 + 100);
    }

    #[test]
    fn acpi_rejects_bad_input() {
        let mem = guest_mem();
        let none = AcpiPciConfig::default();
        assert!(matches!(
            write_acpi_tables(&mem, 0, &none),
            Err(Error::NoCpus)
        ));
        assert!(matches!(
            write_acpi_tables(&mem, 255, &none),
            Err(Error::TooManyCpus(..))
        ));
        for bad in [route(32, 0, 5), route(1, 4, 5), route(1, 0, 24)] {
            let pci = AcpiPciConfig { routes: vec![bad] };
            assert!(matches!(
                write_acpi_tables(&mem, 1, &pci),
                Err(Error::InvalidPciIrqRoute { .. })
            ));
        }
        let dup = AcpiPciConfig {
            routes: vec![route(1, 0, 5), route(1, 0, 6)],
        };
        assert!(matches!(
            write_acpi_tables(&mem, 1, &dup),
            Err(Error::InvalidPciIrqRoute { .. })
        ));
    }

    #[test]
    fn acpi_too_big_is_an_error() {
        // The real area holds the largest possible tables (254 CPUs, all 128 INTx routes)...
        let all = AcpiPciConfig {
            routes: (0..32u8)
                .flat_map(|d| (0..4u8).map(move |p| route(d, p, 16 + (d + p) % 8)))
                .collect(),
        };
        let mem = guest_mem();
        let rsdp = write_acpi_tables(&mem, 254, &all).unwrap();
        let p = parse(&mem, rsdp);
        assert!(contains(&p.dsdt, b"_PRT"));
        // ...and a smaller area is refused cleanly.
        let err = build_tables(254, &all, layout::ACPI_START, layout::ACPI_START + 0x800)
            .err()
            .unwrap();
        assert!(
            matches!(err, Error::AcpiTooBig { avail: 0x800, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("do not fit"));
    }

    #[test]
    fn acpi_memory_without_the_bios_area_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        assert!(matches!(
            write_acpi_tables(&mem, 1, &AcpiPciConfig::default()),
            Err(Error::GuestMemory { .. })
        ));
    }

    /// Disassembles the tables with ACPICA's iasl when it is installed.
    #[test]
    fn acpi_iasl_disassembles_the_tables() {
        use std::process::Command;
        if Command::new("iasl").arg("-v").output().is_err() {
            eprintln!("iasl not installed: skipping the disassembly check");
            return;
        }
        let (_, p) = write(4, &routes());
        let dir = std::env::temp_dir().join(format!("kvmrun-acpi-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut outputs = Vec::new();
        for (name, bytes) in [("dsdt", &p.dsdt), ("facp", &p.fadt), ("apic", &p.madt)] {
            let dat = dir.join(format!("{name}.dat"));
            std::fs::write(&dat, bytes).unwrap();
            let out = Command::new("iasl")
                .arg("-d")
                .arg(&dat)
                .current_dir(&dir)
                .output()
                .unwrap();
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "iasl -d {name} failed:\n{log}");
            assert!(
                !log.contains("Error") && !log.contains("Invalid"),
                "{name}: {log}"
            );
            let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
            assert!(!dsl.contains("**** Unknown"), "{name}:\n{dsl}");
            outputs.push(dsl);
        }
        std::fs::remove_dir_all(&dir).ok();
        let dsdt = &outputs[0];
        for s in [
            "_S5_", "PNP0A08", "PNP0A03", "PNP0501", "_PRT", "_CRS", "PCI0", "COM1",
        ] {
            assert!(dsdt.contains(s), "{s} missing from:\n{dsdt}");
        }
        for s in [
            "WordBusNumber",
            "WordIO",
            "DWordMemory",
            "0x0CF8",
            "IRQNoFlags",
        ] {
            assert!(dsdt.contains(s), "{s} missing from:\n{dsdt}");
        }
        let fadt = &outputs[1];
        assert!(fadt.contains("0000000000000600"), "{fadt}");
        assert!(fadt.contains("Hardware Reduced (V5) : 1"), "{fadt}");
        let madt = &outputs[2];
        assert!(madt.contains("FEC00000"), "{madt}");
    }
}
