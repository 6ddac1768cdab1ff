//! Guest RAM: anonymous host mappings laid out around the 32-bit MMIO hole, registered with KVM.
//!
//! Each region is mapped at a host address aligned to 2 MiB and advised for transparent huge
//! pages, as QEMU does: KVM maps guest memory with huge pages in its (nested) page tables only
//! where the host page is huge and the host address and guest physical address agree modulo
//! the huge page size, and a plain `mmap` gives no such alignment. Huge pages shorten every
//! guest TLB miss's two-dimensional page walk.

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::error::Error;

pub type GuestMemory = GuestMemoryMmap<()>;

/// Transparent huge page size on x86-64, the host alignment of each RAM region.
const HUGE_PAGE: usize = 2 << 20;
const RAM_PROT: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;
const RAM_FLAGS: libc::c_int = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Guest RAM and ownership of its host mappings: unmapped when this is dropped, unless a
/// clone of the memory still refers to them (then they are left to the process's exit).
pub struct GuestRam {
    mem: Option<GuestMemory>,
    regions: Vec<Arc<GuestRegionMmap<()>>>,
}

impl GuestRam {
    /// The guest memory (a cheap clone sharing the mappings).
    pub fn memory(&self) -> GuestMemory {
        self.mem.clone().unwrap_or_default()
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        self.mem = None;
        for region in self.regions.drain(..) {
            if !unmap_if_last(region) {
                log::debug!("guest RAM still referenced: left mapped");
            }
        }
    }
}

/// Unmaps a region made by `map_aligned` if `region` is its last reference.
fn unmap_if_last(region: Arc<GuestRegionMmap<()>>) -> bool {
    let Some(r) = Arc::into_inner(region) else {
        return false;
    };
    // SAFETY: the last reference to the region is gone, so nothing can reach the mapping any
    // more; `map_aligned` made it with exactly this address and size.
    unsafe { libc::munmap(r.as_ptr().cast(), r.size()) };
    true
}

/// Maps `mem_size` bytes of guest RAM (below the hole, and above 4 GiB for the rest).
pub fn create_guest_memory(mem_size: u64) -> Result<GuestRam, Error> {
    boot::layout::validate_mem_size(mem_size).map_err(Error::Boot)?;
    let mut ram = GuestRam {
        mem: None,
        regions: Vec::new(),
    };
    for (start, len) in boot::layout::ram_regions(mem_size) {
        ram.regions.push(Arc::new(map_aligned(start, len)?));
    }
    let mem = GuestMemoryMmap::from_arc_regions(ram.regions.clone())
        .map_err(|e| Error::GuestMemory(e.to_string()))?;
    ram.mem = Some(mem);
    Ok(ram)
}

/// One region of `len` bytes at a 2 MiB-aligned host address, advised for huge pages.
fn map_aligned(start: GuestAddress, len: usize) -> Result<GuestRegionMmap<()>, Error> {
    let err = |what: &str| {
        Error::GuestMemory(format!(
            "{what} of {len} bytes: {}",
            std::io::Error::last_os_error()
        ))
    };
    let span = len.checked_add(HUGE_PAGE).ok_or_else(|| err("mapping"))?;
    // SAFETY: a new private anonymous mapping; the result is checked.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), span, RAM_PROT, RAM_FLAGS, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(err("mmap"));
    }
    let base = base as usize;
    let aligned = base.next_multiple_of(HUGE_PAGE);
    // SAFETY: both trimmed pieces lie inside the mapping just made and outside [aligned,
    // aligned + len), which is kept.
    unsafe {
        if aligned > base {
            libc::munmap(base as *mut libc::c_void, aligned - base);
        }
        let end = aligned + len;
        if base + span > end {
            libc::munmap(end as *mut libc::c_void, base + span - end);
        }
        // Only advice: without THP (or with it disabled) the guest still runs, on small pages.
        if libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) != 0 {
            log::debug!(
                "madvise(MADV_HUGEPAGE) on guest RAM: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let unmap = || {
        // SAFETY: the kept mapping, not handed to anything yet.
        unsafe { libc::munmap(aligned as *mut libc::c_void, len) };
    };
    // SAFETY: [aligned, aligned + len) is a mapping of this process with these protections
    // and flags, valid until `GuestRam` unmaps it after the last reference is gone.
    let region = unsafe {
        MmapRegionBuilder::new(len)
            .with_raw_mmap_pointer(aligned as *mut u8)
            .with_mmap_prot(RAM_PROT)
            .with_mmap_flags(RAM_FLAGS)
            .build()
    };
    let region = match region {
        Ok(r) => r,
        Err(e) => {
            unmap();
            return Err(Error::GuestMemory(format!("guest RAM region: {e}")));
        }
    };
    GuestRegionMmap::new(region, start).ok_or_else(|| {
        unmap();
        Error::GuestMemory(format!("guest RAM region at {:#x} overflows", start.0))
    })
}

