//! The XSAVE view the guest gets: CPUID leaf 0xD made consistent with the feature flags it is
//! shown, and XCR0 set up front to the state components its kernel will enable.
//!
//! Why both: Linux enables in XCR0 every component that leaf 0xD sub-leaf 0 offers *and* whose
//! feature flag is present (arch/x86/kernel/fpu/xstate.c, `xsave_cpuid_features`), then checks
//! the size it computes from the sub-leaves against CPUID(0xD, 0).EBX, which KVM derives from
//! the XCR0 it believes the guest has. If the two disagree the kernel warns ("XSAVE
//! consistency problem") and falls back from XSAVE, a path on which the test host's guests
//! triple-fault. KVM learns XCR0 from the guest's intercepted XSETBV; under the project's test
//! host (nested SVM emulated by QEMU TCG) that intercept is not reliably delivered, so KVM's
//! XCR0 can stay at its reset value (x87 only) and it reloads that into the guest on every
//! entry. Starting the vCPU with XCR0 already at the value the kernel will write makes that
//! lost XSETBV harmless; on hardware KVM the guest's own XSETBV follows and changes nothing.

use kvm_bindings::{kvm_cpuid_entry2, kvm_xcr, kvm_xcrs};

/// x87 and SSE: always offered, always enabled together (XCR0 bit 0 must be set; Linux enables
/// both whenever it uses XSAVE).
const XFEATURES_LEGACY: u64 = 0b11;
/// Legacy area (512 bytes) plus the XSAVE header (64 bytes): the XSAVE area size for x87|SSE
/// (Intel SDM vol. 1, 13.4).
const XSAVE_LEGACY_SIZE: u32 = 576;

/// The XSAVE leaf.
const LEAF_XSAVE: u32 = 0xd;

/// A CPUID feature flag: (leaf, sub-leaf, register, bit).
#[derive(Clone, Copy)]
enum Reg {
    Ebx,
    Ecx,
    Edx,
}
type Flag = (u32, u32, Reg, u32);

const AVX: Flag = (1, 0, Reg::Ecx, 28);
const MPX: Flag = (7, 0, Reg::Ebx, 14);
const AVX512F: Flag = (7, 0, Reg::Ebx, 16);
const PKU: Flag = (7, 0, Reg::Ecx, 3);
const AMX_TILE: Flag = (7, 0, Reg::Edx, 24);

/// XCR0 state components beyond x87/SSE and the feature flag each needs (SDM vol. 1, 13.2;
/// the same pairing as Linux's `xsave_cpuid_features`). A component not listed here is not
/// offered: the guest kernel would not know its flag either.
const XFEATURE_FLAGS: [(u32, Flag); 9] = [
    (2, AVX),       // YMM_Hi128
    (3, MPX),       // BNDREGS
    (4, MPX),       // BNDCSR
    (5, AVX512F),   // opmask
    (6, AVX512F),   // ZMM_Hi256
    (7, AVX512F),   // Hi16_ZMM
    (9, PKU),       // PKRU
    (17, AMX_TILE), // XTILECFG
    (18, AMX_TILE), // XTILEDATA
];

fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == function && e.index == index)
}

fn has(entries: &[kvm_cpuid_entry2], (leaf, sub, reg, bit): Flag) -> bool {
    find(entries, leaf, sub).is_some_and(|e| {
        let value = match reg {
            Reg::Ebx => e.ebx,
            Reg::Ecx => e.ecx,
            Reg::Edx => e.edx,
        };
        value & (1 << bit) != 0
    })
}

/// The XCR0 value a Linux guest shown `entries` enables: the user components leaf 0xD offers
/// whose feature flag is present. 0 when there is no XSAVE leaf (no XSAVE to set up).
pub fn guest_xcr0(entries: &[kvm_cpuid_entry2]) -> u64 {
    let Some(leaf) = find(entries, LEAF_XSAVE, 0) else {
        return 0;
    };
    let offered = u64::from(leaf.eax) | (u64::from(leaf.edx) << 32);
    if offered & XFEATURES_LEGACY != XFEATURES_LEGACY {
        return 0;
    }
    XFEATURE_FLAGS
        .iter()
        .filter(|(bit, flag)| offered & (1 << bit) != 0 && has(entries, *flag))
        .fold(XFEATURES_LEGACY, |xcr0, (bit, _)| xcr0 | (1 << bit))
}

/// Rewrites leaf 0xD so it offers exactly [`guest_xcr0`]: sub-leaf 0 EAX/EDX list those
/// components, ECX (the size for all of them) and EBX (the size for the current XCR0, which
/// [`boot_xcrs`] sets to the same value) are recomputed from the sub-leaves that remain, and the
/// sub-leaves of components not offered are zeroed (SDM vol. 2A, CPUID leaf 0Dh).
pub fn make_xsave_leaf_consistent(entries: &mut [kvm_cpuid_entry2]) {
    let xcr0 = guest_xcr0(entries);
    if xcr0 == 0 {
        return;
    }
    let mut size = XSAVE_LEGACY_SIZE;
    for e in entries.iter_mut().filter(|e| e.function == LEAF_XSAVE) {
        // Sub-leaves 2..=62 describe user component `index`: EAX size, EBX offset.
        let user_component = e.index < 64 && (XFEATURE_FLAGS_MASK >> e.index) & 1 != 0;
        if user_component {
            if xcr0 & (1 << e.index) != 0 {
                size = size.max(e.ebx.saturating_add(e.eax));
            } else {
                *e = kvm_cpuid_entry2 {
                    function: e.function,
                    index: e.index,
                    flags: e.flags,
                    ..Default::default()
                };
            }
        }
    }
    for e in entries
        .iter_mut()
        .filter(|e| e.function == LEAF_XSAVE && e.index == 0)
    {
        e.eax = xcr0 as u32;
        e.edx = (xcr0 >> 32) as u32;
        e.ebx = size;
        e.ecx = size;
    }
}

