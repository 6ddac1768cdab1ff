//! The `virtio-net` worker thread: an event-manager loop on the RX and TX notify eventfds, the
//! back-end's descriptor, a link-status timer and a kill eventfd.
//!
//! The back-end's descriptor is watched only while the guest has RX buffers: when a frame waits
//! and none are left, it is removed from the epoll set (the descriptor stays readable, so
//! watching it would spin) until the RX queue is notified.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::{link_status, NetProcessor, NetStats, RX_QUEUE, TX_QUEUE};
use crate::net::NetBackend;
use crate::virtio::{
    ActivateError, GuestMemoryAtomic, QueueActivation, VirtioInterrupt, VirtioInterruptType,
};

/// TX chains served per wake-up before the worker yields to its other events.
pub const TX_CHAINS_PER_WAKEUP: usize = 256;
/// RX frames delivered per wake-up.
pub const RX_FRAMES_PER_WAKEUP: usize = 256;
/// How often the link status is checked.
pub const LINK_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Raises interrupt `t`, counting it; a failure is logged once.
fn signal(
    interrupt: &dyn VirtioInterrupt,
    stats: &NetStats,
    warned: &mut bool,
    t: VirtioInterruptType,
) {
    match t {
        VirtioInterruptType::Config => NetStats::inc(&stats.config_interrupts),
        VirtioInterruptType::Queue(_) => NetStats::inc(&stats.interrupts),
    }
    if let Err(e) = interrupt.trigger(t) {
        if !*warned {
            *warned = true;
            log::warn!("virtio-net: cannot signal an interrupt: {e}");
        }
    }
}

struct NetWorker {
    processor: NetProcessor,
    mem: GuestMemoryAtomic,
    rx: Queue,
    tx: Queue,
    rx_notify: EventFd,
    tx_notify: EventFd,
    kill: EventFd,
    timer: TimerFd,
    backend_fd: RawFd,
    interrupt: Arc<dyn VirtioInterrupt>,
    stop: Arc<AtomicBool>,
    status: Arc<AtomicU16>,
    /// The back-end's descriptor is in the epoll set.
    watching_backend: bool,
    rx_broken: bool,
    tx_broken: bool,
    warned_interrupt: bool,
}

impl NetWorker {
    fn signal(&mut self, t: VirtioInterruptType) {
        signal(
            &*self.interrupt,
            self.processor.stats(),
            &mut self.warned_interrupt,
            t,
        );
    }

    fn watch_backend(&mut self, ops: &mut EventOps, watch: bool) {
        if watch == self.watching_backend {
            return;
        }
        let ev = Events::new_raw(self.backend_fd, EventSet::IN);
        let r = if watch { ops.add(ev) } else { ops.remove(ev) };
        match r {
            Ok(()) => self.watching_backend = watch,
            Err(e) => log::error!("virtio-net: cannot (un)watch the back-end: {e:?}"),
        }
    }

    fn handle_tx(&mut self) {
        let _ = self.tx_notify.read();
        if self.tx_broken {
            return;
        }
        let mem = self.mem.memory();
        let stats = self.processor.shared_stats();
        let (interrupt, warned) = (&*self.interrupt, &mut self.warned_interrupt);
        let mut notify = || {
            signal(
                interrupt,
                &stats,
                warned,
                VirtioInterruptType::Queue(TX_QUEUE),
            )
        };
        match self.processor.process_tx_notify(
            &mut self.tx,
            &mem,
            TX_CHAINS_PER_WAKEUP,
            &mut notify,
        ) {
            Ok(run) => {
                if run.more {
                    let _ = self.tx_notify.write(1);
                }
            }
            Err(e) => {
                self.tx_broken = true;
                log::warn!("virtio-net: the TX queue is broken ({e}); ignoring it until reset");
            }
        }
    }

    fn handle_rx(&mut self, ops: &mut EventOps) {
        if self.rx_broken {
            return;
        }
        let mem = self.mem.memory();
        match self
            .processor
            .process_rx(&mut self.rx, &mem, RX_FRAMES_PER_WAKEUP)
        {
            Ok(run) => {
                if run.needs_interrupt {
                    self.signal(VirtioInterruptType::Queue(RX_QUEUE));
                }
                // Level-triggered: while watched, frames left behind by the budget wake the
                // loop again. Stop watching when out of buffers (until an RX notification) or
                // on a back-end error (until the next link poll).
                self.watch_backend(ops, !run.out_of_buffers && !run.backend_error);
            }
            Err(e) => {
                self.rx_broken = true;
                self.watch_backend(ops, false);
                log::warn!("virtio-net: the RX queue is broken ({e}); ignoring it until reset");
            }
        }
    }

    fn handle_timer(&mut self, ops: &mut EventOps) {
        let _ = self.timer.wait();
        let status = link_status(self.processor.backend().link_up());
        if self.status.swap(status, Ordering::AcqRel) != status {
            log::info!(
                "virtio-net: link {}",
                if status != 0 { "up" } else { "down" }
            );
            self.signal(VirtioInterruptType::Config);
        }
        // Retry a back-end that failed (not one waiting for guest buffers).
        if !self.watching_backend && !self.processor.has_pending_frame() {
            self.handle_rx(ops);
        }
    }
}

