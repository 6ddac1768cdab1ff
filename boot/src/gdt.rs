//! The boot GDT and (empty) IDT.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{GDT_START, IDT_START};
use crate::{Error, Result};

/// Flags of a 64-bit code segment, packed as bits 40-55 of the descriptor minus the limit
/// nibble: G=1, L=1 (0xa in the high nibble); access byte P=1, DPL=0, S=1, type=0xb
/// (execute/read, accessed). Intel SDM vol. 3A section 3.4.5 "Segment Descriptors".
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Data segment: G=1, D/B=1; P=1, S=1, type=3 (read/write, accessed).
pub const DATA_FLAGS: u16 = 0xc093;
/// TSS: G=1; P=1, S=0, type=0xb (busy 64-bit TSS; SDM vol. 3A table 3-2). KVM requires a
/// usable, busy TSS in TR for VM entry (SDM vol. 3C section 26.3.1.2), although the kernel
/// loads its own before it needs one.
pub const TSS_FLAGS: u16 = 0x808b;

/// Selector index of each entry.
pub const CODE_INDEX: u8 = 1;
pub const DATA_INDEX: u8 = 2;
pub const TSS_INDEX: u8 = 3;
const NUM_ENTRIES: usize = 4;

/// Segments and descriptor tables, ready to be put into `kvm_sregs`.
#[derive(Debug, Clone, Copy)]
pub struct GdtLayout {
    pub code: kvm_segment,
    pub data: kvm_segment,
    pub tss: kvm_segment,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub idt_base: u64,
    pub idt_limit: u16,
}

/// Encodes a segment descriptor (SDM vol. 3A figure 3-8): limit 15:0 in bits 0-15, base 23:0
/// in bits 16-39, access byte in 40-47, limit 19:16 in 48-51, flags nibble in 52-55, base
/// 31:24 in 56-63. `flags` is laid out as bits 40-55 with the limit nibble zero.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The `kvm_segment` (the hidden part of a segment register) that loading the selector of
/// `entry` at `index` would produce.
pub fn segment_from_entry(entry: u64, index: u8) -> kvm_segment {
    let access = (entry >> 40) as u8;
    let flags = ((entry >> 52) & 0xf) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = (flags >> 3) & 1;
    let present = access >> 7;
    kvm_segment {
        base,
        // With G=1 the limit is in 4 KiB units and the low 12 bits read as ones.
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: access & 0xf,
        present,
        dpl: (access >> 5) & 3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g,
        avl: flags & 1,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The four descriptors, in order.
pub fn gdt_table() -> [u64; NUM_ENTRIES] {
    [
        0,
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Writes the GDT at GDT_START and a zero IDT entry at IDT_START.
pub fn write_gdt<M: GuestMemoryBackend>(mem: &M) -> Result<GdtLayout> {
    let table = gdt_table();
    let mut bytes = [0u8; NUM_ENTRIES * 8];
    for (i, e) in table.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
    }
    mem.write_slice(&bytes, GuestAddress(GDT_START))
        .map_err(Error::mem("GDT", GDT_START))?;
    // The IDT is empty (limit 0): an exception before the kernel installs its own IDT is a
    // triple fault, which the VMM reports, rather than a jump to garbage.
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(Error::mem("IDT", IDT_START))?;
    Ok(GdtLayout {
        code: segment_from_entry(table[CODE_INDEX as usize], CODE_INDEX),
        data: segment_from_entry(table[DATA_INDEX as usize], DATA_INDEX),
        tss: segment_from_entry(table[TSS_INDEX as usize], TSS_INDEX),
        gdt_base: GDT_START,
        gdt_limit: (NUM_ENTRIES * 8 - 1) as u16,
        idt_base: IDT_START,
        idt_limit: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::mem;

    #[test]
    fn known_encodings() {
        // Reference values of the flat 64-bit boot GDT used across the ecosystem.
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(TSS_FLAGS, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcde),
            0x120a_9334_5678_bcde
        );
    }

    #[test]
    fn written_gdt_matches_segments() {
        let m = mem(32 << 20);
        let g = write_gdt(&m).unwrap();
        assert_eq!(g.gdt_base, 0x500);
        assert_eq!(g.gdt_limit, 31);
        assert_eq!(g.idt_base, 0x520);
        assert_eq!(g.idt_limit, 0);

        let rd = |i: u64| m.read_obj::<u64>(GuestAddress(GDT_START + i * 8)).unwrap();
        assert_eq!(rd(0), 0);
        for (idx, seg) in [(1u64, g.code), (2, g.data), (3, g.tss)] {
            let d = rd(idx);
            // Decode bit by bit as the SDM draws it.
            let bit = |n: u32| ((d >> n) & 1) as u8;
            let base = ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24);
            let mut limit = ((d & 0xffff) | (((d >> 48) & 0xf) << 16)) as u32;
            if bit(55) == 1 {
                limit = limit * 4096 + 4095;
            }
            assert_eq!(seg.base, base);
            assert_eq!(seg.limit, limit);
            assert_eq!(seg.selector as u64, idx * 8);
            assert_eq!(seg.type_, ((d >> 40) & 0xf) as u8);
            assert_eq!(seg.s, bit(44));
            assert_eq!(seg.dpl, ((d >> 45) & 3) as u8);
            assert_eq!(seg.present, bit(47));
            assert_eq!(seg.avl, bit(52));
            assert_eq!(seg.l, bit(53));
            assert_eq!(seg.db, bit(54));
            assert_eq!(seg.g, bit(55));
            assert_eq!(seg.unusable, 0);
        }
        // Semantics the CPU needs for long mode.
        assert_eq!(
            (g.code.l, g.code.db, g.code.type_, g.code.s),
            (1, 0, 0xb, 1)
        );
        assert_eq!((g.data.type_, g.data.s, g.data.db), (3, 1, 1));
        assert_eq!((g.tss.type_, g.tss.s), (0xb, 0));
        assert_eq!(g.code.limit, 0xffff_ffff);
        assert_eq!(m.read_obj::<u64>(GuestAddress(IDT_START)).unwrap(), 0);
    }

    #[test]
    fn not_present_is_unusable() {
        let s = segment_from_entry(0, 0);
        assert_eq!((s.present, s.unusable), (0, 1));
    }
}
