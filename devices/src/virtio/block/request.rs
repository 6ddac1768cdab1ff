//! One virtio-blk request: parsing and checking a descriptor chain, and completing it (virtio
//! 1.2 §5.2.6). The file I/O itself is a [`Job`], run by an I/O thread (see `pool`).
//!
//! A request is `struct virtio_blk_req { le32 type; le32 reserved; le64 sector; u8 data[];
//! u8 status; }`: the 16-byte header and (for writes, discard and write-zeroes) the data are
//! device-readable, the data of reads and GET_ID and the final status byte device-writable.
//! Following §2.7.4 ("the device MUST NOT make assumptions about the particular arrangement of
//! descriptors"), the header may share a descriptor with data, and the status is the last byte
//! of the device-writable part, wherever descriptor boundaries fall.
//!
//! The chain is walked with virtio-queue's [`DescriptorChain`] iterator, which bounds it (loops,
//! indices past the table, nested indirect tables and a total length above 4 GiB all end the
//! chain). Its `Reader`/`Writer` only copy through host buffers, so this module turns the
//! descriptors into checked guest-memory ranges ([`GuestBuf`]s) itself; the job hands them to
//! `preadv`/`pwritev` as [`VolatileSlice`]s.
//!
//! Everything here is guest-controlled. Each malformed request is completed with
//! VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP when a status byte can be written, and with a used
//! length of 0 when not (no device-writable byte inside guest memory): never a panic, never an
//! allocation that is not bounded by [`MAX_DESCRIPTORS`], and no job (no file access) before
//! every check has passed.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::backend::{copy_from_slices, copy_to_slices, DiskImage};
use super::job::{GuestBuf, Job, Op, Segment};
use super::{
    BlockStats, ID_BYTES, MAX_DESCRIPTORS, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_REQUEST_BYTES,
    MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG, SECTOR_SIZE,
};
use crate::log_once::LogOnce;
use crate::virtio::GuestMemoryMmap;

/// Size of the request header (type, reserved, sector).
pub const HEADER_LEN: u64 = 16;
/// Size of one discard/write-zeroes segment (struct virtio_blk_discard_write_zeroes).
const SEGMENT_LEN: u64 = 16;

type Slice<'m> = VolatileSlice<'m, ()>;

/// What the device needs to check and complete requests.
pub(crate) struct RequestContext {
    pub disk: Arc<DiskImage>,
    /// The GET_ID answer: the serial, zero-padded.
    pub serial: [u8; ID_BYTES],
    /// Features the driver acknowledged.
    pub acked_features: u64,
    pub stats: Arc<BlockStats>,
    /// Rate limit for host I/O error messages (keyed by errno).
    pub io_error_log: Arc<LogOnce>,
}

/// How a chain was completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Head descriptor index, for the used ring.
    pub head: u16,
    /// Bytes written to device-writable buffers, including the status byte (§2.7.8).
    pub used_len: u32,
    /// The status written, or `None` when the chain had no writable byte to put it in.
    pub status: Option<u8>,
}

