//! Fuzzing harness for the virtio-net TX path (used by `fuzz/fuzz_targets/virtio_net_tx.rs` and
//! by the seed-corpus replay test).
//!
//! The input is a guest: byte 0 holds flags, byte 1 the queue size, and the rest is the content
//! of guest memory, which holds the TX queue's descriptor table, both rings, the headers and
//! frames. The queue is then served by the real [`NetProcessor`] with the in-memory back-end.
//!
//! | guest address | content |
//! |---|---|
//! | 0x0000 | descriptor table (up to 16 entries) |
//! | 0x0100 | available ring (`idx` at 0x102, ring at 0x104, `used_event` after it) |
//! | 0x0200 | used ring |
//! | 0x0300-0x3fff | free for headers, frames, indirect tables |
//! | 0x4000-0x4fff | hole (no memory) |
//! | 0x5000-0x5fff | second region |

use std::sync::Arc;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::mock::MockBackend;
use super::{NetProcessor, NetStats, NetStatsSnapshot, DEVICE_FEATURES, ETH_HLEN, MAX_TX_LEN};
use crate::net::VNET_HDR_LEN;
use crate::virtio::GuestMemoryMmap;

pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x100;
pub const USED_RING: u64 = 0x200;
pub const REGION0_LEN: usize = 0x4000;
pub const REGION1_START: u64 = 0x5000;
pub const REGION1_LEN: usize = 0x1000;
/// Input flag: the driver negotiated VIRTIO_RING_F_EVENT_IDX.
pub const FLAG_EVENT_IDX: u8 = 1;
/// Input flag: the driver negotiated no offloads (only VERSION_1, MAC, STATUS).
pub const FLAG_NO_OFFLOADS: u8 = 2;
/// Input flag: the back-end refuses every frame.
pub const FLAG_BACKEND_ERRORS: u8 = 4;
/// Chains served per pass.
const BUDGET: usize = 64;

/// Runs one fuzz input through the TX path and returns the device counters. Panics only on a
/// bug.
pub fn run(data: &[u8]) -> NetStatsSnapshot {
    if data.len() < 2 {
        return NetStatsSnapshot::default();
    }
    let flags = data[0];
    let size = 1u16 << (data[1] % 5); // 1..=16
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION0_LEN),
        (GuestAddress(REGION1_START), REGION1_LEN),
    ])
    .expect("guest memory");
    let content = &data[2..];
    let (a, b) = content.split_at(content.len().min(REGION0_LEN));
    mem.write_slice(a, GuestAddress(0)).expect("region 0");
    let b = &b[..b.len().min(REGION1_LEN)];
    mem.write_slice(b, GuestAddress(REGION1_START))
        .expect("region 1");

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

    let mut queue = Queue::new(16).expect("queue");
    queue.set_size(size);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_event_idx(flags & FLAG_EVENT_IDX != 0);
    queue.set_ready(true);
    assert!(queue.is_valid(&mem));

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

/// Builds fuzz inputs by hand (for the seed corpus and tests).
#[derive(Debug, Clone)]
pub struct InputBuilder {
    flags: u8,
    size_sel: u8,
    mem: Vec<u8>,
    heads: Vec<u16>,
}

/// One descriptor: address, length, flags (VRING_DESC_F_*), next.
pub type RawDesc = (u64, u32, u16, u16);

impl InputBuilder {
    pub fn new(flags: u8) -> Self {
        InputBuilder {
            flags,
            size_sel: 4,
            mem: vec![0; REGION0_LEN + REGION1_LEN],
            heads: Vec::new(),
        }
    }

