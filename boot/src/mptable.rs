//! Intel MultiProcessor Specification 1.4 tables in the EBDA.
//!
//! Linux finds the MP floating pointer by scanning the first KiB of the EBDA (MP spec 1.4
//! section 4). The table describes: one processor per vCPU (local APIC ID = vCPU index), a
//! PCI bus (id 0) and an ISA bus (id 1), one IOAPIC (id = `num_cpus`) and the interrupt
//! wiring.
//!
//! ISA IRQ routing: ISA IRQ n → IOAPIC pin n for n in 0..16, *including IRQ 0 → pin 0* (no
//! IRQ0→pin 2 swap). That is what KVM's default GSI routing does (GSI n → IOAPIC pin n, which
//! is where the in-kernel PIT injects), so no KVM_SET_GSI_ROUTING is needed; the MADT
//! accordingly has no interrupt source override for IRQ 0. An ISA entry is omitted for any
//! pin that a PCI route uses, so a pin is never described as both edge (ISA) and level (PCI).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{EBDA_END, IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_START};
pub use crate::PciIrqRoute;
use crate::{Error, Result};

/// Size of the MP floating pointer structure (section 4.1, table 4-1).
pub const FLOATING_POINTER_SIZE: usize = 16;
/// Size of the configuration table header (section 4.2, table 4-2).
pub const CONFIG_HEADER_SIZE: usize = 44;
/// Processor entry (section 4.3.1).
pub const PROCESSOR_ENTRY_SIZE: usize = 20;
/// Bus, I/O APIC, I/O and local interrupt entries (sections 4.3.2-4.3.5) are all 8 bytes.
pub const SMALL_ENTRY_SIZE: usize = 8;

// Entry types (table 4-3).
pub const MP_PROCESSOR: u8 = 0;
pub const MP_BUS: u8 = 1;
pub const MP_IOAPIC: u8 = 2;
pub const MP_INTSRC: u8 = 3;
pub const MP_LINTSRC: u8 = 4;

// Interrupt types (table 4-8).
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
/// Flags: PO=11 active low, EL=11 level triggered (table 4-8); PCI INTx# are level/low.
const MP_IRQ_LEVEL_LOW: u16 = 0x0f;
/// Flags 0: conforms to the bus (ISA: edge, active high).
const MP_IRQ_CONFORMING: u16 = 0;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOT_PROCESSOR: u8 = 1 << 1;
/// Local APIC version of an integrated APIC (0x1X), as the KVM in-kernel LAPIC reports.
const APIC_VERSION: u8 = 0x14;
/// IOAPIC version register value of the KVM in-kernel IOAPIC.
const IOAPIC_VERSION: u8 = 0x11;
/// Processor signature: family 6 (table 4-5 takes CPUID leaf 1 EAX); Linux only prints it.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID feature flags: FPU (bit 0) and on-chip APIC (bit 9).
const CPU_FEATURES: u32 = (1 << 9) | 1;

pub const PCI_BUS_ID: u8 = 0;
pub const ISA_BUS_ID: u8 = 1;
const NUM_ISA_IRQS: u8 = 16;

/// Bytes available for the whole structure: the EBDA.
pub const MPTABLE_MAX_SIZE: usize = (EBDA_END - MPTABLE_START) as usize;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// ISA IRQs that get an I/O interrupt entry (those whose pin no PCI route uses).
fn isa_irqs(pci_irqs: &[PciIrqRoute]) -> impl Iterator<Item = u8> + '_ {
    (0..NUM_ISA_IRQS).filter(move |irq| !pci_irqs.iter().any(|r| r.gsi == *irq))
}