impl MutEventSubscriber for NetWorker {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.kill.as_raw_fd() {
            let _ = self.kill.read();
            self.stop.store(true, Ordering::Release);
        } else if fd == self.tx_notify.as_raw_fd() {
            self.handle_tx();
        } else if fd == self.rx_notify.as_raw_fd() {
            let _ = self.rx_notify.read();
            self.handle_rx(ops);
        } else if fd == self.backend_fd {
            self.handle_rx(ops);
        } else if fd == self.timer.as_raw_fd() {
            self.handle_timer(ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            self.kill.as_raw_fd(),
            self.tx_notify.as_raw_fd(),
            self.rx_notify.as_raw_fd(),
            self.timer.as_raw_fd(),
            self.backend_fd,
        ];
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("virtio-net: cannot watch a descriptor: {e:?}");
                self.stop.store(true, Ordering::Release);
            }
        }
        self.watching_backend = true;
    }
}

/// A running worker thread; [`WorkerHandle::stop`] ends and joins it.
pub(crate) struct WorkerHandle {
    kill: EventFd,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<NetProcessor>>>,
}

type StartError = (ActivateError, Option<Box<dyn NetBackend>>);

impl WorkerHandle {
    /// Validates the queues and starts the `virtio-net` thread. On failure the back-end is
    /// handed back.
    pub(crate) fn start(
        processor: NetProcessor,
        mem: GuestMemoryAtomic,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<QueueActivation>,
        status: Arc<AtomicU16>,
    ) -> Result<WorkerHandle, StartError> {
        let mut rx = None;
        let mut tx = None;
        let mut bad = None;
        for act in queues {
            match act.index {
                RX_QUEUE if rx.is_none() => rx = Some(act),
                TX_QUEUE if tx.is_none() => tx = Some(act),
                i => {
                    bad = Some(format!(
                        "virtio-net has no queue {i} (or it was given twice)"
                    ))
                }
            }
        }
        let (Some(rx), Some(tx), None) = (rx, tx, bad.clone()) else {
            let msg = bad.unwrap_or_else(|| "virtio-net needs both queue 0 and queue 1".into());
            return Err((ActivateError::BadQueue(msg), Some(processor.into_backend())));
        };
        let event_idx = processor.acked_features() & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut rxq = rx.queue;
        let mut txq = tx.queue;
        for (q, i) in [(&mut rxq, RX_QUEUE), (&mut txq, TX_QUEUE)] {
            q.set_event_idx(event_idx);
            if !q.is_valid(&*mem.memory()) {
                return Err((
                    ActivateError::BadQueue(format!(
                        "queue {i} is not ready or its rings are outside guest memory"
                    )),
                    Some(processor.into_backend()),
                ));
            }
        }
        let fail =
            |e: io::Error, p: NetProcessor| (ActivateError::Worker(e), Some(p.into_backend()));
        let kill = match EventFd::new(EFD_NONBLOCK) {
            Ok(k) => k,
            Err(e) => return Err(fail(e, processor)),
        };
        let kill2 = match kill.try_clone() {
            Ok(k) => k,
            Err(e) => return Err(fail(e, processor)),
        };
        let mut timer = match TimerFd::new() {
            Ok(t) => t,
            Err(e) => return Err(fail(io::Error::from_raw_os_error(e.errno()), processor)),
        };
        if let Err(e) = timer.reset(LINK_POLL_INTERVAL, Some(LINK_POLL_INTERVAL)) {
            return Err(fail(io::Error::from_raw_os_error(e.errno()), processor));
        }
        let mut em: EventManager<Arc<Mutex<NetWorker>>> = match EventManager::new() {
            Ok(em) => em,
            Err(e) => return Err(fail(io::Error::other(format!("{e:?}")), processor)),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let backend_fd = processor.backend().raw_fd();
        let worker = Arc::new(Mutex::new(NetWorker {
            processor,
            mem,
            rx: rxq,
            tx: txq,
            rx_notify: rx.notify,
            tx_notify: tx.notify,
            kill: kill2,
            timer,
            backend_fd,
            interrupt,
            stop: stop.clone(),
            status,
            watching_backend: false,
            rx_broken: false,
            tx_broken: false,
            warned_interrupt: false,
        }));
        em.add_subscriber(worker.clone());
        // Notifications that arrived before activation are in the eventfd counters and fire on
        // the first epoll_wait; so does a frame already waiting in the back-end.
        let thread_stop = stop.clone();
        let thread_worker = worker.clone();
        let spawned = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || {
                crate::worker_hook::worker_started("virtio-net");
                while !thread_stop.load(Ordering::Acquire) {
                    if let Err(e) = em.run() {
                        log::error!("virtio-net: event loop failed: {e:?}");
                        break;
                    }
                }
                drop(em);
                let w = Arc::try_unwrap(thread_worker).ok()?;
                Some(w.into_inner().unwrap_or_else(|p| p.into_inner()).processor)
            });
        match spawned {
            Ok(thread) => Ok(WorkerHandle {
                kill,
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                // The closure, with the event manager and its reference, went with the failed
                // spawn: ours is the last one.
                let backend = Arc::try_unwrap(worker).ok().map(|w| {
                    w.into_inner()
                        .unwrap_or_else(|p| p.into_inner())
                        .processor
                        .into_backend()
                });
                Err((ActivateError::Worker(e), backend))
            }
        }
    }

    /// Stops the thread, waits for it and gives the back-end back (`None` if it panicked).
    pub(crate) fn stop(mut self) -> Option<Box<dyn NetBackend>> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Option<Box<dyn NetBackend>> {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.kill.write(1) {
            log::error!("virtio-net: cannot signal the worker to stop: {e}");
        }
        let t = self.thread.take()?;
        match t.join() {
            Ok(p) => p.map(NetProcessor::into_backend),
            Err(_) => {
                log::error!("virtio-net: the worker thread panicked");
                None
            }
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
