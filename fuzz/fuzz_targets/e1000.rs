//! Fuzzes the e1000 (82540EM) register and descriptor paths: the input is a list of register
//! writes/reads, received frames and worker passes plus the content of guest memory holding
//! the TX and RX rings and buffers. See `devices/src/e1000/fuzz.rs` for the layout.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = devices::e1000::fuzz::run(data);
});
