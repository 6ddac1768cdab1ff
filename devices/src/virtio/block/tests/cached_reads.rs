//! Reads the worker serves from the host page cache itself (`preadv2(RWF_NOWAIT)`), and the
//! ones that still go to the I/O threads: data not (all) cached, file systems without
//! RWF_NOWAIT, O_DIRECT images, large reads; FLUSH ordering around them.

use std::collections::HashSet;
use std::os::unix::io::AsRawFd;

use super::super::worker::CACHED_READ_MAX_BYTES;
use super::in_flight::{drain, Gate};
use super::*;

/// Guest buffer stride per slot: reads and writes here are at most 8 KiB.
const SLOT: u64 = 0x2000;

/// A device whose I/O threads report to `gate` (holding nothing unless told), with the cached
/// read path left on.
fn observed_device(env: &Env, gate: &Arc<Gate>) -> VirtioBlk {
    let mut dev = VirtioBlk::new(DiskConfig {
        io_threads: 2,
        ..env.cfg()
    })
    .unwrap();
    dev.set_acked_features(dev.device_features());
    dev.io_gate = Some(gate.hook());
    dev
}

/// Whether the file system under `path` serves RWF_NOWAIT reads at all (tmpfs may not).
fn nowait_supported(path: &Path) -> bool {
    let f = File::open(path).unwrap();
    let mut buf = [0u8; 512];
    // Cached now, so a supporting file system cannot answer EAGAIN.
    f.read_exact_at(&mut buf, 0).unwrap();
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec on `buf`, which outlives the call.
    unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) >= 0 }
}

/// Whether `env`'s file system lacks RWF_NOWAIT reads, which the tests of the cached path need:
/// then says on stderr that the test is skipped.
fn lacks_nowait_reads(env: &Env) -> bool {
    if nowait_supported(&env.path) {
        return false;
    }
    eprintln!(
        "skipped: no RWF_NOWAIT reads on {}",
        env.dir.path().display()
    );
    true
}

/// Writes the image back and drops all of it from the page cache: reading it means waiting for
/// the disk again.
fn evict(path: &Path) {
    let f = File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: plain fadvise on a descriptor we own.
    let ret = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(ret, 0);
}

/// Brings the 4 KiB at `offset` into the page cache, and nothing around it (no readahead).
fn cache_page(path: &Path, offset: u64) {
    let f = File::open(path).unwrap();
    // SAFETY: plain fadvise on a descriptor we own.
    let ret = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(ret, 0);
    f.read_exact_at(&mut [0u8; 4096], offset).unwrap();
}

/// Makes an IN of `len` bytes at `sector` available, into slot `slot`'s buffer and status
/// byte; returns its head.
fn add_read(d: &mut Driver, slot: u64, sector: u64, len: u32) -> u16 {
    let hdr = HDR + 16 * slot;
    header(d.mem, hdr, VIRTIO_BLK_T_IN, sector);
    d.mem
        .write_obj(NO_STATUS, GuestAddress(STATUS + slot))
        .unwrap();
    d.add(&[
        (hdr, 16, 0),
        (DATA + SLOT * slot, len, WRITE),
        (STATUS + slot, 1, WRITE),
    ])
}

/// Makes an OUT of `data` at `sector` available, from slot `slot`'s buffer; returns its head.
fn add_write(d: &mut Driver, slot: u64, sector: u64, data: &[u8]) -> u16 {
    let hdr = HDR + 16 * slot;
    header(d.mem, hdr, VIRTIO_BLK_T_OUT, sector);
    d.mem
        .write_obj(NO_STATUS, GuestAddress(STATUS + slot))
        .unwrap();
    d.mem
        .write_slice(data, GuestAddress(DATA + SLOT * slot))
        .unwrap();
    d.add(&[
        (hdr, 16, 0),
        (DATA + SLOT * slot, data.len() as u32, 0),
        (STATUS + slot, 1, WRITE),
    ])
}

fn add_flush(d: &mut Driver, slot: u64) -> u16 {
    let hdr = HDR + 16 * slot;
    header(d.mem, hdr, VIRTIO_BLK_T_FLUSH, 0);
    d.mem
        .write_obj(NO_STATUS, GuestAddress(STATUS + slot))
        .unwrap();
    d.add(&[(hdr, 16, 0), (STATUS + slot, 1, WRITE)])
}

