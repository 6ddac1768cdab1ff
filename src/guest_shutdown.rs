//! Graceful shutdown: how kvmrun asks a guest to shut down (a host signal, the API's graceful
//! `shutdown`), and how long the guest gets before the VM is stopped anyway.
//!
//! The request is the line [`REQUEST`] on the receive side of COM2 (the guest's ttyS1): the
//! default guest has neither a keyboard controller keyboard (Ctrl-Alt-Del) nor an ACPI power
//! button, and a line on a UART needs nothing from the guest kernel but its 8250 driver. The
//! default guest's init listens there (resources/guest/init): in exec mode it sends SIGTERM to
//! the command; otherwise to the command's session, then syncs and powers off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::serial::Serial;

use crate::events::{self, EventLog};
use crate::pause::PauseGate;

/// The line a graceful shutdown writes to COM2's receive side.
pub const REQUEST: &[u8] = b"kvmrun:shutdown\n";

/// How long a guest gets to shut down before the VM is stopped anyway, unless told otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Writes the request for the guest; false when COM2's receive FIFO could not take it whole.
/// A paused guest is resumed first: it could not act on the request.
pub fn ask(com2: &Serial, pause: &PauseGate) -> bool {
    pause.resume();
    // Only whole: half a request would be read as the start of the next line.
    com2.fifo_capacity() >= REQUEST.len()
        && com2
            .enqueue_input(REQUEST)
            .is_ok_and(|n| n == REQUEST.len())
}

/// What the main loop does on terminating host signals (SIGTERM, SIGINT, SIGHUP): the first one
/// asks the guest to shut down and gives it `grace`; a second one, or the end of the grace
/// period, stops the VM at once.
pub struct OnSignal {
    pub grace: Duration,
    pub com2: Arc<Serial>,
    pub pause: Arc<PauseGate>,
    pub events: Option<Arc<EventLog>>,
    /// When the guest was asked (None: not yet).
    asked_at: Option<Instant>,
}

/// The main loop's next step after looking at the signals received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum SignalStep {
    /// Keep running; wake up again within this long (None: no deadline).
    Wait(Option<Duration>),
    /// Stop the VM now because of signal N.
    Stop(i32),
}

impl OnSignal {
    pub fn new(
        grace: Duration,
        com2: Arc<Serial>,
        pause: Arc<PauseGate>,
        events: Option<Arc<EventLog>>,
    ) -> Self {
        OnSignal {
            grace,
            com2,
            pause,
            events,
            asked_at: None,
        }
    }

    /// Acts on `count` signals received so far, the first of them `signo`.
    pub fn step(&mut self, count: u32, signo: i32, now: Instant) -> SignalStep {
        if count == 0 {
            return SignalStep::Wait(None);
        }
        let asked_at = match self.asked_at {
            Some(t) => t,
            None => {
                if self.grace.is_zero() {
                    return SignalStep::Stop(signo);
                }
                if !ask(&self.com2, &self.pause) {
                    log::warn!(
                        "signal {signo}: could not ask the guest to shut down (COM2's receive FIFO is full); stopping it"
                    );
                    return SignalStep::Stop(signo);
                }
                log::warn!(
                    "signal {signo}: asked the guest to shut down; stopping it in {:?} unless it does (another signal stops it now)",
                    self.grace
                );
                events::emit(
                    &self.events,
                    "shutdown-requested",
                    serde_json::json!({
                        "by": "signal",
                        "signal": signo,
                        "grace_ms": self.grace.as_millis() as u64,
                    }),
                );
                self.asked_at = Some(now);
                now
            }
        };
        if count >= 2 {
            return SignalStep::Stop(signo);
        }
        match (asked_at + self.grace).checked_duration_since(now) {
            Some(left) if !left.is_zero() => SignalStep::Wait(Some(left)),
            _ => {
                log::warn!(
                    "the guest did not shut down within {:?} of signal {signo}; stopping it",
                    self.grace
                );
                SignalStep::Stop(signo)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn policy(grace: Duration) -> (OnSignal, Arc<Serial>) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let com2 = Arc::new(Serial::new(irq, Box::new(std::io::sink())));
        let p = OnSignal::new(grace, com2.clone(), Arc::new(PauseGate::default()), None);
        (p, com2)
    }

    /// What the guest would read from COM2's receive FIFO.
    fn received(com2: &Serial) -> Vec<u8> {
        use devices::bus::BusDevice;
        let mut out = Vec::new();
        // Interrupts off, then read RBR while LSR says data is ready (16550: LSR bit 0).
        com2.write(1, &[0]);
        loop {
            let mut lsr = [0u8];
            com2.read(5, &mut lsr);
            if lsr[0] & 1 == 0 {
                break;
            }
            let mut b = [0u8];
            com2.read(0, &mut b);
            out.push(b[0]);
        }
        out
    }

    #[test]
    fn no_signal_no_deadline() {
        let (mut p, com2) = policy(DEFAULT_GRACE);
        assert_eq!(p.step(0, 0, Instant::now()), SignalStep::Wait(None));
        assert!(received(&com2).is_empty());
    }

    #[test]
    fn first_signal_asks_the_guest_once_and_waits_for_the_grace_period() {
        let (mut p, com2) = policy(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(
            p.step(1, libc::SIGTERM, t0),
            SignalStep::Wait(Some(Duration::from_secs(10)))
        );
        assert_eq!(received(&com2), REQUEST);
        // Later looks do not ask again.
        let t1 = t0 + Duration::from_secs(4);
        assert_eq!(
            p.step(1, libc::SIGTERM, t1),
            SignalStep::Wait(Some(Duration::from_secs(6)))
        );
        assert!(received(&com2).is_empty());
        assert_eq!(
            p.step(1, libc::SIGTERM, t0 + Duration::from_secs(10)),
            SignalStep::Stop(libc::SIGTERM)
        );
    }

    #[test]
    fn second_signal_stops_at_once() {
        let (mut p, _com2) = policy(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(matches!(p.step(1, libc::SIGINT, t0), SignalStep::Wait(_)));
        assert_eq!(p.step(2, libc::SIGINT, t0), SignalStep::Stop(libc::SIGINT));
    }

    #[test]
    fn zero_grace_stops_without_asking() {
        let (mut p, com2) = policy(Duration::ZERO);
        assert_eq!(
            p.step(1, libc::SIGHUP, Instant::now()),
            SignalStep::Stop(libc::SIGHUP)
        );
        assert!(received(&com2).is_empty());
    }

    #[test]
    fn a_full_receive_fifo_stops_at_once() {
        let (mut p, com2) = policy(DEFAULT_GRACE);
        while com2.enqueue_input(b"x").is_ok_and(|n| n == 1) {}
        assert_eq!(
            p.step(1, libc::SIGTERM, Instant::now()),
            SignalStep::Stop(libc::SIGTERM)
        );
    }
}
