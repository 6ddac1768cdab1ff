//! virtio-blk: a block device backed by a raw disk image (virtio 1.2 §5.2).
//!
//! - [`VirtioBlk`] is the device: feature bits (§5.2.3), configuration space (§5.2.4) and the
//!   [`VirtioDevice`] life cycle. `activate` starts a worker thread named `virtio-blk` that
//!   serves the request queue and a pool of I/O threads named `virtio-blk-io` that do the file
//!   I/O, so that several requests are in flight at once (the worker serves small reads the
//!   host page cache already holds itself); `reset` stops and joins them all.
//! - `request` parses, checks and completes one request (§5.2.6), `job` is the file I/O of a
//!   checked request, `backend` does that I/O on the image ([`DiskImage`]), `pool` runs jobs on
//!   the I/O threads, `worker` runs the queue ([`RequestProcessor`]) and the worker thread.
//!
//! One request queue (VIRTIO_BLK_F_MQ is not offered) of up to [`QUEUE_SIZE`] entries.
//! Writeback caching is not configurable (no VIRTIO_BLK_F_CONFIG_WCE): the device offers
//! VIRTIO_BLK_F_FLUSH, so drivers treat it as a writeback cache and send FLUSH, which is
//! `fdatasync` on the image: what the guest flushed survives a `kill -9` of the VMM.

mod backend;
#[doc(hidden)]
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
mod job;
mod pool;
mod request;
#[cfg(test)]
mod tests;
mod worker;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;

pub use backend::DiskImage;
pub use request::Completion;
pub use worker::{QueueRun, RequestProcessor};

use super::device_config;
use super::features::FeatureSet;
use super::{ActivateError, GuestMemoryAtomic, QueueActivation, VirtioDevice, VirtioInterrupt};
use crate::log_once::LogOnce;

/// Bytes per sector: capacity and request sectors are always in 512-byte units (§5.2.4),
/// whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// Maximum (and default) size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// `seg_max`: data segments per request. With a queue of [`QUEUE_SIZE`] descriptors, a request
/// also needs one for the header and one for the status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// `size_max`: bytes per segment.
pub const SIZE_MAX: u32 = 64 * 1024;
/// Largest data transfer of one request: the most a driver that honours `seg_max` and
/// `size_max` can build (about 16 MiB). Larger requests get IOERR.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Most descriptors a request chain may have (data segments + header + status).
pub const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Length of the GET_ID answer (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;
/// `max_discard_sectors` (2 GiB per segment: a hole punch is cheap).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// `max_discard_seg`.
pub const MAX_DISCARD_SEG: u32 = 16;
/// `max_write_zeroes_sectors` (32 MiB per segment: without fallocate support the zeroes are
/// written, and one request must not stall the queue for long).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 16;
/// `max_write_zeroes_seg`.
pub const MAX_WRITE_ZEROES_SEG: u32 = 16;
/// `discard_sector_alignment`, in sectors (4 KiB: a file system block).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// I/O threads per disk unless `--disk ...,iothreads=N` says otherwise. A thread blocked in
/// `preadv` is one request in flight on the host, so this is the guest queue depth that still
/// turns into parallel host I/O: 16, the depth of the QD16 disk benchmark (fio iodepth=16).
/// On the development host's virtual disk, 4 KiB O_DIRECT random reads (fio, psync) scaled
/// from 43k IOPS with 4 threads to 53k with 8 and 71k with 16. An idle thread only costs its
/// stack (plus a 1 MiB bounce buffer once it has bounced an unaligned O_DIRECT transfer).
pub const DEFAULT_IO_THREADS: usize = 16;
/// Most I/O threads per disk (QEMU's default thread-pool size).
pub const MAX_IO_THREADS: usize = 64;
/// Length of the configuration space exposed (struct virtio_blk_config up to and including the
/// secure-erase fields; the zoned fields exist only with VIRTIO_BLK_F_ZONED).
pub const CONFIG_SPACE_LEN: usize = 72;

/// How a disk image is attached
/// (`--disk path=FILE[,readonly=on][,direct=on][,serial=ID][,iothreads=N]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// Open read-only and offer VIRTIO_BLK_F_RO; writes get IOERR.
    pub readonly: bool,
    /// Open with `O_DIRECT` (bypass the host page cache).
    pub direct: bool,
    /// GET_ID answer, at most 20 bytes (zero-padded).
    pub serial: Option<String>,
    /// I/O threads (1 to [`MAX_IO_THREADS`]; usually [`DEFAULT_IO_THREADS`]).
    pub io_threads: usize,
}

