//! Boot timing: milestones from process start to exit, reported as one JSON object.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;

/// The moments of one run. Each is recorded once (the first time it happens); later calls are ignored.
#[derive(Debug)]
pub struct BootTimeline {
    start: Instant,
    kernel_entry: OnceLock<Instant>,
    first_console_byte: OnceLock<Instant>,
    boot_complete: OnceLock<Instant>,
    stop: OnceLock<Instant>,
    exit: Mutex<Option<Instant>>,
    memory: Mutex<MemoryUse>,
}

/// Milliseconds from process start; `None` for a milestone never reached.
#[derive(Debug, Serialize, PartialEq)]
pub struct BootReport {
    pub kernel_entry_ms: Option<f64>,
    pub first_console_byte_ms: Option<f64>,
    pub boot_complete_ms: Option<f64>,
    /// When the main thread saw the stop request (guest exit port, reset, poweroff, signal).
    pub stop_ms: Option<f64>,
    pub exit_ms: Option<f64>,
    pub exit_status: i32,
    pub exit_reason: String,
    /// Peak RSS of the kvmrun process.
    pub peak_rss_kib: u64,
    /// Guest RAM the guest had touched at exit (resident host pages).
    pub guest_resident_kib: u64,
    /// What kvmrun itself costs: peak RSS minus the guest's resident RAM.
    pub vmm_overhead_kib: u64,
}

/// Memory figures taken at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryUse {
    pub peak_rss: u64,
    pub guest_resident: u64,
}

impl BootTimeline {
    pub fn new(start: Instant) -> Self {
        BootTimeline {
            start,
            kernel_entry: OnceLock::new(),
            first_console_byte: OnceLock::new(),
            boot_complete: OnceLock::new(),
            stop: OnceLock::new(),
            exit: Mutex::new(None),
            memory: Mutex::new(MemoryUse::default()),
        }
    }

    pub fn kernel_entry(&self) {
        let _ = self.kernel_entry.set(Instant::now());
    }

    pub fn first_console_byte(&self) {
        let _ = self.first_console_byte.set(Instant::now());
    }

    pub fn boot_complete(&self, at: Instant) {
        let _ = self.boot_complete.set(at);
    }

    pub fn stop(&self) {
        let _ = self.stop.set(Instant::now());
    }

    pub fn exit(&self) {
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        exit.get_or_insert_with(Instant::now);
    }

    pub fn memory_use(&self, m: MemoryUse) {
        *self.memory.lock().unwrap_or_else(|e| e.into_inner()) = m;
    }

    pub fn report(&self, exit_status: i32, exit_reason: &str) -> BootReport {
        let ms = |t: Option<&Instant>| t.map(|t| t.duration_since(self.start).as_secs_f64() * 1e3);
        let exit = *self.exit.lock().unwrap_or_else(|e| e.into_inner());
        let m = *self.memory.lock().unwrap_or_else(|e| e.into_inner());
        BootReport {
            kernel_entry_ms: ms(self.kernel_entry.get()),
            first_console_byte_ms: ms(self.first_console_byte.get()),
            boot_complete_ms: ms(self.boot_complete.get()),
            stop_ms: ms(self.stop.get()),
            exit_ms: ms(exit.as_ref()),
            exit_status,
            exit_reason: exit_reason.to_string(),
            peak_rss_kib: m.peak_rss >> 10,
            guest_resident_kib: m.guest_resident >> 10,
            vmm_overhead_kib: m.peak_rss.saturating_sub(m.guest_resident) >> 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn milestones_are_ordered_and_first_wins() {
        let t = BootTimeline::new(Instant::now());
        t.kernel_entry();
        std::thread::sleep(Duration::from_millis(2));
        t.first_console_byte();
        let done = Instant::now();
        t.boot_complete(done);
        t.boot_complete(done + Duration::from_secs(5));
        t.exit();
        let r = t.report(0, "poweroff");
        let (k, c, b, e) = (
            r.kernel_entry_ms.unwrap(),
            r.first_console_byte_ms.unwrap(),
            r.boot_complete_ms.unwrap(),
            r.exit_ms.unwrap(),
        );
        assert!(k <= c && c <= b && b <= e, "{r:?}");
        assert!(c - k >= 2.0);
        assert!(b < 5000.0);
    }

    #[test]
    fn missing_milestones_are_null_in_json() {
        let t = BootTimeline::new(Instant::now());
        t.exit();
        let json = serde_json::to_value(t.report(3, "debug-exit")).unwrap();
        assert!(json["kernel_entry_ms"].is_null());
        assert!(json["exit_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(json["exit_status"], 3);
    }
}
