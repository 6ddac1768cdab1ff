//! The file I/O of one checked virtio-blk request ([`Job`]), run by an I/O thread (or, for a
//! read the host page cache can serve at once, by the queue worker: [`Job::read_cached`]).
//!
//! A job is built only after every check of `request` has passed (offsets within the disk,
//! buffers within guest memory, lengths bounded), so running it touches only the image and the
//! request's own buffers. It holds its guest buffers as addresses plus a reference to the guest
//! memory they were checked against, which keeps them mapped for as long as the job lives, on
//! whichever thread. It never touches the rings: the queue worker writes the status byte and the
//! used entry when the job comes back (`request::finish_job`).

use std::io;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::backend::{DiskImage, IoScratch};
use crate::virtio::GuestMemoryMmap;

/// A run of guest memory within one region (checked when the chain was parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GuestBuf {
    pub addr: GuestAddress,
    pub len: usize,
}

/// One discard or write-zeroes range, in bytes (non-empty, within the disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub offset: u64,
    pub len: u64,
    /// WRITE_ZEROES with VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.
    pub unmap: bool,
}

/// The file operation of a job.
#[derive(Debug)]
pub(crate) enum Op {
    /// VIRTIO_BLK_T_IN: read into `bufs` (non-empty).
    Read { offset: u64, bufs: Vec<GuestBuf> },
    /// VIRTIO_BLK_T_OUT: write the bytes of `bufs` (non-empty).
    Write { offset: u64, bufs: Vec<GuestBuf> },
    /// VIRTIO_BLK_T_FLUSH: fdatasync.
    Flush,
    /// VIRTIO_BLK_T_DISCARD (at most MAX_DISCARD_SEG segments).
    Discard(Vec<Segment>),
    /// VIRTIO_BLK_T_WRITE_ZEROES (at most MAX_WRITE_ZEROES_SEG segments).
    WriteZeroes(Vec<Segment>),
}

/// A checked request waiting for (or done with) its file I/O.
#[derive(Debug)]
pub(crate) struct Job {
    head: u16,
    /// Where the status byte goes (checked to be in `mem`).
    status: GuestAddress,
    /// Bytes moved by a read or write.
    len: u64,
    /// The guest memory the buffers were checked against; keeps them mapped.
    mem: Arc<GuestMemoryMmap>,
    op: Op,
}

impl Job {
    pub(crate) fn new(head: u16, status: GuestAddress, mem: Arc<GuestMemoryMmap>, op: Op) -> Job {
        let len = match &op {
            Op::Read { bufs, .. } | Op::Write { bufs, .. } => {
                bufs.iter().map(|b| b.len as u64).sum()
            }
            _ => 0,
        };
        Job {
            head,
            status,
            len,
            mem,
            op,
        }
    }

    /// Head descriptor index, for the used ring.
    pub(crate) fn head(&self) -> u16 {
        self.head
    }

    pub(crate) fn status(&self) -> GuestAddress {
        self.status
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub(crate) fn op(&self) -> &Op {
        &self.op
    }

    pub(crate) fn is_flush(&self) -> bool {
        matches!(self.op, Op::Flush)
    }

    /// Does the file I/O. `scratch` belongs to the calling thread.
    pub(crate) fn execute(&self, disk: &DiskImage, scratch: &mut IoScratch) -> io::Result<()> {
        match &self.op {
            Op::Read { offset, bufs } => disk.read_at(*offset, &self.slices(bufs)?, scratch),
            Op::Write { offset, bufs } => disk.write_at(*offset, &self.slices(bufs)?, scratch),
            Op::Flush => disk.flush(),
            Op::Discard(segs) => segs.iter().try_for_each(|s| disk.discard(s.offset, s.len)),
            Op::WriteZeroes(segs) => segs
                .iter()
                .try_for_each(|s| disk.write_zeroes(s.offset, s.len, s.unmap, scratch)),
        }
    }

    /// Does the I/O of a read at once if the host page cache holds all of its data, without
    /// blocking ([`DiskImage::read_cached`]); false for any other job, or when the read has to
    /// run as usual (nothing it may have put in the buffers counts: reads are idempotent, and
    /// the full read overwrites it).
    pub(crate) fn read_cached(&self, disk: &DiskImage) -> bool {
        let Op::Read { offset, bufs } = &self.op else {
            return false;
        };
        // Before building the slices: an O_DIRECT image pays nothing for this path.
        if !disk.tries_cached_reads() {
            return false;
        }
        self.slices(bufs)
            .is_ok_and(|slices| disk.read_cached(*offset, &slices))
    }

    fn slices(&self, bufs: &[GuestBuf]) -> io::Result<Vec<VolatileSlice<'_, ()>>> {
        bufs.iter()
            .map(|b| self.mem.get_slice(b.addr, b.len))
            .collect::<Result<_, _>>()
            // Cannot happen: the ranges were checked against this very memory.
            .map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))
    }
}
