//! The disk image behind a virtio-blk device: a raw file or block device.
//!
//! Only the image is ever touched: every read and write goes through the file descriptor opened
//! here, at an offset the request path has already checked against the capacity. Data moves
//! directly between guest memory and the file (`preadv`/`pwritev` on the guest's buffers); with
//! `O_DIRECT` an aligned bounce buffer stands in for guest buffers the kernel would refuse.
//! Reads of a buffered image can also be tried without blocking ([`DiskImage::read_cached`]),
//! which the queue worker does before handing a read to an I/O thread.

use std::alloc::{self, Layout};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::VolatileSlice;

use super::{BlockError, SECTOR_SIZE};

/// Size of the `O_DIRECT` bounce buffer; requests larger than this are bounced in chunks, so
/// memory stays bounded whatever the guest asks for. A multiple of every supported alignment.
pub(crate) const BOUNCE_SIZE: usize = 1 << 20;
/// Alignment of the bounce buffer (a page: enough for any device's DMA alignment).
const BOUNCE_ALIGN: usize = 4096;
/// Largest `O_DIRECT` offset alignment accepted (and the largest bounce chunk granularity).
const MAX_DIO_ALIGN: u64 = 64 * 1024;
/// Most iovecs one `preadv`/`pwritev` takes (Linux UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// A page-aligned heap buffer for `O_DIRECT` transfers from or to unaligned guest buffers.
pub(crate) struct BounceBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is plain heap memory owned by this value.
unsafe impl Send for BounceBuffer {}

impl BounceBuffer {
    fn new() -> Self {
        let layout = Layout::from_size_align(BOUNCE_SIZE, BOUNCE_ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        BounceBuffer { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for BounceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Per-worker scratch state for I/O (the bounce buffer, allocated on first use).
#[derive(Default)]
pub(crate) struct IoScratch {
    bounce: Option<BounceBuffer>,
}

impl IoScratch {
    fn bounce(&mut self) -> &mut [u8] {
        self.bounce
            .get_or_insert_with(BounceBuffer::new)
            .as_mut_slice()
    }
}

/// An open, locked disk image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    /// Same inode opened without `O_DIRECT`, for requests not aligned to `dio_offset_align`
    /// (only when that alignment is above the 512-byte sector).
    buffered: Option<File>,
    path: PathBuf,
    readonly: bool,
    direct: bool,
    /// Capacity in 512-byte sectors.
    sectors: u64,
    /// `O_DIRECT` alignment of file offsets and lengths (512 without `direct`).
    dio_offset_align: u64,
    /// `O_DIRECT` alignment of memory addresses.
    dio_mem_align: u64,
    /// [`DiskImage::read_cached`] is worth trying: the image is buffered, and the kernel has not
    /// refused RWF_NOWAIT on it (cleared for good on the first refusal).
    nowait_reads: AtomicBool,
}

fn path_error(path: &Path, readonly: bool, e: io::Error) -> BlockError {
    let path = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => BlockError::NotFound { path },
        io::ErrorKind::PermissionDenied => BlockError::PermissionDenied { path, readonly },
        _ => BlockError::Io {
            path,
            op: "open",
            source: e,
        },
    }
}

#[cfg(test)]
pub(crate) fn path_error_for_test(path: &Path, readonly: bool) -> BlockError {
    path_error(path, readonly, io::ErrorKind::PermissionDenied.into())
}

/// `O_DIRECT` alignment (offset, memory) from statx(STATX_DIOALIGN) when the kernel reports it.
fn statx_dio_align(path: &Path) -> Option<(u64, u64)> {
    let cpath = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statx is plain old data; zero is a valid bit pattern.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `cpath` is a valid C string and `stx` a valid out-pointer.
    let ret = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            cpath.as_ptr(),
            0,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if ret != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((
        u64::from(stx.stx_dio_offset_align),
        u64::from(stx.stx_dio_mem_align.max(1)),
    ))
}

/// Logical block size of a block device (BLKSSZGET).
fn block_device_sector_size(fd: RawFd) -> Option<u64> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int to the pointer.
    let ret = unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut size) };
    (ret == 0 && size > 0).then_some(size as u64)
}

