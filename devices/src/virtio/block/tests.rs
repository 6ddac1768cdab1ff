//! Unit tests of virtio-blk with virtio-queue's mock driver and temporary images.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tempfile::TempDir;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic as VmGuestMemoryAtomic};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::driver_queue::DriverQueue;
use crate::virtio::queue_layout::SplitQueueLayout;
use crate::virtio::{
    GuestMemoryMmap, QueueActivation, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
};

mod cached_reads;
mod in_flight;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const QSIZE: u16 = 16;

/// Guest addresses used by the tests.
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const INDIRECT_TABLE: u64 = 0x4_0000;
const MEM_LEN: usize = 0x40_0000; // 4 MiB: [0, 4 MiB)
const MEM2_START: u64 = 0x80_0000; // second region after a hole
const MEM2_LEN: usize = 0x1_0000;

const IMAGE_SECTORS: u64 = 64;

fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 9)) as u8
}

struct Env {
    dir: TempDir,
    path: PathBuf,
}

impl Env {
    /// A temp dir (on a real file system: /var/tmp, so O_DIRECT works) with a patterned image.
    fn new() -> Env {
        Self::with_len(IMAGE_SECTORS * SECTOR_SIZE)
    }

    fn with_len(len: u64) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("kvmrun-blk-test")
            .tempdir_in("/var/tmp")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let path = dir.path().join("disk.img");
        let data: Vec<u8> = (0..len).map(pattern).collect();
        fs::write(&path, data).unwrap();
        Env { dir, path }
    }

    fn cfg(&self) -> DiskConfig {
        DiskConfig {
            path: self.path.clone(),
            readonly: false,
            direct: false,
            serial: None,
            io_threads: DEFAULT_IO_THREADS,
        }
    }

    fn device(&self, readonly: bool) -> VirtioBlk {
        let mut dev = VirtioBlk::new(DiskConfig {
            readonly,
            ..self.cfg()
        })
        .unwrap();
        dev.set_acked_features(dev.device_features());
        dev
    }

    /// A device on the image opened with O_DIRECT and `io_threads` I/O threads; `None`, said on
    /// stderr as the reason the test is skipped, where the file system has no O_DIRECT.
    fn direct_device(&self, io_threads: usize) -> Option<VirtioBlk> {
        match VirtioBlk::new(DiskConfig {
            direct: true,
            io_threads,
            ..self.cfg()
        }) {
            Ok(dev) => Some(dev),
            Err(BlockError::DirectUnsupported { .. }) => {
                eprintln!("skipped: no O_DIRECT on {}", self.dir.path().display());
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Truncates the image to `len` bytes behind the device's back: reads past the new end fail
    /// in the I/O.
    fn shrink(&self, len: u64) {
        fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        File::open(&self.path)
            .unwrap()
            .read_exact_at(&mut buf, offset)
            .unwrap();
        buf
    }
}

fn guest_memory() -> Arc<GuestMemoryMmap> {
    Arc::new(
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MEM_LEN),
            (GuestAddress(MEM2_START), MEM2_LEN),
        ])
        .unwrap(),
    )
}

/// The request queue's rings: the descriptor table at 0, the available ring at 0x1000, the
/// used ring at 0x2000.
const RINGS: SplitQueueLayout = SplitQueueLayout::page_apart(0, QSIZE);
const AVAIL: u64 = RINGS.avail_ring;
const USED: u64 = RINGS.used_ring;

/// The driver side of the request queue. Over the `Arc` of guest memory, which is what
/// [`RequestProcessor::process_queue`] takes.
type Driver<'a> = DriverQueue<'a, Arc<GuestMemoryMmap>>;

impl Driver<'_> {
    /// Serves the queue once, as the worker does on a notification.
    fn run(&mut self, p: &mut RequestProcessor) -> QueueRun {
        p.process_queue(&mut self.queue, self.mem, 256).unwrap()
    }
}

