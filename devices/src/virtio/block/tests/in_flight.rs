//! Requests in flight on the I/O threads: out-of-order completion, FLUSH ordering, errors,
//! the in-flight bound, parallelism, and reset with requests in flight. The gated devices here
//! send every read to the I/O threads (`cached_reads` tests the reads the worker serves).

use std::collections::HashSet;
use std::time::Instant;

use super::super::job::Job;
use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// Holds jobs back in the I/O threads: a job whose head is held waits before its I/O.
#[derive(Default)]
pub(super) struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
}

#[derive(Default)]
struct GateState {
    held: HashSet<u16>,
    /// Heads in the order their jobs reached the gate (started).
    started: Vec<u16>,
    /// Jobs at the gate now.
    waiting: usize,
    /// When set, each job waits until this many are at the gate together.
    rendezvous: Option<usize>,
}

impl Gate {
    pub(super) fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    pub(super) fn hook(self: &Arc<Self>) -> pool::Gate {
        let g = self.clone();
        Arc::new(move |job: &Job| g.pass(job.head()))
    }

    fn pass(&self, head: u16) {
        let mut st = self.state.lock().unwrap();
        st.started.push(head);
        st.waiting += 1;
        self.cv.notify_all();
        let deadline = Instant::now() + WAIT;
        while st.held.contains(&head) || st.rendezvous.is_some_and(|n| st.waiting < n) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "job {head} held back too long");
            st = self.cv.wait_timeout(st, left).unwrap().0;
        }
        // Past a rendezvous once: the others that met here go on as well.
        st.rendezvous = None;
        st.waiting -= 1;
        self.cv.notify_all();
    }

    pub(super) fn hold(&self, head: u16) {
        self.state.lock().unwrap().held.insert(head);
    }

    pub(super) fn release(&self, head: u16) {
        self.state.lock().unwrap().held.remove(&head);
        self.cv.notify_all();
    }

    pub(super) fn started(&self) -> Vec<u16> {
        self.state.lock().unwrap().started.clone()
    }

    pub(super) fn wait_started(&self, head: u16) {
        let st = self.state.lock().unwrap();
        let (_st, t) = self
            .cv
            .wait_timeout_while(st, WAIT, |s| !s.started.contains(&head))
            .unwrap();
        assert!(!t.timed_out(), "job {head} never started");
    }
}

/// A device whose I/O threads pass `gate` before each job.
fn gated_device(env: &Env, gate: &Arc<Gate>, io_threads: usize) -> VirtioBlk {
    let mut dev = VirtioBlk::new(DiskConfig {
        io_threads,
        ..env.cfg()
    })
    .unwrap();
    dev.set_acked_features(dev.device_features());
    dev.io_gate = Some(gate.hook());
    // Every read must reach the gate, even one the worker could serve from the page cache.
    dev.disk.stop_cached_reads_for_test();
    dev
}

/// Serves the queue until nothing is in flight; returns the runs.
pub(super) fn drain(d: &mut Driver, p: &mut RequestProcessor) -> Vec<QueueRun> {
    let mut runs = vec![d.run(p)];
    while p.in_flight() > 0 {
        assert!(p.wait_for_completions(WAIT), "no completion");
        runs.push(d.run(p));
    }
    runs
}

/// Makes chain `i` of a batch: an IN of 4 KiB at sector 8 * i into its own buffer and status
/// byte; returns its head.
fn add_read(d: &mut Driver, i: u64) -> u16 {
    let hdr = HDR + 16 * i;
    header(d.mem, hdr, VIRTIO_BLK_T_IN, 8 * i);
    d.mem
        .write_obj(NO_STATUS, GuestAddress(STATUS + i))
        .unwrap();
    d.add(&[
        (hdr, 16, 0),
        (DATA + 0x1000 * i, 4096, WRITE),
        (STATUS + i, 1, WRITE),
    ])
}

fn read_data_ok(d: &Driver, env: &Env, i: u64) -> bool {
    let mut got = vec![0u8; 4096];
    d.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x1000 * i))
        .unwrap();
    got == env.file_bytes(8 * i * 512, 4096)
}