/// Why a request failed; decides the status byte and the stats counter.
#[derive(Debug)]
enum Failure {
    /// The guest broke the protocol (bad chain, out of range, wrong direction, ...).
    Invalid(&'static str),
    /// The request type (or a flag) is not supported.
    Unsupported,
    /// The host I/O failed.
    Io(io::Error),
}

/// The device-readable and device-writable buffers of a chain, in guest memory.
struct Buffers {
    readable: Vec<GuestBuf>,
    /// Device-writable bytes other than the status byte.
    writable: Vec<GuestBuf>,
}

/// Splits a chain into its buffers and the address of its status byte.
///
/// The status byte is found even when the rest of the chain is invalid, so that most malformed
/// requests can still be completed with IOERR.
fn parse_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> (Option<GuestAddress>, Result<Buffers, Failure>) {
    let mut descs = Vec::new();
    let mut count = 0usize;
    // Index and descriptor of the last non-empty device-writable descriptor: its last byte is
    // the status byte.
    let mut last_writable = None;
    let mut seen_writable = false;
    let mut readable_after_writable = false;
    // The iterator ends on its own at a loop or an index past the table (virtio-queue bounds it
    // by the table size), so counting past MAX_DESCRIPTORS costs time, not memory.
    for desc in chain {
        if desc.is_write_only() {
            seen_writable = true;
            if desc.len() > 0 {
                last_writable = Some((count, desc));
            }
        } else if seen_writable {
            readable_after_writable = true;
        }
        if count < MAX_DESCRIPTORS {
            descs.push(desc);
        }
        count += 1;
    }

    let status = last_writable.and_then(|(_, d)| {
        let addr = d.addr().checked_add(u64::from(d.len()) - 1)?;
        mem.get_slice(addr, 1).ok().map(|_| addr)
    });

    if count == 0 {
        return (status, Err(Failure::Invalid("empty descriptor chain")));
    }
    if count > MAX_DESCRIPTORS {
        return (status, Err(Failure::Invalid("too many descriptors")));
    }
    if readable_after_writable {
        // §2.7.4.2: the driver MUST place device-writable descriptors after device-readable
        // ones.
        return (
            status,
            Err(Failure::Invalid(
                "device-readable descriptor after a device-writable one",
            )),
        );
    }
    if status.is_none() {
        return (None, Err(Failure::Invalid("no status byte")));
    }

    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for (i, desc) in descs.iter().enumerate() {
        let mut len = desc.len() as usize;
        if Some(i) == last_writable.map(|(idx, _)| idx) {
            len -= 1; // the status byte
        }
        let dst = if desc.is_write_only() {
            &mut writable
        } else {
            &mut readable
        };
        if !collect_bufs(mem, desc.addr(), len, dst) {
            return (status, Err(Failure::Invalid("buffer outside guest memory")));
        }
    }
    (status, Ok(Buffers { readable, writable }))
}

/// Appends the ranges covering `len` bytes at `addr`, one per guest memory region crossed;
/// false if any byte is outside guest memory (or the range wraps around).
fn collect_bufs(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
    out: &mut Vec<GuestBuf>,
) -> bool {
    if len == 0 {
        return true;
    }
    if addr.checked_add(len as u64 - 1).is_none() {
        return false;
    }
    let mut got = 0;
    for slice in mem.get_slices(addr, len) {
        match slice {
            Ok(s) => {
                out.push(GuestBuf {
                    // `got < len`, and `addr + len - 1` does not wrap.
                    addr: addr.unchecked_add(got as u64),
                    len: s.len(),
                });
                got += s.len();
            }
            Err(_) => return false,
        }
    }
    got == len
}

fn total_len(bufs: &[GuestBuf]) -> u64 {
    bufs.iter().map(|b| b.len as u64).sum()
}

/// The ranges covering the bytes of `bufs` after the first `skip`.
fn skip_bytes(bufs: &[GuestBuf], mut skip: u64) -> Vec<GuestBuf> {
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs {
        let len = b.len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        // `skip < len`, so the rest is within the range.
        out.push(GuestBuf {
            addr: b.addr.unchecked_add(skip),
            len: (len - skip) as usize,
        });
        skip = 0;
    }
    out
}

/// The slices of `bufs` (ranges checked by `collect_bufs` on the same memory).
fn slices<'m>(mem: &'m GuestMemoryMmap, bufs: &[GuestBuf]) -> Result<Vec<Slice<'m>>, Failure> {
    bufs.iter()
        .map(|b| mem.get_slice(b.addr, b.len))
        .collect::<Result<_, _>>()
        .map_err(|_| Failure::Invalid("buffer outside guest memory"))
}

/// Byte offset of a `len`-byte transfer at `sector`, if it lies within the disk.
fn checked_range(disk: &DiskImage, sector: u64, len: u64) -> Result<u64, Failure> {
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(Failure::Invalid("sector overflows"))?;
    let end = offset
        .checked_add(len)
        .ok_or(Failure::Invalid("sector + length overflows"))?;
    if end > disk.size_bytes() {
        return Err(Failure::Invalid("request past the end of the disk"));
    }
    Ok(offset)
}

fn check_data_len(len: u64) -> Result<(), Failure> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(Failure::Invalid("data length not a multiple of 512"));
    }
    if len > MAX_REQUEST_BYTES {
        return Err(Failure::Invalid("request larger than seg_max * size_max"));
    }
    Ok(())
}

/// What a checked request needs.
enum Action {
    /// Nothing (more) to do: complete with this many bytes written to guest buffers.
    Complete(u64),
    /// File I/O, done by a [`Job`].
    Io(Op),
}

