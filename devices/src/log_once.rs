//! Rate limiting for messages a guest can provoke at will.
//!
//! A guest can touch any port or address as often as it likes; logging every such access would
//! let it flood the host's log. [`LogOnce`] remembers which keys (addresses, offsets, values)
//! were already reported and caps how many it remembers, so both the log volume and the memory
//! used stay bounded whatever the guest does.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// How many distinct keys one [`LogOnce`] remembers before it stops logging new ones.
pub const MAX_TRACKED_KEYS: usize = 256;

/// Answers "is this the first time this key is seen?" for at most [`MAX_TRACKED_KEYS`] keys.
#[derive(Debug)]
pub struct LogOnce {
    what: &'static str,
    seen: Mutex<HashSet<u64>>,
    saturated: AtomicBool,
}

impl LogOnce {
    /// `what` names the source in the one message logged when the cap is reached.
    pub fn new(what: &'static str) -> Self {
        LogOnce {
            what,
            seen: Mutex::new(HashSet::new()),
            saturated: AtomicBool::new(false),
        }
    }

    /// True the first time `key` is seen, false afterwards.
    ///
    /// Once [`MAX_TRACKED_KEYS`] keys are remembered, new keys return false (after one message
    /// saying so), so a guest sweeping the address space cannot grow memory or the log.
    pub fn first(&self, key: u64) -> bool {
        if self.saturated.load(Ordering::Relaxed) {
            // Every key either was logged already or falls past the cap: nothing to log, and
            // no lock taken on this path.
            return false;
        }
        let mut seen = crate::lock(&self.seen);
        if seen.contains(&key) {
            return false;
        }
        if seen.len() >= MAX_TRACKED_KEYS {
            if !self.saturated.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "{}: more than {MAX_TRACKED_KEYS} distinct unexpected accesses; not logging further ones",
                    self.what
                );
            }
            return false;
        }
        seen.insert(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_time_only() {
        let l = LogOnce::new("test");
        assert!(l.first(1));
        assert!(!l.first(1));
        assert!(l.first(2));
        assert!(!l.first(2));
    }

    #[test]
    fn capped() {
        let l = LogOnce::new("test");
        for k in 0..MAX_TRACKED_KEYS as u64 {
            assert!(l.first(k));
        }
        assert!(!l.first(u64::MAX));
        assert!(!l.first(u64::MAX - 1));
        assert!(!l.first(0));
    }
}
