//! Initial vCPU state: pure functions over kvm-bindings structs. The binary performs the
//! KVM_SET_SREGS/REGS/FPU/MSRS/LAPIC/CPUID2 ioctls with the results.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs,
};
use vm_memory::GuestAddress;

use crate::gdt::GdtLayout;
use crate::layout::{BOOT_STACK_POINTER, ZERO_PAGE_START};

// Control register and EFER bits (Intel SDM vol. 3A section 2.5, 2.2.1).
pub const X86_CR0_PE: u64 = 1 << 0;
pub const X86_CR0_ET: u64 = 1 << 4;
pub const X86_CR0_NW: u64 = 1 << 29;
pub const X86_CR0_CD: u64 = 1 << 30;
pub const X86_CR0_PG: u64 = 1 << 31;
pub const X86_CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;

// MSR indices (Intel SDM vol. 4, "Model-Specific Registers").
pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE bit 0: fast-string operations enabled (what firmware leaves set).
pub const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// IA32_MTRR_DEF_TYPE: E (bit 11) enables MTRRs, type 6 = write-back (SDM vol. 3A 12.11.2.1).
/// Without it every access is uncacheable to a guest that honours MTRRs.
pub const MTRR_ENABLE: u64 = 1 << 11;
pub const MTRR_MEM_TYPE_WB: u64 = 6;

/// Puts the vCPU in 64-bit long mode with the boot GDT and identity page tables, as the
/// 64-bit boot protocol requires (boot.rst: "the CPU must be in 64-bit mode with paging
/// enabled ... a GDT must be loaded with the descriptors for selectors __BOOT_CS(0x10) and
/// __BOOT_DS(0x18)" — any flat code/data pair works since the kernel reloads its GDT at once).
pub fn configure_sregs(sregs: &mut kvm_sregs, gdt: &GdtLayout, cr3: u64) {
    sregs.gdt.base = gdt.gdt_base;
    sregs.gdt.limit = gdt.gdt_limit;
    sregs.idt.base = gdt.idt_base;
    sregs.idt.limit = gdt.idt_limit;

    sregs.cs = gdt.code;
    sregs.ds = gdt.data;
    sregs.es = gdt.data;
    sregs.fs = gdt.data;
    sregs.gs = gdt.data;
    sregs.ss = gdt.data;
    sregs.tr = gdt.tss;

    // Caching on (reset state has CD|NW set), protected mode and paging on; ET is hardwired to
    // 1 on modern CPUs.
    sregs.cr0 = (sregs.cr0 & !(X86_CR0_CD | X86_CR0_NW)) | X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = cr3;
    // Long mode needs PAE paging (SDM vol. 3A section 9.8.5).
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// General registers at the 64-bit entry: `%rsi` = zero page (boot.rst), a stack, and RFLAGS
/// with only the always-one bit 1 set (interrupts off).
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        rflags: 0x2,
        ..Default::default()
    }
}

/// x87/SSE state as after FNINIT and the architectural MXCSR reset value (SDM vol. 1
/// sections 8.1.5 and 10.2.3.1).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

fn msr(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// Boot MSR values: the syscall/sysenter MSRs cleared (the kernel programs them), TSC 0,
/// fast strings on and MTRRs enabled with write-back as the default type.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// Local APIC register offsets of LVT LINT0 and LINT1 (SDM vol. 3A table 11-1).
pub const APIC_LVT_LINT0: usize = 0x350;
pub const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery mode field, bits 10:8 (SDM vol. 3A figure 11-8).
const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
pub const APIC_MODE_NMI: u32 = 0b100;
pub const APIC_MODE_EXTINT: u32 = 0b111;

/// Reads a 32-bit local APIC register from the KVM_GET_LAPIC image.
pub fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

/// Virtual-wire mode as the MP spec 1.4 (section 3.6.2.2) and firmware set it up: LINT0 takes
/// the 8259 PIC's ExtINT, LINT1 delivers NMI. Only the delivery-mode bits are changed.
pub fn configure_lapic(lapic: &mut kvm_lapic_state) {
    for (reg, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let v = lapic_reg(lapic, reg);
        set_lapic_reg(lapic, reg, (v & !APIC_DELIVERY_MODE_MASK) | (mode << 8));
    }
}

// CPUID bits (Intel SDM vol. 2A, CPUID instruction; AMD APM vol. 3 appendix E).
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF6_ECX_EPB: u32 = 1 << 3;
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
/// Level types of leaves 0xb/0x1f (ECX[15:8]).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Number of bits needed to hold `n` distinct IDs: ceil(log2(n)).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries.iter().any(|e| {
        e.function == 0
            && ((e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) // AuthenticAMD
                || (e.ebx, e.edx, e.ecx) == (0x6f67_7948, 0x6e65_476e, 0x656e_6975))
        // HygonGenuine
    })
}

