//! The control API (`--api-socket PATH`): JSON requests, one per line, on a Unix stream socket;
//! one JSON reply line per request. See docs/api.md for the requests and replies.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use devices::serial::Serial;
use devices::vm_exit::{ExitReason, ExitSignal};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::boot_report::BootTimeline;
use crate::events::{self, EventLog};
use crate::pause::PauseGate;

use crate::guest_shutdown::DEFAULT_GRACE;

/// What the API acts on.
#[derive(Clone)]
pub struct Context {
    pub exit: Arc<ExitSignal>,
    pub pause: Arc<PauseGate>,
    /// COM2, where a graceful shutdown request is written for the guest (exec runs).
    pub guest_input: Option<Arc<Serial>>,
    pub events: Option<Arc<EventLog>>,
    pub timeline: Arc<BootTimeline>,
    pub vcpus: u8,
}

/// One request line.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Query {},
    Pause {},
    Resume {},
    Shutdown {
        #[serde(default)]
        mode: ShutdownMode,
        /// Graceful only: how long the guest gets before the VM is stopped anyway.
        grace_ms: Option<u64>,
    },
}

#[derive(Debug, Default, Deserialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownMode {
    #[default]
    Graceful,
    Force,
}

/// The listening socket and its accept thread; dropping it closes the socket and removes the
/// file.
pub struct Server {
    listener: UnixListener,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(path: &Path, ctx: Context) -> std::io::Result<Server> {
        let listener = bind(path)?;
        let accept = listener.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                for conn in accept.incoming() {
                    match conn {
                        Ok(stream) => {
                            let ctx = ctx.clone();
                            let _ = std::thread::Builder::new()
                                .name("api-conn".into())
                                .spawn(move || serve(stream, &ctx));
                        }
                        // shutdown(2) on the listener (at the end of the run) lands here.
                        Err(_) => break,
                    }
                }
            })?;
        log::info!("API socket at {}", path.display());
        Ok(Server {
            listener,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: shutting down our own listening socket; this wakes the blocked accept().
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The socket file stays: this runs under the VMM thread's seccomp filter, which allows
        // no file removal; vm::run_with removes it once the VMM thread has ended.
    }
}

/// Binds `path`, replacing a stale socket file (one nobody listens on) but never a live one
/// or any other kind of file.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            use std::os::unix::fs::FileTypeExt;
            let is_socket = std::fs::symlink_metadata(path)?.file_type().is_socket();
            if is_socket && UnixStream::connect(path).is_err() {
                std::fs::remove_file(path)?;
                UnixListener::bind(path)
            } else {
                Err(e)
            }
        }
        r => r,
    }
}

fn serve(stream: UnixStream, ctx: &Context) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req, ctx),
            Err(e) => json!({ "ok": false, "error": format!("bad request: {e}") }),
        };
        let mut text = reply.to_string();
        text.push('\n');
        if out.write_all(text.as_bytes()).is_err() {
            break;
        }
    }
}

fn state(ctx: &Context) -> &'static str {
    if ctx.exit.is_requested() {
        "stopping"
    } else if ctx.pause.is_paused() {
        "paused"
    } else {
        "running"
    }
}

/// Carries out one request and builds its reply.
pub fn handle(req: Request, ctx: &Context) -> Value {
    match req {
        Request::Query {} => {
            let r = ctx.timeline.report(0, "");
            json!({
                "ok": true,
                "state": state(ctx),
                "vcpus": ctx.vcpus,
                "boot_complete_ms": r.boot_complete_ms,
            })
        }
        Request::Pause {} => match ctx.pause.pause() {
            Ok(()) => {
                events::emit(&ctx.events, "paused", Value::Null);
                json!({ "ok": true, "state": "paused" })
            }
            Err(e) => json!({ "ok": false, "error": e.to_string(), "state": state(ctx) }),
        },
        Request::Resume {} => {
            ctx.pause.resume();
            events::emit(&ctx.events, "resumed", Value::Null);
            json!({ "ok": true, "state": state(ctx) })
        }
        Request::Shutdown {
            mode: ShutdownMode::Force,
            ..
        } => {
            ctx.exit.request(ExitReason::Stopped);
            json!({ "ok": true, "state": "stopping" })
        }
        Request::Shutdown {
            mode: ShutdownMode::Graceful,
            grace_ms,
        } => {
            let grace = grace_ms.map_or(DEFAULT_GRACE, Duration::from_millis);
            let asked = match &ctx.guest_input {
                Some(com2) => crate::guest_shutdown::ask(com2, &ctx.pause),
                None => {
                    // A paused guest could not stop by itself within the grace period either.
                    ctx.pause.resume();
                    false
                }
            };
            let exit = ctx.exit.clone();
            let _ = std::thread::Builder::new()
                .name("api-grace".into())
                .spawn(move || {
                    std::thread::sleep(grace);
                    if !exit.is_requested() {
                        log::warn!("the guest did not stop within {grace:?} of a graceful shutdown; stopping it");
                        exit.request(ExitReason::Stopped);
                    }
                });
            json!({
                "ok": true,
                "state": "stopping",
                "guest_asked": asked,
                "grace_ms": grace.as_millis() as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"query"}"#).unwrap(),
            Request::Query {}
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"shutdown"}"#).unwrap(),
            Request::Shutdown {
                mode: ShutdownMode::Graceful,
                grace_ms: None
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"shutdown","mode":"force"}"#).unwrap(),
            Request::Shutdown {
                mode: ShutdownMode::Force,
                grace_ms: None
            }
        );
        for bad in [r#"{"cmd":"reboot"}"#, r#"{"cmd":"pause","now":1}"#, "query"] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
