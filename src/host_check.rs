//! What the host can do, checked before a VM is built: whether /dev/kvm can run a stock kernel,
//! and how much memory the host has.

use std::fs;
use std::path::Path;

/// How this host's /dev/kvm runs guest kernel code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavor {
    /// VMX or SVM in hardware: any guest runs at native speed.
    Hardware,
    /// PVM: guest CPL0 code runs by instruction emulation, so a Linux kernel never gets anywhere.
    Pvm,
}

impl KvmFlavor {
    pub fn detect() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::from_host(Path::new("/sys/module/kvm_pvm").exists(), &cpuinfo)
    }

    /// PVM if its module is loaded, or if the CPU shows neither vmx nor svm (then whatever serves
    /// /dev/kvm is not hardware virtualisation).
    pub fn from_host(kvm_pvm_loaded: bool, cpuinfo: &str) -> Self {
        let has_hw_virt = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if kvm_pvm_loaded || !has_hw_virt {
            KvmFlavor::Pvm
        } else {
            KvmFlavor::Hardware
        }
    }
}

/// The host's physical memory in bytes (MemTotal), if /proc/meminfo says.
pub fn host_memory_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&meminfo)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_is_detected_by_module_or_missing_flags() {
        let hw = "processor : 0\nflags\t\t: fpu vme svm sse\n";
        let no_virt = "processor : 0\nflags\t\t: fpu vme sse\n";
        assert_eq!(KvmFlavor::from_host(false, hw), KvmFlavor::Hardware);
        assert_eq!(KvmFlavor::from_host(true, hw), KvmFlavor::Pvm);
        assert_eq!(KvmFlavor::from_host(false, no_virt), KvmFlavor::Pvm);
        assert_eq!(
            KvmFlavor::from_host(false, "flags : vmx\n"),
            KvmFlavor::Hardware
        );
        // "vmx" must be a whole flag, not part of another one.
        assert_eq!(
            KvmFlavor::from_host(false, "flags : vmxfoo\n"),
            KvmFlavor::Pvm
        );
    }

    #[test]
    fn mem_total_is_parsed() {
        assert_eq!(
            parse_mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24576000 * 1024)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }
}