#[test]
fn requests_complete_out_of_order() {
    let env = Env::new();
    let gate = Gate::new();
    let dev = gated_device(&env, &gate, 4);
    let mut p = dev.threaded_request_processor(4, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    let heads: Vec<u16> = (0..3).map(|i| add_read(&mut d, i)).collect();
    gate.hold(heads[0]);
    let run = d.run(&mut p);
    assert_eq!(run.processed, 3);
    // The first request waits in its I/O thread; the two others complete around it.
    let deadline = Instant::now() + WAIT;
    while d.used_idx() < 2 {
        assert!(
            Instant::now() < deadline,
            "the later requests did not complete"
        );
        p.wait_for_completions(Duration::from_millis(100));
        d.run(&mut p);
    }
    assert_eq!(p.in_flight(), 1);
    assert_eq!(d.used_idx(), 2);
    let mut first_two: Vec<u32> = (0..2).map(|i| d.used(i).0).collect();
    first_two.sort();
    assert_eq!(first_two, vec![u32::from(heads[1]), u32::from(heads[2])]);
    for i in 0..2 {
        assert_eq!(d.used(i).1, 4097);
    }
    for i in 1..3 {
        assert_eq!(status_at(&mem, STATUS + i), OK);
        assert!(read_data_ok(&d, &env, i));
    }
    assert_eq!(status_at(&mem, STATUS), NO_STATUS, "completed too early");

    gate.release(heads[0]);
    let runs = drain(&mut d, &mut p);
    assert!(runs.last().unwrap().needs_interrupt);
    assert_eq!(d.used_idx(), 3);
    assert_eq!(d.used(2), (u32::from(heads[0]), 4097));
    assert_eq!(status_at(&mem, STATUS), OK);
    assert!(read_data_ok(&d, &env, 0));
    let s = dev.stats().snapshot();
    assert_eq!(
        (s.read_requests, s.read_bytes, s.io_errors),
        (3, 3 * 4096, 0)
    );
}

#[test]
fn requests_run_in_parallel() {
    let env = Env::new();
    let gate = Gate::new();
    let dev = gated_device(&env, &gate, 4);
    let mut p = dev.threaded_request_processor(4, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    // Each job waits at the gate until four are there: four threads at once, or a timeout.
    gate.state.lock().unwrap().rendezvous = Some(4);
    for i in 0..4 {
        add_read(&mut d, i);
    }
    drain(&mut d, &mut p);
    assert_eq!(d.used_idx(), 4);
    for i in 0..4 {
        assert_eq!(status_at(&mem, STATUS + i), OK);
        assert!(read_data_ok(&d, &env, i));
    }
}

#[test]
fn flush_waits_for_the_requests_before_it() {
    let env = Env::new();
    let gate = Gate::new();
    let dev = gated_device(&env, &gate, 4);
    let mut p = dev.threaded_request_processor(4, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);

    // A write, a FLUSH, then a read.
    let data = vec![0x77u8; 512];
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 2);
    let write = d.add(&[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, WRITE)]);
    header(&mem, HDR + 16, VIRTIO_BLK_T_FLUSH, 0);
    mem.write_obj(NO_STATUS, GuestAddress(STATUS + 1)).unwrap();
    let flush = d.add(&[(HDR + 16, 16, 0), (STATUS + 1, 1, WRITE)]);
    let read = add_read(&mut d, 2);
    gate.hold(write);

    let run = d.run(&mut p);
    // The FLUSH is taken but waits; the read behind it stays in the ring.
    assert_eq!((run.processed, run.in_flight), (2, 2));
    gate.wait_started(write);
    // Nothing else reaches the I/O threads while the write is held.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.run(&mut p).processed, 0);
    assert_eq!(gate.started(), vec![write]);
    assert_eq!(d.used_idx(), 0);

    gate.release(write);
    drain(&mut d, &mut p);
    assert_eq!(d.used_idx(), 3);
    // The write completed before the FLUSH started, so it came back first.
    assert_eq!(d.used(0), (u32::from(write), 1));
    let started = gate.started();
    assert_eq!(started[0], write);
    assert!(started.contains(&flush) && started.contains(&read));
    let later: HashSet<u32> = (1..3).map(|i| d.used(i).0).collect();
    assert_eq!(later, HashSet::from([u32::from(flush), u32::from(read)]));
    assert_eq!(status_at(&mem, STATUS + 1), OK);
    assert_eq!(env.file_bytes(2 * 512, 512), data);
    let s = dev.stats().snapshot();
    assert_eq!(
        (s.write_requests, s.flush_requests, s.read_requests),
        (1, 1, 1)
    );
}

