//! The virtio-blk device model alone: requests per second through the queue, with guest memory
//! in this process and no VM, no transport and no worker thread.
//!
//! Each iteration makes a batch of chains available (the descriptors are written once; only the
//! available ring changes), serves them with `RequestProcessor::process_queue` and checks that
//! they all came back in the used ring. The I/O runs inline (one request at a time), except in
//! the `_threads` variants, which use the device's I/O threads as the worker does (waiting for
//! their completions between calls; like the worker, they serve reads the page cache holds
//! without the threads, so `read_4k_threads` measures that path on a buffered image, and
//! `read_4k_direct_threads` the threads). The image is a temporary raw file on a real file
//! system (/var/tmp, so `direct` variants can open it with O_DIRECT). Throughput is reported in
//! requests (criterion "elements") per second.
//!
//! Run: `cargo bench -p devices --bench virtio_blk` (`-- --quick` for a short run).

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use devices::virtio::block::{DiskConfig, RequestProcessor, VirtioBlk, DEFAULT_IO_THREADS};
use devices::virtio::{GuestMemoryMmap, VirtioDevice};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// The device's queue size (the driver may use up to this many descriptors).
const QSIZE: u16 = 256;
/// Chains per batch (each iteration): 64 chains of 3 descriptors fit the 256-entry table.
const BATCH: u16 = 64;
/// Guest layout: descriptor table at 0, rings after it, per-chain headers and status bytes,
/// then the data buffers.
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const USED_EVENT: u64 = AVAIL + 4 + 2 * QSIZE as u64;
const HEADERS: u64 = 0x1_0000; // 16 bytes per chain
const STATUS: u64 = 0x2_0000; // 1 byte per chain
const DATA: u64 = 0x10_0000;
const MEM_LEN: usize = 0x60_0000; // 6 MiB: 64 x 64 KiB of data buffers fit after DATA
/// Image size: 16 MiB (in the page cache after it is written, unless opened with O_DIRECT).
const IMAGE_LEN: u64 = 16 << 20;
const SECTOR: u64 = 512;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Image {
    fn new() -> Image {
        let dir = tempfile::Builder::new()
            .prefix("kvmrun-blk-bench")
            .tempdir_in("/var/tmp")
            .or_else(|_| tempfile::tempdir())
            .expect("temp dir");
        let path = dir.path().join("disk.img");
        let data: Vec<u8> = (0..IMAGE_LEN)
            .map(|i| ((i * 31) ^ (i >> 9)) as u8)
            .collect();
        fs::write(&path, data).expect("writing the image");
        Image { _dir: dir, path }
    }

    fn device(&self, direct: bool) -> Option<VirtioBlk> {
        let dev = VirtioBlk::new(DiskConfig {
            path: self.path.clone(),
            readonly: false,
            direct,
            serial: None,
            io_threads: DEFAULT_IO_THREADS,
        });
        match dev {
            Ok(mut dev) => {
                dev.set_acked_features(dev.device_features());
                Some(dev)
            }
            Err(e) if direct => {
                eprintln!("skipping the O_DIRECT variant: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A request kind: (type, data bytes per request).
#[derive(Clone, Copy)]
enum Kind {
    Read(u32),
    Write(u32),
    Flush,
}

/// The driver side: a 256-entry split queue with `BATCH` fixed chains written once.
struct Driver<'a> {
    mem: &'a Arc<GuestMemoryMmap>,
    avail: AvailRing<'a, GuestMemoryMmap>,
    used: UsedRing<'a, GuestMemoryMmap>,
    queue: Queue,
    heads: Vec<u16>,
    processor: RequestProcessor,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a Arc<GuestMemoryMmap>, dev: &VirtioBlk, kind: Kind, threaded: bool) -> Self {
        let m: &'a GuestMemoryMmap = mem;
        let desc = DescriptorTable::new(m, GuestAddress(DESC), QSIZE);
        let avail = AvailRing::new(m, GuestAddress(AVAIL), QSIZE);
        let used = UsedRing::new(m, GuestAddress(USED), QSIZE);
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue
            .try_set_desc_table_address(GuestAddress(DESC))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL))
            .unwrap();
        queue.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        queue.set_ready(true);
        // As the worker does: EVENT_IDX when the driver acked it.
        queue.set_event_idx(dev.acked_features() & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        assert!(queue.is_valid(m));

        let store = |i: u16, addr: u64, len: u32, flags: u16| {
            desc.store(
                i,
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, i + 1)),
            )
            .unwrap();
        };
        let mut heads = Vec::new();
        let mut next = 0u16;
        for c in 0..BATCH {
            let hdr = HEADERS + 16 * u64::from(c);
            let status = STATUS + u64::from(c);
            let (req_type, bytes) = match kind {
                Kind::Read(n) => (VIRTIO_BLK_T_IN, n),
                Kind::Write(n) => (VIRTIO_BLK_T_OUT, n),
                Kind::Flush => (VIRTIO_BLK_T_FLUSH, 0),
            };
            // Requests spread over the image (one slot per chain), buffers side by side.
            let sector = u64::from(c) * u64::from(bytes.max(4096)) / SECTOR % (IMAGE_LEN / SECTOR);
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&req_type.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&h, GuestAddress(hdr)).unwrap();

            heads.push(next);
            store(next, hdr, 16, NEXT);
            next += 1;
            if bytes > 0 {
                let data = DATA + u64::from(c) * u64::from(bytes);
                let flags = if matches!(kind, Kind::Read(_)) {
                    WRITE
                } else {
                    0
                };
                mem.write_slice(&vec![c as u8; bytes as usize], GuestAddress(data))
                    .unwrap();
                store(next, data, bytes, flags | NEXT);
                next += 1;
            }
            store(next, status, 1, WRITE);
            next += 1;
        }
        Driver {
            mem,
            avail,
            used,
            queue,
            heads,
            processor: if threaded {
                dev.threaded_request_processor(DEFAULT_IO_THREADS, QSIZE)
                    .expect("starting the I/O threads")
            } else {
                dev.request_processor()
            },
        }
    }

    /// Makes the batch available, serves it, and checks that every chain was used.
    fn round(&mut self) {
        let idx = self.avail.idx().load();
        let ring = self.avail.ring();
        for (i, &head) in self.heads.iter().enumerate() {
            let slot = usize::from(idx.wrapping_add(i as u16) % QSIZE);
            ring.ref_at(slot).unwrap().store(head);
        }
        let new_idx = idx.wrapping_add(BATCH);
        self.avail.idx().store(new_idx);
        // used_event (after the available ring): an interrupt once the whole batch is used.
        self.mem
            .write_obj(new_idx.wrapping_sub(1), GuestAddress(USED_EVENT))
            .unwrap();
        let mut run = self
            .processor
            .process_queue(&mut self.queue, self.mem, usize::from(BATCH))
            .unwrap();
        assert_eq!(run.processed, usize::from(BATCH));
        while run.in_flight > 0 {
            assert!(self.processor.wait_for_completions(Duration::from_secs(10)));
            run = self
                .processor
                .process_queue(&mut self.queue, self.mem, usize::from(BATCH))
                .unwrap();
        }
        assert_eq!(self.used.idx().load(), new_idx);
    }

    fn check_statuses(&self) {
        for c in 0..BATCH {
            let s: u8 = self
                .mem
                .read_obj(GuestAddress(STATUS + u64::from(c)))
                .unwrap();
            assert_eq!(u32::from(s), VIRTIO_BLK_S_OK, "chain {c} failed");
        }
    }
}

fn bench(c: &mut Criterion) {
    let image = Image::new();
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_LEN)]).unwrap());
    let mut g = c.benchmark_group("virtio_blk");
    g.throughput(Throughput::Elements(u64::from(BATCH)));

    // (name, kind, O_DIRECT, I/O threads)
    let cases: [(&str, Kind, bool, bool); 8] = [
        ("read_4k", Kind::Read(4096), false, false),
        ("read_4k_threads", Kind::Read(4096), false, true),
        ("read_4k_direct", Kind::Read(4096), true, false),
        ("read_4k_direct_threads", Kind::Read(4096), true, true),
        ("write_64k", Kind::Write(64 << 10), false, false),
        ("write_64k_direct", Kind::Write(64 << 10), true, false),
        (
            "write_64k_direct_threads",
            Kind::Write(64 << 10),
            true,
            true,
        ),
        ("flush", Kind::Flush, false, false),
    ];
    for (name, kind, direct, threaded) in cases {
        let Some(dev) = image.device(direct) else {
            continue;
        };
        let mut d = Driver::new(&mem, &dev, kind, threaded);
        d.round();
        d.check_statuses();
        g.bench_function(name, |b| b.iter(|| d.round()));
        d.check_statuses();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
