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
        unsafe { vm.set_user_memory_region(region) }.map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}
