//! Where the file I/O of virtio-blk requests runs: on a small fixed pool of I/O threads per
//! device ([`IoPool`]), so that a guest queue depth above one becomes that many `preadv` /
//! `pwritev` in flight on the image (like QEMU's `aio=threads`), or inline on the caller
//! ([`Executor::Inline`]: tests, fuzzing, benchmarks of the queue logic).
//!
//! The queue worker submits [`Job`]s (except the reads it serves from the page cache itself,
//! see [`RequestProcessor`](super::RequestProcessor)) and reaps them; the threads signal
//! finished jobs on an eventfd the worker watches in its event loop (only when the list of
//! finished jobs goes from empty to non-empty: the worker always takes the whole list). Idle
//! threads block on a condition variable: no polling.
//!
//! The threads are started by [`IoPool::start`] on the thread that activates the device (a vCPU
//! thread in kvmrun: worker threads run under a seccomp filter that forbids creating threads),
//! and each runs the [`worker_hook`](crate::worker_hook) before its first job, like the queue
//! worker. Dropping the pool drops the jobs not started yet, waits for the running ones and joins
//! the threads: afterwards no thread of the pool touches guest memory.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{DiskImage, IoScratch};
use super::job::Job;
use crate::lock;

/// Name of the I/O threads (also given to the worker hook).
pub const THREAD_NAME: &str = "virtio-blk-io";

/// A job and the result of its I/O.
pub(crate) struct Done {
    pub job: Job,
    pub result: io::Result<()>,
}

/// Called by an I/O thread before it runs a job (tests use it to hold jobs back).
#[cfg(test)]
pub(crate) type Gate = Arc<dyn Fn(&Job) + Send + Sync>;

struct State {
    /// Submitted, not started.
    queued: VecDeque<Job>,
    /// Finished, not reaped.
    done: Vec<Done>,
    /// Threads waiting for a job.
    idle: usize,
    shutdown: bool,
}

struct Shared {
    disk: Arc<DiskImage>,
    state: Mutex<State>,
    work: Condvar,
    /// Signalled when `done` becomes non-empty.
    done_fd: EventFd,
    #[cfg(test)]
    gate: Option<Gate>,
}

/// A fixed set of I/O threads serving one device.
pub(crate) struct IoPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl IoPool {
    /// Starts `threads` I/O threads on `disk`; `capacity` is the most jobs the caller will ever
    /// have in flight (storage for them is reserved up front).
    pub(crate) fn start(
        disk: Arc<DiskImage>,
        threads: usize,
        capacity: usize,
        #[cfg(test)] gate: Option<Gate>,
    ) -> io::Result<IoPool> {
        let shared = Arc::new(Shared {
            disk,
            state: Mutex::new(State {
                queued: VecDeque::with_capacity(capacity),
                done: Vec::with_capacity(capacity),
                idle: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            done_fd: EventFd::new(EFD_NONBLOCK)?,
            #[cfg(test)]
            gate,
        });
        let mut pool = IoPool {
            shared,
            threads: Vec::with_capacity(threads),
        };
        for _ in 0..threads.max(1) {
            let shared = pool.shared.clone();
            // On error, dropping `pool` stops and joins the threads already started.
            let t = std::thread::Builder::new()
                .name(THREAD_NAME.into())
                .spawn(move || run(&shared))?;
            pool.threads.push(t);
        }
        Ok(pool)
    }

    pub(crate) fn submit(&self, job: Job) {
        let mut st = lock(&self.shared.state);
        st.queued.push_back(job);
        if st.idle > 0 {
            self.shared.work.notify_one();
        }
    }

    /// Moves the finished jobs to `out`.
    pub(crate) fn take_done(&self, out: &mut Vec<Done>) {
        out.append(&mut lock(&self.shared.state).done);
    }

    /// Readable when jobs have finished; the reaper reads it before [`IoPool::take_done`].
    pub(crate) fn completion_fd(&self) -> &EventFd {
        &self.shared.done_fd
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        let abandoned = {
            let mut st = lock(&self.shared.state);
            st.shutdown = true;
            std::mem::take(&mut st.queued)
        };
        if !abandoned.is_empty() {
            log::debug!("virtio-blk: {} queued requests abandoned", abandoned.len());
        }
        drop(abandoned);
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("virtio-blk: an I/O thread panicked");
            }
        }
    }
}

fn run(shared: &Shared) {
    crate::worker_hook::worker_started(THREAD_NAME);
    let mut scratch = IoScratch::default();
    let mut st = lock(&shared.state);
    loop {
        if st.shutdown {
            return;
        }
        let Some(job) = st.queued.pop_front() else {
            st.idle += 1;
            st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            st.idle -= 1;
            continue;
        };
        drop(st);
        #[cfg(test)]
        if let Some(gate) = &shared.gate {
            gate(&job);
        }
        let result = job.execute(&shared.disk, &mut scratch);
        st = lock(&shared.state);
        let first = st.done.is_empty();
        st.done.push(Done { job, result });
        if first {
            // Cannot fail short of the counter reaching u64::MAX - 1 (the reaper reads it).
            if let Err(e) = shared.done_fd.write(1) {
                log::error!("virtio-blk: cannot signal a completion: {e}");
            }
        }
    }
}

/// Runs jobs: inline on the submitting thread, or on an [`IoPool`].
pub(crate) enum Executor {
    Inline {
        disk: Arc<DiskImage>,
        scratch: IoScratch,
        done: Vec<Done>,
    },
    Pool(IoPool),
}

impl Executor {
    pub(crate) fn inline(disk: Arc<DiskImage>) -> Executor {
        Executor::Inline {
            disk,
            scratch: IoScratch::default(),
            done: Vec::new(),
        }
    }

    pub(crate) fn submit(&mut self, job: Job) {
        match self {
            Executor::Inline {
                disk,
                scratch,
                done,
            } => {
                let result = job.execute(disk, scratch);
                done.push(Done { job, result });
            }
            Executor::Pool(p) => p.submit(job),
        }
    }

    pub(crate) fn take_done(&mut self, out: &mut Vec<Done>) {
        match self {
            Executor::Inline { done, .. } => out.append(done),
            Executor::Pool(p) => p.take_done(out),
        }
    }

    /// Jobs run on other threads (submitting one costs a hand-off).
    pub(crate) fn is_threaded(&self) -> bool {
        matches!(self, Executor::Pool(_))
    }

    pub(crate) fn completion_fd(&self) -> Option<&EventFd> {
        match self {
            Executor::Inline { .. } => None,
            Executor::Pool(p) => Some(p.completion_fd()),
        }
    }

    /// Waits up to `timeout` for the completion eventfd and resets it; true if it was signalled
    /// (always true inline: jobs finish as they are submitted).
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let Some(fd) = self.completion_fd() else {
            return true;
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) } > 0;
        if ready {
            let _ = fd.read();
        }
        ready
    }
}
