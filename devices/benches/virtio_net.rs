//! The virtio-net device model alone: frames per second through TX and RX with guest memory in
//! this process, the in-memory back-end, and no VM, transport or worker thread.
//!
//! Each iteration makes a batch of chains available (descriptors written once; only the
//! available ring moves), serves them with `NetProcessor::process_tx` / `process_rx` and checks
//! they all came back in the used ring. TX frames are counted by the back-end, not copied; RX
//! frames are copied from the back-end's queue into the bounce buffer and then into guest
//! buffers, as with a tap. Throughput is in frames (criterion "elements") per second.
//!
//! Run: `cargo bench -p devices --bench virtio_net` (`-- --quick` for a short run).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use devices::virtio::net::mock::{MockBackend, MockHandle};
use devices::virtio::net::{NetProcessor, NetStats, DEVICE_FEATURES};
use devices::virtio::GuestMemoryMmap;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 256;
const BATCH: u16 = 64;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const USED_EVENT: u64 = AVAIL + 4 + 2 * QSIZE as u64;
const BUFS: u64 = 0x10_0000;
const BUF_LEN: u32 = 2048;
const MEM_LEN: usize = 0x40_0000;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

struct Ring<'a> {
    mem: &'a GuestMemoryMmap,
    avail: AvailRing<'a, GuestMemoryMmap>,
    used: UsedRing<'a, GuestMemoryMmap>,
    queue: Queue,
}

impl<'a> Ring<'a> {
    /// `BATCH` one-descriptor chains, chain i at BUFS + i * BUF_LEN.
    fn new(mem: &'a GuestMemoryMmap, len: u32, flags: u16) -> Ring<'a> {
        let desc = DescriptorTable::new(mem, GuestAddress(DESC), QSIZE);
        for i in 0..BATCH {
            let addr = BUFS + u64::from(i) * u64::from(BUF_LEN);
            desc.store(
                i,
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0)),
            )
            .unwrap();
        }
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue
            .try_set_desc_table_address(GuestAddress(DESC))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL))
            .unwrap();
        queue.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        queue.set_event_idx(true);
        queue.set_ready(true);
        Ring {
            mem,
            avail: AvailRing::new(mem, GuestAddress(AVAIL), QSIZE),
            used: UsedRing::new(mem, GuestAddress(USED), QSIZE),
            queue,
        }
    }

    fn make_batch_available(&self) {
        let idx = self.avail.idx().load();
        for i in 0..BATCH {
            self.avail
                .ring()
                .ref_at(usize::from(idx.wrapping_add(i) % QSIZE))
                .unwrap()
                .store(i);
        }
        self.avail.idx().store(idx.wrapping_add(BATCH));
        // One interrupt per batch, as a NAPI driver asks for.
        self.mem
            .write_obj(idx.wrapping_add(BATCH - 1), GuestAddress(USED_EVENT))
            .unwrap();
    }
}

fn processor() -> (NetProcessor, MockHandle) {
    let (b, h) = MockBackend::new();
    h.with(|s| s.keep_sent = false);
    let features = DEVICE_FEATURES | (1 << VIRTIO_RING_F_EVENT_IDX);
    (
        NetProcessor::new(Box::new(b), features, Arc::new(NetStats::default())),
        h,
    )
}

fn bench(c: &mut Criterion) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_LEN)]).unwrap();
    let mut g = c.benchmark_group("virtio_net");
    g.throughput(Throughput::Elements(u64::from(BATCH)));

    for frame_len in [60usize, 1514] {
        // TX: header + frame in one descriptor.
        let tx_len = (12 + frame_len) as u32;
        let mut ring = Ring::new(&mem, tx_len, 0);
        for i in 0..BATCH {
            let mut f = vec![0u8; tx_len as usize];
            f[12..18].copy_from_slice(&[0xff; 6]);
            mem.write_slice(&f, GuestAddress(BUFS + u64::from(i) * u64::from(BUF_LEN)))
                .unwrap();
        }
        let (mut p, _h) = processor();
        g.bench_function(format!("tx_{frame_len}"), |b| {
            b.iter(|| {
                ring.make_batch_available();
                let before = ring.used.idx().load();
                let run = p.process_tx(&mut ring.queue, &mem, 256).unwrap();
                assert_eq!(run.processed, usize::from(BATCH));
                assert_eq!(ring.used.idx().load(), before.wrapping_add(BATCH));
            })
        });

        // RX: MRG_RXBUF, one 2 KiB buffer per frame.
        let mut ring = Ring::new(&mem, BUF_LEN, WRITE);
        let (mut p, h) = processor();
        let mut frame = vec![0u8; 12 + frame_len];
        frame[12..18].copy_from_slice(&[0xff; 6]);
        g.bench_function(format!("rx_{frame_len}"), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    h.push_rx(frame.clone());
                }
                ring.make_batch_available();
                let run = p.process_rx(&mut ring.queue, &mem, 256).unwrap();
                assert_eq!(run.delivered, usize::from(BATCH));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
