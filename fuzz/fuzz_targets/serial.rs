//! Fuzzes the 16550A UART: register reads and writes of any value, console input, odd
//! offsets and lengths. See `devices/src/serial_fuzz.rs` for the input layout.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = devices::serial_fuzz::run(data);
});