    /// Writes `bytes` at guest address `addr` (in either region).
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        let off = if addr >= REGION1_START {
            (addr - REGION1_START) as usize + REGION0_LEN
        } else {
            addr as usize
        };
        self.mem[off..off + bytes.len()].copy_from_slice(bytes);
        self
    }

    pub fn desc_at(&mut self, table: u64, index: u16, d: RawDesc) -> &mut Self {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&d.0.to_le_bytes());
        raw[8..12].copy_from_slice(&d.1.to_le_bytes());
        raw[12..14].copy_from_slice(&d.2.to_le_bytes());
        raw[14..16].copy_from_slice(&d.3.to_le_bytes());
        self.write(table + u64::from(index) * 16, &raw)
    }

    pub fn desc(&mut self, index: u16, d: RawDesc) -> &mut Self {
        self.desc_at(DESC_TABLE, index, d)
    }

    pub fn avail(&mut self, head: u16) -> &mut Self {
        self.heads.push(head);
        self
    }

    /// Writes a virtio_net_hdr_v1 and an Ethernet frame of `frame_len` bytes at `addr`.
    pub fn frame(&mut self, addr: u64, hdr: [u8; VNET_HDR_LEN], frame_len: usize) -> &mut Self {
        let mut f = hdr.to_vec();
        f.extend((0..frame_len).map(|i| i as u8));
        self.write(addr, &f)
    }

    pub fn build(&self) -> Vec<u8> {
        let mut me = self.clone();
        let n = me.heads.len() as u16;
        for (i, h) in self.heads.iter().enumerate() {
            me.write(AVAIL_RING + 4 + 2 * i as u64, &h.to_le_bytes());
        }
        me.write(AVAIL_RING + 2, &n.to_le_bytes());
        let mut out = vec![me.flags, me.size_sel];
        out.extend_from_slice(&me.mem);
        while out.len() > 2 && out.last() == Some(&0) {
            out.pop();
        }
        out
    }
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
    one.frame(0x1000, hdr(1, 0, 0, 0, 34, 16), 1000)
        .desc(0, (0x1000, 1012, 0, 0))
        .avail(0);
    seeds.push(("one_descriptor", one.build()));

    let mut split = InputBuilder::new(FLAG_EVENT_IDX);
    split
        .frame(0x1000, hdr(0, 0, 0, 0, 0, 0), 500)
        .desc(0, (0x1000, 12, NEXT, 1))
        .desc(1, (0x100c, 200, NEXT, 2))
        .desc(2, (0x10d4, 300, 0, 0))
        .avail(0);
    seeds.push(("split", split.build()));

    let mut tso = InputBuilder::new(0);
    tso.frame(0x1000, hdr(1, 0x81, 54, 1448, 34, 16), 3000)
        .desc(0, (0x1000, 3012, 0, 0))
        .avail(0);
    seeds.push(("tso4_ecn", tso.build()));

    let mut ind = InputBuilder::new(0);
    ind.frame(0x1000, hdr(0, 0, 0, 0, 0, 0), 100)
        .desc(0, (0x800, 32, INDIRECT, 0))
        .desc_at(0x800, 0, (0x1000, 12, NEXT, 1))
        .desc_at(0x800, 1, (0x100c, 100, 0, 0))
        .avail(0);
    seeds.push(("indirect", ind.build()));

    let mut lp = InputBuilder::new(0);
    lp.frame(0x1000, hdr(0, 0, 0, 0, 0, 0), 100)
        .desc(0, (0x1000, 12, NEXT, 1))
        .desc(1, (0x100c, 100, NEXT, 0))
        .avail(0);
    seeds.push(("loop", lp.build()));

    let mut bad = InputBuilder::new(FLAG_NO_OFFLOADS);
    bad.frame(0x1000, hdr(1, 1, 54, 1448, 34, 16), 200)
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
        .frame(0x5000, hdr(0, 0, 0, 0, 0, 0), 60)
        .desc(0, (0x5000, 72, 0, 0))
        .avail(0);
    seeds.push(("backend_error", region1.build()));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn corpus_dir() -> PathBuf {
        crate::fuzz_corpus::dir("virtio_net_tx")
    }

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

    /// Replays every file of the cargo-fuzz corpus, so CI exercises the fuzz target without a
    /// nightly toolchain.
    #[test]
    fn corpus_replay() {
        crate::fuzz_corpus::replay(&corpus_dir(), seed_inputs().len(), |input| {
            run(input);
        });
    }

    /// Regenerates the seed corpus: `cargo test -p devices write_net_seed_corpus -- --ignored`.
    #[test]
    #[ignore]
    fn write_net_seed_corpus() {
        crate::fuzz_corpus::write_seeds(&corpus_dir(), &seed_inputs());
    }

    #[test]
    fn short_and_empty_inputs() {
        run(&[]);
        run(&[0]);
        run(&[0xff, 0xff]);
        run(&[0xff; 64]);
        run(&vec![0xff; REGION0_LEN + REGION1_LEN + 100]);
    }
}