/// Tells KVM where each region of guest RAM lives in this process.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemory) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| Error::GuestMemory(e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping lives in `mem`, which outlives the VM (both are owned by `Vmm`
        // and the vCPUs are joined before either is dropped).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// How much of guest RAM is backed by host pages now (what the guest has touched), via mincore(2).
pub fn resident_bytes(mem: &GuestMemory) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let mut total = 0u64;
    for region in mem.iter() {
        let Ok(host) = mem.get_host_address(region.start_addr()) else {
            continue;
        };
        let len = region.len() as usize;
        // One status byte per page, scanned in 1 GiB chunks to bound the vector.
        let chunk = 1usize << 30;
        let mut off = 0;
        while off < len {
            let n = chunk.min(len - off);
            let mut vec = vec![0u8; n.div_ceil(page)];
            // SAFETY: [host+off, host+off+n) lies inside this region's mapping; vec has one
            // byte per page of it.
            let rc = unsafe { libc::mincore(host.add(off).cast(), n, vec.as_mut_ptr()) };
            if rc == 0 {
                total += vec.iter().filter(|b| *b & 1 != 0).count() as u64 * page as u64;
            }
            off += n;
        }
    }
    total
}

/// This process's peak resident set size so far, in bytes.
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage fills the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    (usage.ru_maxrss as u64) * 1024
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, Bytes, GuestAddress};

    #[test]
    fn residency_counts_touched_guest_pages() {
        let ram = create_guest_memory(64 << 20).unwrap();
        let mem = ram.memory();
        let before = resident_bytes(&mem);
        for i in 0..16u64 {
            mem.write_obj(1u8, GuestAddress(i * 4096 * 16)).unwrap();
        }
        let after = resident_bytes(&mem);
        assert!(after >= before + 16 * 4096, "{before} -> {after}");
        assert!(after <= 64 << 20);
        assert!(peak_rss_bytes() > 0);
    }

    #[test]
    fn ram_is_mapped_at_huge_page_aligned_host_addresses() {
        // 3.5 GiB: one region below the MMIO hole and one above 4 GiB.
        let ram = create_guest_memory(3584 << 20).unwrap();
        let mem = ram.memory();
        assert_eq!(mem.num_regions(), 2);
        for region in mem.iter() {
            let host = mem.get_host_address(region.start_addr()).unwrap() as usize;
            assert_eq!(
                host % HUGE_PAGE,
                0,
                "region at {:#x}",
                region.start_addr().0
            );
            // The whole region is usable.
            let last = region.start_addr().unchecked_add(region.len() - 1);
            mem.write_obj(7u8, last).unwrap();
            assert_eq!(mem.read_obj::<u8>(last).unwrap(), 7);
        }
    }

    #[test]
    fn ram_is_unmapped_only_by_its_last_reference() {
        let ram = create_guest_memory(32 << 20).unwrap();
        let mem = ram.memory();
        let region = ram.regions[0].clone();
        drop(ram);
        // The clone that outlives the owner still works on the mapping...
        mem.write_obj(1u32, GuestAddress(4096)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(4096)).unwrap(), 1);
        assert!(!unmap_if_last(region.clone()));
        drop(mem);
        // ...and the last reference unmaps it.
        assert!(unmap_if_last(region));
    }
}
