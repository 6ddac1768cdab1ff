//! Fuzzes the virtio-net TX path: the input is a guest (flags, queue size and the content of
//! guest memory holding the descriptor table, the rings, headers and frames), served by the real
//! `NetProcessor` with the in-memory back-end. See `devices/src/virtio/net/fuzz.rs`,
//! and `devices/src/virtio/fuzz_guest.rs` for the layout.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = devices::virtio::net::fuzz::run(data);
});
