//! Fuzzes the virtio-blk request path: the input is a guest (queue flags, queue size and the
//! content of guest memory holding the descriptor table, the rings, headers and data), served
//! by the real `RequestProcessor` against a small temporary image. See
//! `devices/src/virtio/block/fuzz.rs`, and `devices/src/virtio/fuzz_guest.rs` for the layout.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = devices::virtio::block::fuzz::run(data);
});
