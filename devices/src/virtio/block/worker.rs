//! Serving the request queue: [`RequestProcessor`] (queue logic: taking chains, dispatching
//! their I/O, completing them) and the `virtio-blk` worker thread (an event-manager loop on the
//! queue's notify eventfd, the I/O threads' completion eventfd and a kill eventfd).

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::DiskImage;
use super::job::Job;
use super::pool::{Done, Executor};
use super::request::{finish_job, parse_request, Completion, Request, RequestContext};
use super::{BlockStats, ID_BYTES};
use crate::log_once::LogOnce;
use crate::virtio::{
    ActivateError, GuestMemoryAtomic, GuestMemoryMmap, QueueActivation, VirtioInterrupt,
    VirtioInterruptType,
};

/// Chains taken per wake-up before the worker yields to its other events (it re-arms itself,
/// so the rest is served on the next loop iteration).
pub const CHAINS_PER_WAKEUP: usize = 256;

/// Largest read the worker serves itself from the host page cache (see
/// [`RequestProcessor`]). The hand-off to an I/O thread that this saves costs a few
/// microseconds, small beside copying more than this; and a bounded copy per chain keeps one
/// wake-up short (at most [`CHAINS_PER_WAKEUP`] times this, 64 MiB of copying), so finished
/// jobs and the kill event do not wait long behind a burst of large cached reads, which the
/// I/O threads copy in parallel anyway.
pub const CACHED_READ_MAX_BYTES: u64 = 256 << 10;

/// Outcome of one [`RequestProcessor::process_queue`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueRun {
    /// Chains taken from the available ring.
    pub processed: usize,
    /// Chains added to the used ring (taken in this call or earlier).
    pub completed: usize,
    /// Requests still in flight (their I/O not finished) when the call returned.
    pub in_flight: usize,
    /// The driver wants a used-buffer notification (§2.7.10: EVENT_IDX or the flags).
    pub needs_interrupt: bool,
    /// The budget ran out with chains possibly left in the available ring.
    pub more: bool,
}

/// Executes the requests of a virtio-blk queue. The disk, stats and log limiter are shared with
/// the device; the I/O runs on the processor's [`Executor`].
///
/// Requests complete in any order (virtio 1.2 §5.2: they are serviced "probably out of order"),
/// except that a FLUSH starts only once every request taken before it has completed, so its
/// fdatasync covers every write completed before the FLUSH was sent (§5.2.6.2), and more.
/// While a FLUSH waits, no further chains are taken.
///
/// With I/O threads and a buffered image, a read of at most `CACHED_READ_MAX_BYTES` is first
/// tried here with `preadv2(RWF_NOWAIT)`: when the host page cache holds all of it, it is
/// completed at once like a request that needs no file access (handing it to a thread would
/// cost several times the copy), and it never counts as in flight; otherwise it goes to the
/// threads as usual. It changes no ordering rule: such a read completes before any FLUSH taken
/// after it starts, and requests taken before it may still be running, as with the threads.
pub struct RequestProcessor {
    ctx: RequestContext,
    exec: Executor,
    /// Try reads against the page cache before submitting them (only worth it when `exec`
    /// hands jobs to other threads; inline, the ordinary read is just as quick).
    cached_reads: bool,
    /// Jobs submitted to `exec` and not reaped.
    in_flight: usize,
    /// A FLUSH waiting for `in_flight` to drop to 0.
    held_flush: Option<Job>,
    /// Reused buffers.
    completions: Vec<Completion>,
    done: Vec<Done>,
}

impl RequestProcessor {
    pub(crate) fn new(
        disk: Arc<DiskImage>,
        serial: [u8; ID_BYTES],
        acked_features: u64,
        stats: Arc<BlockStats>,
        io_error_log: Arc<LogOnce>,
        exec: Executor,
    ) -> Self {
        RequestProcessor {
            ctx: RequestContext {
                disk,
                serial,
                acked_features,
                stats,
                io_error_log,
            },
            cached_reads: exec.is_threaded(),
            exec,
            in_flight: 0,
            held_flush: None,
            completions: Vec::new(),
            done: Vec::new(),
        }
    }

