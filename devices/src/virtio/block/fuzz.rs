//! Fuzzing harness for the virtio-blk request path (used by `fuzz/fuzz_targets/block_request.rs`
//! and by the seed-corpus replay test).
//!
//! The input is a guest: byte 0 holds flags, byte 1 the queue size, and the rest is the content
//! of guest memory, which holds the descriptor table, both rings, the request headers and data.
//! The queue is then served by the real [`RequestProcessor`] against a small temporary image,
//! with the file I/O run inline (the I/O threads would only make runs non-deterministic; what
//! they run is the same `Job` code).
//!
//! Guest memory is two regions with a hole between them, so buffers that straddle regions or
//! fall into the hole are exercised:
//!
//! | guest address | content |
//! |---|---|
//! | 0x0000 | descriptor table (up to 16 entries) |
//! | 0x0100 | available ring (`idx` at 0x102, ring at 0x104, `used_event` after it) |
//! | 0x0200 | used ring |
//! | 0x0300-0x3fff | free for headers, data, indirect tables |
//! | 0x4000-0x4fff | hole (no memory) |
//! | 0x5000-0x5fff | second region |

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::pool::Executor;
use super::{BlockStats, BlockStatsSnapshot, DiskImage, RequestProcessor, ID_BYTES};
use crate::log_once::LogOnce;
use crate::virtio::GuestMemoryMmap;

/// Guest address of the descriptor table.
pub const DESC_TABLE: u64 = 0x0;
/// Guest address of the available ring.
pub const AVAIL_RING: u64 = 0x100;
/// Guest address of the used ring.
pub const USED_RING: u64 = 0x200;
/// First region: [0, REGION0_LEN).
pub const REGION0_LEN: usize = 0x4000;
/// Second region: [REGION1_START, REGION1_START + REGION1_LEN).
pub const REGION1_START: u64 = 0x5000;
pub const REGION1_LEN: usize = 0x1000;
/// Image size (128 sectors).
pub const IMAGE_LEN: u64 = 64 * 1024;
/// Input flag: the driver negotiated VIRTIO_RING_F_EVENT_IDX.
pub const FLAG_EVENT_IDX: u8 = 1;
/// Input flag: use the read-only image.
pub const FLAG_READONLY: u8 = 2;
/// Input flag: the driver negotiated DISCARD and WRITE_ZEROES.
pub const FLAG_DISCARD: u8 = 4;
/// Chains served per input.
const BUDGET: usize = 64;

