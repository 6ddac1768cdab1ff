//! virtio-blk under the real filters, without a guest: a "vCPU" thread (vCPU filter) activates a
//! disk, whose worker and I/O threads install the worker filter as they start, and drives
//! every request type through the queue (several reads in flight), resets the device with
//! requests in flight, activates it again; then the "VMM" thread (main filter) flushes the
//! image and drops the device, joining its threads, as at the end of a run. All of it twice:
//! on a buffered image, whose worker serves reads of cached data itself (preadv2 with
//! RWF_NOWAIT), and on an O_DIRECT one with bounced buffers when the file system allows it.
//!
//! Filters and the SIGSYS handler are for the whole process and cannot be removed, so the test
//! re-runs itself alone in a child process; a forbidden call ends the child with status 159 and
//! the one-line report, which the parent shows.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::block::{DiskConfig, VirtioBlk};
use devices::virtio::{
    GuestMemoryMmap, QueueActivation, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{apply, enable, ThreadKind};

const CHILD_ENV: &str = "KVMRUN_TEST_SECCOMP_BLK_CHILD";
const QSIZE: u16 = 16;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const HDR: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
const DATA: u64 = 0x4_0000;
const MEM_LEN: usize = 0x10_0000;
const IMAGE_LEN: u64 = 1 << 20;
// virtio 1.2 §2.7.5 and §5.2.6.
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

#[test]
fn virtio_blk_runs_under_the_filters() {
    super::child_test::run_in_child(
        concat!(module_path!(), "::virtio_blk_runs_under_the_filters"),
        CHILD_ENV,
        "virtio-blk test child: done",
        child,
    );
}

/// The driver side of a 16-entry split queue at fixed addresses.
struct Driver {
    mem: Arc<GuestMemoryMmap>,
    notify: EventFd,
    next_desc: u16,
    avail_idx: u16,
}

impl Driver {
    /// Fresh rings and a queue configured on them.
    fn new(mem: &Arc<GuestMemoryMmap>) -> (Driver, QueueActivation) {
        mem.write_slice(&[0u8; 0x2000], GuestAddress(AVAIL))
            .unwrap();
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.try_set_desc_table_address(GuestAddress(0)).unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL))
            .unwrap();
        queue.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        queue.set_ready(true);
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let act = QueueActivation {
            index: 0,
            queue,
            notify: notify.try_clone().unwrap(),
        };
        let d = Driver {
            mem: mem.clone(),
            notify,
            next_desc: 0,
            avail_idx: 0,
        };
        (d, act)
    }

    /// Request `slot`: header at HDR + 16 * slot, status at STATUS + slot, and `data` (address,
    /// length, device-writable) between them; made available.
    fn request(&mut self, slot: u64, req_type: u32, sector: u64, data: Option<(u64, u32, bool)>) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem
            .write_slice(&h, GuestAddress(HDR + 16 * slot))
            .unwrap();
        self.mem
            .write_obj(0xeeu8, GuestAddress(STATUS + slot))
            .unwrap();
        let mut descs = vec![(HDR + 16 * slot, 16, 0)];
        if let Some((addr, len, writable)) = data {
            descs.push((addr, len, if writable { WRITE } else { 0 }));
        }
        descs.push((STATUS + slot, 1, WRITE));
        if self.next_desc + descs.len() as u16 > QSIZE {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == descs.len();
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&(if last { flags } else { flags | NEXT }).to_le_bytes());
            raw[14..16].copy_from_slice(&(idx + 1).to_le_bytes());
            self.mem
                .write_slice(&raw, GuestAddress(16 * u64::from(idx)))
                .unwrap();
        }
        self.next_desc += descs.len() as u16;
        let slot_addr = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot_addr)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    fn kick(&self) {
        self.notify.write(1).unwrap();
    }

    /// Waits until every request made available is used; checks `slots` answered OK.
    fn wait_ok(&self, slots: std::ops::Range<u64>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() != self.avail_idx {
            assert!(Instant::now() < deadline, "requests not completed");
            std::thread::sleep(Duration::from_millis(1));
        }
        for slot in slots {
            let st: u8 = self.mem.read_obj(GuestAddress(STATUS + slot)).unwrap();
            assert_eq!(st, 0, "request {slot}: status {st}");
        }
    }
}

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _: VirtioInterruptType) -> std::io::Result<()> {
        Ok(())
    }
}

