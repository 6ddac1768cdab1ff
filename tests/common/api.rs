//! A client of kvmrun's control API (`--api-socket`, docs/api.md): one connection, one JSON
//! request line and one reply line per call.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Api {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    limit: Duration,
}

impl Api {
    /// Connects to the socket at `path`, retrying while kvmrun starts, for up to `limit` (also
    /// the time limit of each reply).
    pub fn connect(path: &Path, limit: Duration) -> Api {
        let deadline = Instant::now() + limit;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    s.set_read_timeout(Some(limit)).unwrap();
                    return Api {
                        reader: BufReader::new(s.try_clone().unwrap()),
                        writer: s,
                        limit,
                    };
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("API socket {}: {e}", path.display()),
            }
        }
    }

    pub fn call(&mut self, request: &str) -> serde_json::Value {
        self.try_call(request)
            .unwrap_or_else(|| panic!("no reply to {request}: the socket closed"))
    }

    /// `call`, or None when the socket is gone (the VM ended).
    pub fn try_call(&mut self, request: &str) -> Option<serde_json::Value> {
        writeln!(self.writer, "{request}").ok()?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
    }

    /// Waits until the guest's init is up (boot-complete).
    pub fn wait_for_boot(&mut self) {
        let deadline = Instant::now() + self.limit;
        while self.call(r#"{"cmd":"query"}"#)["boot_complete_ms"].is_null() {
            assert!(Instant::now() < deadline, "the guest never booted");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
