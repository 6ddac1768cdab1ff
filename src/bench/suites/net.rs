//! net and vm2vm: not measured yet. Every figure they will give is reported as a TAP SKIP with
//! the reason, so the report says what is missing instead of dropping it.

use super::super::Bench;

const REASON: &str = "kvmrun's virtio-net and e1000 lose bulk TCP transfers (a guest \
triple-faulted under bulk TCP; see tests/net.rs) and are being fixed on another branch; iperf3 \
is already in the benchmark guest for when they are";

pub fn run_net(b: &mut Bench) {
    for nic in ["virtio", "e1000"] {
        for name in [
            "tcp/guest-to-host/1-stream",
            "tcp/host-to-guest/1-stream",
            "tcp/guest-to-host/5-streams",
            "tcp/request-response-latency",
        ] {
            b.rec.skipped("net", &format!("{nic}/{name}"), None, REASON);
        }
    }
}

pub fn run_vm2vm(b: &mut Bench) {
    b.rec
        .skipped("vm2vm", "tcp/pairwise-throughput", None, REASON);
}