/// Checks a parsed request and decides what it needs; the requests that need no file access
/// (GET_ID, empty transfers) are answered here.
fn plan(
    ctx: &RequestContext,
    mem: &GuestMemoryMmap,
    req_type: u32,
    sector: u64,
    bufs: Buffers,
) -> Result<Action, Failure> {
    let stats = &ctx.stats;
    let readable_len = total_len(&bufs.readable);
    let writable_len = total_len(&bufs.writable);
    match req_type {
        VIRTIO_BLK_T_IN => {
            stats.read_requests.fetch_add(1, Ordering::Relaxed);
            if readable_len != HEADER_LEN {
                return Err(Failure::Invalid("read with device-readable data buffers"));
            }
            check_data_len(writable_len)?;
            let offset = checked_range(&ctx.disk, sector, writable_len)?;
            if writable_len == 0 {
                return Ok(Action::Complete(0));
            }
            Ok(Action::Io(Op::Read {
                offset,
                bufs: bufs.writable,
            }))
        }
        VIRTIO_BLK_T_OUT => {
            stats.write_requests.fetch_add(1, Ordering::Relaxed);
            // §5.2.6.2: with VIRTIO_BLK_F_RO the device MUST answer IOERR and MUST NOT write.
            if ctx.disk.readonly() {
                return Err(Failure::Invalid("write to a read-only disk"));
            }
            if writable_len != 0 {
                return Err(Failure::Invalid("write with device-writable data buffers"));
            }
            let data_len = readable_len - HEADER_LEN;
            check_data_len(data_len)?;
            let offset = checked_range(&ctx.disk, sector, data_len)?;
            if data_len == 0 {
                return Ok(Action::Complete(0));
            }
            Ok(Action::Io(Op::Write {
                offset,
                bufs: skip_bytes(&bufs.readable, HEADER_LEN),
            }))
        }
        VIRTIO_BLK_T_FLUSH => {
            stats.flush_requests.fetch_add(1, Ordering::Relaxed);
            Ok(Action::Io(Op::Flush))
        }
        VIRTIO_BLK_T_GET_ID => {
            stats.other_requests.fetch_add(1, Ordering::Relaxed);
            if writable_len < ID_BYTES as u64 {
                return Err(Failure::Invalid("GET_ID buffer shorter than 20 bytes"));
            }
            let n = copy_to_slices(&slices(mem, &bufs.writable)?, 0, &ctx.serial);
            Ok(Action::Complete(n as u64))
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            stats.other_requests.fetch_add(1, Ordering::Relaxed);
            let discard = req_type == VIRTIO_BLK_T_DISCARD;
            let (feature, max_seg, max_sectors) = if discard {
                (VIRTIO_BLK_F_DISCARD, MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
            } else {
                (
                    VIRTIO_BLK_F_WRITE_ZEROES,
                    MAX_WRITE_ZEROES_SEG,
                    MAX_WRITE_ZEROES_SECTORS,
                )
            };
            if ctx.acked_features & (1 << feature) == 0 || ctx.disk.readonly() {
                return Err(Failure::Unsupported);
            }
            if writable_len != 0 {
                return Err(Failure::Invalid(
                    "discard/write-zeroes with device-writable data buffers",
                ));
            }
            let data_len = readable_len - HEADER_LEN;
            if data_len == 0 || !data_len.is_multiple_of(SEGMENT_LEN) {
                return Err(Failure::Invalid("bad discard/write-zeroes segment list"));
            }
            if data_len / SEGMENT_LEN > u64::from(max_seg) {
                return Err(Failure::Invalid("too many discard/write-zeroes segments"));
            }
            let data = slices(mem, &skip_bytes(&bufs.readable, HEADER_LEN))?;
            // At most MAX_*_SEG segments: read them all first, so no range is touched unless
            // every segment is valid.
            let mut segs = Vec::with_capacity((data_len / SEGMENT_LEN) as usize);
            for i in 0..data_len / SEGMENT_LEN {
                let mut raw = [0u8; SEGMENT_LEN as usize];
                copy_from_slices(&data, i * SEGMENT_LEN, &mut raw);
                let seg_sector = u64::from_le_bytes(raw[0..8].try_into().unwrap());
                let num = u32::from_le_bytes(raw[8..12].try_into().unwrap());
                let flags = u32::from_le_bytes(raw[12..16].try_into().unwrap());
                // §5.2.6.2: unknown flags → UNSUPP; the unmap flag on discard → UNSUPP.
                let known = if discard {
                    0
                } else {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                };
                if flags & !known != 0 {
                    return Err(Failure::Unsupported);
                }
                if num > max_sectors {
                    return Err(Failure::Invalid(
                        "segment larger than the advertised maximum",
                    ));
                }
                let len = u64::from(num) * SECTOR_SIZE;
                let offset = checked_range(&ctx.disk, seg_sector, len)?;
                if len > 0 {
                    segs.push(Segment {
                        offset,
                        len,
                        unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                    });
                }
            }
            if segs.is_empty() {
                return Ok(Action::Complete(0));
            }
            Ok(Action::Io(if discard {
                Op::Discard(segs)
            } else {
                Op::WriteZeroes(segs)
            }))
        }
        _ => {
            stats.other_requests.fetch_add(1, Ordering::Relaxed);
            Err(Failure::Unsupported)
        }
    }
}

/// A request taken from the queue.
pub(crate) enum Request {
    /// Already completed: refused, or answered without file access.
    Done(Completion),
    /// Checked and waiting for its file I/O; completed by [`finish_job`].
    Io(Job),
}

/// Parses and checks the request in `chain`. Requests needing no file access are completed on
/// the spot (status byte written); the others become a [`Job`] that keeps `mem` alive. Never
/// panics on guest input.
pub(crate) fn parse_request(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &Arc<GuestMemoryMmap>,
    ctx: &RequestContext,
) -> Request {
    let head = chain.head_index();
    let (status, parsed) = parse_chain(chain, mem);

    let result = parsed.and_then(|bufs| {
        let mut header = [0u8; HEADER_LEN as usize];
        let readable = slices(mem, &bufs.readable)?;
        if copy_from_slices(&readable, 0, &mut header) != header.len() {
            return Err(Failure::Invalid("request header not readable"));
        }
        let req_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
        log::trace!("virtio-blk: request type {req_type} sector {sector}");
        plan(ctx, mem, req_type, sector, bufs)
    });

    match (result, status) {
        (Ok(Action::Io(op)), Some(status)) => Request::Io(Job::new(head, status, mem.clone(), op)),
        // Parsing succeeds only with a status byte.
        (Ok(Action::Io(_)), None) => Request::Done(conclude(
            ctx,
            head,
            mem,
            None,
            Err(Failure::Invalid("no status byte")),
        )),
        (Ok(Action::Complete(n)), status) => Request::Done(conclude(ctx, head, mem, status, Ok(n))),
        (Err(f), status) => Request::Done(conclude(ctx, head, mem, status, Err(f))),
    }
}

/// Completes a job after its I/O: writes the status byte (in the memory the job kept) and
/// counts the outcome.
pub(crate) fn finish_job(ctx: &RequestContext, job: Job, result: io::Result<()>) -> Completion {
    let data_len = match (&result, job.op()) {
        (Ok(()), Op::Read { .. }) => {
            ctx.stats.read_bytes.fetch_add(job.len(), Ordering::Relaxed);
            job.len()
        }
        (Ok(()), Op::Write { .. }) => {
            ctx.stats
                .write_bytes
                .fetch_add(job.len(), Ordering::Relaxed);
            0
        }
        _ => 0,
    };
    conclude(
        ctx,
        job.head(),
        job.mem(),
        Some(job.status()),
        result.map(|()| data_len).map_err(Failure::Io),
    )
}

/// Writes the status byte at `status` (if any) for `result` and returns how to complete the
/// chain.
fn conclude(
    ctx: &RequestContext,
    head: u16,
    mem: &GuestMemoryMmap,
    status: Option<GuestAddress>,
    result: Result<u64, Failure>,
) -> Completion {
    let stats = &ctx.stats;
    let (status_byte, data_len) = match result {
        Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
        Err(Failure::Unsupported) => {
            stats.unsupported.fetch_add(1, Ordering::Relaxed);
            (VIRTIO_BLK_S_UNSUPP as u8, 0)
        }
        Err(Failure::Invalid(why)) => {
            stats.invalid_requests.fetch_add(1, Ordering::Relaxed);
            log::debug!("virtio-blk: invalid request (head {head}): {why}");
            (VIRTIO_BLK_S_IOERR as u8, 0)
        }
        Err(Failure::Io(e)) => {
            stats.io_errors.fetch_add(1, Ordering::Relaxed);
            let key = e.raw_os_error().unwrap_or(-1) as u64;
            if ctx.io_error_log.first(key) {
                log::warn!(
                    "{}: I/O error: {e} (reported to the guest as IOERR; further errors of this kind are not logged)",
                    ctx.disk.path().display()
                );
            }
            // Whatever a failed read put in the guest's buffers is not reported as data.
            (VIRTIO_BLK_S_IOERR as u8, 0)
        }
    };

    match status.and_then(|a| mem.get_slice(a, 1).ok()) {
        Some(s) => {
            s.copy_from(&[status_byte]);
            Completion {
                head,
                // data_len is at most MAX_REQUEST_BYTES (or ID_BYTES), far below u32::MAX.
                used_len: data_len as u32 + 1,
                status: Some(status_byte),
            }
        }
        None => {
            stats.dropped_chains.fetch_add(1, Ordering::Relaxed);
            Completion {
                head,
                used_len: 0,
                status: None,
            }
        }
    }
}