/// Errors setting up a disk. Each names the image and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk image {path}: no such file (check the path given with --disk path=...)")]
    NotFound { path: PathBuf },
    #[error(
        "disk image {path}: permission denied (make it {} by this user{})",
        if *readonly { "readable" } else { "readable and writable" },
        if *readonly { "" } else { ", or attach it with readonly=on" }
    )]
    PermissionDenied { path: PathBuf, readonly: bool },
    #[error(
        "disk image {path} is in use by another process that holds a lock on it (stop the other \
         VM, or attach a copy of the image; a read-only image can be shared with readonly=on \
         everywhere)"
    )]
    InUse { path: PathBuf },
    #[error(
        "disk image {path} is not a regular file or block device (give the path of a raw image)"
    )]
    NotAFileOrBlockDevice { path: PathBuf },
    #[error(
        "disk image {path}: size {size} bytes is not a multiple of 512 (resize it, e.g. \
         `truncate -s {} {path}`)",
        size.div_ceil(SECTOR_SIZE) * SECTOR_SIZE
    )]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error(
        "disk image {path}: the file system does not support O_DIRECT (drop direct=on, or put \
         the image on a file system that supports it, not tmpfs)"
    )]
    DirectUnsupported { path: PathBuf },
    #[error("disk image {path} is on a read-only file system (attach it with readonly=on)")]
    ReadOnlyFilesystem { path: PathBuf },
    #[error("disk serial {serial:?} is {len} bytes long; virtio-blk serials are at most 20 bytes")]
    SerialTooLong { serial: String, len: usize },
    #[error(
        "disk image {path}: {threads} I/O threads asked for; give iothreads=1 to {MAX_IO_THREADS}"
    )]
    IoThreads { path: PathBuf, threads: usize },
    #[error("disk image {path}: cannot {op} it: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Counters of a block device, updated by its worker thread.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// VIRTIO_BLK_T_IN requests (valid or not).
    pub read_requests: AtomicU64,
    /// VIRTIO_BLK_T_OUT requests (valid or not).
    pub write_requests: AtomicU64,
    /// VIRTIO_BLK_T_FLUSH requests.
    pub flush_requests: AtomicU64,
    /// Every other request type (GET_ID, DISCARD, WRITE_ZEROES, unknown).
    pub other_requests: AtomicU64,
    /// Bytes read from the image by successful IN requests.
    pub read_bytes: AtomicU64,
    /// IN requests the worker served from the host page cache itself (RWF_NOWAIT), without an
    /// I/O thread.
    pub cached_reads: AtomicU64,
    /// Bytes written to the image by successful OUT requests.
    pub write_bytes: AtomicU64,
    /// Requests answered IOERR because the guest broke the protocol.
    pub invalid_requests: AtomicU64,
    /// Requests answered IOERR because the host I/O failed.
    pub io_errors: AtomicU64,
    /// Requests answered UNSUPP.
    pub unsupported: AtomicU64,
    /// Chains completed without a status (no device-writable byte in guest memory) or not at
    /// all (head index out of range).
    pub dropped_chains: AtomicU64,
    /// Queue notifications (wake-ups) handled.
    pub notifications: AtomicU64,
    /// Used-buffer interrupts sent.
    pub interrupts: AtomicU64,
}

/// A point-in-time copy of [`BlockStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatsSnapshot {
    pub read_requests: u64,
    pub write_requests: u64,
    pub flush_requests: u64,
    pub other_requests: u64,
    pub read_bytes: u64,
    pub cached_reads: u64,
    pub write_bytes: u64,
    pub invalid_requests: u64,
    pub io_errors: u64,
    pub unsupported: u64,
    pub dropped_chains: u64,
    pub notifications: u64,
    pub interrupts: u64,
}

impl BlockStats {
    pub fn snapshot(&self) -> BlockStatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockStatsSnapshot {
            read_requests: l(&self.read_requests),
            write_requests: l(&self.write_requests),
            flush_requests: l(&self.flush_requests),
            other_requests: l(&self.other_requests),
            read_bytes: l(&self.read_bytes),
            cached_reads: l(&self.cached_reads),
            write_bytes: l(&self.write_bytes),
            invalid_requests: l(&self.invalid_requests),
            io_errors: l(&self.io_errors),
            unsupported: l(&self.unsupported),
            dropped_chains: l(&self.dropped_chains),
            notifications: l(&self.notifications),
            interrupts: l(&self.interrupts),
        }
    }
}

/// The virtio-blk device.
pub struct VirtioBlk {
    disk: Arc<DiskImage>,
    serial: [u8; ID_BYTES],
    features: FeatureSet,
    config: [u8; CONFIG_SPACE_LEN],
    stats: Arc<BlockStats>,
    io_error_log: Arc<LogOnce>,
    io_threads: usize,
    worker: Option<worker::WorkerHandle>,
    /// Holds jobs back in the I/O threads (tests of requests in flight).
    #[cfg(test)]
    io_gate: Option<pool::Gate>,
}