/// Sets or clears TSC-deadline in leaf 1: KVM_GET_SUPPORTED_CPUID does not report it even when
/// KVM_CAP_TSC_DEADLINE_TIMER says the in-kernel LAPIC supports it (KVM API docs, 4.46).
pub fn set_tsc_deadline(entries: &mut [kvm_cpuid_entry2], supported: bool) {
    for e in entries.iter_mut().filter(|e| e.function == 1) {
        if supported {
            e.ecx |= LEAF1_ECX_TSC_DEADLINE;
        } else {
            e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
        }
    }
}

/// Adjusts KVM_GET_SUPPORTED_CPUID output for vCPU `vcpu_index` of `num_cpus`: one socket,
/// `num_cpus` cores, one thread per core, APIC ID = vCPU index.
pub fn filter_cpuid(entries: &mut [kvm_cpuid_entry2], vcpu_index: u8, num_cpus: u8) {
    let n = u32::from(num_cpus.max(1));
    let id = u32::from(vcpu_index);
    let core_bits = id_bits(n);
    let amd = is_amd(entries);

    for e in entries.iter_mut() {
        match e.function {
            1 => {
                // EBX[31:24] initial APIC ID, EBX[23:16] max addressable logical IDs in the
                // package (meaningful when HTT is set).
                e.ebx = (e.ebx & 0xffff) | (id << 24) | ((n & 0xff) << 16);
                if n > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
                // Tell the guest it runs on a hypervisor (so it looks for KVM's leaves).
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                // TSC-deadline is left as given: see set_tsc_deadline.
            }
            // Deterministic cache parameters; EAX[4:0] = 0 means no more caches.
            4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                // EAX[25:14]: logical processors sharing this cache - 1 (L1/L2 private to a
                // core, L3 shared by the package); EAX[31:26]: cores per package - 1.
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((n - 1) & 0x3f) << 26);
            }
            6 => e.ecx &= !LEAF6_ECX_EPB,
            // No virtual PMU is offered: architectural performance monitoring version 0.
            0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                // Extended topology (SDM vol. 2A, CPUID leaf 0Bh/1Fh): sub-leaf 0 = SMT level
                // (1 thread, shift 0), sub-leaf 1 = core level (n cores, shift = bits for n),
                // then an invalid level. EDX = x2APIC ID on every sub-leaf.
                let (eax, ebx, ltype) = match e.index {
                    0 => (0, 1, LEVEL_TYPE_SMT),
                    1 => (core_bits, n, LEVEL_TYPE_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (ltype << 8) | (e.index & 0xff);
                e.edx = id;
            }
            0x8000_0001 if amd => {
                // AMD APM: CmpLegacy means "HTT counts cores", set for multi-core packages.
                if n > 1 {
                    e.ecx |= EXT1_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !EXT1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 if amd => {
                // ECX[7:0] NC = cores - 1, ECX[15:12] ApicIdSize (bits of APIC ID for cores).
                e.ecx = (e.ecx & !0xf0ff) | ((core_bits & 0xf) << 12) | ((n - 1) & 0xff);
            }
            0x8000_0008 => {
                // Intel: ECX is reserved (0).
                e.ecx = 0;
            }
            // AMD cache topology: EAX[25:14] = logical processors sharing the cache - 1.
            0x8000_001d if amd && e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
            }
            0x8000_001e if amd => {
                // EAX extended APIC ID; EBX[15:8] threads per core - 1 = 0, EBX[7:0] core ID;
                // ECX node 0, one node per package.
                e.eax = id;
                e.ebx = id & 0xff;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gdt::write_gdt;
    use crate::kernel::tests::mem;

    #[test]
    fn sregs_long_mode() {
        let m = mem(32 << 20);
        let g = write_gdt(&m).unwrap();
        let mut s = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        configure_sregs(&mut s, &g, 0x9000);
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET | X86_CR0_PG);
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs, g.code);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.ss, g.data);
        assert_eq!(s.tr, g.tss);
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!((s.idt.base, s.idt.limit), (0x520, 0));
    }

    #[test]
    fn regs_fpu_msrs() {
        let r = boot_regs(GuestAddress(0x100200));
        assert_eq!(r.rip, 0x100200);
        assert_eq!((r.rsp, r.rbp, r.rsi, r.rflags), (0x8ff0, 0x8ff0, 0x7000, 2));
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_LSTAR), Some(0));
        assert_eq!(get(MSR_IA32_TSC), Some(0));
        assert_eq!(msrs.len(), 11);
    }

    #[test]
    fn lapic_lint() {
        let mut l = kvm_lapic_state::default();
        // Reset value: masked (bit 16), mode fixed; plus some vector bits.
        set_lapic_reg(&mut l, APIC_LVT_LINT0, 0x1_0000 | 0x0500);
        set_lapic_reg(&mut l, APIC_LVT_LINT1, 0x1_0000);
        configure_lapic(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT_LINT0), 0x1_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT_LINT1), 0x1_0400);
    }

    /// A CPUID entry with these registers (also used by `xsave`'s tests).
    pub(crate) fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn cpuid_intel_topology() {
        let mut v = vec![
            entry(0, 0, 0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69), // GenuineIntel
            entry(1, 0, 0x906ea, 0xff08_0800, LEAF1_ECX_TSC_DEADLINE, 0),
            entry(4, 0, 0x1c00_4121, 0, 0, 0), // L1d
            entry(4, 2, 0x1c00_4143, 0, 0, 0), // L2
            entry(4, 3, 0x1c03_c163, 0, 0, 0), // L3
            entry(4, 4, 0, 0, 0, 0),
            entry(6, 0, 4, 0, 0x9, 0),
            entry(0xa, 0, 0x0760_4004, 1, 2, 3),
            entry(0xb, 0, 1, 2, 0x100, 7),
            entry(0xb, 1, 4, 8, 0x201, 7),
            entry(0xb, 2, 0, 0, 2, 7),
            entry(0x8000_0008, 0, 0x3027, 0, 5, 0),
        ];
        filter_cpuid(&mut v, 3, 6);
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 6);
        assert_eq!(l1.ebx & 0xffff, 0x0800);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0, "TSC deadline kept");

        assert_eq!(find(&v, 4, 0).eax >> 26, 5);
        assert_eq!((find(&v, 4, 0).eax >> 14) & 0xfff, 0);
        assert_eq!(find(&v, 4, 0).eax & 0x3fff, 0x0121);
        assert_eq!((find(&v, 4, 3).eax >> 14) & 0xfff, 5);
        assert_eq!(find(&v, 4, 4).eax, 0);

        assert_eq!(find(&v, 6, 0).ecx, 0x1);
        let a = find(&v, 0xa, 0);
        assert_eq!((a.eax, a.ebx, a.ecx, a.edx), (0, 0, 0, 0));

        let b0 = find(&v, 0xb, 0);
        assert_eq!((b0.eax, b0.ebx, b0.ecx, b0.edx), (0, 1, 0x100, 3));
        let b1 = find(&v, 0xb, 1);
        assert_eq!((b1.eax, b1.ebx, b1.ecx, b1.edx), (3, 6, 0x201, 3));
        let b2 = find(&v, 0xb, 2);
        assert_eq!((b2.eax, b2.ebx, b2.ecx, b2.edx), (0, 0, 2, 3));
        assert_eq!(find(&v, 0x8000_0008, 0).ecx, 0);
        assert_eq!(find(&v, 0x8000_0008, 0).eax, 0x3027);
    }

    #[test]
    fn cpuid_single_cpu_and_tsc_deadline() {
        let mut v = vec![entry(1, 0, 0, 0xffff_0000, 0, LEAF1_EDX_HTT)];
        filter_cpuid(&mut v, 0, 1);
        assert_eq!(v[0].ebx, 0x0001_0000);
        assert_eq!(v[0].edx & LEAF1_EDX_HTT, 0);
        set_tsc_deadline(&mut v, true);
        assert_ne!(v[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        set_tsc_deadline(&mut v, false);
        assert_eq!(v[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn cpuid_amd_topology() {
        let mut v = vec![
            entry(0, 0, 0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65), // AuthenticAMD
            entry(0x8000_0001, 0, 0, 0, 0, 0),
            entry(0x8000_0008, 0, 0x3030, 0, 0x0000_700f, 0),
            entry(0x8000_001d, 0, 0x0000_0121, 0, 0, 0),
            entry(0x8000_001d, 3, 0x0000_0163, 0, 0, 0),
            entry(0x8000_001e, 0, 9, 9, 9, 9),
        ];
        filter_cpuid(&mut v, 2, 4);
        assert_ne!(find(&v, 0x8000_0001, 0).ecx & EXT1_ECX_CMP_LEGACY, 0);
        assert_eq!(find(&v, 0x8000_0008, 0).ecx, 0x2003);
        assert_eq!((find(&v, 0x8000_001d, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((find(&v, 0x8000_001d, 3).eax >> 14) & 0xfff, 3);
        let e = find(&v, 0x8000_001e, 0);
        assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (2, 2, 0, 0));
    }

    #[test]
    fn id_bits_values() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 254].map(id_bits),
            [0, 1, 2, 2, 3, 3, 4, 8]
        );
    }
}