    pub fn acked_features(&self) -> u64 {
        self.ctx.acked_features
    }

    pub fn stats(&self) -> &BlockStats {
        &self.ctx.stats
    }

    /// Requests taken from the queue whose I/O has not completed (including a waiting FLUSH).
    pub fn in_flight(&self) -> usize {
        self.in_flight + usize::from(self.held_flush.is_some())
    }

    /// The eventfd the I/O threads signal when requests finish (none with inline I/O): when it
    /// is readable, read it, then call [`RequestProcessor::process_queue`].
    pub fn completion_fd(&self) -> Option<&EventFd> {
        self.exec.completion_fd()
    }

    /// Blocks until the I/O threads signal finished requests (and resets the signal), at most
    /// `timeout`; false on timeout. For callers without an event loop (tests, benchmarks).
    pub fn wait_for_completions(&self, timeout: Duration) -> bool {
        self.exec.wait(timeout)
    }

    /// Completes the requests whose I/O finished, then takes up to `budget` chains from `queue`:
    /// requests that need no file access (or are refused) are completed at once, the others
    /// are handed to the I/O threads and completed by a later call (with inline I/O, by this
    /// one). At most `queue.size()` requests are in flight; at that bound, or while a FLUSH
    /// waits, chains stay in the available ring until completions make room.
    ///
    /// Notifications from the driver are suppressed while working and re-enabled once the
    /// available ring is empty, re-checking it afterwards so a request made in between is not
    /// lost (with EVENT_IDX, `enable_notification` publishes `avail_event` and re-reads the
    /// index). When the call stops at the bound they stay suppressed: the completions bring the
    /// worker back. Whether to interrupt is decided once at the end with `needs_notification`.
    ///
    /// Errors mean the queue itself is broken (available index too far ahead, rings outside
    /// guest memory): the caller should stop serving it until the device is reset.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<GuestMemoryMmap>,
        budget: usize,
    ) -> Result<QueueRun, virtio_queue::Error> {
        let mut run = QueueRun::default();
        // The used ring has `size` entries: a driver cannot have more requests outstanding.
        let cap = usize::from(queue.size());
        // Rounds that found the available index moved but took nothing.
        let mut idle_rounds = 0;
        loop {
            run.completed += self.reap(queue, mem)?;
            if self.in_flight == 0 {
                if let Some(flush) = self.held_flush.take() {
                    self.submit(flush);
                    continue;
                }
            }
            if self.held_flush.is_some() || self.in_flight >= cap {
                break;
            }
            if run.processed >= budget {
                // Without re-enabling notifications: the caller comes back for the rest.
                run.more = true;
                break;
            }
            queue.disable_notification(&**mem)?;
            let taken = self.take_chains(queue, mem, budget - run.processed, cap)?;
            run.processed += taken;
            for c in self.completions.drain(..) {
                // An available-ring entry naming no descriptor has nothing to give back (the
                // chain was empty, so it is already counted in `dropped_chains`).
                if c.head < queue.size() {
                    queue.add_used(&**mem, c.head, c.used_len)?;
                    run.completed += 1;
                }
            }
            if taken == 0 {
                if !queue.enable_notification(&**mem)? {
                    break;
                }
                // Normally a chain made available meanwhile, taken next round; a driver that
                // keeps moving the index back and forth must not keep the worker here.
                idle_rounds += 1;
                if idle_rounds >= budget {
                    run.more = true;
                    break;
                }
            }
        }
        run.in_flight = self.in_flight();
        run.needs_interrupt = run.completed > 0 && queue.needs_notification(&**mem)?;
        Ok(run)
    }

    fn submit(&mut self, job: Job) {
        self.in_flight += 1;
        self.exec.submit(job);
    }

    /// Starts a checked request that may run now: a read served from the page cache is
    /// completed here (its completion goes with the other immediate ones in
    /// `self.completions`), anything else is submitted.
    fn start(&mut self, job: Job) {
        if self.cached_reads
            && job.len() <= CACHED_READ_MAX_BYTES
            && job.read_cached(&self.ctx.disk)
        {
            self.ctx.stats.cached_reads.fetch_add(1, Ordering::Relaxed);
            self.completions.push(finish_job(&self.ctx, job, Ok(())));
        } else {
            self.submit(job);
        }
    }

    /// Takes up to `max` chains, stopping at `cap` requests in flight or at a FLUSH that has
    /// to wait; completed chains go to `self.completions`.
    fn take_chains(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<GuestMemoryMmap>,
        max: usize,
        cap: usize,
    ) -> Result<usize, virtio_queue::Error> {
        // `iter` checks the available index against the queue size without logging (a guest
        // could otherwise flood the log through `pop_descriptor_chain`).
        let mut iter = queue.iter(&**mem)?;
        let mut taken = 0;
        while taken < max && self.held_flush.is_none() && self.in_flight < cap {
            let Some(chain) = iter.next() else {
                break;
            };
            taken += 1;
            match parse_request(chain, mem, &self.ctx) {
                Request::Done(c) => self.completions.push(c),
                Request::Io(job) if job.is_flush() && self.in_flight > 0 => {
                    self.held_flush = Some(job);
                }
                Request::Io(job) => self.start(job),
            }
        }
        Ok(taken)
    }

    /// Completes the jobs that finished; returns how many were added to the used ring.
    fn reap(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<usize, virtio_queue::Error> {
        self.exec.take_done(&mut self.done);
        self.in_flight -= self.done.len();
        let mut added = 0;
        for d in self.done.drain(..) {
            let c = finish_job(&self.ctx, d.job, d.result);
            // Jobs come from chains with a head in the table: always true.
            if c.head < queue.size() {
                queue.add_used(mem, c.head, c.used_len)?;
                added += 1;
            }
        }
        Ok(added)
    }
}

