//! Serving the request queue: [`RequestProcessor`] (queue logic, no threads) and the
//! `virtio-blk` worker thread (an event-manager loop on the queue's notify eventfd and a kill
//! eventfd).

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{DiskImage, IoScratch};
use super::request::{process_chain, Completion, RequestContext};
use super::{BlockStats, ID_BYTES};
use crate::log_once::LogOnce;
use crate::virtio::{
    ActivateError, GuestMemoryAtomic, GuestMemoryMmap, QueueActivation, VirtioInterrupt,
    VirtioInterruptType,
};

/// Chains served per wake-up before the worker yields to its other events (it re-arms itself,
/// so the rest is served on the next loop iteration).
pub const CHAINS_PER_WAKEUP: usize = 256;

/// Outcome of one [`RequestProcessor::process_queue`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueRun {
    /// Chains taken from the available ring.
    pub processed: usize,
    /// The driver wants a used-buffer notification (§2.7.10: EVENT_IDX or the flags).
    pub needs_interrupt: bool,
    /// The budget ran out with chains possibly left in the available ring.
    pub more: bool,
}

/// Executes the requests of a virtio-blk queue. Owns the I/O scratch state; the disk, stats and
/// log limiter are shared with the device.
pub struct RequestProcessor {
    disk: Arc<DiskImage>,
    serial: [u8; ID_BYTES],
    acked_features: u64,
    stats: Arc<BlockStats>,
    io_error_log: Arc<LogOnce>,
    scratch: IoScratch,
    completions: Vec<Completion>,
}

impl RequestProcessor {
    pub(crate) fn new(
        disk: Arc<DiskImage>,
        serial: [u8; ID_BYTES],
        acked_features: u64,
        stats: Arc<BlockStats>,
        io_error_log: Arc<LogOnce>,
    ) -> Self {
        RequestProcessor {
            disk,
            serial,
            acked_features,
            stats,
            io_error_log,
            scratch: IoScratch::default(),
            completions: Vec::new(),
        }
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub fn stats(&self) -> &BlockStats {
        &self.stats
    }

    /// Serves up to `budget` chains from `queue` and adds them to the used ring.
    ///
    /// Notifications from the driver are suppressed while working and re-enabled before
    /// returning, re-checking the available ring afterwards so a request made in between is not
    /// lost (with EVENT_IDX, `enable_notification` publishes `avail_event` and re-reads the
    /// index). Whether to interrupt is decided once at the end with `needs_notification`.
    ///
    /// Errors mean the queue itself is broken (available index too far ahead, rings outside
    /// guest memory): the caller should stop serving it until the device is reset.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        budget: usize,
    ) -> Result<QueueRun, virtio_queue::Error> {
        let mut run = QueueRun::default();
        loop {
            queue.disable_notification(mem)?;
            let left = budget - run.processed;
            {
                let ctx = RequestContext {
                    disk: &self.disk,
                    serial: &self.serial,
                    acked_features: self.acked_features,
                    stats: &self.stats,
                    io_error_log: &self.io_error_log,
                };
                // `iter` checks the available index against the queue size without logging (a
                // guest could otherwise flood the log through `pop_descriptor_chain`).
                let iter = queue.iter(mem)?;
                for chain in iter.take(left) {
                    let c = process_chain(chain, mem, &ctx, &mut self.scratch);
                    self.completions.push(c);
                }
            }
            run.processed += self.completions.len();
            let size = queue.size();
            for c in self.completions.drain(..) {
                if c.head >= size {
                    // An available-ring entry naming no descriptor: nothing to give back (the
                    // chain was empty, so it is already counted in `dropped_chains`).
                    continue;
                }
                queue.add_used(mem, c.head, c.used_len)?;
            }
            if run.processed >= budget {
                // Without re-enabling notifications: the caller comes back for the rest.
                run.more = true;
                break;
            }
            if !queue.enable_notification(mem)? {
                break;
            }
        }
        run.needs_interrupt = run.processed > 0 && queue.needs_notification(mem)?;
        Ok(run)
    }
}

/// The state of the worker thread, driven by event-manager.
struct QueueWorker {
    processor: RequestProcessor,
    mem: GuestMemoryAtomic,
    queue: Queue,
    index: u16,
    notify: EventFd,
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
            .stats
            .notifications
            .fetch_add(1, Ordering::Relaxed);
        if self.broken {
            return;
        }
        let mem = self.mem.memory();
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
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.notify, &self.kill] {
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
    /// Validates the queues and starts the `virtio-blk` thread.
    pub(crate) fn start(
        processor: RequestProcessor,
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
        queue.set_event_idx(processor.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        if !queue.is_valid(&*mem.memory()) {
            return Err(ActivateError::BadQueue(
                "queue 0 is not ready or its rings are outside guest memory".into(),
            ));
        }

        let kill = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let stop = Arc::new(AtomicBool::new(false));
        let worker = QueueWorker {
            processor,
            mem,
            queue,
            index: act.index,
            notify: act.notify,
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
                // The queue, eventfds and guest memory reference go with the worker.
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

    /// Stops the thread and waits for it; its queue is dropped.
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
