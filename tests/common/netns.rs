//! Network namespaces that a test creates for itself (and deletes), with taps inside: the only
//! place the network tests put traffic.

use std::os::fd::AsRawFd;
use std::process::Command;

/// Runs `ip ARGS`; panics if it fails.
pub fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2)")
        .success();
    assert!(ok, "ip {args:?} failed");
}

/// A network namespace with taps tap0 (10.0.2.1/24) and tap1 (10.0.3.1/24); deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("kvmrun-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        for (tap, addr) in [("tap0", "10.0.2.1/24"), ("tap1", "10.0.3.1/24")] {
            ip(&["-n", &ns.name, "tuntap", "add", "dev", tap, "mode", "tap"]);
            ip(&["-n", &ns.name, "addr", "add", addr, "dev", tap]);
            ip(&["-n", &ns.name, "link", "set", tap, "up"]);
        }
        ns
    }

    /// Runs `f` on a thread that has entered the namespace (setns affects only that thread).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("netns handle");
            // SAFETY: setns on a valid namespace fd; only this thread changes namespace.
            assert_eq!(
                unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