/// Whether slot `slot`'s buffer holds the image's `len` bytes at `sector`.
fn read_matches(d: &Driver, env: &Env, slot: u64, sector: u64, len: usize) -> bool {
    let mut got = vec![0u8; len];
    d.mem
        .read_slice(&mut got, GuestAddress(DATA + SLOT * slot))
        .unwrap();
    got == env.file_bytes(sector * 512, len)
}

/// Clears slot `slot`'s buffer, so a read that did not happen shows.
fn clear_slot(d: &Driver, slot: u64) {
    d.mem
        .write_slice(&[0u8; SLOT as usize], GuestAddress(DATA + SLOT * slot))
        .unwrap();
}

#[test]
fn a_cached_read_completes_on_the_worker() {
    let env = Env::new();
    if lacks_nowait_reads(&env) {
        return;
    }
    let gate = Gate::new();
    let dev = observed_device(&env, &gate);
    let mut p = dev.threaded_request_processor(2, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    // Data just written through the device is in the page cache.
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8 ^ 0xa5).collect();
    let write = add_write(&mut d, 0, 8, &data);
    drain(&mut d, &mut p);
    assert_eq!(status_at(&mem, STATUS), OK);

    clear_slot(&d, 1);
    let read = add_read(&mut d, 1, 8, 4096);
    let run = d.run(&mut p);
    // Completed within the call that took it, with nothing left in flight.
    assert_eq!((run.processed, run.completed, run.in_flight), (1, 1, 0));
    assert!(run.needs_interrupt);
    assert_eq!(d.used_idx(), 2);
    assert_eq!(d.used(1), (u32::from(read), 4097));
    assert_eq!(status_at(&mem, STATUS + 1), OK);
    assert!(read_matches(&d, &env, 1, 8, 4096));
    assert_eq!(env.file_bytes(8 * 512, 4096), data);
    // Only the write reached an I/O thread.
    assert_eq!(gate.started(), vec![write]);
    let s = dev.stats().snapshot();
    assert_eq!(
        (s.read_requests, s.read_bytes, s.cached_reads, s.io_errors),
        (1, 4096, 1, 0)
    );
}

/// Runs `attempt` on a fresh image whose pages are all out of the page cache (on a device
/// whose I/O threads report to a new gate) until its read reaches an I/O thread, at most 10
/// times. Each attempt checks the read's result whichever way it went and returns its head.
///
/// The RWF_NOWAIT attempt on uncached data starts readahead without waiting for it; if this
/// thread is preempted long enough for that I/O to finish before the kernel looks again, the
/// data is there after all and the read is (rightly) served on the worker. Rare, but not never
/// on two busy cores: so the test asks for the I/O threads in one of 10 tries, not in every
/// one. Each try needs a new image, since pages being read when they are evicted come back.
fn until_it_reaches_a_thread(attempt: impl Fn(&Env, &VirtioBlk) -> u16) {
    for _ in 0..10 {
        let env = Env::new();
        if lacks_nowait_reads(&env) {
            return;
        }
        evict(&env.path);
        let gate = Gate::new();
        let dev = observed_device(&env, &gate);
        let head = attempt(&env, &dev);
        let s = dev.stats().snapshot();
        // Either way, never both, and "not now" never turns the path off.
        assert_eq!(gate.started().contains(&head), s.cached_reads == 0);
        assert!(dev.disk().tries_cached_reads());
        if s.cached_reads == 0 {
            return;
        }
    }
    panic!("in 10 tries, no read of uncached data reached an I/O thread");
}

#[test]
fn an_uncached_read_goes_to_the_io_threads() {
    until_it_reaches_a_thread(|env, dev| {
        let mut p = dev.threaded_request_processor(2, QSIZE).unwrap();
        let mem = guest_memory();
        let mut d = Driver::new(&mem, RINGS);
        // Nothing cached: RWF_NOWAIT answers EAGAIN.
        clear_slot(&d, 0);
        let read = add_read(&mut d, 0, 0, 4096);
        drain(&mut d, &mut p);
        assert_eq!(d.used(0), (u32::from(read), 4097));
        assert_eq!(status_at(&mem, STATUS), OK);
        assert!(read_matches(&d, env, 0, 0, 4096));
        read
    });
}

#[test]
fn a_partly_cached_read_goes_to_the_io_threads_whole() {
    until_it_reaches_a_thread(|env, dev| {
        let mut p = dev.threaded_request_processor(2, QSIZE).unwrap();
        let mem = guest_memory();
        let mut d = Driver::new(&mem, RINGS);
        // Only the first of two pages cached: RWF_NOWAIT returns a short count, and the
        // whole read is done again on an I/O thread.
        cache_page(&env.path, 16 * 512);
        clear_slot(&d, 0);
        let read = add_read(&mut d, 0, 16, 8192);
        drain(&mut d, &mut p);
        assert_eq!(d.used(0), (u32::from(read), 8193));
        assert_eq!(status_at(&mem, STATUS), OK);
        assert!(read_matches(&d, env, 0, 16, 8192));
        read
    });
}

