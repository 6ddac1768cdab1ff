//! Network tests with real guests: both NIC models on taps inside a network namespace that the
//! test creates (and deletes), kvmrun started with `ip netns exec`. No traffic leaves it.
//! Like tests/guest.rs, these need a KVM that runs Linux: resources/run-tests.sh runs them with
//! `--ignored` on hardware KVM or inside the test host.

mod common;

use common::netns::{ip, Netns};

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);
const MIB: usize = 1 << 20;

fn artifact(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run through resources/run-tests.sh"))
}

/// Boots the default guest in `ns` with eth0 = virtio-net on tap0 and eth1 = e1000 on tap1.
fn boot_in(ns: &Netns, script: &str) -> (Option<i32>, String) {
    boot_kernel_in(ns, Kernel::Default, script)
}

/// Which guest kernel (and its initramfs) to boot.
#[derive(Clone, Copy)]
enum Kernel {
    /// The project's kernel: virtio-net and e1000 built in.
    Default,
    /// Debian's stock kernel: virtio_net and e1000 are modules, loaded by the initramfs.
    Debian,
}

fn boot_kernel_in(ns: &Netns, kernel: Kernel, script: &str) -> (Option<i32>, String) {
    boot_reacting(ns, kernel, script, None)
}

/// What the host does once the guest prints a line containing `.0`.
type Reaction<'a> = (&'a str, Box<dyn FnOnce() + Send>);