fn header(mem: &GuestMemoryMmap, at: u64, req_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

fn status_at(mem: &GuestMemoryMmap, at: u64) -> u8 {
    mem.read_obj(GuestAddress(at)).unwrap()
}

const NO_STATUS: u8 = 0xee;

/// Submits one chain, serves the queue and returns (status byte at STATUS, used len).
fn submit(d: &mut Driver, p: &mut RequestProcessor, descs: &[(u64, u32, u16)]) -> (u8, u32) {
    d.mem.write_obj(NO_STATUS, GuestAddress(STATUS)).unwrap();
    let head = d.add(descs);
    let before = d.used_idx();
    let run = d.run(p);
    assert_eq!(run.processed, 1);
    assert_eq!(d.used_idx(), before.wrapping_add(1), "chain not completed");
    let (id, len) = d.used(before);
    assert_eq!(id, u32::from(head));
    (status_at(d.mem, STATUS), len)
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

// ---------------------------------------------------------------------------------------------
// Construction and errors

#[test]
fn open_errors_name_the_path_and_the_fix() {
    let env = Env::new();
    let missing = env.dir.path().join("nope.img");
    let e = VirtioBlk::new(DiskConfig {
        path: missing.clone(),
        ..env.cfg()
    })
    .unwrap_err();
    assert!(matches!(e, BlockError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("nope.img"));

    // A directory, a character device.
    for p in [env.dir.path(), Path::new("/dev/null")] {
        let e = VirtioBlk::new(DiskConfig {
            path: p.to_path_buf(),
            readonly: true,
            ..env.cfg()
        })
        .unwrap_err();
        assert!(
            matches!(e, BlockError::NotAFileOrBlockDevice { .. }),
            "{p:?}: {e}"
        );
    }

    let odd = env.dir.path().join("odd.img");
    fs::write(&odd, vec![0u8; 1000]).unwrap();
    let e = VirtioBlk::new(DiskConfig {
        path: odd,
        ..env.cfg()
    })
    .unwrap_err();
    assert!(
        matches!(e, BlockError::UnalignedSize { size: 1000, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("truncate -s 1024"), "{e}");

    let e = VirtioBlk::new(DiskConfig {
        serial: Some("x".repeat(21)),
        ..env.cfg()
    })
    .unwrap_err();
    assert!(
        matches!(e, BlockError::SerialTooLong { len: 21, .. }),
        "{e}"
    );

    for threads in [0, MAX_IO_THREADS + 1] {
        let e = VirtioBlk::new(DiskConfig {
            io_threads: threads,
            ..env.cfg()
        })
        .unwrap_err();
        assert!(matches!(e, BlockError::IoThreads { .. }), "{e}");
        assert!(e.to_string().contains("iothreads=1 to 64"), "{e}");
    }
}

#[test]
fn permission_denied() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("skipped: root ignores file permissions");
        return;
    }
    let env = Env::new();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&env.path, fs::Permissions::from_mode(0o444)).unwrap();
    let e = VirtioBlk::new(env.cfg()).unwrap_err();
    assert!(
        matches!(
            e,
            BlockError::PermissionDenied {
                readonly: false,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("readonly=on"));
    VirtioBlk::new(DiskConfig {
        readonly: true,
        ..env.cfg()
    })
    .unwrap();
}

#[test]
fn image_in_use_is_refused() {
    let env = Env::new();
    let first = VirtioBlk::new(env.cfg()).unwrap();
    let e = VirtioBlk::new(env.cfg()).unwrap_err();
    assert!(matches!(e, BlockError::InUse { .. }), "{e}");
    assert!(e.to_string().contains("in use"));
    // Read-only sharing conflicts with a writer too.
    let e = VirtioBlk::new(DiskConfig {
        readonly: true,
        ..env.cfg()
    })
    .unwrap_err();
    assert!(matches!(e, BlockError::InUse { .. }), "{e}");
    drop(first);
    // Two read-only users may share; a writer may not join them.
    let ro1 = VirtioBlk::new(DiskConfig {
        readonly: true,
        ..env.cfg()
    })
    .unwrap();
    let _ro2 = VirtioBlk::new(DiskConfig {
        readonly: true,
        ..env.cfg()
    })
    .unwrap();
    assert!(matches!(
        VirtioBlk::new(env.cfg()).unwrap_err(),
        BlockError::InUse { .. }
    ));
    drop(ro1);
}

#[test]
fn features() {
    let env = Env::new();
    let dev = VirtioBlk::new(env.cfg()).unwrap();
    let f = dev.device_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & (1 << bit), 0, "bit {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(dev.device_type(), 2);
    assert_eq!(dev.queue_max_sizes(), vec![QUEUE_SIZE]);
    drop(dev);

    let mut ro = VirtioBlk::new(DiskConfig {
        readonly: true,
        ..env.cfg()
    })
    .unwrap();
    let f = ro.device_features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    // Unoffered bits are dropped.
    ro.set_acked_features(u64::MAX);
    assert_eq!(ro.acked_features(), f);
}

#[test]
fn config_space() {
    let env = Env::new();
    let mut dev = VirtioBlk::new(env.cfg()).unwrap();
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), IMAGE_SECTORS);
    // Byte by byte, and as two halves.
    for i in 0..8 {
        let mut b = [0xffu8; 1];
        dev.read_config(i, &mut b);
        assert_eq!(b[0], IMAGE_SECTORS.to_le_bytes()[i as usize]);
    }
    let mut hi = [0u8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);

    let field = |off: u64| {
        let mut b = [0u8; 4];
        dev.read_config(off, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(field(8), SIZE_MAX);
    assert_eq!(field(12), SEG_MAX);
    assert_eq!(field(20), 512);
    assert_eq!(field(36), MAX_DISCARD_SECTORS);
    assert_eq!(field(40), MAX_DISCARD_SEG);
    assert_eq!(field(44), DISCARD_SECTOR_ALIGNMENT);
    assert_eq!(field(48), MAX_WRITE_ZEROES_SECTORS);
    assert_eq!(field(52), MAX_WRITE_ZEROES_SEG);
    let mut unmap = [0u8; 1];
    dev.read_config(56, &mut unmap);
    assert_eq!(unmap[0], 1);

    // Offsets agree with the kernel's struct virtio_blk_config.
    assert_eq!(std::mem::offset_of!(virtio_blk_config, blk_size), 20);
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, max_discard_sectors),
        36
    );
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, write_zeroes_may_unmap),
        56
    );
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, zoned),
        CONFIG_SPACE_LEN
    );

    // Out of range: zeroes, partly or wholly; no panic at the extremes.
    let mut tail = [0xffu8; 8];
    dev.read_config(CONFIG_SPACE_LEN as u64 - 4, &mut tail);
    assert_eq!(&tail[4..], &[0; 4]);
    for off in [CONFIG_SPACE_LEN as u64, 0x1000, u64::MAX - 3, u64::MAX] {
        let mut b = [0xffu8; 8];
        dev.read_config(off, &mut b);
        assert_eq!(b, [0; 8], "offset {off:#x}");
    }
    dev.read_config(0, &mut []);

    // Writes are ignored.
    dev.write_config(0, &[1, 2, 3, 4, 5, 6, 7, 8]);
    dev.write_config(u64::MAX, &[1]);
    dev.write_config(32, &[1]);
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), IMAGE_SECTORS);
    let mut wce = [0xffu8];
    dev.read_config(32, &mut wce);
    assert_eq!(wce[0], 0);
}

// ---------------------------------------------------------------------------------------------
// Requests

#[test]
fn read_round_trip() {
    let env = Env::new();
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    header(&mem, HDR, VIRTIO_BLK_T_IN, 3);
    // 1024 bytes in two buffers of different sizes, the second in the other region.
    let (st, len) = submit(
        &mut d,
        &mut p,
        &[
            (HDR, 16, 0),
            (DATA, 300, WRITE),
            (MEM2_START, 724, WRITE),
            (STATUS, 1, WRITE),
        ],
    );
    assert_eq!((st, len), (OK, 1025));
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got[..300], GuestAddress(DATA)).unwrap();
    mem.read_slice(&mut got[300..], GuestAddress(MEM2_START))
        .unwrap();
    assert_eq!(got, env.file_bytes(3 * 512, 1024));
    let s = dev.stats().snapshot();
    assert_eq!((s.read_requests, s.read_bytes), (1, 1024));
}

