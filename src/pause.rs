//! Pausing and resuming the vCPUs: a gate each vCPU thread passes before every KVM_RUN.
//!
//! A pause sets the gate's flag and then kicks every vCPU thread out of KVM_RUN with the kick
//! signal, repeatedly, until all of them are parked on the gate (a kick that lands just before
//! KVM_RUN is lost, hence the repetition). Parked threads wait on a condition variable until
//! the resume, or until the VM stops. Devices keep running while the vCPUs are parked, so
//! output already handed to them (console bytes, disk requests) is not lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use devices::vm_exit::ExitSignal;

/// How long a pause waits for every vCPU to park before it reports failure.
const PARK_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct State {
    paused: bool,
    /// vCPU threads currently waiting on the gate.
    parked: usize,
    /// The vCPU threads to kick (valid until `close`, which comes before they are joined).
    threads: Vec<libc::pthread_t>,
    /// Set once the VM stops: no more kicks, parked threads leave.
    closed: bool,
}

/// Why a pause did not take effect.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    #[error("the VM is stopping")]
    Closed,
    #[error("only {parked} of {total} vCPUs stopped within {PARK_LIMIT:?}")]
    NotParked { parked: usize, total: usize },
}

#[derive(Debug, Default)]
pub struct PauseGate {
    /// Mirrors `State::paused` so the vCPU fast path is one atomic load.
    requested: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

impl PauseGate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Names the vCPU threads a pause must kick.
    pub fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        self.lock().threads = threads;
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Stops every vCPU; returns once all are parked (or fails if they do not park in time).
    pub fn pause(&self) -> Result<(), PauseError> {
        let deadline = Instant::now() + PARK_LIMIT;
        let mut s = self.lock();
        if s.closed {
            return Err(PauseError::Closed);
        }
        s.paused = true;
        self.requested.store(true, Ordering::SeqCst);
        loop {
            if s.closed {
                return Err(PauseError::Closed);
            }
            if s.parked == s.threads.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(PauseError::NotParked {
                    parked: s.parked,
                    total: s.threads.len(),
                });
            }
            for &t in &s.threads {
                // SAFETY: the threads are not joined before `close`, which we would have seen.
                unsafe { libc::pthread_kill(t, crate::vcpu::kick_signal()) };
            }
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        let mut s = self.lock();
        s.paused = false;
        self.requested.store(false, Ordering::SeqCst);
        drop(s);
        self.changed.notify_all();
    }

    /// The VM is stopping: release parked threads and refuse further pauses. Call before the
    /// vCPU threads are joined.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.paused = false;
        self.requested.store(false, Ordering::SeqCst);
        drop(s);
        self.changed.notify_all();
    }

    /// Called by a vCPU thread before each KVM_RUN: waits here while the VM is paused.
    pub fn park_if_paused(&self, exit: &ExitSignal) {
        if !self.requested.load(Ordering::SeqCst) {
            return;
        }
        let mut s = self.lock();
        if !s.paused {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.paused && !s.closed && !exit.is_requested() {
            // The timeout only matters for a stop requested by a device while paused.
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.parked -= 1;
        drop(s);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// Threads standing in for vCPUs: they count "runs" and pass the gate between them.
    #[test]
    fn pause_parks_every_thread_and_resume_releases_them() {
        crate::vcpu::install_kick_handler().unwrap();
        let gate = Arc::new(PauseGate::default());
        let exit = Arc::new(ExitSignal::new().unwrap());
        let runs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (gate, exit, runs) = (gate.clone(), exit.clone(), runs.clone());
                std::thread::spawn(move || {
                    while !exit.is_requested() {
                        gate.park_if_paused(&exit);
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
            })
            .collect();
        gate.set_threads(threads.iter().map(|t| t.as_pthread_t()).collect());
        gate.pause().unwrap();
        assert!(gate.is_paused());
        let frozen = runs.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            frozen,
            "a thread ran while paused"
        );
        gate.resume();
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            runs.load(Ordering::SeqCst) > frozen,
            "no thread ran after resume"
        );
        exit.request(devices::vm_exit::ExitReason::Quit);
        gate.close();
        assert_eq!(gate.pause(), Err(PauseError::Closed));
        for t in threads {
            t.join().unwrap();
        }
    }
}
