//! Guest RAM: anonymous host mappings laid out around the 32-bit MMIO hole, registered with KVM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::error::Error;

pub type GuestMemory = GuestMemoryMmap<()>;

/// Maps `mem_size` bytes of guest RAM (below the hole, and above 4 GiB for the rest).
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemory, Error> {
    boot::layout::validate_mem_size(mem_size).map_err(Error::Boot)?;
    let regions = boot::layout::ram_regions(mem_size);
    GuestMemoryMmap::<()>::from_ranges(&regions).map_err(|e| Error::GuestMemory(e.to_string()))
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
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn residency_counts_touched_guest_pages() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let before = resident_bytes(&mem);
        for i in 0..16u64 {
            mem.write_obj(1u8, GuestAddress(i * 4096 * 16)).unwrap();
        }
        let after = resident_bytes(&mem);
        assert!(after >= before + 16 * 4096, "{before} -> {after}");
        assert!(after <= 64 << 20);
        assert!(peak_rss_bytes() > 0);
    }
}
