//! A hook every device worker thread runs first, before it touches guest data.
//!
//! The VMM sets it once (kvmrun installs the worker's seccomp filter there); the device models
//! stay free of any sandboxing policy. Without a hook (unit tests, benchmarks, fuzzing) worker
//! threads start as they are.

use std::sync::OnceLock;

static HOOK: OnceLock<fn(&str)> = OnceLock::new();

/// Sets the hook; only the first call has an effect (returns false for later ones).
pub fn set(hook: fn(&str)) -> bool {
    HOOK.set(hook).is_ok()
}

/// Called on a new worker thread named `name`, before its loop. The hook must not return if it
/// cannot do its job (kvmrun exits rather than run a worker without its filter).
pub fn worker_started(name: &str) {
    if let Some(hook) = HOOK.get() {
        hook(name);
    }
}

/// For the device tests: a hook that records which worker called it, on which thread.
#[cfg(test)]
pub(crate) mod recorder {
    use std::sync::Mutex;

    static SEEN: Mutex<Vec<(String, Option<String>)>> = Mutex::new(Vec::new());

    fn record(name: &str) {
        let thread = std::thread::current().name().map(String::from);
        crate::lock(&SEEN).push((name.to_string(), thread));
    }

    /// Installs the recording hook (once per test process; later calls change nothing).
    pub(crate) fn install() {
        super::set(record);
    }

    /// Whether worker `name` ran the hook on its own thread (named `name`).
    pub(crate) fn saw(name: &str) -> bool {
        crate::lock(&SEEN)
            .iter()
            .any(|(n, t)| n == name && t.as_deref() == Some(name))
    }
}