#[test]
fn write_round_trip_and_flush() {
    let env = Env::new();
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    let data: Vec<u8> = (0..2048u32).map(|i| (i * 7 + 1) as u8).collect();
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 10);
    let (st, len) = submit(
        &mut d,
        &mut p,
        &[
            (HDR, 16, 0),
            (DATA, 1536, 0),
            (DATA + 1536, 512, 0),
            (STATUS, 1, WRITE),
        ],
    );
    assert_eq!((st, len), (OK, 1));
    assert_eq!(env.file_bytes(10 * 512, 2048), data);
    // Neighbours untouched.
    assert_eq!(
        env.file_bytes(9 * 512, 512),
        (9 * 512..10 * 512).map(pattern).collect::<Vec<_>>()
    );

    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let (st, len) = submit(&mut d, &mut p, &[(HDR, 16, 0), (STATUS, 1, WRITE)]);
    assert_eq!((st, len), (OK, 1));
    let s = dev.stats().snapshot();
    assert_eq!(
        (s.write_requests, s.write_bytes, s.flush_requests),
        (1, 2048, 1)
    );
}

#[test]
fn framing_does_not_matter() {
    // §2.7.4: header and data in one descriptor; data and status in one descriptor.
    let env = Env::new();
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    header(&mem, HDR, VIRTIO_BLK_T_OUT, 1);
    mem.write_slice(&[0x5a; 512], GuestAddress(HDR + 16))
        .unwrap();
    let (st, _) = submit(&mut d, &mut p, &[(HDR, 16 + 512, 0), (STATUS, 1, WRITE)]);
    assert_eq!(st, OK);
    assert_eq!(env.file_bytes(512, 512), vec![0x5a; 512]);

    // IN: data and status in one 513-byte descriptor.
    header(&mem, HDR, VIRTIO_BLK_T_IN, 1);
    d.add(&[(HDR, 16, 0), (DATA, 513, WRITE)]);
    d.run(&mut p);
    let (_, len) = d.used(d.used_idx() - 1);
    assert_eq!(len, 513);
    let mut got = vec![0u8; 513];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..512], &[0x5a; 512][..]);
    assert_eq!(got[512], OK);

    // Header split over two descriptors (8 + 8 bytes).
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let (st, _) = submit(
        &mut d,
        &mut p,
        &[(HDR, 8, 0), (HDR + 8, 8, 0), (STATUS, 1, WRITE)],
    );
    assert_eq!(st, OK);
}

#[test]
fn get_id() {
    let env = Env::new();
    let mut dev = VirtioBlk::new(DiskConfig {
        serial: Some("disk-serial-1".into()),
        ..env.cfg()
    })
    .unwrap();
    dev.set_acked_features(dev.device_features());
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    let mut p = dev.request_processor();

    mem.write_slice(&[0xff; 20], GuestAddress(DATA)).unwrap();
    header(&mem, HDR, VIRTIO_BLK_T_GET_ID, 0);
    let chain = [(HDR, 16, 0), (DATA, 20, WRITE), (STATUS, 1, WRITE)];
    let (st, len) = submit(&mut d, &mut p, &chain);
    assert_eq!((st, len), (OK, 21));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    let mut want = [0u8; 20];
    want[..13].copy_from_slice(b"disk-serial-1");
    assert_eq!(id, want);

    // Too short a buffer.
    let (st, len) = submit(
        &mut d,
        &mut p,
        &[(HDR, 16, 0), (DATA, 19, WRITE), (STATUS, 1, WRITE)],
    );
    assert_eq!((st, len), (IOERR, 1));
    drop(p);
    drop(dev);

    // No serial: 20 zero bytes.
    let dev = env.device(false);
    let mut p = dev.request_processor();
    mem.write_slice(&[0xff; 20], GuestAddress(DATA)).unwrap();
    let (st, len) = submit(&mut d, &mut p, &chain);
    assert_eq!((st, len), (OK, 21));
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(id, [0u8; 20]);
}

#[test]
fn unknown_type_is_unsupported() {
    let env = Env::new();
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    for t in [2, 3, 5, 10, 14, 15, 16, 0xffff_ffff] {
        header(&mem, HDR, t, 0);
        let (st, len) = submit(&mut d, &mut p, &[(HDR, 16, 0), (STATUS, 1, WRITE)]);
        assert_eq!((st, len), (UNSUPP, 1), "type {t}");
    }
    assert_eq!(dev.stats().snapshot().unsupported, 8);
}

#[test]
fn readonly_rejects_writes() {
    let env = Env::new();
    let before = fs::read(&env.path).unwrap();
    let dev = env.device(true);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    mem.write_slice(&[0x11; 512], GuestAddress(DATA)).unwrap();
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    let (st, len) = submit(
        &mut d,
        &mut p,
        &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, WRITE)],
    );
    assert_eq!((st, len), (IOERR, 1));

    // Discard / write zeroes are not offered: UNSUPP even if the driver tries.
    let mut seg = [0u8; 16];
    seg[8..12].copy_from_slice(&1u32.to_le_bytes());
    mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        header(&mem, HDR, t, 0);
        let (st, _) = submit(
            &mut d,
            &mut p,
            &[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, WRITE)],
        );
        assert_eq!(st, UNSUPP);
    }

    // Reads and flushes still work.
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let (st, _) = submit(
        &mut d,
        &mut p,
        &[(HDR, 16, 0), (DATA, 512, WRITE), (STATUS, 1, WRITE)],
    );
    assert_eq!(st, OK);
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let (st, _) = submit(&mut d, &mut p, &[(HDR, 16, 0), (STATUS, 1, WRITE)]);
    assert_eq!(st, OK);
    assert_eq!(fs::read(&env.path).unwrap(), before);
}

