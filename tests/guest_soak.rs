//! Soak tests with real Linux guests (issue #8): repeated boot/poweroff cycles that must leave
//! nothing behind, and a guest hammering its disk and network while it and another guest are
//! paused and resumed over and over. Shortened for CI; the lengths come from
//! KVMRUN_SOAK_BOOTS (default 10) and KVMRUN_SOAK_SECONDS (default 30; the issue's 5 minutes:
//! 300). Run through resources/run-tests.sh (in the test host where /dev/kvm is PVM).

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::api::Api;
use common::netns::{ip, Netns};
use common::{proc_use, scratch_dir, ProcUse};

fn artifact(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run through resources/run-tests.sh"))
}

fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `kvmrun run` of the default guest inside `ns`, running `script` as its command.
fn guest_in(ns: &Netns, extra: &[&str], script: &str) -> Command {
    let append = format!(
        "-- sh -c 'eval \"$(echo {} | base64 -d)\"'",
        common::base64(script.as_bytes())
    );
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.name,
        env!("CARGO_BIN_EXE_kvmrun"),
        "run",
    ])
    .args([
        "--kernel",
        &artifact("KVMRUN_TEST_BZIMAGE"),
        "--initrd",
        &artifact("KVMRUN_TEST_INITRD"),
        "--console",
        "stdio",
        "--append",
        &append,
    ])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

