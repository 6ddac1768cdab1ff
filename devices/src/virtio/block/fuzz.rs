//! Fuzzing harness for the virtio-blk request path (used by `fuzz/fuzz_targets/block_request.rs`
//! and by the seed-corpus replay test).
//!
//! The input is a guest as [`crate::virtio::fuzz_guest`] lays it out: flags, queue size and
//! the content of guest memory, which holds the descriptor table, both rings, the request
//! headers and data. The queue is then served by the real [`RequestProcessor`] against a small
//! temporary image, with the file I/O run inline (the I/O threads would only make runs
//! non-deterministic; what they run is the same `Job` code).

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::pool::Executor;
use super::{BlockStats, BlockStatsSnapshot, DiskImage, RequestProcessor, ID_BYTES};
use crate::log_once::LogOnce;
pub use crate::virtio::fuzz_guest::FLAG_EVENT_IDX;
use crate::virtio::fuzz_guest::{FuzzGuest, InputBuilder, USED_RING};

/// Image size (128 sectors).
pub const IMAGE_LEN: u64 = 64 * 1024;
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
    let Some(guest) = FuzzGuest::from_input(data) else {
        return BlockStatsSnapshot::default();
    };
    let flags = guest.flags;
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
    let mut queue = guest.queue();
    let mem = Arc::new(guest.mem);

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

/// A request header (type, reserved, sector) as the driver writes it.
fn request_header(req_type: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
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
        b.write(0x1000, &request_header(t, sector));
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
    ind.write(0x1000, &request_header(VIRTIO_BLK_T_IN, 0))
        .desc(0, (0x800, 48, INDIRECT, 0))
        .desc_at(0x800, 0, (0x1000, 16, NEXT, 1))
        .desc_at(0x800, 1, (0x2000, 512, NEXT | WRITE, 2))
        .desc_at(0x800, 2, (0x3000, 1, WRITE, 0))
        .avail(0);
    seeds.push(("indirect", ind.build()));

    // A loop: 0 -> 1 -> 0 -> ...
    let mut lp = InputBuilder::new(0);
    lp.write(0x1000, &request_header(VIRTIO_BLK_T_IN, 0))
        .desc(0, (0x1000, 16, NEXT, 1))
        .desc(1, (0x3000, 1, NEXT | WRITE, 0))
        .avail(0);
    seeds.push(("loop", lp.build()));

    // Data buffer straddling the hole between the regions; second chain reads into region 1.
    let mut hole = InputBuilder::new(FLAG_EVENT_IDX);
    hole.write(0x1000, &request_header(VIRTIO_BLK_T_IN, 0))
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
    use crate::virtio::fuzz_guest::{REGION0_LEN, REGION1_LEN};

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

    crate::fuzz_corpus::corpus_tests!(
        target: "block_request",
        seeds: seed_inputs(),
        run: run,
        write_seeds: write_seed_corpus,
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