#[test]
fn out_of_range_requests() {
    let env = Env::new();
    let before = fs::read(&env.path).unwrap();
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    for (t, dir) in [(VIRTIO_BLK_T_IN, WRITE), (VIRTIO_BLK_T_OUT, 0)] {
        // (sector, length): just past the end, straddling the end, overflowing.
        for (sector, len) in [
            (IMAGE_SECTORS, 512),
            (IMAGE_SECTORS - 1, 1024),
            (u64::MAX, 512),
            (u64::MAX / 512, 512),
            (u64::MAX / 512 - 1, 1024),
            (IMAGE_SECTORS + 1, 0),
        ] {
            header(&mem, HDR, t, sector);
            let (st, len) = submit(
                &mut d,
                &mut p,
                &[(HDR, 16, 0), (DATA, len, dir), (STATUS, 1, WRITE)],
            );
            assert_eq!((st, len), (IOERR, 1), "type {t} sector {sector}");
        }
        // The very last sector is fine.
        header(&mem, HDR, t, IMAGE_SECTORS - 1);
        let (st, _) = submit(
            &mut d,
            &mut p,
            &[(HDR, 16, 0), (DATA, 512, dir), (STATUS, 1, WRITE)],
        );
        assert_eq!(st, OK);
    }
    let mut after = fs::read(&env.path).unwrap();
    let last = ((IMAGE_SECTORS - 1) * 512) as usize;
    // The valid write to the last sector wrote what the read had put in DATA: the same bytes.
    assert_eq!(after[last..], before[last..]);
    after.truncate(last);
    assert_eq!(after[..], before[..last]);
}

