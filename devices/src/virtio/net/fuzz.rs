//! Fuzzing harness for the virtio-net TX path (used by `fuzz/fuzz_targets/virtio_net_tx.rs` and
//! by the seed-corpus replay test).
//!
//! The input is a guest as [`crate::virtio::fuzz_guest`] lays it out: flags, queue size and
//! the content of guest memory, which holds the TX queue's descriptor table, both rings, the
//! headers and frames. The queue is then served by the real [`NetProcessor`] with the
//! in-memory back-end.

use std::sync::Arc;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::mock::MockBackend;
use super::{NetProcessor, NetStats, NetStatsSnapshot, DEVICE_FEATURES, ETH_HLEN, MAX_TX_LEN};
use crate::net::VNET_HDR_LEN;
pub use crate::virtio::fuzz_guest::FLAG_EVENT_IDX;
use crate::virtio::fuzz_guest::{FuzzGuest, InputBuilder, USED_RING};

/// Input flag: the driver negotiated no offloads (only VERSION_1, MAC, STATUS).
pub const FLAG_NO_OFFLOADS: u8 = 2;
/// Input flag: the back-end refuses every frame.
pub const FLAG_BACKEND_ERRORS: u8 = 4;
/// Chains served per pass.
const BUDGET: usize = 64;

/// Runs one fuzz input through the TX path and returns the device counters. Panics only on a
/// bug.
pub fn run(data: &[u8]) -> NetStatsSnapshot {
    let Some(guest) = FuzzGuest::from_input(data) else {
        return NetStatsSnapshot::default();
    };
    let flags = guest.flags;
    let mut acked = if flags & FLAG_NO_OFFLOADS != 0 {
        use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS};
        (1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
    } else {
        DEVICE_FEATURES & !(1 << VIRTIO_RING_F_EVENT_IDX)
    };
    if flags & FLAG_EVENT_IDX != 0 {
        acked |= 1 << VIRTIO_RING_F_EVENT_IDX;
    }
    let (backend, handle) = MockBackend::new();
    if flags & FLAG_BACKEND_ERRORS != 0 {
        handle.with(|s| s.send_errno = Some(libc::ENOBUFS));
    }
    let stats = Arc::new(NetStats::default());
    let mut processor = NetProcessor::new(Box::new(backend), acked, stats.clone());

    let mut queue = guest.queue();
    let (mem, size) = (guest.mem, guest.layout.size);

    let mut processed = 0u64;
    for _ in 0..2 {
        let used_before = queue.next_used();
        if let Ok(run) = processor.process_tx(&mut queue, &mem, BUDGET) {
            assert!(run.processed <= BUDGET);
            processed += run.processed as u64;
            let added = queue.next_used().wrapping_sub(used_before);
            assert!(usize::from(added) <= run.processed);
            for i in 0..added {
                let slot = u64::from(used_before.wrapping_add(i) % size);
                let len: u32 = mem
                    .read_obj(GuestAddress(USED_RING + 4 + 8 * slot + 4))
                    .expect("used len");
                assert_eq!(len, 0, "TX chains are completed with used length 0");
            }
        }
    }
    for f in handle.take_sent() {
        assert!(f.len() <= MAX_TX_LEN && f.len() >= VNET_HDR_LEN + ETH_HLEN);
    }
    let s = stats.snapshot();
    assert_eq!(s.tx_frames + s.tx_dropped + s.malformed, processed);
    s
}

/// A virtio_net_hdr_v1 followed by an Ethernet frame of `frame_len` bytes.
fn frame(hdr: [u8; VNET_HDR_LEN], frame_len: usize) -> Vec<u8> {
    let mut f = hdr.to_vec();
    f.extend((0..frame_len).map(|i| i as u8));
    f
}

fn hdr(flags: u8, gso: u8, hdr_len: u16, gso_size: u16, cs: u16, co: u16) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = flags;
    h[1] = gso;
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&cs.to_le_bytes());
    h[8..10].copy_from_slice(&co.to_le_bytes());
    h
}