/// The state of the worker thread, driven by event-manager.
struct QueueWorker {
    processor: RequestProcessor,
    mem: GuestMemoryAtomic,
    queue: Queue,
    index: u16,
    notify: EventFd,
    /// The I/O threads' completion eventfd (a duplicate, for epoll).
    completions: EventFd,
    kill: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
    stop: Arc<AtomicBool>,
    /// Set when the queue is found broken: no further processing until reset.
    broken: bool,
    warned_interrupt: bool,
}

impl QueueWorker {
    fn handle_notify(&mut self) {
        // Drain the counter; a failure (EAGAIN) only means there was nothing to drain.
        let _ = self.notify.read();
        self.processor
            .ctx
            .stats
            .notifications
            .fetch_add(1, Ordering::Relaxed);
        self.serve();
    }

    fn handle_completions(&mut self) {
        // Read before reaping (in `serve`): a job finishing afterwards signals again.
        let _ = self.completions.read();
        self.serve();
    }

    fn serve(&mut self) {
        if self.broken {
            return;
        }
        let mem = self.mem.memory().into_inner();
        match self
            .processor
            .process_queue(&mut self.queue, &mem, CHAINS_PER_WAKEUP)
        {
            Ok(run) => {
                if run.more {
                    // Serve the rest after any other pending event (the kill event).
                    let _ = self.notify.write(1);
                }
                if run.needs_interrupt {
                    self.processor
                        .ctx
                        .stats
                        .interrupts
                        .fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self
                        .interrupt
                        .trigger(VirtioInterruptType::Queue(self.index))
                    {
                        if !self.warned_interrupt {
                            self.warned_interrupt = true;
                            log::warn!("virtio-blk: cannot signal the used-buffer interrupt: {e}");
                        }
                    }
                }
            }
            Err(e) => {
                self.broken = true;
                log::warn!(
                    "virtio-blk: queue {} is broken ({e}); ignoring it until the driver resets the device",
                    self.index
                );
            }
        }
    }
}