#[test]
fn malformed_chains() {
    let env = Env::new();
    let before = fs::read(&env.path).unwrap();
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    let hole = MEM_LEN as u64 + 0x1000; // between the regions

    // (what, type, chain, expected status, expected used len)
    type Case = (&'static str, u32, Vec<(u64, u32, u16)>, u8, u32);
    let cases: Vec<Case> = vec![
        // (what, type, chain, expected status, expected used len)
        (
            "header only 8 bytes",
            VIRTIO_BLK_T_IN,
            vec![(HDR, 8, 0), (STATUS, 1, WRITE)],
            IOERR,
            1,
        ),
        (
            "no readable part",
            VIRTIO_BLK_T_IN,
            vec![(DATA, 512, WRITE), (STATUS, 1, WRITE)],
            IOERR,
            1,
        ),
        (
            "header outside memory",
            VIRTIO_BLK_T_IN,
            vec![(hole, 16, 0), (STATUS, 1, WRITE)],
            IOERR,
            1,
        ),
        (
            "header address wraps",
            VIRTIO_BLK_T_IN,
            vec![(u64::MAX - 7, 16, 0), (STATUS, 1, WRITE)],
            IOERR,
            1,
        ),
        (
            "data straddles the hole",
            VIRTIO_BLK_T_IN,
            vec![
                (HDR, 16, 0),
                (MEM_LEN as u64 - 512, 1024, WRITE),
                (STATUS, 1, WRITE),
            ],
            IOERR,
            1,
        ),
        (
            "IN with readable data",
            VIRTIO_BLK_T_IN,
            vec![(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, WRITE)],
            IOERR,
            1,
        ),
        (
            "OUT with writable data",
            VIRTIO_BLK_T_OUT,
            vec![(HDR, 16, 0), (DATA, 512, WRITE), (STATUS, 1, WRITE)],
            IOERR,
            1,
        ),
        (
            "IN length not a multiple of 512",
            VIRTIO_BLK_T_IN,
            vec![(HDR, 16, 0), (DATA, 511, WRITE), (STATUS, 1, WRITE)],
            IOERR,
            1,
        ),
        (
            "OUT length not a multiple of 512",
            VIRTIO_BLK_T_OUT,
            vec![(HDR, 16, 0), (DATA, 513, 0), (STATUS, 1, WRITE)],
            IOERR,
            1,
        ),
        (
            "readable after writable",
            VIRTIO_BLK_T_OUT,
            vec![
                (HDR, 16, 0),
                (DATA + 4096, 8, WRITE),
                (DATA, 512, 0),
                (STATUS, 1, WRITE),
            ],
            IOERR,
            1,
        ),
        (
            "zero-length descriptors around",
            VIRTIO_BLK_T_FLUSH,
            vec![
                (HDR, 0, 0),
                (HDR, 16, 0),
                (DATA, 0, 0),
                (STATUS, 1, WRITE),
                (DATA, 0, WRITE),
            ],
            OK,
            1,
        ),
        (
            "zero-length IN",
            VIRTIO_BLK_T_IN,
            vec![(HDR, 16, 0), (STATUS, 1, WRITE)],
            OK,
            1,
        ),
    ];
    for (what, t, chain, want_st, want_len) in cases {
        header(&mem, HDR, t, 0);
        let got = submit(&mut d, &mut p, &chain);
        assert_eq!(got, (want_st, want_len), "{what}");
    }

    // Request larger than the cap: 17 descriptors of 1 MiB (all the same buffer), IN and OUT.
    for (t, dir) in [(VIRTIO_BLK_T_IN, WRITE), (VIRTIO_BLK_T_OUT, 0)] {
        header(&mem, HDR, t, 0);
        let mut chain = vec![(HDR, 16, 0)];
        chain.extend(std::iter::repeat_n((DATA, 1 << 20, dir), 13));
        chain.push((STATUS, 1, WRITE));
        // 13 MiB is within the cap but past the end of the 32 KiB image.
        assert_eq!(submit(&mut d, &mut p, &chain), (IOERR, 1));
    }

    // Status byte missing or outside guest memory: completed with used len 0.
    for chain in [
        vec![(HDR, 16, 0)],
        vec![(HDR, 16, 0), (DATA, 512, 0)],
        vec![(HDR, 16, 0), (hole, 1, WRITE)],
        vec![(HDR, 16, 0), (STATUS, 0, WRITE)],
        vec![(HDR, 16, 0), (u64::MAX, 1, WRITE)],
        vec![(HDR, 16, 0), (u64::MAX - 10, 100, WRITE)],
    ] {
        header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
        let (st, len) = submit(&mut d, &mut p, &chain);
        assert_eq!((st, len), (NO_STATUS, 0), "{chain:x?}");
    }

    assert_eq!(fs::read(&env.path).unwrap(), before, "the image changed");
    let s = dev.stats().snapshot();
    assert_eq!(s.dropped_chains, 6);
    assert!(s.invalid_requests >= 12);
}

#[test]
fn oversized_request_is_refused() {
    // An image big enough that only the cap stops it.
    let env = Env::with_len(MAX_REQUEST_BYTES + (1 << 20));
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    for (t, dir) in [(VIRTIO_BLK_T_IN, WRITE), (VIRTIO_BLK_T_OUT, 0)] {
        header(&mem, HDR, t, 0);
        let mut chain = vec![(HDR, 16, 0)];
        // 4 descriptors of 4 MiB + 512 each... within 16 descriptors of the queue.
        let each = (MAX_REQUEST_BYTES / 4 + 512) as u32;
        // All alias the same guest buffer (guest memory is only 4 MiB + 64 KiB).
        let buf = (0x100000u64, each.min(MEM_LEN as u32 - 0x100000));
        let n = MAX_REQUEST_BYTES.div_ceil(u64::from(buf.1)) + 1;
        if n as usize + 2 > usize::from(QSIZE) {
            panic!("test setup: {n} descriptors");
        }
        chain.extend(std::iter::repeat_n((buf.0, buf.1, dir), n as usize));
        chain.push((STATUS, 1, WRITE));
        assert_eq!(submit(&mut d, &mut p, &chain), (IOERR, 1), "type {t}");
    }
    assert_eq!(dev.stats().snapshot().read_bytes, 0);
    assert_eq!(dev.stats().snapshot().write_bytes, 0);
}

#[test]
fn loops_and_too_many_descriptors() {
    let env = Env::with_len(512 * 512);
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    mem.write_obj(NO_STATUS, GuestAddress(STATUS)).unwrap();
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);

    // 0 -> 1 -> 0: virtio-queue stops after the table size; R after W → IOERR.
    d.store(0, HDR, 16, NEXT, 1);
    d.store(1, STATUS, 1, NEXT | WRITE, 0);
    d.make_available(0);
    // A descriptor pointing to itself, only writable: no header.
    d.store(2, STATUS, 1, NEXT | WRITE, 2);
    d.make_available(2);
    // Next index past the table.
    d.store(3, HDR, 16, NEXT, 200);
    d.make_available(3);
    let run = d.run(&mut p);
    assert_eq!(run.processed, 3);
    assert_eq!(d.used_idx(), 3);
    assert_eq!(d.used(0), (0, 1));
    assert_eq!(d.used(1), (2, 1));
    assert_eq!(d.used(2), (3, 0)); // the chain ended after the header: no status
    assert_eq!(status_at(&mem, STATUS), IOERR);

    // An indirect table of 300 descriptors: more than MAX_DESCRIPTORS.
    let n = MAX_DESCRIPTORS as u32 + 44;
    for i in 0..n {
        let (addr, len, flags) = match i {
            0 => (HDR, 16, 0),
            i if i == n - 1 => (STATUS, 1, WRITE),
            _ => (DATA, 512, WRITE),
        };
        let flags = if i == n - 1 { flags } else { flags | NEXT };
        let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, (i + 1) as u16));
        mem.write_obj(desc, GuestAddress(INDIRECT_TABLE + 16 * u64::from(i)))
            .unwrap();
    }
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    mem.write_obj(NO_STATUS, GuestAddress(STATUS)).unwrap();
    d.store(4, INDIRECT_TABLE, n * 16, INDIRECT, 0);
    d.make_available(4);
    d.run(&mut p);
    assert_eq!(d.used(3), (4, 1));
    assert_eq!(status_at(&mem, STATUS), IOERR);

    // The same table with MAX_DESCRIPTORS entries is served.
    let n = MAX_DESCRIPTORS as u32;
    let desc = RawDescriptor::from(SplitDescriptor::new(STATUS, 1, WRITE, 0));
    mem.write_obj(desc, GuestAddress(INDIRECT_TABLE + 16 * u64::from(n - 1)))
        .unwrap();
    mem.write_obj(NO_STATUS, GuestAddress(STATUS)).unwrap();
    d.store(5, INDIRECT_TABLE, n * 16, INDIRECT, 0);
    d.make_available(5);
    d.run(&mut p);
    let want = (n - 2) * 512 + 1;
    assert_eq!(d.used(4), (5, want));
    assert_eq!(status_at(&mem, STATUS), OK);

    // An indirect table of bad length: the chain is empty.
    d.store(6, INDIRECT_TABLE, 17, INDIRECT, 0);
    d.make_available(6);
    // An indirect descriptor inside an indirect table (not allowed): ends the chain.
    mem.write_obj(
        RawDescriptor::from(SplitDescriptor::new(INDIRECT_TABLE, 32, INDIRECT, 0)),
        GuestAddress(INDIRECT_TABLE + 0x1000),
    )
    .unwrap();
    d.store(7, INDIRECT_TABLE + 0x1000, 16, INDIRECT, 0);
    d.make_available(7);
    let run = d.run(&mut p);
    assert_eq!(run.processed, 2);
    assert_eq!(d.used(5), (6, 0));
    assert_eq!(d.used(6), (7, 0));
}

#[test]
fn bad_ring_entries() {
    let env = Env::new();
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    // A head index past the queue: taken, nothing to give back, no panic.
    d.make_available(QSIZE + 5);
    d.make_available(u16::MAX);
    let run = d.run(&mut p);
    assert_eq!(run.processed, 2);
    assert_eq!(d.used_idx(), 0);
    assert_eq!(dev.stats().snapshot().dropped_chains, 2);

    // Then a valid request still works.
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        submit(&mut d, &mut p, &[(HDR, 16, 0), (STATUS, 1, WRITE)]),
        (OK, 1)
    );

    // The available index far ahead of the queue: an error, not a hang.
    let idx = d.avail_idx();
    d.set_avail_idx(idx.wrapping_add(QSIZE + 1));
    assert!(p.process_queue(&mut d.queue, &mem, 256).is_err());
}