#[test]
fn an_io_error_in_an_io_thread_is_ioerr() {
    let env = Env::new();
    let dev = env.device(false);
    let mut p = dev.threaded_request_processor(2, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    // The image shrinks behind the device's back: reads past the new end fail in preadv.
    env.shrink(4 * 512);
    add_read(&mut d, 0); // sectors 0-7: partly past the new end
    add_read(&mut d, 1); // sectors 8-15: past it
    drain(&mut d, &mut p);
    assert_eq!(d.used_idx(), 2);
    for i in 0..2 {
        assert_eq!(d.used(i).1, 1, "no data reported for a failed read");
        assert_eq!(status_at(&mem, STATUS + u64::from(i)), IOERR);
    }
    let s = dev.stats().snapshot();
    assert_eq!((s.io_errors, s.read_bytes), (2, 0));
}

#[test]
fn every_request_type_through_the_io_threads() {
    // The statuses and used lengths of the inline tests, with the I/O on threads.
    let env = Env::new();
    let dev = env.device(false);
    let mut p = dev.threaded_request_processor(3, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    let mut one = |d: &mut Driver, t: u32, sector: u64, descs: &[(u64, u32, u16)]| {
        header(&mem, HDR, t, sector);
        mem.write_obj(NO_STATUS, GuestAddress(STATUS)).unwrap();
        let head = d.add(descs);
        let before = d.used_idx();
        drain(d, &mut p);
        assert_eq!(d.used_idx(), before.wrapping_add(1));
        let (id, len) = d.used(before);
        assert_eq!(id, u32::from(head));
        (status_at(&mem, STATUS), len)
    };
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 13) as u8).collect();
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let w = [(HDR, 16, 0), (DATA, 1024, 0), (STATUS, 1, WRITE)];
    assert_eq!(one(&mut d, VIRTIO_BLK_T_OUT, 5, &w), (OK, 1));
    assert_eq!(env.file_bytes(5 * 512, 1024), data);
    let r = [
        (HDR, 16, 0),
        (DATA + 0x1000, 1024, WRITE),
        (STATUS, 1, WRITE),
    ];
    assert_eq!(one(&mut d, VIRTIO_BLK_T_IN, 5, &r), (OK, 1025));
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, data);
    let f = [(HDR, 16, 0), (STATUS, 1, WRITE)];
    assert_eq!(one(&mut d, VIRTIO_BLK_T_FLUSH, 0, &f), (OK, 1));
    let id = [(HDR, 16, 0), (DATA, 20, WRITE), (STATUS, 1, WRITE)];
    assert_eq!(one(&mut d, VIRTIO_BLK_T_GET_ID, 0, &id), (OK, 21));
    assert_eq!(one(&mut d, 99, 0, &f), (UNSUPP, 1));
    assert_eq!(one(&mut d, VIRTIO_BLK_T_IN, IMAGE_SECTORS, &r), (IOERR, 1));
    // Write-zeroes over the data written above, then read back zeroes.
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&5u64.to_le_bytes());
    seg[8..12].copy_from_slice(&2u32.to_le_bytes());
    mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
    let wz = [(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, WRITE)];
    assert_eq!(one(&mut d, VIRTIO_BLK_T_WRITE_ZEROES, 0, &wz), (OK, 1));
    assert_eq!(env.file_bytes(5 * 512, 1024), vec![0; 1024]);
    assert_eq!(one(&mut d, VIRTIO_BLK_T_DISCARD, 0, &wz), (OK, 1));
}