/// Handcrafted seeds: good frames laid out several ways and a few malformed chains.
pub fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    let mut seeds = Vec::new();

    let mut one = InputBuilder::new(0);
    one.write(0x1000, &frame(hdr(1, 0, 0, 0, 34, 16), 1000))
        .desc(0, (0x1000, 1012, 0, 0))
        .avail(0);
    seeds.push(("one_descriptor", one.build()));

    let mut split = InputBuilder::new(FLAG_EVENT_IDX);
    split
        .write(0x1000, &frame(hdr(0, 0, 0, 0, 0, 0), 500))
        .desc(0, (0x1000, 12, NEXT, 1))
        .desc(1, (0x100c, 200, NEXT, 2))
        .desc(2, (0x10d4, 300, 0, 0))
        .avail(0);
    seeds.push(("split", split.build()));

    let mut tso = InputBuilder::new(0);
    tso.write(0x1000, &frame(hdr(1, 0x81, 54, 1448, 34, 16), 3000))
        .desc(0, (0x1000, 3012, 0, 0))
        .avail(0);
    seeds.push(("tso4_ecn", tso.build()));

    let mut ind = InputBuilder::new(0);
    ind.write(0x1000, &frame(hdr(0, 0, 0, 0, 0, 0), 100))
        .desc(0, (0x800, 32, INDIRECT, 0))
        .desc_at(0x800, 0, (0x1000, 12, NEXT, 1))
        .desc_at(0x800, 1, (0x100c, 100, 0, 0))
        .avail(0);
    seeds.push(("indirect", ind.build()));

    let mut lp = InputBuilder::new(0);
    lp.write(0x1000, &frame(hdr(0, 0, 0, 0, 0, 0), 100))
        .desc(0, (0x1000, 12, NEXT, 1))
        .desc(1, (0x100c, 100, NEXT, 0))
        .avail(0);
    seeds.push(("loop", lp.build()));

    let mut bad = InputBuilder::new(FLAG_NO_OFFLOADS);
    bad.write(0x1000, &frame(hdr(1, 1, 54, 1448, 34, 16), 200))
        .desc(0, (0x1000, 212, 0, 0)) // offloads not negotiated
        .desc(1, (0x1000, 212, WRITE, 0)) // device-writable
        .desc(2, (0x1000, 8, 0, 0)) // no header
        .desc(3, (0x3f00, 0x2000, 0, 0)) // into the hole
        .desc(4, (0x1000, MAX_TX_LEN as u32 + 1, 0, 0)) // oversized
        .desc(5, (0x3ff0, 32, NEXT, 6)) // straddles into the hole
        .desc(6, (0x5000, 100, 0, 0))
        .avail(0)
        .avail(1)
        .avail(2)
        .avail(3)
        .avail(4)
        .avail(5)
        .avail(300);
    seeds.push(("malformed", bad.build()));

    let mut region1 = InputBuilder::new(FLAG_BACKEND_ERRORS);
    region1
        .write(0x5000, &frame(hdr(0, 0, 0, 0, 0, 0), 60))
        .desc(0, (0x5000, 72, 0, 0))
        .avail(0);
    seeds.push(("backend_error", region1.build()));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::fuzz_guest::{REGION0_LEN, REGION1_LEN};

    #[test]
    fn seeds_do_what_they_say() {
        let seeds: std::collections::HashMap<_, _> = seed_inputs().into_iter().collect();
        let s = |name: &str| run(&seeds[name]);
        let one = s("one_descriptor");
        assert_eq!((one.tx_frames, one.tx_bytes, one.malformed), (1, 1000, 0));
        assert_eq!(s("split").tx_bytes, 500);
        assert_eq!(s("tso4_ecn").tx_frames, 1);
        assert_eq!(s("indirect").tx_bytes, 100);
        assert_eq!(s("loop").malformed, 1);
        let bad = s("malformed");
        assert_eq!((bad.malformed, bad.tx_frames), (7, 0));
        assert_eq!(s("backend_error").tx_dropped, 1);
    }

    crate::fuzz_corpus::corpus_tests!(
        target: "virtio_net_tx",
        seeds: seed_inputs(),
        run: run,
        write_seeds: write_net_seed_corpus,
    );

    #[test]
    fn short_and_empty_inputs() {
        run(&[]);
        run(&[0]);
        run(&[0xff, 0xff]);
        run(&[0xff; 64]);
        run(&vec![0xff; REGION0_LEN + REGION1_LEN + 100]);
    }
}