#[test]
fn budget_bounds_one_call() {
    let env = Env::new();
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    for _ in 0..10 {
        d.add(&[(HDR, 16, 0), (STATUS, 1, WRITE)]);
    }
    let run = p.process_queue(&mut d.queue, &mem, 4).unwrap();
    assert_eq!((run.processed, run.more), (4, true));
    let run = p.process_queue(&mut d.queue, &mem, 4).unwrap();
    assert_eq!((run.processed, run.more), (4, true));
    let run = p.process_queue(&mut d.queue, &mem, 4).unwrap();
    assert_eq!((run.processed, run.more), (2, false));
    assert_eq!(d.used_idx(), 10);
}

#[test]
fn discard_and_write_zeroes() {
    let env = Env::new();
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    let seg = |sector: u64, n: u32, flags: u32| {
        let mut s = [0u8; 16];
        s[0..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&n.to_le_bytes());
        s[12..16].copy_from_slice(&flags.to_le_bytes());
        s
    };

    // Two segments; with and without unmap.
    assert_eq!(
        submit_segs(
            &mut d,
            &mut p,
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[seg(2, 3, 0), seg(20, 8, 1)]
        ),
        (OK, 1)
    );
    assert_eq!(env.file_bytes(2 * 512, 3 * 512), vec![0; 3 * 512]);
    assert_eq!(env.file_bytes(20 * 512, 8 * 512), vec![0; 8 * 512]);
    assert_eq!(
        env.file_bytes(5 * 512, 512),
        (5 * 512..6 * 512).map(pattern).collect::<Vec<_>>()
    );

    // Discard: the data may go; the status is OK.
    assert_eq!(
        submit_segs(&mut d, &mut p, VIRTIO_BLK_T_DISCARD, &[seg(40, 8, 0)]),
        (OK, 1)
    );
    let len = fs::metadata(&env.path).unwrap().len();
    assert_eq!(len, IMAGE_SECTORS * 512, "discard changed the size");

    // UNSUPP: unmap on discard, unknown flags.
    assert_eq!(
        submit_segs(&mut d, &mut p, VIRTIO_BLK_T_DISCARD, &[seg(0, 1, 1)]).0,
        UNSUPP
    );
    assert_eq!(
        submit_segs(&mut d, &mut p, VIRTIO_BLK_T_WRITE_ZEROES, &[seg(0, 1, 2)]).0,
        UNSUPP
    );
    // IOERR: past the end, too large a segment, too many segments, empty list, ragged list.
    let before = fs::read(&env.path).unwrap();
    assert_eq!(
        submit_segs(
            &mut d,
            &mut p,
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[seg(IMAGE_SECTORS - 1, 2, 0)]
        )
        .0,
        IOERR
    );
    assert_eq!(
        submit_segs(
            &mut d,
            &mut p,
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[seg(u64::MAX, 1, 0)]
        )
        .0,
        IOERR
    );
    assert_eq!(
        submit_segs(
            &mut d,
            &mut p,
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[seg(0, MAX_WRITE_ZEROES_SECTORS + 1, 0)]
        )
        .0,
        IOERR
    );
    let many = vec![seg(0, 1, 0); MAX_WRITE_ZEROES_SEG as usize + 1];
    assert_eq!(
        submit_segs(&mut d, &mut p, VIRTIO_BLK_T_WRITE_ZEROES, &many).0,
        IOERR
    );
    // A valid segment followed by an invalid one: nothing is zeroed.
    assert_eq!(
        submit_segs(
            &mut d,
            &mut p,
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[seg(0, 1, 0), seg(IMAGE_SECTORS, 1, 0)]
        )
        .0,
        IOERR
    );
    header(&mem, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert_eq!(
        submit(&mut d, &mut p, &[(HDR, 16, 0), (STATUS, 1, WRITE)]).0,
        IOERR
    );
    assert_eq!(
        submit(
            &mut d,
            &mut p,
            &[(HDR, 16, 0), (DATA, 15, 0), (STATUS, 1, WRITE)]
        )
        .0,
        IOERR
    );
    assert_eq!(fs::read(&env.path).unwrap(), before);

    // Not negotiated: UNSUPP.
    drop(p);
    drop(dev);
    let mut dev = VirtioBlk::new(env.cfg()).unwrap();
    dev.set_acked_features(1 << VIRTIO_F_VERSION_1);
    let mut p = dev.request_processor();
    assert_eq!(
        run_one(&mem, &mut d, &mut p, VIRTIO_BLK_T_DISCARD, &seg(0, 1, 0)),
        UNSUPP
    );
    assert_eq!(
        run_one(
            &mem,
            &mut d,
            &mut p,
            VIRTIO_BLK_T_WRITE_ZEROES,
            &seg(0, 1, 0)
        ),
        UNSUPP
    );
}

fn submit_segs(d: &mut Driver, p: &mut RequestProcessor, t: u32, segs: &[[u8; 16]]) -> (u8, u32) {
    header(d.mem, HDR, t, 0);
    let bytes: Vec<u8> = segs.concat();
    d.mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    submit(
        d,
        p,
        &[
            (HDR, 16, 0),
            (DATA, bytes.len() as u32, 0),
            (STATUS, 1, WRITE),
        ],
    )
}

fn run_one(
    mem: &GuestMemoryMmap,
    d: &mut Driver,
    p: &mut RequestProcessor,
    t: u32,
    seg: &[u8; 16],
) -> u8 {
    header(mem, HDR, t, 0);
    mem.write_slice(seg, GuestAddress(DATA)).unwrap();
    submit(d, p, &[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, WRITE)]).0
}