/// Every component [`XFEATURE_FLAGS`] knows, as an XCR0 mask.
const XFEATURE_FLAGS_MASK: u64 = {
    let mut mask = 0;
    let mut i = 0;
    while i < XFEATURE_FLAGS.len() {
        mask |= 1 << XFEATURE_FLAGS[i].0;
        i += 1;
    }
    mask
};

/// KVM_SET_XCRS input that starts the vCPU with XCR0 = [`guest_xcr0`] (see the module docs);
/// `None` when the guest gets no XSAVE.
pub fn boot_xcrs(entries: &[kvm_cpuid_entry2]) -> Option<kvm_xcrs> {
    let xcr0 = guest_xcr0(entries);
    if xcr0 == 0 {
        return None;
    }
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0] = kvm_xcr {
        xcr: 0,
        reserved: 0,
        value: xcr0,
    };
    Some(xcrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::tests::entry;

    fn get(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> (u32, u32, u32, u32) {
        let e = find(v, f, i).unwrap();
        (e.eax, e.ebx, e.ecx, e.edx)
    }

    /// What the test host's KVM reported: x87|SSE|AVX|PKRU offered, sizes for all four.
    fn test_host_leaves(avx: bool, pku: bool) -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(1, 0, 0, 0, if avx { 1 << 28 } else { 0 }, 0),
            entry(7, 0, 0, 0, if pku { 1 << 3 } else { 0 }, 0),
            entry(0xd, 0, 0x207, 0x240, 0xa88, 0),
            entry(0xd, 1, 0x5, 0, 0, 0),
            entry(0xd, 2, 0x100, 0x240, 0, 0),
            entry(0xd, 9, 0x8, 0xa80, 0, 0),
        ]
    }

    #[test]
    fn xcr0_takes_the_components_whose_flags_are_present() {
        assert_eq!(guest_xcr0(&test_host_leaves(true, true)), 0x207);
        assert_eq!(guest_xcr0(&test_host_leaves(true, false)), 0x7);
        assert_eq!(guest_xcr0(&test_host_leaves(false, true)), 0x203);
        assert_eq!(guest_xcr0(&test_host_leaves(false, false)), 0x3);
    }

    #[test]
    fn no_xsave_leaf_or_no_legacy_components_means_no_xcr0() {
        assert_eq!(guest_xcr0(&[entry(1, 0, 0, 0, 1 << 28, 0)]), 0);
        assert_eq!(guest_xcr0(&[entry(0xd, 0, 0x1, 0x240, 0x240, 0)]), 0);
        assert!(boot_xcrs(&[]).is_none());
    }

    #[test]
    fn consistent_leaf_offers_and_sizes_only_what_is_enabled() {
        let mut v = test_host_leaves(true, true);
        make_xsave_leaf_consistent(&mut v);
        // All four stay: EBX (size for XCR0 = 0x207, set at boot) equals ECX.
        assert_eq!(get(&v, 0xd, 0), (0x207, 0xa88, 0xa88, 0));

        let mut v = test_host_leaves(true, false);
        make_xsave_leaf_consistent(&mut v);
        assert_eq!(get(&v, 0xd, 0), (0x7, 0x340, 0x340, 0));
        assert_eq!(get(&v, 0xd, 9), (0, 0, 0, 0));
        assert_eq!(get(&v, 0xd, 2), (0x100, 0x240, 0, 0));
        // Sub-leaf 1 (XSAVEOPT/XSAVEC/XSAVES flags) is not a component: untouched.
        assert_eq!(get(&v, 0xd, 1), (0x5, 0, 0, 0));

        let mut v = test_host_leaves(false, false);
        make_xsave_leaf_consistent(&mut v);
        assert_eq!(get(&v, 0xd, 0), (0x3, 576, 576, 0));
        assert_eq!(get(&v, 0xd, 2), (0, 0, 0, 0));
    }

    #[test]
    fn boot_xcr0_matches_the_consistent_leaf() {
        let mut v = test_host_leaves(true, true);
        make_xsave_leaf_consistent(&mut v);
        let xcrs = boot_xcrs(&v).unwrap();
        assert_eq!(xcrs.nr_xcrs, 1);
        assert_eq!((xcrs.xcrs[0].xcr, xcrs.xcrs[0].value), (0, 0x207));
    }

    #[test]
    fn unknown_components_are_never_offered() {
        // A made-up offer of component 9 (PKRU) plus an unknown high component (bit 40):
        // the unknown one is never offered.
        let v = vec![
            entry(7, 0, 0, 0, 1 << 3, 0),
            entry(0xd, 0, 0x203, 0, 0, 1 << 8),
        ];
        assert_eq!(guest_xcr0(&v), 0x203);
    }
}
