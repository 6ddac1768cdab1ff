//! Placing the initial ramdisk in guest memory.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::kernel::LoadedKernel;
use crate::layout::low_ram_size;
use crate::{Error, Result};

/// Where the initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    pub addr: GuestAddress,
    pub size: u64,
}

/// Default `initrd_addr_max` when the kernel does not state one: boot.rst says "for boot
/// protocol 2.02 or earlier [the field] is not present, and the maximum address is 0x37FFFFFF".
/// An ELF vmlinux has no setup header, so the conservative value applies to it too.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

const PAGE_SIZE: u64 = 4096;

/// Highest address (exclusive) the initrd may end at for this kernel and memory size.
pub fn initrd_limit(kernel: &LoadedKernel, mem_size: u64) -> u64 {
    // initrd_addr_max is the address of the highest byte the initrd may occupy (boot.rst).
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    // The ramdisk_image field is 32 bits and the initrd must be in one piece of RAM, so it goes
    // below the MMIO hole.
    (addr_max + 1).min(low_ram_size(mem_size))
}

/// Loads `initrd` at the highest page-aligned address where it fits below
/// min(initrd_addr_max + 1, end of RAM below the MMIO hole), and above the kernel.
///
/// Placing it high, as boot.rst recommends ("load the initrd as high as possible"), keeps it
/// out of the way of the kernel's decompression and early allocations.
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    initrd: &mut File,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<InitrdRegion> {
    let io = |source| Error::Io {
        what: "initrd",
        source,
    };
    let size = initrd.seek(SeekFrom::End(0)).map_err(io)?;
    initrd.seek(SeekFrom::Start(0)).map_err(io)?;
    if size == 0 {
        return Err(Error::EmptyInitrd);
    }
    let limit = initrd_limit(kernel, mem_size);
    let does_not_fit = || Error::InitrdDoesNotFit {
        size_mib: size.div_ceil(1 << 20),
        limit,
        kernel_end: kernel.kernel_end,
    };
    // kernel_end comes from the kernel file (a bzImage's pref_address + init_size) and may be
    // near 2^64 (found by the kernel_loader fuzz target: rounding it up overflowed).
    let kernel_end = kernel
        .kernel_end
        .checked_next_multiple_of(PAGE_SIZE)
        .ok_or_else(does_not_fit)?;
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel_end)
        .ok_or_else(does_not_fit)?;
    let len = usize::try_from(size).map_err(|_| does_not_fit())?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, len)
        .map_err(Error::mem("initrd", addr))?;
    Ok(InitrdRegion {
        addr: GuestAddress(addr),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::{file_with, mem};
    use crate::kernel::KernelFormat;
    use linux_loader::bootparam::setup_header;

    fn elf_kernel(end: u64) -> LoadedKernel {
        LoadedKernel {
            format: KernelFormat::Elf,
            entry: GuestAddress(0x100_0000),
            kernel_end: end,
            setup_header: None,
        }
    }

    #[test]
    fn placed_at_top_of_small_memory() {
        let m = mem(64 << 20);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let r = load_initrd(&m, &mut file_with(&data), &elf_kernel(0x200_0000), 64 << 20).unwrap();
        assert_eq!(r.size, 10_000);
        assert_eq!(r.addr.0 % PAGE_SIZE, 0);
        assert!(r.addr.0 + r.size <= 64 << 20);
        assert!((64 << 20) - (r.addr.0 + r.size) < PAGE_SIZE);
        let mut back = vec![0u8; data.len()];
        m.read_slice(&mut back, r.addr).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn respects_initrd_addr_max_and_default() {
        // ELF: default 0x37ffffff applies with 2 GiB of RAM.
        let k = elf_kernel(0x200_0000);
        assert_eq!(initrd_limit(&k, 2 << 30), 0x3800_0000);
        // bzImage header with a larger limit: capped by the MMIO hole.
        let mut h = setup_header {
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        let mut kb = LoadedKernel {
            format: KernelFormat::BzImage,
            setup_header: Some(h),
            ..k
        };
        assert_eq!(initrd_limit(&kb, 2 << 30), 0x8000_0000);
        assert_eq!(initrd_limit(&kb, 1 << 30), 1 << 30);
        h.initrd_addr_max = 0xffff_ffff;
        kb.setup_header = Some(h);
        assert_eq!(initrd_limit(&kb, 8 << 30), 0xc000_0000);
    }

    #[test]
    fn does_not_fit() {
        let m = mem(32 << 20);
        let data = vec![1u8; 20 << 20];
        let e =
            load_initrd(&m, &mut file_with(&data), &elf_kernel(0x100_0000), 32 << 20).unwrap_err();
        assert!(matches!(e, Error::InitrdDoesNotFit { size_mib: 20, .. }));
        let s = e.to_string();
        assert!(
            s.starts_with("initrd (20 MiB) does not fit in guest memory below 0x2000000"),
            "{s}"
        );
        // Larger than all of memory.
        let data = vec![1u8; 40 << 20];
        assert!(load_initrd(&m, &mut file_with(&data), &elf_kernel(0x100_0000), 32 << 20).is_err());
    }

    #[test]
    fn a_kernel_ending_near_the_top_of_the_address_space_leaves_no_room() {
        let m = mem(32 << 20);
        for end in [u64::MAX, u64::MAX - 4095, 1 << 40] {
            let e = load_initrd(&m, &mut file_with(&[1u8; 4096]), &elf_kernel(end), 32 << 20);
            assert!(
                matches!(e, Err(Error::InitrdDoesNotFit { .. })),
                "{end:#x}: {e:?}"
            );
        }
    }

    #[test]
    fn empty_initrd_is_an_error() {
        let m = mem(32 << 20);
        assert!(matches!(
            load_initrd(&m, &mut file_with(b""), &elf_kernel(0x100_0000), 32 << 20),
            Err(Error::EmptyInitrd)
        ));
    }
}