#[test]
fn in_flight_requests_are_bounded_by_the_queue_size() {
    let env = Env::new();
    let gate = Gate::new();
    let dev = gated_device(&env, &gate, 4);
    let mut p = dev.threaded_request_processor(4, QSIZE).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RINGS);
    // A driver cannot have more than QSIZE requests outstanding, but a hostile one can make the
    // same chain available again before it was used.
    let head = add_read(&mut d, 0);
    gate.hold(head);
    for _ in 1..QSIZE {
        d.make_available(head);
    }
    let run = d.run(&mut p);
    assert_eq!(
        (run.processed, run.in_flight),
        (usize::from(QSIZE), usize::from(QSIZE))
    );
    for _ in 0..QSIZE {
        d.make_available(head);
    }
    let run = d.run(&mut p);
    assert_eq!((run.processed, run.in_flight), (0, usize::from(QSIZE)));
    assert_eq!(p.in_flight(), usize::from(QSIZE));

    gate.release(head);
    for run in drain(&mut d, &mut p) {
        assert!(run.in_flight <= usize::from(QSIZE));
    }
    assert_eq!(d.used_idx(), 2 * QSIZE);
    assert_eq!(gate.started().len(), 2 * usize::from(QSIZE));
}

#[test]
fn reset_with_requests_in_flight() {
    let env = Env::new();
    let gate = Gate::new();
    // One I/O thread: one request runs (held), the next waits in the pool's queue.
    let mut dev = gated_device(&env, &gate, 1);
    let mem = guest_memory();
    let atomic = VmGuestMemoryAtomic::from(mem.clone());
    let irq = Arc::new(TestInterrupt::default());

    let mut d = Driver::new(&mem, RINGS);
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let queue = std::mem::replace(&mut d.queue, Queue::new(QSIZE).unwrap());
    activate_request_queue(&mut dev, atomic.clone(), &irq, queue, &notify);
    mem.write_slice(&[0u8; 0x2000], GuestAddress(DATA)).unwrap();
    let running = add_read(&mut d, 0);
    let queued = add_read(&mut d, 1);
    gate.hold(running);
    gate.hold(queued);
    notify.write(1).unwrap();
    gate.wait_started(running);

    // Reset waits for the running request, whatever its length, and drops the queued one.
    let g = gate.clone();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        g.release(running);
    });
    let t = Instant::now();
    dev.reset();
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "reset did not wait"
    );
    releaser.join().unwrap();
    assert!(!dev.is_active());
    // The running read finished before reset returned; neither request was completed.
    assert!(read_data_ok(&d, &env, 0));
    assert_eq!(gate.started(), vec![running]);
    assert_eq!(d.used_idx(), 0);
    assert_eq!(status_at(&mem, STATUS), NO_STATUS);
    assert_eq!(status_at(&mem, STATUS + 1), NO_STATUS);
    assert!(irq.count.lock().unwrap().is_empty());

    // A new activation on fresh rings sees only its own requests.
    let mut d = Driver::new(&mem, RINGS);
    mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
    mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let queue = std::mem::replace(&mut d.queue, Queue::new(QSIZE).unwrap());
    dev.set_acked_features(dev.device_features());
    activate_request_queue(&mut dev, atomic, &irq, queue, &notify);
    header(&mem, HDR + 0x100, VIRTIO_BLK_T_FLUSH, 0);
    mem.write_obj(NO_STATUS, GuestAddress(STATUS + 2)).unwrap();
    let flush = d.add(&[(HDR + 0x100, 16, 0), (STATUS + 2, 1, WRITE)]);
    notify.write(1).unwrap();
    irq.wait_for(1);
    assert_eq!(d.used_idx(), 1);
    assert_eq!(d.used(0), (u32::from(flush), 1));
    assert_eq!(status_at(&mem, STATUS + 2), OK);
    assert_eq!(status_at(&mem, STATUS + 1), NO_STATUS);
    drop(dev);
    assert_eq!(gate.started(), vec![running, flush]);
}