/// A new image at `path` and a device on it; `None` for O_DIRECT where the file system does
/// not have it.
fn open_disk(path: &Path, direct: bool) -> Option<VirtioBlk> {
    std::fs::write(path, vec![0x5a; IMAGE_LEN as usize]).unwrap();
    let mut dev = match VirtioBlk::new(DiskConfig {
        path: path.to_path_buf(),
        readonly: false,
        direct,
        serial: Some("seccomp".into()),
        io_threads: 4,
    }) {
        Ok(dev) => dev,
        Err(e) if direct => {
            eprintln!("O_DIRECT disk skipped: {e}");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    dev.set_acked_features(dev.device_features());
    Some(dev)
}

fn segment(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

/// Drives every request type through `dev` on the "vCPU" thread, resets it with requests in
/// flight and leaves it active again (with requests completed), as a guest would.
fn exercise(dev: &mut VirtioBlk, mem: &Arc<GuestMemoryMmap>) {
    let atomic = GuestMemoryAtomic::from(mem.clone());
    let (mut d, act) = Driver::new(mem);
    dev.activate(atomic.clone(), Arc::new(NoInterrupt), vec![act])
        .unwrap();
    // Several reads in flight, one into an unaligned buffer (bounced under O_DIRECT). On the
    // buffered image they are in the page cache (the image was just written): the worker
    // serves them itself.
    for slot in 0..4 {
        d.request(
            slot,
            T_IN,
            8 * slot,
            Some((DATA + 0x2000 * slot, 4096, true)),
        );
    }
    d.request(4, T_IN, 64, Some((DATA + 0x1_0001, 4096, true)));
    d.kick();
    d.wait_ok(0..5);
    // Writes, aligned and not, then the other types.
    d.request(0, T_OUT, 128, Some((DATA, 8192, false)));
    d.request(1, T_OUT, 256, Some((DATA + 0x1_0001, 4096, false)));
    d.request(2, T_FLUSH, 0, None);
    mem.write_slice(&segment(512, 8, 0), GuestAddress(DATA + 0x3_0000))
        .unwrap();
    d.request(3, T_DISCARD, 0, Some((DATA + 0x3_0000, 16, false)));
    d.kick();
    d.wait_ok(0..4);
    mem.write_slice(&segment(600, 8, 1), GuestAddress(DATA + 0x3_0010))
        .unwrap();
    mem.write_slice(&segment(700, 8, 0), GuestAddress(DATA + 0x3_0020))
        .unwrap();
    d.request(0, T_WRITE_ZEROES, 0, Some((DATA + 0x3_0010, 32, false)));
    d.request(1, T_GET_ID, 0, Some((DATA, 20, true)));
    d.kick();
    d.wait_ok(0..2);
    // Reset with requests in flight (or queued, or not taken yet).
    for slot in 0..5 {
        d.request(
            slot,
            T_IN,
            16 * slot,
            Some((DATA + 0x2000 * slot, 4096, true)),
        );
    }
    d.kick();
    dev.reset();
    assert!(!dev.is_active());
    // Activated again on fresh rings.
    let (mut d, act) = Driver::new(mem);
    dev.set_acked_features(dev.device_features());
    dev.activate(atomic, Arc::new(NoInterrupt), vec![act])
        .unwrap();
    d.request(0, T_OUT, 8, Some((DATA, 4096, false)));
    d.request(1, T_FLUSH, 0, None);
    d.kick();
    d.wait_ok(0..2);
}

/// The child: everything that needs opening is opened first, then the filters go on.
fn child() -> ! {
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Debug)
        .format_timestamp_millis()
        .init();
    let dir = tempfile::Builder::new()
        .prefix("kvmrun-seccomp-blk")
        .tempdir_in("/var/tmp")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let devs: Vec<VirtioBlk> = [("buffered.img", false), ("direct.img", true)]
        .into_iter()
        .filter_map(|(name, direct)| open_disk(&dir.path().join(name), direct))
        .collect();
    // The open descriptors keep the images; nothing may be removed once the filters are on.
    drop(dir);
    let disks: Vec<_> = devs.iter().map(|d| d.disk_image()).collect();
    // Each device has its own guest memory: the first stays active while the second runs.
    let mems: Vec<_> = devs
        .iter()
        .map(|_| Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_LEN)]).unwrap()))
        .collect();
    enable().unwrap();

    let vcpu = std::thread::Builder::new()
        .name("vcpu0".into())
        .spawn(move || {
            apply(ThreadKind::Vcpu, "vcpu0").unwrap();
            let mut devs = devs;
            for (dev, mem) in devs.iter_mut().zip(&mems) {
                exercise(dev, mem);
                eprintln!(
                    "virtio-blk test child: {}: {} reads served from the page cache",
                    if dev.disk().direct() {
                        "O_DIRECT"
                    } else {
                        "buffered"
                    },
                    dev.stats().snapshot().cached_reads
                );
            }
            devs
        })
        .unwrap();
    let devs = vcpu.join().unwrap();

    apply(ThreadKind::Main, "vmm").unwrap();
    for disk in disks {
        disk.flush().unwrap();
    }
    drop(devs);
    eprintln!("virtio-blk test child: done");
    std::process::exit(0);
}
