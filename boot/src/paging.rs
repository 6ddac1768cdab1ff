//! Identity-mapped page tables for the 64-bit entry.
//!
//! boot.rst ("64-bit Boot Protocol"): "the range with setup_header.init_size from start address
//! of loaded kernel and zero page and command line buffer get ident mapping". We map all of
//! 0-4 GiB with 2 MiB pages, which covers the kernel, zero page, command line, initrd (below
//! the hole) and the MMIO region the kernel may touch before it builds its own tables.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{PDPT_START, PD_START, PML4_START};
use crate::{Error, Result};

/// Present (SDM vol. 3A section 4.5, tables 4-15 to 4-18).
const PAGE_PRESENT: u64 = 1 << 0;
/// Read/write.
const PAGE_RW: u64 = 1 << 1;
/// Page size: in a PDE, maps a 2 MiB page.
const PAGE_PS: u64 = 1 << 7;
/// Number of 1 GiB page directories (0-4 GiB).
pub const NUM_PDS: u64 = 4;
const ENTRIES: u64 = 512;

/// Writes PML4 → PDPT → 4 PDs at the addresses of the layout; returns the CR3 value.
pub fn write_identity_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<u64> {
    let mut pml4 = vec![0u8; 4096];
    pml4[..8].copy_from_slice(&(PDPT_START | PAGE_PRESENT | PAGE_RW).to_le_bytes());

    let mut pdpt = vec![0u8; 4096];
    for i in 0..NUM_PDS {
        let e = (PD_START + i * 0x1000) | PAGE_PRESENT | PAGE_RW;
        let o = i as usize * 8;
        pdpt[o..o + 8].copy_from_slice(&e.to_le_bytes());
    }

    let mut pds = vec![0u8; (NUM_PDS * 4096) as usize];
    for i in 0..NUM_PDS * ENTRIES {
        let e = (i << 21) | PAGE_PRESENT | PAGE_RW | PAGE_PS;
        let o = i as usize * 8;
        pds[o..o + 8].copy_from_slice(&e.to_le_bytes());
    }

    mem.write_slice(&pml4, GuestAddress(PML4_START))
        .map_err(Error::mem("PML4", PML4_START))?;
    mem.write_slice(&pdpt, GuestAddress(PDPT_START))
        .map_err(Error::mem("PDPT", PDPT_START))?;
    mem.write_slice(&pds, GuestAddress(PD_START))
        .map_err(Error::mem("page directories", PD_START))?;
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::mem;

    /// Walks the 4-level tables as the MMU would (SDM vol. 3A figure 4-9, 2 MiB pages).
    fn translate(m: &vm_memory::GuestMemoryMmap<()>, cr3: u64, va: u64) -> Option<u64> {
        let addr_mask = 0x000f_ffff_ffff_f000u64;
        let rd = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
        let pml4e = rd((cr3 & addr_mask) + ((va >> 39) & 0x1ff) * 8);
        if pml4e & PAGE_PRESENT == 0 {
            return None;
        }
        let pdpte = rd((pml4e & addr_mask) + ((va >> 30) & 0x1ff) * 8);
        if pdpte & PAGE_PRESENT == 0 || pdpte & PAGE_PS != 0 {
            return None;
        }
        let pde = rd((pdpte & addr_mask) + ((va >> 21) & 0x1ff) * 8);
        if pde & PAGE_PRESENT == 0 || pde & PAGE_PS == 0 {
            return None;
        }
        assert_ne!(pde & PAGE_RW, 0);
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff))
    }

    #[test]
    fn identity_maps_0_to_4g() {
        let m = mem(32 << 20);
        let cr3 = write_identity_page_tables(&m).unwrap();
        assert_eq!(cr3, 0x9000);
        for va in [
            0u64,
            0x7000,
            0x10_0000,
            0x1234_5678,
            0x3fff_ffff,
            0x4000_0000,
            0xbfff_ffff,
            0xfec0_0000,
            0xfee0_0010,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&m, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&m, cr3, 0x1_0000_0000), None);
        assert_eq!(translate(&m, cr3, 0x80_0000_0000), None);
    }
}
