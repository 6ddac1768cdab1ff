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