fn links(ns: &Netns) -> String {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-o", "link", "show"])
        .output()
        .expect("ip link show");
    // The names only: flags such as NO-CARRIER change with use.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
#[ignore = "boots Linux guests: run through resources/run-tests.sh"]
fn boot_poweroff_cycles_leave_no_fds_threads_memory_or_taps_behind() {
    let cycles = env_number("KVMRUN_SOAK_BOOTS", 10);
    let ns = Netns::new("soakboot");
    let dir = scratch_dir("soak-boot");
    let img = dir.join("disk.img");
    common::sparse_file(&img, 16 << 20);
    let disk = format!("path={}", img.display());
    let before = links(&ns);
    let mut seen: Vec<ProcUse> = Vec::new();
    // In the test host about one boot in 20 dies in early kernel start-up for reasons of the
    // emulation under it (README, "Known flakes"); there, up to two such deaths (no userspace
    // reached) are reported and replaced by further cycles. Never on hardware KVM.
    let early_deaths_allowed = if std::env::var_os("KVMRUN_TEST_IN_TESTHOST").is_some() {
        2
    } else {
        0
    };
    let mut early_deaths = 0;
    let mut cycle = 0;
    while (seen.len() as u64) < cycles {
        cycle += 1;
        // Up, some disk and network traffic, then a real poweroff.
        let script = "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
dd if=/dev/urandom of=/dev/vda bs=64k count=16 oflag=direct 2>/dev/null
ping -c 1 -W 2 10.0.2.1 >/dev/null 2>&1
echo soak-up
sleep 2
poweroff -f";
        let child = guest_in(
            &ns,
            &[
                "--disk",
                &disk,
                "--net",
                "tap=tap0,model=virtio",
                "--cpus",
                "2",
            ],
            script,
        )
        .spawn()
        .unwrap();
        let pid = child.id();
        let sample = Arc::new(Mutex::new(None));
        let s = sample.clone();
        let (out, timed_out) = common::reacting_or_stop(
            child,
            Duration::from_secs(60),
            vec![(
                "soak-up".into(),
                Box::new(move || *s.lock().unwrap() = Some(proc_use(pid))),
            )],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let used = *sample.lock().unwrap();
        let ok = !timed_out && out.status.code() == Some(0) && used.is_some();
        if !ok
            && !stdout.contains("Run /init as init process")
            && early_deaths < early_deaths_allowed
        {
            early_deaths += 1;
            eprintln!(
                "cycle {cycle}: the guest died in early boot (timed out: {timed_out}); a test-host flake, not counted: {stderr}"
            );
            continue;
        }
        assert!(!timed_out, "cycle {cycle}: kvmrun hung: {stdout}\n{stderr}");
        assert_eq!(out.status.code(), Some(0), "cycle {cycle}: {stderr}");
        let used =
            used.unwrap_or_else(|| panic!("cycle {cycle}: the guest never came up: {stderr}"));
        eprintln!("cycle {cycle}: {used:?}");
        seen.push(used);
    }
    let first = seen[0];
    for (i, u) in seen.iter().enumerate() {
        // One process per VM: the same machine must cost the same each time.
        assert_eq!(u.fds, first.fds, "cycle {i}: open descriptors {seen:?}");
        assert_eq!(u.threads, first.threads, "cycle {i}: threads {seen:?}");
        assert!(
            u.rss_kib.abs_diff(first.rss_kib) < 16 * 1024,
            "cycle {i}: RSS {} KiB vs {} KiB at first",
            u.rss_kib,
            first.rss_kib
        );
    }
    assert_eq!(
        links(&ns),
        before,
        "interfaces left behind in the namespace"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Counts what arrives on 10.0.2.1:5000 in `ns`, connection after connection, until `stop`.
fn sink(ns: &Netns, stop: Arc<AtomicBool>, bytes: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    ns.spawn(move || {
        let l = TcpListener::bind(("10.0.2.1", 5000)).unwrap();
        l.set_nonblocking(true).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

/// Pauses and resumes the VM behind `sock` every `period` until `stop`; returns the count.
fn pauser(sock: PathBuf, period: Duration, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut api = Api::connect(&sock, Duration::from_secs(120));
        api.wait_for_boot();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            // The VM may end at any point (its run is over): then the socket is gone.
            let Some(r) = api.try_call(r#"{"cmd":"pause"}"#) else {
                break;
            };
            if r["ok"] != true {
                // E.g. a vCPU slow to stop under the emulation: resume and go on.
                eprintln!("pause: {r}");
                if api.try_call(r#"{"cmd":"resume"}"#).is_none() {
                    break;
                }
                std::thread::sleep(period);
                continue;
            }
            assert_eq!(r["state"], "paused", "{r}");
            std::thread::sleep(period / 4);
            let Some(r) = api.try_call(r#"{"cmd":"resume"}"#) else {
                break;
            };
            assert_eq!(r["state"], "running", "{r}");
            n += 1;
            std::thread::sleep(period);
        }
        n
    })
}

fn finish(child: Child, what: &str, reactions: Vec<common::Reaction>) -> String {
    let out = common::wait_reacting_all(child, Duration::from_secs(600), reactions);
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: stdout {stdout}\nstderr {stderr}"
    );
    stdout
}

#[test]
#[ignore = "boots Linux guests: run through resources/run-tests.sh"]
fn disk_and_network_hammering_survives_pause_and_resume_beside_another_paused_guest() {
    let seconds = env_number("KVMRUN_SOAK_SECONDS", 30);
    let ns = Netns::new("soakio");
    let dir = scratch_dir("soak-io");
    let img = dir.join("disk.img");
    common::sparse_file(&img, 32 << 20);
    let disk = format!("path={}", img.display());
    let (sock_a, sock_b) = (dir.join("a.sock"), dir.join("b.sock"));
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sink = sink(&ns, stop.clone(), received.clone());

    // A: writes random blocks with O_DIRECT, reads each back and compares, sends it to the
    // host and pings it, for `seconds` of its clock; says when it starts and when three
    // quarters have passed, where the host samples its resource use.
    let hammer = format!(
        "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && sleep 1
start=$(date +%s); end=$(( start + {seconds} )); late_at=$(( start + {seconds} * 3 / 4 ))
i=0 late=0
echo hammer-start
while [ $(date +%s) -lt $end ]; do
  i=$((i + 1)); at=$(( i % 120 * 4 ))
  dd if=/dev/urandom of=/tmp/blk bs=64k count=4 2>/dev/null
  dd if=/tmp/blk of=/dev/vda bs=64k seek=$at oflag=direct conv=notrunc 2>/dev/null || {{ echo disk-write-failed-$i; exit 1; }}
  a=$(md5sum < /tmp/blk); b=$(dd if=/dev/vda bs=64k skip=$at count=4 iflag=direct 2>/dev/null | md5sum)
  [ \"$a\" = \"$b\" ] || {{ echo disk-mismatch-$i; exit 1; }}
  nc 10.0.2.1 5000 < /tmp/blk || {{ echo send-failed-$i; exit 1; }}
  ping -c 1 -W 3 10.0.2.1 >/dev/null || {{ echo ping-failed-$i; exit 1; }}
  if [ $late = 0 ] && [ $(date +%s) -ge $late_at ]; then echo hammer-late; late=1; fi
done
echo hammered iterations=$i"
    );
    let a = guest_in(
        &ns,
        &[
            "--disk",
            &disk,
            "--net",
            "tap=tap0,model=virtio",
            "--cpus",
            "2",
            "--api-socket",
            sock_a.to_str().unwrap(),
        ],
        &hammer,
    )
    .spawn()
    .unwrap();
    // B: counts for as long, paused and resumed twice as often.
    let counter = format!(
        "end=$(( $(date +%s) + {seconds} )); n=0
while [ $(date +%s) -lt $end ]; do n=$((n + 1)); done
echo counted n=$n"
    );
    let b = guest_in(&ns, &["--api-socket", sock_b.to_str().unwrap()], &counter)
        .spawn()
        .unwrap();
    let b = std::thread::spawn(move || finish(b, "the counting guest", Vec::new()));
    let pauses_a = pauser(sock_a, Duration::from_secs(2), stop.clone());
    let pauses_b = pauser(sock_b, Duration::from_secs(1), stop.clone());

    let pid_a = a.id();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sample = |s: &Arc<Mutex<Vec<ProcUse>>>| {
        let s = s.clone();
        Box::new(move || s.lock().unwrap().push(proc_use(pid_a))) as Box<dyn FnOnce() + Send>
    };
    let out_a = finish(
        a,
        "the hammered guest",
        vec![
            ("hammer-start".into(), sample(&samples)),
            ("hammer-late".into(), sample(&samples)),
        ],
    );
    let out_b = b.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (pauses_a, pauses_b) = (pauses_a.join().unwrap(), pauses_b.join().unwrap());
    sink.join().unwrap();
    let samples = samples.lock().unwrap().clone();
    let [early, late] = samples[..] else {
        panic!(
            "resource use sampled {} times, not twice: {out_a}",
            samples.len()
        );
    };

    let iterations: u64 = out_a
        .lines()
        .find_map(|l| l.trim().strip_prefix("hammered iterations="))
        .unwrap_or_else(|| panic!("the hammered guest did not finish: {out_a}"))
        .trim()
        .parse()
        .unwrap();
    assert!(out_b.contains("counted n="), "{out_b}");
    eprintln!(
        "{seconds} s: {iterations} iterations, {} bytes to the host, {pauses_a} + {pauses_b} pauses; A early {early:?}, late {late:?}",
        received.load(Ordering::Relaxed)
    );
    assert!(iterations > 0);
    assert_eq!(
        received.load(Ordering::Relaxed),
        iterations * 4 * 65536,
        "bytes the host received"
    );
    assert!(
        pauses_a >= 1 && pauses_b >= 1,
        "{pauses_a} / {pauses_b} pauses"
    );
    assert_eq!(
        early.fds, late.fds,
        "descriptors grew: {early:?} -> {late:?}"
    );
    assert_eq!(
        early.threads, late.threads,
        "threads grew: {early:?} -> {late:?}"
    );
    assert!(
        late.rss_kib <= early.rss_kib + 16 * 1024,
        "RSS grew: {early:?} -> {late:?}"
    );
    // The tap the test made is still there, and nothing else appeared.
    ip(&["-n", &ns.name, "link", "show", "tap0"]);
    let _ = std::fs::remove_dir_all(&dir);
}