impl std::fmt::Debug for VirtioBlk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlk")
            .field("disk", &self.disk)
            .field(
                "acked_features",
                &format_args!("{:#x}", self.features.acked()),
            )
            .field("active", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds struct virtio_blk_config (§5.2.4), little-endian.
fn build_config(disk: &DiskImage, features: u64) -> [u8; CONFIG_SPACE_LEN] {
    let mut c = [0u8; CONFIG_SPACE_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &disk.sectors().to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
                                     // 16..20: geometry (VIRTIO_BLK_F_GEOMETRY not offered).
    put(20, &disk.logical_block_size().to_le_bytes()); // blk_size
                                                       // 24..32: topology (not offered); 32: writeback (no CONFIG_WCE); 34: num_queues (no MQ).
    if features & (1 << VIRTIO_BLK_F_DISCARD) != 0 {
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEG.to_le_bytes());
        put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    }
    if features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0 {
        put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
        put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
        put(56, &[1]); // write_zeroes_may_unmap
    }
    // 60..72: secure erase (not offered).
    c
}

impl VirtioBlk {
    /// Opens `cfg.path` (see [`DiskImage::open`]) and builds the device.
    pub fn new(cfg: DiskConfig) -> Result<VirtioBlk, BlockError> {
        let mut serial = [0u8; ID_BYTES];
        if let Some(s) = &cfg.serial {
            if s.len() > ID_BYTES {
                return Err(BlockError::SerialTooLong {
                    serial: s.clone(),
                    len: s.len(),
                });
            }
            serial[..s.len()].copy_from_slice(s.as_bytes());
        }
        if !(1..=MAX_IO_THREADS).contains(&cfg.io_threads) {
            return Err(BlockError::IoThreads {
                path: cfg.path,
                threads: cfg.io_threads,
            });
        }
        let disk = DiskImage::open(&cfg.path, cfg.readonly, cfg.direct)?;
        log::info!(
            "virtio-blk: {} ({} sectors{}{})",
            disk.path().display(),
            disk.sectors(),
            if disk.readonly() { ", read-only" } else { "" },
            if disk.direct() { ", O_DIRECT" } else { "" }
        );
        Ok(Self::with_disk(disk, serial, cfg.io_threads))
    }

    fn with_disk(disk: DiskImage, serial: [u8; ID_BYTES], io_threads: usize) -> VirtioBlk {
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if disk.readonly() {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let config = build_config(&disk, features);
        VirtioBlk {
            disk: Arc::new(disk),
            serial,
            features: FeatureSet::new(features),
            config,
            stats: Arc::new(BlockStats::default()),
            io_error_log: Arc::new(LogOnce::new("virtio-blk I/O errors")),
            io_threads,
            worker: None,
            #[cfg(test)]
            io_gate: None,
        }
    }

    /// The request counters (shared with the worker; live values).
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    /// The disk image.
    pub fn disk(&self) -> &DiskImage {
        &self.disk
    }

    /// A shared handle on the disk image (e.g. to flush it when the VM ends).
    pub fn disk_image(&self) -> Arc<DiskImage> {
        self.disk.clone()
    }

    /// Features the driver acknowledged (only offered ones are kept).
    pub fn acked_features(&self) -> u64 {
        self.features.acked()
    }

    /// True while the worker thread runs.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    /// A processor for this device's requests that does their I/O inline, in
    /// [`RequestProcessor::process_queue`]: independent of any transport or thread (tests,
    /// fuzzing and benchmarks of the queue logic).
    pub fn request_processor(&self) -> RequestProcessor {
        self.processor(pool::Executor::inline(self.disk.clone()))
    }

    /// A processor for this device's requests whose I/O runs on `threads` new I/O threads
    /// (what the worker uses, with the configured count); dropping it joins them. `queue_size`
    /// bounds the requests in flight.
    pub fn threaded_request_processor(
        &self,
        threads: usize,
        queue_size: u16,
    ) -> io::Result<RequestProcessor> {
        let pool = pool::IoPool::start(
            self.disk.clone(),
            threads,
            usize::from(queue_size),
            #[cfg(test)]
            self.io_gate.clone(),
        )?;
        Ok(self.processor(pool::Executor::Pool(pool)))
    }

    fn processor(&self, exec: pool::Executor) -> RequestProcessor {
        RequestProcessor::new(
            self.disk.clone(),
            self.serial,
            self.features.acked(),
            self.stats.clone(),
            self.io_error_log.clone(),
            exec,
        )
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }
}

impl VirtioDevice for VirtioBlk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        self.features.avail()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.features.ack(features, "virtio-blk");
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        device_config::read(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Every field is read-only: `writeback` is writable only with VIRTIO_BLK_F_CONFIG_WCE,
        // which is not offered (§5.2.4).
        log::debug!(
            "virtio-blk: ignored config write of {} bytes at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryAtomic,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<QueueActivation>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            log::warn!("virtio-blk: activated while active; restarting the worker");
            self.stop_worker();
        }
        let size = queues.first().map_or(QUEUE_SIZE, |q| q.queue.size());
        let handle = worker::WorkerHandle::start(
            || self.threaded_request_processor(self.io_threads, size),
            mem,
            interrupt,
            queues,
        )?;
        self.worker = Some(handle);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.features.reset();
    }
}

impl Drop for VirtioBlk {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