/// Total size of the floating pointer and configuration table.
pub fn mptable_size(num_cpus: u8, pci_irqs: &[PciIrqRoute]) -> usize {
    FLOATING_POINTER_SIZE
        + CONFIG_HEADER_SIZE
        + PROCESSOR_ENTRY_SIZE * usize::from(num_cpus)
        + SMALL_ENTRY_SIZE * (2 /* buses */ + 1 /* IOAPIC */ + 2/* local ints */)
        + SMALL_ENTRY_SIZE * (isa_irqs(pci_irqs).count() + pci_irqs.len())
}

/// Builds the floating pointer followed by the configuration table, for placement at
/// `MPTABLE_START`.
pub fn build_mptable(num_cpus: u8, pci_irqs: &[PciIrqRoute]) -> Result<Vec<u8>> {
    if num_cpus == 0 {
        return Err(Error::NoCpus);
    }
    // APIC IDs 0..num_cpus go to the processors and num_cpus to the IOAPIC; 0xff is the
    // broadcast ID and cannot be used.
    if num_cpus > 254 {
        return Err(Error::TooManyCpus(
            num_cpus.into(),
            "the IOAPIC takes APIC ID num_cpus and 255 is broadcast".into(),
        ));
    }
    for r in pci_irqs {
        r.validate()?;
    }
    let size = mptable_size(num_cpus, pci_irqs);
    if size > MPTABLE_MAX_SIZE {
        return Err(Error::MptableTooBig {
            size,
            avail: MPTABLE_MAX_SIZE,
        });
    }
    let ioapic_id = num_cpus;
    let table_addr = MPTABLE_START + FLOATING_POINTER_SIZE as u64;

    // Configuration table entries, in the order section 4.3 requires (sorted by type).
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let mut e = [0u8; PROCESSOR_ENTRY_SIZE];
        e[0] = MP_PROCESSOR;
        e[1] = cpu; // local APIC ID
        e[2] = APIC_VERSION;
        e[3] = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&e);
        count += 1;
    }
    for (id, name) in [(PCI_BUS_ID, b"PCI   "), (ISA_BUS_ID, b"ISA   ")] {
        entries.push(MP_BUS);
        entries.push(id);
        entries.extend_from_slice(name);
        count += 1;
    }
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1 /* enabled */]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;

    let mut intsrc = |itype: u8, flags: u16, bus: u8, bus_irq: u8, dst: u8, pin: u8| {
        entries.extend_from_slice(&[MP_INTSRC, itype]);
        entries.extend_from_slice(&flags.to_le_bytes());
        entries.extend_from_slice(&[bus, bus_irq, dst, pin]);
        count += 1;
    };
    for irq in isa_irqs(pci_irqs) {
        intsrc(MP_INT, MP_IRQ_CONFORMING, ISA_BUS_ID, irq, ioapic_id, irq);
    }
    for r in pci_irqs {
        // PCI source bus IRQ: bits 1:0 = pin (INTA#=0), bits 6:2 = device (section 4.3.4 and
        // the PCI note in appendix D).
        intsrc(
            MP_INT,
            MP_IRQ_LEVEL_LOW,
            PCI_BUS_ID,
            (r.device << 2) | r.pin,
            ioapic_id,
            r.gsi,
        );
    }
    // Local interrupts (section 4.3.5, and the virtual wire mode of section 3.6.2.2): the PIC's
    // ExtINT to LINT0 and NMI to LINT1 of every local APIC (destination 0xff = all).
    for (itype, lint) in [(MP_EXTINT, 0u8), (MP_NMI, 1u8)] {
        entries.extend_from_slice(&[MP_LINTSRC, itype]);
        entries.extend_from_slice(&MP_IRQ_CONFORMING.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, 0, 0xff, lint]);
        count += 1;
    }

    let mut table = Vec::with_capacity(size);
    // Floating pointer (table 4-1).
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&(table_addr as u32).to_le_bytes());
    table.push(1); // length in 16-byte paragraphs
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.push(0); // feature 1: 0 = a configuration table is present
    table.push(0); // feature 2: IMCRP clear = virtual wire mode, no IMCR
    table.extend_from_slice(&[0; 3]);
    table[10] = checksum(&table[..FLOATING_POINTER_SIZE]);

    // Configuration table header (table 4-2).
    let base_len = (CONFIG_HEADER_SIZE + entries.len()) as u16;
    let hdr_start = table.len();
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&base_len.to_le_bytes());
    table.push(4); // spec revision
    table.push(0); // checksum, below
    table.extend_from_slice(b"KVMRUN  "); // OEM ID, 8 bytes
    table.extend_from_slice(b"KVMRUN 0.1  "); // product ID, 12 bytes
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0); // reserved
    debug_assert_eq!(table.len() - hdr_start, CONFIG_HEADER_SIZE);
    table.extend_from_slice(&entries);
    table[hdr_start + 7] = checksum(&table[hdr_start..]);
    debug_assert_eq!(table.len(), size);
    Ok(table)
}