#[test]
fn a_cached_read_served_again_after_an_uncached_one() {
    let env = Env::new();
    if lacks_nowait_reads(&env) {
        return;
    }
    evict(&env.path);
    let gate = Gate::new();
    let dev = observed_device(&env, &gate);
    let mut p = dev.threaded_request_processor(2, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    // Whichever way the first read went, it left its data in the page cache.
    add_read(&mut d, 0, 0, 4096);
    drain(&mut d, &mut p);
    let first = dev.stats().snapshot().cached_reads;
    clear_slot(&d, 1);
    add_read(&mut d, 1, 0, 4096);
    let run = d.run(&mut p);
    assert_eq!((run.completed, run.in_flight), (1, 0));
    assert!(read_matches(&d, &env, 1, 0, 4096));
    assert_eq!(dev.stats().snapshot().cached_reads, first + 1);
}

#[test]
fn a_short_cached_read_goes_to_the_io_threads() {
    // Deterministic short count: the image shrinks behind the device's back, so only 2 KiB of
    // a cached 4 KiB read exist; the I/O thread's read then fails as before the cached path.
    let env = Env::new();
    if lacks_nowait_reads(&env) {
        return;
    }
    let gate = Gate::new();
    let dev = observed_device(&env, &gate);
    let mut p = dev.threaded_request_processor(2, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    env.shrink(4 * 512);
    let read = add_read(&mut d, 0, 0, 4096);
    drain(&mut d, &mut p);
    assert_eq!(gate.started(), vec![read]);
    assert_eq!(d.used(0), (u32::from(read), 1));
    assert_eq!(status_at(&mem, STATUS), IOERR);
    assert!(dev.disk().tries_cached_reads());
    let s = dev.stats().snapshot();
    assert_eq!((s.cached_reads, s.io_errors, s.read_bytes), (0, 1, 0));
}

#[test]
fn a_file_system_without_rwf_nowait_is_not_tried_again() {
    // tmpfs answers EOPNOTSUPP on the kernels this was written on; where it does not, there is
    // no such file system at hand to test with.
    let Ok(dir) = tempfile::Builder::new()
        .prefix("kvmrun-blk-test")
        .tempdir_in("/dev/shm")
    else {
        eprintln!("skipped: no /dev/shm");
        return;
    };
    let path = dir.path().join("disk.img");
    let data: Vec<u8> = (0..IMAGE_SECTORS * SECTOR_SIZE).map(pattern).collect();
    fs::write(&path, data).unwrap();
    if nowait_supported(&path) {
        eprintln!("skipped: tmpfs serves RWF_NOWAIT reads on this kernel");
        return;
    }
    let env = Env { dir, path };
    let gate = Gate::new();
    let dev = observed_device(&env, &gate);
    let mut p = dev.threaded_request_processor(2, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    assert!(dev.disk().tries_cached_reads());
    let first = add_read(&mut d, 0, 0, 4096);
    drain(&mut d, &mut p);
    assert!(
        !dev.disk().tries_cached_reads(),
        "the refusal is remembered"
    );
    let second = add_read(&mut d, 1, 8, 4096);
    drain(&mut d, &mut p);
    assert_eq!(gate.started(), vec![first, second]);
    for slot in 0..2 {
        assert_eq!(status_at(&mem, STATUS + slot), OK);
        assert!(read_matches(&d, &env, slot, 8 * slot, 4096));
    }
    let s = dev.stats().snapshot();
    assert_eq!((s.cached_reads, s.io_errors), (0, 0));
}

#[test]
fn an_o_direct_disk_reads_through_the_io_threads() {
    let env = Env::new();
    let gate = Gate::new();
    let Some(mut dev) = env.direct_device(2) else {
        return;
    };
    dev.set_acked_features(dev.device_features());
    dev.io_gate = Some(gate.hook());
    // RWF_NOWAIT under O_DIRECT is about the device's queue, not the cache: never tried.
    assert!(!dev.disk().tries_cached_reads());
    let mut p = dev.threaded_request_processor(2, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    clear_slot(&d, 0);
    let read = add_read(&mut d, 0, 8, 4096);
    drain(&mut d, &mut p);
    assert_eq!(gate.started(), vec![read]);
    assert_eq!(status_at(&mem, STATUS), OK);
    assert!(read_matches(&d, &env, 0, 8, 4096));
    assert_eq!(dev.stats().snapshot().cached_reads, 0);
}

/// Makes a read of `len` bytes at sector 0 available, into buffers of at most SIZE_MAX bytes
/// at `addr` (as a driver honouring `size_max` builds it); returns its head.
fn add_large_read(d: &mut Driver, addr: u64, len: u32) -> u16 {
    header(d.mem, HDR, VIRTIO_BLK_T_IN, 0);
    d.mem.write_obj(NO_STATUS, GuestAddress(STATUS)).unwrap();
    d.mem
        .write_slice(&vec![0u8; len as usize], GuestAddress(addr))
        .unwrap();
    let mut descs = vec![(HDR, 16, 0)];
    for off in (0..len).step_by(SIZE_MAX as usize) {
        descs.push((addr + u64::from(off), SIZE_MAX.min(len - off), WRITE));
    }
    descs.push((STATUS, 1, WRITE));
    d.add(&descs)
}

#[test]
fn only_reads_up_to_the_size_limit_are_served_on_the_worker() {
    let max = CACHED_READ_MAX_BYTES as u32;
    let env = Env::with_len(2 * u64::from(max));
    if lacks_nowait_reads(&env) {
        return;
    }
    let gate = Gate::new();
    let dev = observed_device(&env, &gate);
    let mut p = dev.threaded_request_processor(2, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    let buf = 0x10_0000u64;
    for (len, on_worker) in [(max, true), (max + 4096, false)] {
        // All of it in the page cache.
        env.file_bytes(0, len as usize);
        let head = add_large_read(&mut d, buf, len);
        drain(&mut d, &mut p);
        assert_eq!(gate.started().contains(&head), !on_worker, "{len} bytes");
        assert_eq!(status_at(&mem, STATUS), OK);
        let mut got = vec![0u8; len as usize];
        mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
        assert_eq!(got, env.file_bytes(0, len as usize), "{len} bytes");
    }
    assert_eq!(dev.stats().snapshot().cached_reads, 1);
}

#[test]
fn flush_still_waits_with_cached_reads_around_it() {
    let env = Env::new();
    if lacks_nowait_reads(&env) {
        return;
    }
    let gate = Gate::new();
    let dev = observed_device(&env, &gate);
    let mut p = dev.threaded_request_processor(2, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    // A write (held in its I/O thread), a cached read, a FLUSH, another cached read.
    let write = add_write(&mut d, 0, 40, &[0x3cu8; 4096]);
    let read = add_read(&mut d, 1, 0, 4096);
    let flush = add_flush(&mut d, 2);
    let after = add_read(&mut d, 3, 8, 4096);
    gate.hold(write);

    let run = d.run(&mut p);
    // The first read completes around the held write; the FLUSH is taken and waits for the
    // write, and the read behind it stays in the ring.
    assert_eq!((run.processed, run.completed, run.in_flight), (3, 1, 2));
    assert_eq!(d.used_idx(), 1);
    assert_eq!(d.used(0), (u32::from(read), 4097));
    assert!(read_matches(&d, &env, 1, 0, 4096));
    gate.wait_started(write);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.run(&mut p).processed, 0);
    assert_eq!(gate.started(), vec![write]);
    assert_eq!(status_at(&mem, STATUS + 2), NO_STATUS);
    assert_eq!(status_at(&mem, STATUS + 3), NO_STATUS);

    gate.release(write);
    drain(&mut d, &mut p);
    assert_eq!(d.used_idx(), 4);
    // The write completed before the FLUSH started; the FLUSH went to an I/O thread, the last
    // read did not.
    assert_eq!(d.used(1), (u32::from(write), 1));
    assert_eq!(gate.started(), vec![write, flush]);
    let later: HashSet<u32> = (2..4).map(|i| d.used(i).0).collect();
    assert_eq!(later, HashSet::from([u32::from(flush), u32::from(after)]));
    for slot in 0..4 {
        assert_eq!(status_at(&mem, STATUS + slot), OK, "slot {slot}");
    }
    assert!(read_matches(&d, &env, 3, 8, 4096));
    assert_eq!(env.file_bytes(40 * 512, 4096), vec![0x3c; 4096]);
    let s = dev.stats().snapshot();
    assert_eq!(
        (
            s.write_requests,
            s.flush_requests,
            s.read_requests,
            s.cached_reads
        ),
        (1, 1, 2, 2)
    );
}
