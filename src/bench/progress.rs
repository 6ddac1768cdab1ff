//! Progress on the terminal: what runs now, how many steps are left, time elapsed.

use std::time::Instant;

pub struct Progress {
    total: usize,
    done: usize,
    started: Instant,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Progress {
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// Announces the next step (one host run or one guest boot).
    pub fn step(&mut self, what: &str) {
        self.done += 1;
        // A suite may need one step more than it estimated (e.g. a retry): never show k > n.
        self.total = self.total.max(self.done);
        let s = self.started.elapsed().as_secs();
        eprintln!(
            "bench [{}/{}, {}:{:02} elapsed, {} left] {what}",
            self.done,
            self.total,
            s / 60,
            s % 60,
            self.total - self.done
        );
    }

    pub fn note(&self, what: &str) {
        eprintln!("bench: {what}");
    }
}