#[test]
fn direct_io_with_unaligned_buffers() {
    let env = Env::with_len(256 * 512);
    let Some(mut dev) = env.direct_device(DEFAULT_IO_THREADS) else {
        return;
    };
    dev.set_acked_features(dev.device_features());
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    let check = |dev: &VirtioBlk, d: &mut Driver, seed: u8, base: u64| {
        let mut p = dev.request_processor();
        // (buffer address, sector): aligned, unaligned by 1, by 8, by 512 but not 4096.
        for (i, addr) in [DATA, DATA + 1, DATA + 0x10008, DATA + 0x20200]
            .into_iter()
            .enumerate()
        {
            let sector = base + 16 * i as u64;
            let data: Vec<u8> = (0..8192u32).map(|j| (j as u8) ^ seed ^ (i as u8)).collect();
            mem.write_slice(&data, GuestAddress(addr)).unwrap();
            header(&mem, HDR, VIRTIO_BLK_T_OUT, sector);
            let st = submit(
                d,
                &mut p,
                &[
                    (HDR, 16, 0),
                    (addr, 4096, 0),
                    (addr + 4096, 4096, 0),
                    (STATUS, 1, WRITE),
                ],
            );
            assert_eq!(st, (OK, 1));
            assert_eq!(env.file_bytes(sector * 512, 8192), data);

            mem.write_slice(&vec![0; 8192], GuestAddress(addr)).unwrap();
            header(&mem, HDR, VIRTIO_BLK_T_IN, sector);
            // Uneven split of the buffer: 1000 + 7192 bytes.
            let st = submit(
                d,
                &mut p,
                &[
                    (HDR, 16, 0),
                    (addr, 1000, WRITE),
                    (addr + 1000, 7192, WRITE),
                    (STATUS, 1, WRITE),
                ],
            );
            assert_eq!(st, (OK, 8193));
            let mut got = vec![0u8; 8192];
            mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
            assert_eq!(got, data);
        }
        // Flush works under O_DIRECT.
        header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(submit(d, &mut p, &[(HDR, 16, 0), (STATUS, 1, WRITE)]).0, OK);
    };
    check(&dev, &mut d, 0x3c, 1);

    // Pretend the file system needs 4 KiB alignment: 512-byte aligned requests then go through
    // the buffered descriptor, 4 KiB aligned ones stay direct (bounced if the memory is not).
    let disk = Arc::get_mut(&mut dev.disk).unwrap();
    disk.force_dio_align_for_test(4096).unwrap();
    assert_eq!(disk.logical_block_size(), 4096);
    check(&dev, &mut d, 0xc3, 8);
    check(&dev, &mut d, 0x5a, 1);
}

// ---------------------------------------------------------------------------------------------
// Notifications

#[test]
fn event_idx_suppresses_interrupts() {
    let env = Env::new();
    let dev = env.device(false);
    let mut p = dev.request_processor();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    d.queue.set_event_idx(true);
    let used_event = GuestAddress(AVAIL + 4 + 2 * u64::from(QSIZE));
    let avail_event = GuestAddress(USED + 4 + 8 * u64::from(QSIZE));
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let flush = [(HDR, 16, 0), (STATUS, 1, WRITE)];

    // used_event = 0: interrupt when used idx goes 0 → 1.
    mem.write_obj(0u16, used_event).unwrap();
    d.add(&flush);
    assert!(d.run(&mut p).needs_interrupt);
    // The device asks to be notified at the next available index.
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 1);
    // used_event still 0: 1 → 2 does not cross it.
    d.add(&flush);
    assert!(!d.run(&mut p).needs_interrupt);
    // The driver asks for an interrupt after the 4th completion: two more, then one.
    mem.write_obj(3u16, used_event).unwrap();
    d.add(&flush);
    assert!(!d.run(&mut p).needs_interrupt);
    d.add(&flush);
    assert!(d.run(&mut p).needs_interrupt);
    // Several completions in one run crossing used_event: one interrupt.
    mem.write_obj(5u16, used_event).unwrap();
    for _ in 0..3 {
        d.add(&flush);
    }
    let run = d.run(&mut p);
    assert_eq!(run.processed, 3);
    assert!(run.needs_interrupt);
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 7);
    // A spurious wake-up (nothing available) never interrupts.
    assert!(!d.run(&mut p).needs_interrupt);

    // Without EVENT_IDX every run that completes something interrupts; an empty one does not.
    d.queue.set_event_idx(false);
    d.add(&flush);
    assert!(d.run(&mut p).needs_interrupt);
    assert!(!d.run(&mut p).needs_interrupt);
}

// ---------------------------------------------------------------------------------------------
// Worker thread

#[derive(Default)]
struct TestInterrupt {
    count: Mutex<Vec<VirtioInterruptType>>,
    cv: Condvar,
}

impl VirtioInterrupt for TestInterrupt {
    fn trigger(&self, t: VirtioInterruptType) -> std::io::Result<()> {
        self.count.lock().unwrap().push(t);
        self.cv.notify_all();
        Ok(())
    }
}

impl TestInterrupt {
    fn wait_for(&self, n: usize) -> Vec<VirtioInterruptType> {
        let g = self.count.lock().unwrap();
        let (g, timeout) = self
            .cv
            .wait_timeout_while(g, Duration::from_secs(10), |v| v.len() < n)
            .unwrap();
        assert!(!timeout.timed_out(), "no interrupt");
        g.clone()
    }
}

/// Activates `dev` with `queue` as its request queue, notified on `notify`: what the transport
/// does when the driver sets DRIVER_OK.
fn activate_request_queue(
    dev: &mut VirtioBlk,
    mem: crate::virtio::GuestMemoryAtomic,
    irq: &Arc<TestInterrupt>,
    queue: Queue,
    notify: &EventFd,
) {
    dev.activate(
        mem,
        irq.clone(),
        vec![QueueActivation {
            index: 0,
            queue,
            notify: notify.try_clone().unwrap(),
        }],
    )
    .unwrap();
}

