//! Fuzzes kernel loading (ELF and bzImage detection and loading into guest memory), initrd
//! placement and the zero page with arbitrary kernel files. See `boot/src/fuzz.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = boot::fuzz::run(data);
});