/// `boot_kernel_in`, running `reaction`'s action when the guest prints its trigger.
fn boot_reacting(
    ns: &Netns,
    kernel: Kernel,
    script: &str,
    reaction: Option<Reaction>,
) -> (Option<i32>, String) {
    let (kernel, initrd) = match kernel {
        Kernel::Default => ("KVMRUN_TEST_BZIMAGE", "KVMRUN_TEST_INITRD"),
        Kernel::Debian => ("KVMRUN_TEST_DISTRO_KERNEL", "KVMRUN_TEST_DISTRO_INITRD"),
    };
    let setup = "ip link set eth0 up && ip link set eth1 up && ip addr add 10.0.2.15/24 dev eth0 && ip addr add 10.0.3.15/24 dev eth1 && sleep 1\n";
    let append = format!(
        "-- sh -c 'eval \"$(echo {} | base64 -d)\"'",
        common::base64(format!("{setup}{script}").as_bytes())
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
    .args(["--kernel", &artifact(kernel), "--initrd", &artifact(initrd)])
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
    let child = cmd.spawn().unwrap();
    let out = match reaction {
        Some((trigger, action)) => common::wait_reacting(child, LIMIT, trigger, action),
        None => common::wait_with_limit(child, LIMIT),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code(), stdout)
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn both_nics_bind_and_ping_both_ways() {
    bind_and_ping(Kernel::Default);
}

/// Debian's kernel drives both NICs with its own modules (e1000.ko, virtio_net.ko) as well.
#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn debian_stock_kernel_drives_both_nics() {
    bind_and_ping(Kernel::Debian);
}

/// Both NICs bind to their drivers (the e1000 at 1000/full with the MAC given), and each pings
/// the host while the host pings the guest.
fn bind_and_ping(kernel: Kernel) {
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
    let (status, out) = boot_kernel_in(
        &ns,
        kernel,
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

/// md5sum of everything written to the returned stdin, as the guest's md5sum prints it.
fn md5_hasher() -> std::process::Child {
    Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum")
}

fn md5_result(hasher: std::process::Child) -> String {
    let out = hasher.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Bytes read from `r` until EOF and their MD5.
fn md5_of_stream(mut r: impl Read) -> (usize, String) {
    let mut hasher = md5_hasher();
    let mut stdin = hasher.stdin.take().unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                stdin.write_all(&buf[..n]).unwrap();
            }
        }
    }
    drop(stdin);
    (total, md5_result(hasher))
}

/// `mib` MiB each way over one NIC (`host` is the namespace side of its tap): the guest sends
/// random data to a receiver here (guest -> host), then receives generated data (host ->
/// guest); both ends hash what they saw.
fn tcp_each_way(nic: &str, host: &'static str, mib: usize) {
    let ns = Netns::new("tcp");
    let receiver = ns.spawn(move || {
        let l = TcpListener::bind((host, 5000)).unwrap();
        let (s, _) = l.accept().unwrap();
        md5_of_stream(s)
    });
    let sender = ns.spawn(move || {
        let l = TcpListener::bind((host, 5001)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        // Deterministic, incompressible-looking data: xorshift64.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut block = vec![0u8; MIB];
        let mut hasher = md5_hasher();
        let mut hin = hasher.stdin.take().unwrap();
        for _ in 0..mib {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            s.write_all(&block).unwrap();
            hin.write_all(&block).unwrap();
        }
        drop(hin);
        let _ = s.shutdown(std::net::Shutdown::Write);
        md5_result(hasher)
    });
    std::thread::sleep(Duration::from_millis(200));
    let (status, out) = boot_in(
        &ns,
        &format!(
            "dd if=/dev/urandom of=/tmp/up bs=1M count={mib} 2>/dev/null
echo up=$(md5sum < /tmp/up | cut -d' ' -f1)
nc {host} 5000 < /tmp/up
rm /tmp/up
echo down=$(nc {host} 5001 < /dev/null | md5sum | cut -d' ' -f1)
grep -E '^ *(eth0|eth1):' /proc/net/dev"
        ),
    );
    assert_eq!(status, Some(0), "the guest did not finish ({nic})");
    let value = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in guest output"))
            .trim()
            .to_string()
    };
    let (n, host_md5) = receiver.join().unwrap();
    assert_eq!(n, mib * MIB, "guest -> host over {nic}: {n} bytes");
    assert_eq!(
        host_md5,
        value("up="),
        "guest -> host data over {nic} differs"
    );
    let sent_md5 = sender.join().unwrap();
    assert_eq!(
        value("down="),
        sent_md5,
        "host -> guest data over {nic} differs"
    );
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn tcp_100_mib_each_way_over_virtio_net_is_intact() {
    tcp_each_way("virtio-net", "10.0.2.1", 100);
}

/// 100 MiB each way, or KVMRUN_TEST_E1000_MIB: resources/run-tests.sh sets less inside the test
/// host, where the emulated e1000 moves about 0.2 MB/s (every register access is an exit to
/// kvmrun through two levels of virtualisation under TCG) and 100 MiB each way would take
/// about 17 minutes.
#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn tcp_each_way_over_e1000_is_intact() {
    let mib = std::env::var("KVMRUN_TEST_E1000_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    tcp_each_way("e1000", "10.0.3.1", mib);
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn link_down_and_up_from_the_guest_keeps_both_nics_working() {
    let ns = Netns::new("link");
    let (status, out) = boot_in(
        &ns,
        "for n in eth0 eth1; do
  ip link set $n down
  echo $n-down=$(cat /sys/class/net/$n/operstate)
  ip link set $n up
done
sleep 2
for n in eth0 eth1; do echo $n-up=$(cat /sys/class/net/$n/operstate); done
ping -c 2 -W 2 10.0.2.1 >/dev/null && echo ping-virtio=ok
ping -c 2 -W 2 10.0.3.1 >/dev/null && echo ping-e1000=ok",
    );
    assert_eq!(status, Some(0));
    for want in [
        "eth0-down=down",
        "eth1-down=down",
        "eth0-up=up",
        "eth1-up=up",
        "ping-virtio=ok",
        "ping-e1000=ok",
    ] {
        assert!(out.contains(want), "missing {want}");
    }
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn deleted_taps_show_as_link_down_and_kvmrun_keeps_running() {
    let ns = Netns::new("tapgone");
    let name = ns.name.clone();
    // The guest waits (up to 20 s) for both carriers to drop after the host deletes the taps,
    // then finishes normally: kvmrun must still be running to take its status.
    let (status, out) = boot_reacting(
        &ns,
        Kernel::Default,
        "for i in $(seq 1 20); do
  c0=$(cat /sys/class/net/eth0/carrier) c1=$(cat /sys/class/net/eth1/carrier)
  [ \"$c0$c1\" = 11 ] && break
  sleep 0.5
done
echo eth0=$c0 eth1=$c1
echo taps-ready
for i in $(seq 1 40); do
  c0=$(cat /sys/class/net/eth0/carrier) c1=$(cat /sys/class/net/eth1/carrier)
  [ \"$c0$c1\" = 00 ] && break
  sleep 0.5
done
echo after-delete eth0=$c0 eth1=$c1
ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1 || echo ping-fails-as-it-should
exit 7",
        Some((
            "taps-ready",
            Box::new(move || {
                for tap in ["tap0", "tap1"] {
                    ip(&["-n", &name, "link", "del", tap]);
                }
            }),
        )),
    );
    assert!(out.contains("eth0=1 eth1=1"), "links not up at first");
    assert!(
        out.contains("after-delete eth0=0 eth1=0"),
        "the guest did not see both links go down"
    );
    assert!(out.contains("ping-fails-as-it-should"));
    assert_eq!(
        status,
        Some(7),
        "kvmrun did not survive to report the guest's status"
    );
}