/// Writes the MP floating pointer and configuration table at MPTABLE_START.
pub fn write_mptable<M: GuestMemoryBackend>(
    mem: &M,
    num_cpus: u8,
    pci_irqs: &[PciIrqRoute],
) -> Result<()> {
    let table = build_mptable(num_cpus, pci_irqs)?;
    // Clear the whole EBDA first so no stale bytes look like a second table.
    mem.write_slice(&[0u8; MPTABLE_MAX_SIZE], GuestAddress(MPTABLE_START))
        .map_err(Error::mem("EBDA", MPTABLE_START))?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(Error::mem("MP table", MPTABLE_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::mem;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    struct Parsed {
        cpus: Vec<(u8, u8)>, // (apic id, flags)
        buses: Vec<(u8, [u8; 6])>,
        ioapics: Vec<(u8, u32)>,
        ints: Vec<[u8; 8]>,
        lints: Vec<[u8; 8]>,
    }

    /// Parses the table back from guest memory the way an OS would.
    fn parse(m: &vm_memory::GuestMemoryMmap<()>) -> Parsed {
        // Scan the EBDA on 16-byte boundaries for "_MP_" (section 4).
        let mut ebda = vec![0u8; MPTABLE_MAX_SIZE];
        m.read_slice(&mut ebda, GuestAddress(MPTABLE_START))
            .unwrap();
        let fp_off = (0..ebda.len())
            .step_by(16)
            .find(|&o| &ebda[o..o + 4] == b"_MP_")
            .unwrap();
        let fp = &ebda[fp_off..fp_off + 16];
        assert_eq!(sum(fp), 0, "floating pointer checksum");
        assert_eq!(fp[8], 1);
        assert_eq!(fp[9], 4);
        assert_eq!(fp[11], 0);
        let phys = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;

        let mut hdr = [0u8; CONFIG_HEADER_SIZE];
        m.read_slice(&mut hdr, GuestAddress(phys)).unwrap();
        assert_eq!(&hdr[0..4], b"PCMP");
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let count = u16::from_le_bytes([hdr[34], hdr[35]]) as usize;
        assert_eq!(
            u32::from_le_bytes(hdr[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        let mut tbl = vec![0u8; len];
        m.read_slice(&mut tbl, GuestAddress(phys)).unwrap();
        assert_eq!(sum(&tbl), 0, "config table checksum");

        let mut p = Parsed {
            cpus: vec![],
            buses: vec![],
            ioapics: vec![],
            ints: vec![],
            lints: vec![],
        };
        let mut off = CONFIG_HEADER_SIZE;
        let mut last_type = 0;
        for _ in 0..count {
            let t = tbl[off];
            assert!(t >= last_type, "entries sorted by type");
            last_type = t;
            match t {
                MP_PROCESSOR => {
                    p.cpus.push((tbl[off + 1], tbl[off + 3]));
                    off += 20;
                }
                MP_BUS => {
                    p.buses
                        .push((tbl[off + 1], tbl[off + 2..off + 8].try_into().unwrap()));
                    off += 8;
                }
                MP_IOAPIC => {
                    p.ioapics.push((
                        tbl[off + 1],
                        u32::from_le_bytes(tbl[off + 4..off + 8].try_into().unwrap()),
                    ));
                    off += 8;
                }
                MP_INTSRC => {
                    p.ints.push(tbl[off..off + 8].try_into().unwrap());
                    off += 8;
                }
                MP_LINTSRC => {
                    p.lints.push(tbl[off..off + 8].try_into().unwrap());
                    off += 8;
                }
                t => panic!("unknown entry type {t}"),
            }
        }
        assert_eq!(off, len, "entries fill the base table exactly");
        p
    }

    #[test]
    fn four_cpus_with_pci() {
        let m = mem(32 << 20);
        let routes = [
            PciIrqRoute {
                device: 1,
                pin: 0,
                gsi: 16,
            },
            PciIrqRoute {
                device: 2,
                pin: 1,
                gsi: 17,
            },
        ];
        write_mptable(&m, 4, &routes).unwrap();
        let p = parse(&m);
        assert_eq!(p.cpus, vec![(0, 3), (1, 1), (2, 1), (3, 1)]);
        assert_eq!(p.buses, vec![(0, *b"PCI   "), (1, *b"ISA   ")]);
        assert_eq!(p.ioapics, vec![(4, 0xfec0_0000)]);
        assert_eq!(p.ints.len(), 16 + 2);
        for (i, e) in p.ints[..16].iter().enumerate() {
            // ISA IRQ i → IOAPIC 4 pin i, conforming.
            assert_eq!(e, &[3, 0, 0, 0, 1, i as u8, 4, i as u8]);
        }
        assert_eq!(p.ints[16], [3, 0, 0x0f, 0, 0, 1 << 2, 4, 16]);
        assert_eq!(p.ints[17], [3, 0, 0x0f, 0, 0, (2 << 2) | 1, 4, 17]);
        assert_eq!(p.lints[0], [4, 3, 0, 0, 1, 0, 0xff, 0]);
        assert_eq!(p.lints[1], [4, 1, 0, 0, 1, 0, 0xff, 1]);
    }

    #[test]
    fn pci_route_on_isa_pin_replaces_isa_entry() {
        let m = mem(32 << 20);
        let routes = [PciIrqRoute {
            device: 3,
            pin: 0,
            gsi: 10,
        }];
        write_mptable(&m, 1, &routes).unwrap();
        let p = parse(&m);
        assert_eq!(p.cpus, vec![(0, 3)]);
        assert_eq!(p.ints.len(), 16);
        assert!(!p.ints.iter().any(|e| e[4] == ISA_BUS_ID && e[5] == 10));
        assert!(p.ints.iter().any(|e| e[4] == PCI_BUS_ID && e[7] == 10));
    }

    #[test]
    fn size_limits() {
        assert!(matches!(build_mptable(0, &[]), Err(Error::NoCpus)));
        assert!(matches!(
            build_mptable(255, &[]),
            Err(Error::TooManyCpus(..))
        ));
        // The largest count that fits the 1 KiB EBDA.
        let fixed = mptable_size(0, &[]);
        let max = ((MPTABLE_MAX_SIZE - fixed) / PROCESSOR_ENTRY_SIZE) as u8;
        assert!(build_mptable(max, &[]).is_ok());
        let e = build_mptable(max + 1, &[]).unwrap_err();
        assert!(matches!(e, Error::MptableTooBig { .. }), "{e}");
        let bad = [PciIrqRoute {
            device: 32,
            pin: 0,
            gsi: 16,
        }];
        assert!(matches!(
            build_mptable(1, &bad),
            Err(Error::InvalidPciIrqRoute { .. })
        ));
        let bad = [PciIrqRoute {
            device: 1,
            pin: 0,
            gsi: 24,
        }];
        assert!(build_mptable(1, &bad).is_err());
    }
}
