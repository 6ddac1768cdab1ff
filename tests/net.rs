//! Network tests with real guests: both NIC models on taps inside a network namespace that the
//! test creates (and deletes), kvmrun started with `ip netns exec`. No traffic leaves it.
//! Like tests/guest.rs, these need a KVM that runs Linux: resources/run-tests.sh runs them with
//! `--ignored` on hardware KVM or inside the test host.

mod common;

use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

fn artifact(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run through resources/run-tests.sh"))
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2)")
        .success();
    assert!(ok, "ip {args:?} failed");
}

/// A network namespace with taps tap0 (10.0.2.1/24) and tap1 (10.0.3.1/24); deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
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
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Boots the default guest in `ns` with eth0 = virtio-net on tap0 and eth1 = e1000 on tap1.
fn boot_in(ns: &Netns, script: &str) -> (Option<i32>, String) {
    let setup = "ip link set eth0 up && ip link set eth1 up && ip addr add 10.0.2.15/24 dev eth0 && ip addr add 10.0.3.15/24 dev eth1 && sleep 1\n";
    let append = format!(
        "-- sh -c 'eval \"$(echo {} | base64 -d)\"'",
        base64(format!("{setup}{script}").as_bytes())
    );
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.name,
        env!("CARGO_BIN_EXE_kvmrun"),
        "run",
        "--memory",
        "512M",
    ])
    .args([
        "--kernel",
        &artifact("KVMRUN_TEST_BZIMAGE"),
        "--initrd",
        &artifact("KVMRUN_TEST_INITRD"),
    ])
    .args([
        "--net",
        "tap=tap0,model=virtio",
        "--net",
        "tap=tap1,model=e1000,mac=52:54:00:aa:bb:cc",
    ])
    .args(["--console", "stdio", "--append", &append])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let out = common::wait_with_limit(cmd.spawn().unwrap(), LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code(), stdout)
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn both_nics_bind_and_ping_both_ways() {
    let ns = Netns::new("ping");
    // The host side pings the guest while the guest pings the host.
    let pinger = {
        let name = ns.name.clone();
        std::thread::spawn(move || {
            for _ in 0..60 {
                let ok = |addr: &str| {
                    Command::new("ip")
                        .args([
                            "netns", "exec", &name, "busybox", "ping", "-c", "1", "-W", "1", addr,
                        ])
                        .output()
                        .is_ok_and(|o| o.status.success())
                };
                if ok("10.0.2.15") && ok("10.0.3.15") {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            false
        })
    };
    let (status, out) = boot_in(
        &ns,
        "for n in eth0 eth1; do echo $n-driver=$(basename $(readlink /sys/class/net/$n/device/driver)); done
echo e1000-link=$(cat /sys/class/net/eth1/speed)/$(cat /sys/class/net/eth1/duplex)/$(cat /sys/class/net/eth1/address)
ping -c 3 -W 2 10.0.2.1 >/dev/null && echo ping-virtio=ok
ping -c 3 -W 2 10.0.3.1 >/dev/null && echo ping-e1000=ok
sleep 8",
    );
    assert_eq!(status, Some(0));
    for want in [
        "eth0-driver=virtio_net",
        "eth1-driver=e1000",
        "e1000-link=1000/full/52:54:00:aa:bb:cc",
        "ping-virtio=ok",
        "ping-e1000=ok",
    ] {
        assert!(out.contains(want), "missing {want}");
    }
    assert!(
        pinger.join().unwrap(),
        "the host could not ping the guest on both NICs"
    );
}