#[test]
fn worker_activate_notify_complete_reset_reactivate() {
    crate::worker_hook::recorder::install();
    let env = Env::new();
    let mut dev = env.device(false);
    let mem = guest_memory();
    let atomic = VmGuestMemoryAtomic::from(mem.clone());
    let irq = Arc::new(TestInterrupt::default());

    for round in 0..2u64 {
        let mut d = Driver::new(&mem, RINGS);
        // Fresh rings for each activation (the driver re-initialises after reset).
        mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
        mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let queue = std::mem::replace(&mut d.queue, Queue::new(QSIZE).unwrap());
        dev.set_acked_features(dev.device_features());
        activate_request_queue(&mut dev, atomic.clone(), &irq, queue, &notify);
        assert!(dev.is_active());

        let data = vec![0x40 + round as u8; 1024];
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        header(&mem, HDR, VIRTIO_BLK_T_OUT, 4);
        mem.write_obj(NO_STATUS, GuestAddress(STATUS)).unwrap();
        let before = irq.count.lock().unwrap().len();
        d.add(&[(HDR, 16, 0), (DATA, 1024, 0), (STATUS, 1, WRITE)]);
        notify.write(1).unwrap();
        let ints = irq.wait_for(before + 1);
        assert_eq!(ints.last(), Some(&VirtioInterruptType::Queue(0)));
        assert_eq!(d.used_idx(), 1);
        assert_eq!(d.used(0).1, 1);
        assert_eq!(status_at(&mem, STATUS), OK);
        assert_eq!(env.file_bytes(4 * 512, 1024), data);
        // The worker and the I/O threads ran the VMM's start hook (kvmrun's seccomp filter) on
        // their own threads.
        assert!(crate::worker_hook::recorder::saw("virtio-blk"));
        assert!(crate::worker_hook::recorder::saw(pool::THREAD_NAME));

        dev.reset();
        assert!(!dev.is_active());
        assert_eq!(dev.acked_features(), 0);
    }
    let s = dev.stats().snapshot();
    assert_eq!((s.write_requests, s.interrupts), (2, 2));

    // Activation errors: wrong number of queues, queue not ready.
    let no_queues = dev.activate(atomic.clone(), irq.clone(), vec![]);
    assert!(matches!(no_queues, Err(ActivateError::BadQueue(_))));
    let not_ready = dev.activate(
        atomic.clone(),
        irq.clone(),
        vec![QueueActivation {
            index: 0,
            queue: Queue::new(QSIZE).unwrap(),
            notify: EventFd::new(EFD_NONBLOCK).unwrap(),
        }],
    );
    assert!(matches!(not_ready, Err(ActivateError::BadQueue(_))));
    assert!(!dev.is_active());
}

#[test]
fn worker_serves_requests_queued_before_activation() {
    let env = Env::new();
    let mut dev = env.device(false);
    let mem = guest_memory();
    let atomic = VmGuestMemoryAtomic::from(mem.clone());
    let irq = Arc::new(TestInterrupt::default());
    let d = Driver::new(&mem, RINGS);
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let queue = RINGS.ready_queue();
    // Requests queued before activation: the pending notification is served on start.
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let mut d = d;
    for _ in 0..QSIZE / 2 {
        d.add(&[(HDR, 16, 0), (STATUS, 1, WRITE)]);
    }
    notify.write(1).unwrap();
    activate_request_queue(&mut dev, atomic, &irq, queue, &notify);
    irq.wait_for(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.used_idx() != QSIZE / 2 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(dev); // joins the worker
}

#[test]
fn open_options_do_not_truncate_or_create() {
    let env = Env::new();
    let before = fs::read(&env.path).unwrap();
    drop(VirtioBlk::new(env.cfg()).unwrap());
    assert_eq!(fs::read(&env.path).unwrap(), before);
    // Opening never creates files.
    let p = env.dir.path().join("new.img");
    assert!(VirtioBlk::new(DiskConfig {
        path: p.clone(),
        ..env.cfg()
    })
    .is_err());
    assert!(!p.exists());
}

/// Takes an OFD lock on one byte, the way QEMU locks its images (permission bytes at 100+,
/// "shared" bytes at 200+).
fn qemu_style_lock(path: &Path, write: bool, byte: i64) -> File {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: plain old data; zero is valid.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte;
    lock.l_len = 1;
    // SAFETY: F_OFD_SETLK reads a struct flock from the pointer.
    let ret = unsafe {
        libc::fcntl(
            std::os::unix::io::AsRawFd::as_raw_fd(&f),
            libc::F_OFD_SETLK,
            &lock,
        )
    };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
    f
}

#[test]
fn image_locked_by_qemu_is_refused() {
    let env = Env::new();
    // A QEMU holding shared (read) locks on its permission bytes: no read-write attach.
    let qemu = qemu_style_lock(&env.path, false, 100);
    let e = VirtioBlk::new(env.cfg()).unwrap_err();
    assert!(matches!(e, BlockError::InUse { .. }), "{e}");
    // Read-only attach is compatible with shared locks.
    drop(
        VirtioBlk::new(DiskConfig {
            readonly: true,
            ..env.cfg()
        })
        .unwrap(),
    );
    drop(qemu);
    // Exclusive byte locks (QEMU unsharing a permission) also block a read-only attach.
    let qemu = qemu_style_lock(&env.path, true, 201);
    let e = VirtioBlk::new(DiskConfig {
        readonly: true,
        ..env.cfg()
    })
    .unwrap_err();
    assert!(matches!(e, BlockError::InUse { .. }), "{e}");
    drop(qemu);
    // And while kvmrun holds the image, QEMU's lock attempt fails.
    let dev = VirtioBlk::new(env.cfg()).unwrap();
    let f = fs::OpenOptions::new().read(true).open(&env.path).unwrap();
    // SAFETY: plain old data; zero is valid.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_RDLCK as libc::c_short;
    lock.l_start = 100;
    lock.l_len = 1;
    // SAFETY: as above.
    let ret = unsafe {
        libc::fcntl(
            std::os::unix::io::AsRawFd::as_raw_fd(&f),
            libc::F_OFD_SETLK,
            &lock,
        )
    };
    assert_eq!(ret, -1);
    drop(dev);
}

#[test]
fn permission_error_message() {
    // Root cannot provoke EACCES on a file; check the mapping and the advice directly.
    let e = super::backend::path_error_for_test(Path::new("/x/disk.img"), false);
    assert!(matches!(
        e,
        BlockError::PermissionDenied {
            readonly: false,
            ..
        }
    ));
    let msg = e.to_string();
    assert!(
        msg.contains("/x/disk.img") && msg.contains("readonly=on"),
        "{msg}"
    );
    let e = super::backend::path_error_for_test(Path::new("/x/disk.img"), true);
    assert!(!e.to_string().contains("readonly=on"), "{e}");
}