/// Takes a whole-file OFD lock; Ok(false) if another holder conflicts. File systems without
/// OFD locks (EINVAL, ENOLCK) count as success: flock already guards kvmrun against kvmrun.
fn ofd_lock(fd: RawFd, readonly: bool) -> io::Result<bool> {
    // SAFETY: plain old data; zero is valid.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = if readonly {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    } as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = 0, l_len = 0: the whole file, however it grows.
    // SAFETY: F_OFD_SETLK reads a struct flock from the pointer.
    if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &lock) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        Some(libc::EINVAL) | Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) => {
            log::debug!("no OFD locks on this file system: {e}");
            Ok(true)
        }
        _ => Err(e),
    }
}

fn same_inode(a: &File, b: &File) -> io::Result<bool> {
    let (ma, mb) = (a.metadata()?, b.metadata()?);
    Ok(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

impl DiskImage {
    /// Opens and locks the image at `path`.
    ///
    /// The image must be a regular file or a block device whose size is a multiple of 512. A
    /// read-write image takes an exclusive `flock`, a read-only one a shared lock, both
    /// non-blocking: an image another kvmrun (or anything else using `flock`) has open for
    /// writing is refused rather than corrupted.
    pub fn open(path: &Path, readonly: bool, direct: bool) -> Result<DiskImage, BlockError> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(!readonly);
        // O_NONBLOCK so that opening a FIFO by mistake does not hang; it has no effect on
        // regular files and block devices and is cleared below.
        let mut flags = libc::O_NONBLOCK;
        if direct {
            flags |= libc::O_DIRECT;
        }
        opts.custom_flags(flags);
        let file = match opts.open(path) {
            Ok(f) => f,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(BlockError::DirectUnsupported {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                return Err(BlockError::NotAFileOrBlockDevice {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
                return Err(BlockError::ReadOnlyFilesystem {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(path_error(path, readonly, e)),
        };
        let io_err = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| BlockError::Io { path, op, source }
        };
        let meta = file.metadata().map_err(io_err("fstat"))?;
        let is_blockdev = meta.file_type().is_block_device();
        if !meta.file_type().is_file() && !is_blockdev {
            return Err(BlockError::NotAFileOrBlockDevice {
                path: path.to_path_buf(),
            });
        }
        let fd = file.as_raw_fd();
        // SAFETY: plain fcntl calls on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }

        let op = if readonly {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(fd, op | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                BlockError::InUse {
                    path: path.to_path_buf(),
                }
            } else {
                BlockError::Io {
                    path: path.to_path_buf(),
                    op: "flock",
                    source: e,
                }
            });
        }
        // QEMU locks images with open file description (OFD) byte-range locks, which do not
        // interact with flock: take a whole-file OFD lock too (write for read-write, read for
        // read-only), so a running QEMU is detected here and QEMU detects us.
        if !ofd_lock(fd, readonly).map_err(|e| BlockError::Io {
            path: path.to_path_buf(),
            op: "lock",
            source: e,
        })? {
            return Err(BlockError::InUse {
                path: path.to_path_buf(),
            });
        }

        // Seeking to the end gives the size of block devices too (their st_size is 0).
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(io_err("seek to the end of"))?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::UnalignedSize {
                path: path.to_path_buf(),
                size,
            });
        }

        let (mut dio_offset_align, mut dio_mem_align) = (SECTOR_SIZE, 1);
        let mut buffered = None;
        if direct {
            let (off, mem) = statx_dio_align(path)
                .or_else(|| {
                    is_blockdev
                        .then(|| block_device_sector_size(fd))
                        .flatten()
                        .map(|s| (s, s))
                })
                .unwrap_or((SECTOR_SIZE, SECTOR_SIZE));
            if !off.is_power_of_two() || off > MAX_DIO_ALIGN {
                return Err(BlockError::DirectUnsupported {
                    path: path.to_path_buf(),
                });
            }
            dio_offset_align = off.max(SECTOR_SIZE);
            dio_mem_align = mem.max(1);
            if dio_offset_align > SECTOR_SIZE {
                // Guests may still send 512-byte aligned requests: those go through a buffered
                // descriptor for the same inode (checked, in case the path was replaced).
                let f = OpenOptions::new()
                    .read(true)
                    .write(!readonly)
                    .open(path)
                    .map_err(|e| path_error(path, readonly, e))?;
                if !same_inode(&file, &f).map_err(io_err("fstat"))? {
                    return Err(BlockError::Io {
                        path: path.to_path_buf(),
                        op: "reopen",
                        source: io::Error::other("the path now names a different file"),
                    });
                }
                buffered = Some(f);
            }
        }

        Ok(DiskImage {
            file,
            buffered,
            path: path.to_path_buf(),
            readonly,
            direct,
            sectors: size / SECTOR_SIZE,
            dio_offset_align,
            dio_mem_align,
            nowait_reads: AtomicBool::new(!direct),
        })
    }

    /// The image's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Capacity in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.sectors * SECTOR_SIZE
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The logical block size to advertise (VIRTIO_BLK_F_BLK_SIZE): 512 unless `O_DIRECT` on
    /// this file needs larger aligned I/O, up to 4096 (a guest's page).
    pub fn logical_block_size(&self) -> u32 {
        self.dio_offset_align.min(4096) as u32
    }

    #[cfg(test)]
    pub(crate) fn force_dio_align_for_test(&mut self, align: u64) -> io::Result<()> {
        self.dio_offset_align = align;
        self.dio_mem_align = align;
        if align > SECTOR_SIZE && self.buffered.is_none() {
            self.buffered = Some(
                OpenOptions::new()
                    .read(true)
                    .write(!self.readonly)
                    .open(&self.path)?,
            );
        }
        Ok(())
    }

    /// Whether [`DiskImage::read_cached`] still tries RWF_NOWAIT on this image (false under
    /// `O_DIRECT`): callers check it before preparing a read for it.
    pub(crate) fn tries_cached_reads(&self) -> bool {
        !self.direct && self.nowait_reads.load(Ordering::Relaxed)
    }

    /// Makes [`DiskImage::read_cached`] give up at once, as after the kernel refused
    /// RWF_NOWAIT: for tests that need every read to reach the I/O threads.
    #[cfg(test)]
    pub(crate) fn stop_cached_reads_for_test(&self) {
        self.nowait_reads.store(false, Ordering::Relaxed);
    }

    /// The descriptor to use for a transfer at `offset` of `len` bytes, and whether it is the
    /// `O_DIRECT` one.
    fn fd_for(&self, offset: u64, len: u64) -> (RawFd, bool) {
        if !self.direct {
            return (self.file.as_raw_fd(), false);
        }
        let mask = self.dio_offset_align - 1;
        match &self.buffered {
            Some(b) if offset & mask != 0 || len & mask != 0 => (b.as_raw_fd(), false),
            _ => (self.file.as_raw_fd(), true),
        }
    }

    fn slices_dio_aligned<B: BitmapSlice>(&self, slices: &[VolatileSlice<'_, B>]) -> bool {
        let mem_mask = self.dio_mem_align - 1;
        let len_mask = self.dio_offset_align - 1;
        slices.iter().all(|s| {
            (s.ptr_guard().as_ptr() as u64) & mem_mask == 0 && (s.len() as u64) & len_mask == 0
        })
    }

    /// Reads `len` bytes at `offset` into `slices` (whose total length is `len`).
    pub(crate) fn read_at<B: BitmapSlice>(
        &self,
        offset: u64,
        slices: &[VolatileSlice<'_, B>],
        scratch: &mut IoScratch,
    ) -> io::Result<()> {
        self.transfer(offset, slices, false, scratch)?;
        for s in slices {
            s.bitmap().mark_dirty(0, s.len());
        }
        Ok(())
    }

    /// Fills `slices` from the image at `offset` only if the host page cache holds all of
    /// those bytes, without blocking; true when every byte was read. False means the caller must do
    /// the ordinary [`DiskImage::read_at`] (which also reports real errors): part of the range
    /// is not cached (EAGAIN or a short count), an error of any kind, or no RWF_NOWAIT support
    /// (EOPNOTSUPP/EINVAL; then this image is not tried again). Always false under `O_DIRECT`,
    /// where RWF_NOWAIT means something else (do not wait for the device's queue) and every
    /// read goes to the device anyway.
    pub(crate) fn read_cached<B: BitmapSlice>(
        &self,
        offset: u64,
        slices: &[VolatileSlice<'_, B>],
    ) -> bool {
        if !self.tries_cached_reads() {
            return false;
        }
        let guards = ptr_guards(slices);
        let iovs = iovecs(&guards);
        // One call or none: a request needing more iovecs (not built by Linux guests) takes
        // the ordinary path, which splits it.
        if iovs.len() > IOV_MAX {
            return false;
        }
        match preadv2_nowait(self.file.as_raw_fd(), &iovs, offset) {
            Ok(n) if n as u64 == total_len(slices) => {
                for s in slices {
                    s.bitmap().mark_dirty(0, s.len());
                }
                true
            }
            Ok(_) => false,
            Err(e) if nowait_unsupported(&e) => {
                self.nowait_reads.store(false, Ordering::Relaxed);
                log::debug!(
                    "{}: no RWF_NOWAIT reads on this file system ({e}); every read goes to the \
                     I/O threads",
                    self.path.display()
                );
                false
            }
            Err(_) => false,
        }
    }

    /// Writes the bytes of `slices` at `offset`.
    pub(crate) fn write_at<B: BitmapSlice>(
        &self,
        offset: u64,
        slices: &[VolatileSlice<'_, B>],
        scratch: &mut IoScratch,
    ) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.transfer(offset, slices, true, scratch)
    }

    /// Reads `slices` from the image at `offset`, or writes them there (`write`), through the
    /// descriptor [`DiskImage::fd_for`] picks. Under `O_DIRECT`, guest buffers go through the
    /// aligned bounce buffer when they look misaligned, and when the kernel refuses them with
    /// EINVAL (the alignment guess was wrong; the bounce buffer is aligned for any device).
    fn transfer<B: BitmapSlice>(
        &self,
        offset: u64,
        slices: &[VolatileSlice<'_, B>],
        write: bool,
        scratch: &mut IoScratch,
    ) -> io::Result<()> {
        let len = total_len(slices);
        let (fd, direct) = self.fd_for(offset, len);
        let bounce = |scratch: &mut IoScratch| {
            if write {
                self.bounce_write(fd, offset, slices, len, scratch)
            } else {
                self.bounce_read(fd, offset, slices, len, scratch)
            }
        };
        if direct && !self.slices_dio_aligned(slices) {
            return bounce(scratch);
        }
        match vectored_at(fd, offset, slices, write) {
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => bounce(scratch),
            r => r,
        }
    }

    fn bounce_read<B: BitmapSlice>(
        &self,
        fd: RawFd,
        offset: u64,
        slices: &[VolatileSlice<'_, B>],
        len: u64,
        scratch: &mut IoScratch,
    ) -> io::Result<()> {
        let buf = scratch.bounce();
        for (done, chunk) in bounce_chunks(len) {
            pread_all(fd, &mut buf[..chunk], offset + done)?;
            copy_to_slices(slices, done, &buf[..chunk]);
        }
        Ok(())
    }

    fn bounce_write<B: BitmapSlice>(
        &self,
        fd: RawFd,
        offset: u64,
        slices: &[VolatileSlice<'_, B>],
        len: u64,
        scratch: &mut IoScratch,
    ) -> io::Result<()> {
        let buf = scratch.bounce();
        for (done, chunk) in bounce_chunks(len) {
            copy_from_slices(slices, done, &mut buf[..chunk]);
            pwrite_all(fd, &buf[..chunk], offset + done)?;
        }
        Ok(())
    }

    /// Makes every completed write durable (fdatasync): what the guest flushed survives the
    /// VMM being killed or the host losing power.
    pub fn flush(&self) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        loop {
            // SAFETY: fallocate on a descriptor we own; offset and len fit in off_t (they are
            // within the image, whose size came from lseek).
            let ret = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    mode,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            };
            if ret == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Deallocates a range (VIRTIO_BLK_T_DISCARD). Discard is advisory (§5.2.6.2: the device
    /// MAY deallocate), so a file system without hole punching is not an error.
    pub(crate) fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if is_unsupported(&e) => {
                log::debug!(
                    "{}: discard not supported by the host file system",
                    self.path.display()
                );
                Ok(())
            }
            r => r,
        }
    }

    /// Zeroes a range (VIRTIO_BLK_T_WRITE_ZEROES): reads of it return zeroes afterwards.
    /// With `may_unmap` the range may become a hole.
    pub(crate) fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        scratch: &mut IoScratch,
    ) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if may_unmap {
            match self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Err(e) if is_unsupported(&e) => {}
                r => return r,
            }
        }
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if is_unsupported(&e) => {}
            r => return r,
        }
        // No fallocate support: write zeroes, a bounce buffer at a time (aligned, so this works
        // under O_DIRECT too).
        let (fd, _) = self.fd_for(offset, len);
        let buf = scratch.bounce();
        buf.fill(0);
        for (done, chunk) in bounce_chunks(len) {
            pwrite_all(fd, &buf[..chunk], offset + done)?;
        }
        Ok(())
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENOTTY)
    )
}

pub(crate) fn total_len<B: BitmapSlice>(slices: &[VolatileSlice<'_, B>]) -> u64 {
    slices.iter().map(|s| s.len() as u64).sum()
}

/// Copies `src` into the concatenation of `slices`, starting `pos` bytes in.
pub(crate) fn copy_to_slices<B: BitmapSlice>(
    slices: &[VolatileSlice<'_, B>],
    mut pos: u64,
    mut src: &[u8],
) -> usize {
    let mut copied = 0;
    for s in slices {
        if src.is_empty() {
            break;
        }
        let len = s.len() as u64;
        if pos >= len {
            pos -= len;
            continue;
        }
        // `pos < len <= usize::MAX`.
        let dst = s.offset(pos as usize).expect("offset within the slice");
        pos = 0;
        let n = dst.len().min(src.len());
        dst.copy_from(&src[..n]);
        src = &src[n..];
        copied += n;
    }
    copied
}

/// Fills `dst` from the concatenation of `slices`, starting `pos` bytes in.
pub(crate) fn copy_from_slices<B: BitmapSlice>(
    slices: &[VolatileSlice<'_, B>],
    mut pos: u64,
    dst: &mut [u8],
) -> usize {
    let mut copied = 0;
    for s in slices {
        if copied == dst.len() {
            break;
        }
        let len = s.len() as u64;
        if pos >= len {
            pos -= len;
            continue;
        }
        let src = s.offset(pos as usize).expect("offset within the slice");
        pos = 0;
        copied += src.copy_to(&mut dst[copied..]);
    }
    copied
}

/// The pieces of a `len`-byte transfer through the bounce buffer: (position in the
/// transfer, length), each at most [`BOUNCE_SIZE`].
fn bounce_chunks(len: u64) -> impl Iterator<Item = (u64, usize)> {
    (0..len)
        .step_by(BOUNCE_SIZE)
        .map(move |done| (done, (len - done).min(BOUNCE_SIZE as u64) as usize))
}

fn pread_all(fd: RawFd, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for writes of its length.
        let ret = unsafe {
            libc::pread64(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off64_t,
            )
        };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ret == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = ret as usize;
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

fn pwrite_all(fd: RawFd, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of its length.
        let ret =
            unsafe { libc::pwrite64(fd, buf.as_ptr().cast(), buf.len(), offset as libc::off64_t) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ret == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let n = ret as usize;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// The errors of a RWF_NOWAIT read that mean the kernel or file system does not offer it
/// (preadv2(2): EOPNOTSUPP; EINVAL from kernels that do not know the flag; ENOSYS without
/// preadv2 at all), as opposed to "not now" (EAGAIN) or a failed read.
fn nowait_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS)
    )
}

/// `preadv2(fd, iovs, offset, RWF_NOWAIT)`, see preadv2(2): reads only what is already in the
/// page cache, returning a short count when only the start of the range is there and EAGAIN
/// when not even that is (it may start readahead, but never waits for it). One call, no retry:
/// the caller decides what a short count or an error means.
fn preadv2_nowait(fd: RawFd, iovs: &[libc::iovec], offset: u64) -> io::Result<usize> {
    // SAFETY: each iovec describes memory the caller keeps mapped and writable for the call
    // (guest buffers held by their guards); the kernel writes only within them. `iovs.len()`
    // is at most IOV_MAX (checked by the caller), so it fits in a c_int.
    let ret = unsafe {
        libc::preadv2(
            fd,
            iovs.as_ptr(),
            iovs.len() as libc::c_int,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as usize)
}

/// Guards on the non-empty `slices`: they keep the mappings alive (they matter for Xen-style
/// mappings) while the kernel accesses them.
fn ptr_guards<B: BitmapSlice>(slices: &[VolatileSlice<'_, B>]) -> Vec<PtrGuardMut> {
    slices
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.ptr_guard_mut())
        .collect()
}

fn iovecs(guards: &[PtrGuardMut]) -> Vec<libc::iovec> {
    guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect()
}

/// `preadv`/`pwritev` of all of `slices` at `offset`, resuming after short transfers.
fn vectored_at<B: BitmapSlice>(
    fd: RawFd,
    mut offset: u64,
    slices: &[VolatileSlice<'_, B>],
    write: bool,
) -> io::Result<()> {
    let guards = ptr_guards(slices);
    let mut iovs = iovecs(&guards);
    let mut idx = 0;
    while idx < iovs.len() {
        let cnt = (iovs.len() - idx).min(IOV_MAX) as libc::c_int;
        // SAFETY: every iovec describes guest memory that stays mapped while `guards` lives;
        // the kernel reads or writes only within them.
        let ret = unsafe {
            if write {
                libc::pwritev64(fd, iovs[idx..].as_ptr(), cnt, offset as libc::off64_t)
            } else {
                libc::preadv64(fd, iovs[idx..].as_ptr(), cnt, offset as libc::off64_t)
            }
        };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ret == 0 {
            return Err(if write {
                io::ErrorKind::WriteZero.into()
            } else {
                io::ErrorKind::UnexpectedEof.into()
            });
        }
        let mut n = ret as usize;
        offset += n as u64;
        while n > 0 {
            let iov = &mut iovs[idx];
            if n >= iov.iov_len {
                n -= iov.iov_len;
                idx += 1;
            } else {
                // SAFETY: `n < iov_len`, so the new base stays within the same buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                iov.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_chunks_cover_the_transfer_once() {
        let b = BOUNCE_SIZE as u64;
        let chunks = |len| bounce_chunks(len).collect::<Vec<_>>();
        assert_eq!(chunks(0), []);
        assert_eq!(chunks(512), [(0, 512)]);
        assert_eq!(chunks(b), [(0, BOUNCE_SIZE)]);
        assert_eq!(
            chunks(2 * b + 7),
            [(0, BOUNCE_SIZE), (b, BOUNCE_SIZE), (2 * b, 7)]
        );
    }
}