impl MutEventSubscriber for QueueWorker {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.kill.as_raw_fd() {
            let _ = self.kill.read();
            self.stop.store(true, Ordering::Release);
        } else if events.fd() == self.notify.as_raw_fd() {
            self.handle_notify();
        } else if events.fd() == self.completions.as_raw_fd() {
            self.handle_completions();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.notify, &self.completions, &self.kill] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                log::error!("virtio-blk: cannot watch an eventfd: {e:?}");
                self.stop.store(true, Ordering::Release);
            }
        }
    }
}

/// A running worker thread; [`WorkerHandle::stop`] ends and joins it.
pub(crate) struct WorkerHandle {
    kill: EventFd,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Validates the queues, makes the processor (starting its I/O threads on this thread) and
    /// starts the `virtio-blk` thread.
    pub(crate) fn start(
        make_processor: impl FnOnce() -> io::Result<RequestProcessor>,
        mem: GuestMemoryAtomic,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<QueueActivation>,
    ) -> Result<WorkerHandle, ActivateError> {
        let mut queues = queues.into_iter();
        let (Some(act), None) = (queues.next(), queues.next()) else {
            return Err(ActivateError::BadQueue(
                "virtio-blk has exactly one queue".into(),
            ));
        };
        if act.index != 0 {
            return Err(ActivateError::BadQueue(format!(
                "virtio-blk has no queue {}",
                act.index
            )));
        }
        let mut queue = act.queue;
        if !queue.is_valid(&*mem.memory()) {
            return Err(ActivateError::BadQueue(
                "queue 0 is not ready or its rings are outside guest memory".into(),
            ));
        }

        // From here on, an error drops the processor, which stops and joins its I/O threads.
        let processor = make_processor().map_err(ActivateError::Worker)?;
        queue.set_event_idx(processor.acked_features() & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        let completions = match processor.completion_fd() {
            Some(fd) => fd.try_clone(),
            // Inline I/O: nothing ever signals it.
            None => EventFd::new(EFD_NONBLOCK),
        }
        .map_err(ActivateError::Worker)?;
        let kill = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let stop = Arc::new(AtomicBool::new(false));
        let worker = QueueWorker {
            processor,
            mem,
            queue,
            index: act.index,
            notify: act.notify,
            completions,
            kill: kill.try_clone().map_err(ActivateError::Worker)?,
            interrupt,
            stop: stop.clone(),
            broken: false,
            warned_interrupt: false,
        };
        let mut em: EventManager<Arc<Mutex<QueueWorker>>> = EventManager::new()
            .map_err(|e| ActivateError::Worker(io::Error::other(format!("{e:?}"))))?;
        let worker = Arc::new(Mutex::new(worker));
        em.add_subscriber(worker.clone());
        // A notification that arrived before activation (the driver may kick the queue as soon
        // as it is enabled) is in the eventfd counter and fires on the first epoll_wait.
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("virtio-blk".into())
            .spawn(move || {
                crate::worker_hook::worker_started("virtio-blk");
                while !thread_stop.load(Ordering::Acquire) {
                    if let Err(e) = em.run() {
                        log::error!("virtio-blk: event loop failed: {e:?}");
                        break;
                    }
                }
                // The queue, eventfds and guest memory reference go with the worker; dropping
                // the processor drops the requests not started, waits for the running ones
                // (whose completions are dropped: the rings are not touched again) and joins
                // the I/O threads.
                drop(em);
                drop(worker);
            })
            .map_err(ActivateError::Worker)?;
        Ok(WorkerHandle {
            kill,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (and for its I/O threads); its queue is dropped.
    pub(crate) fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.kill.write(1) {
            log::error!("virtio-blk: cannot signal the worker to stop: {e}");
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("virtio-blk: the worker thread panicked");
            }
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
