//! Lifecycle events (`--events json` / `--events file=PATH`): one JSON object per line, each
//! with the event's name, the wall-clock time and the time since kvmrun started.
//!
//! ```json
//! {"event":"created","unix_ms":1795000000123,"elapsed_ms":3.2}
//! {"event":"exited","unix_ms":1795000000456,"elapsed_ms":336.0,"status":0,"reason":"debug-exit 0"}
//! ```
//! Events: `created` (the KVM VM exists), `kernel-loaded`, `vcpus-started` (the boot vCPU
//! enters the guest), `boot-complete`
//! (the guest wrote port 0x502), `paused`, `resumed`, `exited` (`status`, `reason`).

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Where `--events` sends the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsSpec {
    /// JSON lines on stderr.
    Stderr,
    /// JSON lines appended to a file.
    File(PathBuf),
}

impl FromStr for EventsSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(EventsSpec::Stderr),
            _ => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => Ok(EventsSpec::File(PathBuf::from(p))),
                _ => Err(format!("'{s}': use json (to stderr) or file=PATH")),
            },
        }
    }
}

impl std::fmt::Display for EventsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventsSpec::Stderr => f.write_str("json"),
            EventsSpec::File(p) => write!(f, "file={}", p.display()),
        }
    }
}

/// The event stream of one run. Emitting never fails the run: a write error is logged once.
pub struct EventLog {
    start: Instant,
    out: Mutex<Box<dyn Write + Send>>,
}

impl EventLog {
    pub fn open(spec: &EventsSpec, start: Instant) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match spec {
            EventsSpec::Stderr => Box::new(std::io::stderr()),
            EventsSpec::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        Ok(Self::to_writer(out, start))
    }

    pub fn to_writer(out: Box<dyn Write + Send>, start: Instant) -> Self {
        EventLog {
            start,
            out: Mutex::new(out),
        }
    }

    /// Writes event `name` with `fields` (a JSON object's members) added.
    pub fn emit(&self, name: &str, fields: Value) {
        let now = Instant::now();
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut obj = Map::new();
        obj.insert("event".into(), name.into());
        obj.insert("unix_ms".into(), unix_ms.into());
        let elapsed = now.duration_since(self.start).as_secs_f64() * 1e3;
        obj.insert(
            "elapsed_ms".into(),
            ((elapsed * 1000.0).round() / 1000.0).into(),
        );
        if let Value::Object(extra) = fields {
            obj.extend(extra);
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // One write per line so concurrent writers to the same stderr do not interleave lines.
        if let Err(e) = out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
            log::warn!("event {name} not written: {e}");
        }
    }
}

/// Emits through an optional log (most runs have none).
pub fn emit(log: &Option<std::sync::Arc<EventLog>>, name: &str, fields: Value) {
    if let Some(l) = log {
        l.emit(name, fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_are_json_lines_with_times_and_fields() {
        let buf = Shared::default();
        let log = EventLog::to_writer(Box::new(buf.clone()), Instant::now());
        log.emit("created", Value::Null);
        log.emit(
            "exited",
            serde_json::json!({"status": 3, "reason": "debug-exit 3"}),
        );
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "created");
        assert_eq!(lines[1]["status"], 3);
        assert!(
            lines[1]["elapsed_ms"].as_f64().unwrap() >= lines[0]["elapsed_ms"].as_f64().unwrap()
        );
        assert!(lines[0]["unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }

    #[test]
    fn specs_parse() {
        assert_eq!("json".parse(), Ok(EventsSpec::Stderr));
        assert_eq!("file=/x".parse(), Ok(EventsSpec::File("/x".into())));
        assert!("file=".parse::<EventsSpec>().is_err());
        assert!("xml".parse::<EventsSpec>().is_err());
    }
}