fn temp_image(readonly: bool) -> Arc<DiskImage> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let path: PathBuf = std::env::temp_dir().join(format!(
        "kvmrun-blk-fuzz-{}-{}.img",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create the fuzzing image");
    f.set_len(IMAGE_LEN).expect("size the fuzzing image");
    drop(f);
    let disk = DiskImage::open(&path, readonly, false).expect("open the fuzzing image");
    // The open descriptor keeps the inode; nothing is left behind in the temp dir.
    let _ = std::fs::remove_file(&path);
    Arc::new(disk)
}

fn image(readonly: bool) -> Arc<DiskImage> {
    static RW: OnceLock<Arc<DiskImage>> = OnceLock::new();
    static RO: OnceLock<Arc<DiskImage>> = OnceLock::new();
    if readonly {
        RO.get_or_init(|| temp_image(true)).clone()
    } else {
        RW.get_or_init(|| temp_image(false)).clone()
    }
}

/// Runs one fuzz input through the request path and returns the device counters. Panics only
/// on a bug.
pub fn run(data: &[u8]) -> BlockStatsSnapshot {
    if data.len() < 2 {
        return BlockStatsSnapshot::default();
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

    let mut acked = 0u64;
    if flags & FLAG_EVENT_IDX != 0 {
        acked |= 1 << VIRTIO_RING_F_EVENT_IDX;
    }
    if flags & FLAG_DISCARD != 0 {
        acked |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
    }
    let mut serial = [0u8; ID_BYTES];
    serial[..4].copy_from_slice(b"fuzz");
    let stats = Arc::new(BlockStats::default());
    let disk = image(flags & FLAG_READONLY != 0);
    let mut processor = RequestProcessor::new(
        disk.clone(),
        serial,
        acked,
        stats.clone(),
        Arc::new(LogOnce::new("fuzz")),
        Executor::inline(disk),
    );
    let mem = Arc::new(mem);

    let mut queue = Queue::new(16).expect("queue");
    queue.set_size(size);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_event_idx(flags & FLAG_EVENT_IDX != 0);
    queue.set_ready(true);
    assert!(queue.is_valid(&*mem));

    // Twice: the second pass sees the state (next_avail, used ring, notification fields) the
    // first one left.
    for _ in 0..2 {
        let used_before = queue.next_used();
        if let Ok(run) = processor.process_queue(&mut queue, &mem, BUDGET) {
            assert!(run.processed <= BUDGET);
            // Inline I/O: everything taken is completed by the same call.
            assert_eq!(run.in_flight, 0);
            assert!(run.completed <= run.processed);
            let added = queue.next_used().wrapping_sub(used_before);
            assert!(usize::from(added) <= run.processed);
            if added > 0 {
                let used_idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx");
                assert_eq!(u16::from_le(used_idx), queue.next_used());
            }
        }
    }
    stats.snapshot()
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

    /// Writes descriptor `index` of the table at `table`.
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

    /// Makes `head` available.
    pub fn avail(&mut self, head: u16) -> &mut Self {
        self.heads.push(head);
        self
    }

    /// Writes a request header at `addr`.
    pub fn header(&mut self, addr: u64, req_type: u32, sector: u64) -> &mut Self {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.write(addr, &h)
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
        // Trailing zeroes add nothing: keep the seeds small.
        while out.len() > 2 && out.last() == Some(&0) {
            out.pop();
        }
        out
    }
}

/// Handcrafted seeds: one per request type and a few malformed chains.
pub fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    use virtio_bindings::virtio_blk::*;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    let mut seeds = Vec::new();

    let simple = |flags: u8, t: u32, sector: u64, data: Option<(u32, bool)>| {
        let mut b = InputBuilder::new(flags);
        b.header(0x1000, t, sector);
        let mut i = 0;
        match data {
            Some((len, write)) => {
                b.desc(0, (0x1000, 16, NEXT, 1));
                b.desc(1, (0x2000, len, NEXT | if write { WRITE } else { 0 }, 2));
                i = 2;
            }
            None => {
                b.desc(0, (0x1000, 16, NEXT, 1));
                i += 1;
            }
        }
        b.desc(i, (0x3000, 1, WRITE, 0));
        b.avail(0);
        b
    };

    seeds.push((
        "in",
        simple(0, VIRTIO_BLK_T_IN, 1, Some((1024, true))).build(),
    ));
    let mut out = simple(FLAG_EVENT_IDX, VIRTIO_BLK_T_OUT, 3, Some((512, false)));
    out.write(0x2000, &[0xa5; 512]);
    seeds.push(("out", out.build()));
    seeds.push(("flush", simple(0, VIRTIO_BLK_T_FLUSH, 0, None).build()));
    seeds.push((
        "get_id",
        simple(0, VIRTIO_BLK_T_GET_ID, 0, Some((20, true))).build(),
    ));
    seeds.push((
        "out_readonly",
        simple(FLAG_READONLY, VIRTIO_BLK_T_OUT, 0, Some((512, false))).build(),
    ));
    let mut wz = simple(
        FLAG_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        Some((16, false)),
    );
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&2u64.to_le_bytes());
    seg[8..12].copy_from_slice(&4u32.to_le_bytes());
    seg[12..16].copy_from_slice(&1u32.to_le_bytes());
    wz.write(0x2000, &seg);
    seeds.push(("write_zeroes", wz.build()));
    let mut discard = simple(FLAG_DISCARD, VIRTIO_BLK_T_DISCARD, 0, Some((16, false)));
    seg[12..16].copy_from_slice(&0u32.to_le_bytes());
    discard.write(0x2000, &seg);
    seeds.push(("discard", discard.build()));
    seeds.push((
        "past_end",
        simple(0, VIRTIO_BLK_T_IN, IMAGE_LEN / 512, Some((512, true))).build(),
    ));

    // Indirect: head 0 points to a 3-entry table at 0x800.
    let mut ind = InputBuilder::new(0);
    ind.header(0x1000, VIRTIO_BLK_T_IN, 0)
        .desc(0, (0x800, 48, INDIRECT, 0))
        .desc_at(0x800, 0, (0x1000, 16, NEXT, 1))
        .desc_at(0x800, 1, (0x2000, 512, NEXT | WRITE, 2))
        .desc_at(0x800, 2, (0x3000, 1, WRITE, 0))
        .avail(0);
    seeds.push(("indirect", ind.build()));

    // A loop: 0 -> 1 -> 0 -> ...
    let mut lp = InputBuilder::new(0);
    lp.header(0x1000, VIRTIO_BLK_T_IN, 0)
        .desc(0, (0x1000, 16, NEXT, 1))
        .desc(1, (0x3000, 1, NEXT | WRITE, 0))
        .avail(0);
    seeds.push(("loop", lp.build()));

    // Data buffer straddling the hole between the regions; second chain reads into region 1.
    let mut hole = InputBuilder::new(FLAG_EVENT_IDX);
    hole.header(0x1000, VIRTIO_BLK_T_IN, 0)
        .desc(0, (0x1000, 16, NEXT, 1))
        .desc(1, (0x3e00, 1024, NEXT | WRITE, 2))
        .desc(2, (0x3000, 1, WRITE, 0))
        .desc(3, (0x1000, 16, NEXT, 4))
        .desc(4, (0x5000, 512, NEXT | WRITE, 5))
        .desc(5, (0x5fff, 1, WRITE, 0))
        .avail(0)
        .avail(3)
        .avail(200);
    seeds.push(("hole_and_bad_head", hole.build()));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_dir() -> PathBuf {
        crate::fuzz_corpus::dir("block_request")
    }

    /// The seeds reach the paths they were written for.
    #[test]
    fn seeds_do_what_they_say() {
        let seeds: std::collections::HashMap<_, _> = seed_inputs().into_iter().collect();
        let s = |name: &str| run(&seeds[name]);
        let in_ = s("in");
        assert_eq!(
            (in_.read_requests, in_.read_bytes, in_.invalid_requests),
            (1, 1024, 0)
        );
        let out = s("out");
        assert_eq!((out.write_requests, out.write_bytes), (1, 512));
        assert_eq!(s("flush").flush_requests, 1);
        let id = s("get_id");
        assert_eq!((id.other_requests, id.invalid_requests), (1, 0));
        assert_eq!(s("out_readonly").invalid_requests, 1);
        let wz = s("write_zeroes");
        assert_eq!(
            (wz.other_requests, wz.invalid_requests, wz.unsupported),
            (1, 0, 0)
        );
        let d = s("discard");
        assert_eq!(
            (d.other_requests, d.invalid_requests, d.unsupported),
            (1, 0, 0)
        );
        assert_eq!(s("past_end").invalid_requests, 1);
        assert_eq!(s("indirect").read_bytes, 512);
        assert_eq!(s("loop").invalid_requests, 1);
        let h = s("hole_and_bad_head");
        assert_eq!(
            (h.invalid_requests, h.read_bytes, h.dropped_chains),
            (2, 512, 1)
        );
    }

    /// Replays every file of the cargo-fuzz corpus (the handcrafted seeds and anything the
    /// fuzzer added there), so CI exercises the fuzz target without a nightly toolchain.
    #[test]
    fn corpus_replay() {
        crate::fuzz_corpus::replay(&corpus_dir(), seed_inputs().len(), |input| {
            run(input);
        });
    }

    /// Regenerates the seed corpus: `cargo test -p devices write_seed_corpus -- --ignored`.
    #[test]
    #[ignore]
    fn write_seed_corpus() {
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
