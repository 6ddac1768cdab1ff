//! Unit tests of virtio-net with virtio-queue's mock rings and the in-memory back-end.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::DescriptorTable;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic as VmGuestMemoryAtomic};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mock::{MockBackend, MockHandle};
use super::*;
use crate::net::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};
use crate::virtio::driver_queue::DriverQueue;
use crate::virtio::queue_layout::SplitQueueLayout;
use crate::virtio::{
    GuestMemoryMmap, QueueActivation, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const QSIZE: u16 = 16;
const MEM_LEN: usize = 0x40_0000;
/// Each queue's rings: the descriptor table at the base, the available ring at +0x1000, the
/// used ring at +0x2000.
const RXQ_BASE: u64 = 0x0;
const TXQ_BASE: u64 = 0x4000;
const RXQ: SplitQueueLayout = SplitQueueLayout::page_apart(RXQ_BASE, QSIZE);
const TXQ: SplitQueueLayout = SplitQueueLayout::page_apart(TXQ_BASE, QSIZE);
/// Buffers.
const BUF: u64 = 0x10_0000;
const BUF2: u64 = 0x20_0000;
const INDIRECT_TABLE: u64 = 0x8000;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

const ALL: u64 = DEVICE_FEATURES;
const NO_OFFLOADS: u64 = (1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS);

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_LEN)]).unwrap()
}

/// The driver side of one of the queues.
type Driver<'a> = DriverQueue<'a>;

fn vnet_hdr(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, cs: u16, co: u16) -> Vec<u8> {
    let mut h = vec![flags, gso_type];
    for v in [hdr_len, gso_size, cs, co, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// An Ethernet frame of `len` bytes (a recognisable pattern).
fn eth_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&MAC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

fn processor(features: u64) -> (NetProcessor, MockHandle, Arc<NetStats>) {
    let (b, h) = MockBackend::new();
    let stats = Arc::new(NetStats::default());
    (
        NetProcessor::new(Box::new(b), features, stats.clone()),
        h,
        stats,
    )
}

fn tx(p: &mut NetProcessor, d: &mut Driver) -> TxRun {
    p.process_tx(&mut d.queue, d.mem, 256).unwrap()
}

fn rx(p: &mut NetProcessor, d: &mut Driver) -> RxRun {
    p.process_rx(&mut d.queue, d.mem, 256).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Device: features, configuration space, offloads

#[test]
fn features_and_config_space() {
    let (b, h) = MockBackend::new();
    let mut dev = VirtioNet::new(Box::new(b), MAC);
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes(), vec![QUEUE_SIZE, QUEUE_SIZE]);
    let f = dev.device_features();
    for bit in [
        virtio_bindings::virtio_config::VIRTIO_F_VERSION_1,
        virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX,
        virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
        VIRTIO_NET_F_GUEST_ECN,
    ] {
        assert!(f & (1 << bit) != 0, "bit {bit} not offered");
    }
    for bit in [
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_UFO,
    ] {
        assert!(f & (1 << bit) == 0, "bit {bit} offered");
    }
    dev.set_acked_features(u64::MAX);
    assert_eq!(dev.acked_features(), f);

    let mut c = [0u8; 12];
    dev.read_config(0, &mut c);
    assert_eq!(&c[0..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1, "max_virtqueue_pairs");
    assert_eq!(&c[10..12], &[0, 0], "mtu (not offered)");
    h.set_link_up(false);
    let mut s = [0xffu8; 2];
    dev.read_config(6, &mut s);
    assert_eq!(s, [0, 0], "link down");

    // Odd offsets and lengths; past the end reads zero; writes are ignored.
    h.set_link_up(true);
    let mut b = [0xffu8; 4];
    dev.read_config(4, &mut b);
    assert_eq!(b, [0xcd, 0xef, 1, 0]);
    let mut b = [0xffu8; 8];
    dev.read_config(10, &mut b);
    assert_eq!(b, [0; 8]);
    for off in [12, 0x1000, u64::MAX - 1, u64::MAX] {
        let mut b = [0xffu8; 4];
        dev.read_config(off, &mut b);
        assert_eq!(b, [0; 4], "offset {off:#x}");
    }
    dev.write_config(0, &[1, 2, 3, 4, 5, 6]);
    dev.write_config(u64::MAX, &[1]);
    let mut m = [0u8; 6];
    dev.read_config(0, &mut m);
    assert_eq!(m, MAC);
    dev.read_config(0, &mut []);
}

#[test]
fn guest_features_become_tap_offloads() {
    let b = |bits: &[u32]| bits.iter().fold(0u64, |a, &x| a | 1 << x);
    assert_eq!(offload_flags(0), 0);
    assert_eq!(offload_flags(NO_OFFLOADS), 0);
    assert_eq!(offload_flags(b(&[VIRTIO_NET_F_GUEST_CSUM])), TUN_F_CSUM);
    // TSO without GUEST_CSUM is invalid (§5.1.3.1) and the tun driver would refuse it.
    assert_eq!(offload_flags(b(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
    assert_eq!(
        offload_flags(b(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4])),
        TUN_F_CSUM | TUN_F_TSO4
    );
    assert_eq!(
        offload_flags(b(&[
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN
        ])),
        TUN_F_CSUM | TUN_F_TSO6 | TUN_F_TSO_ECN
    );
    assert_eq!(
        offload_flags(b(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN])),
        TUN_F_CSUM
    );
    assert_eq!(
        offload_flags(ALL),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
    );
    // HOST_* features say what the guest may send: no effect on the tap's offloads.
    assert_eq!(
        offload_flags(b(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4])),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// TX

#[test]
fn tx_frame_reaches_the_backend_byte_exact() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, TXQ);
    let (mut p, h, stats) = processor(ALL);

    // Header and frame in one descriptor.
    let frame = eth_frame(1500, 1);
    let hdr = vnet_hdr(1, 0, 0, 0, 34, 16); // NEEDS_CSUM at a TCP checksum
    let mut whole = hdr.clone();
    whole.extend_from_slice(&frame);
    mem.write_slice(&whole, GuestAddress(BUF)).unwrap();
    let head = d.add(&[(BUF, whole.len() as u32, 0)]);
    let run = tx(&mut p, &mut d);
    assert_eq!(run.processed, 1);
    assert!(run.needs_interrupt);
    assert_eq!(d.used(0), (u32::from(head), 0));
    assert_eq!(h.take_sent(), vec![whole.clone()]);

    // Header and frame in separate descriptors, the frame split again, and a zero-length one.
    mem.write_slice(&hdr, GuestAddress(BUF2)).unwrap();
    mem.write_slice(&frame[..100], GuestAddress(BUF2 + 0x1000))
        .unwrap();
    mem.write_slice(&frame[100..], GuestAddress(BUF2 + 0x3000))
        .unwrap();
    d.add(&[
        (BUF2, 12, 0),
        (BUF2 + 0x1000, 100, 0),
        (BUF2 + 0x2000, 0, 0),
        (BUF2 + 0x3000, 1400, 0),
    ]);
    // The header split across descriptors (no framing assumptions, §2.6.4).
    d.add(&[(BUF, 5, 0), (BUF + 5, whole.len() as u32 - 5, 0)]);
    let run = tx(&mut p, &mut d);
    assert_eq!(run.processed, 2);
    assert_eq!(h.take_sent(), vec![whole.clone(), whole.clone()]);

    // An indirect table.
    let table = DescriptorTable::new(&mem, GuestAddress(INDIRECT_TABLE), 2);
    table
        .store(
            0,
            RawDescriptor::from(SplitDescriptor::new(BUF, 12, NEXT, 1)),
        )
        .unwrap();
    table
        .store(
            1,
            RawDescriptor::from(SplitDescriptor::new(BUF + 12, 1500, 0, 0)),
        )
        .unwrap();
    d.add(&[(INDIRECT_TABLE, 32, INDIRECT)]);
    tx(&mut p, &mut d);
    assert_eq!(h.take_sent(), vec![whole]);

    let s = stats.snapshot();
    assert_eq!(s.tx_frames, 4);
    assert_eq!(s.tx_bytes, 4 * 1500);
    assert_eq!(s.malformed, 0);
    assert_eq!(d.used_idx(), 4);
    for i in 0..4 {
        assert_eq!(d.used(i).1, 0);
    }
}

#[test]
fn tx_gso_header_passes_through_when_negotiated() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, TXQ);
    let (mut p, h, stats) = processor(ALL);
    let frame = eth_frame(60_000, 3);
    let mut whole = vnet_hdr(
        1,
        (VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN) as u8,
        66,
        1448,
        34,
        16,
    );
    whole.extend_from_slice(&frame);
    mem.write_slice(&whole, GuestAddress(BUF)).unwrap();
    d.add(&[(BUF, whole.len() as u32, 0)]);
    tx(&mut p, &mut d);
    assert_eq!(h.take_sent(), vec![whole]);
    assert_eq!(stats.snapshot().tx_frames, 1);

    // The largest accepted chain: MAX_TX_LEN bytes.
    let mut big = vnet_hdr(0, 0, 0, 0, 0, 0);
    big.extend_from_slice(&eth_frame(MAX_TX_LEN - 12, 4));
    mem.write_slice(&big, GuestAddress(BUF)).unwrap();
    d.add(&[(BUF, MAX_TX_LEN as u32, 0)]);
    tx(&mut p, &mut d);
    assert_eq!(h.take_sent().len(), 1);
}

/// Each malformed chain is completed with used length 0, counted, and never reaches the
/// back-end; a good frame after all of them still goes through.
#[test]
fn tx_malformed_chains_are_dropped_and_counted() {
    let mem = guest_memory();
    let good = {
        let mut w = vnet_hdr(0, 0, 0, 0, 0, 0);
        w.extend_from_slice(&eth_frame(100, 9));
        w
    };
    mem.write_slice(&good, GuestAddress(BUF)).unwrap();
    let len = good.len() as u32;
    let write_hdr = |h: Vec<u8>| mem.write_slice(&h, GuestAddress(BUF2)).unwrap();

    type Setup<'s> = Box<dyn Fn(&mut Driver) + 's>;
    let cases: Vec<(&str, u64, Setup)> = vec![
        (
            "no header",
            ALL,
            Box::new(|d| {
                d.add(&[(BUF, 11, 0)]);
            }),
        ),
        (
            "header only",
            ALL,
            Box::new(|d| {
                d.add(&[(BUF, 12, 0)]);
            }),
        ),
        (
            "runt frame",
            ALL,
            Box::new(|d| {
                d.add(&[(BUF, 12 + 13, 0)]);
            }),
        ),
        (
            "zero-length chain",
            ALL,
            Box::new(|d| {
                d.add(&[(BUF, 0, 0)]);
            }),
        ),
        (
            "device-writable descriptor",
            ALL,
            Box::new(|d| {
                d.add(&[(BUF, len, WRITE)]);
            }),
        ),
        (
            "writable after readable",
            ALL,
            Box::new(|d| {
                d.add(&[(BUF, 12, 0), (BUF + 12, len - 12, WRITE)]);
            }),
        ),
        (
            "oversized single",
            ALL,
            Box::new(|d| {
                d.add(&[(BUF, MAX_TX_LEN as u32 + 1, 0)]);
            }),
        ),
        (
            "oversized in pieces",
            ALL,
            Box::new(|d| {
                d.add(&[(BUF, 40_000, 0), (BUF2, 40_000, 0)]);
            }),
        ),
        (
            "huge length",
            ALL,
            Box::new(|d| {
                d.add(&[(BUF, u32::MAX, 0)]);
            }),
        ),
        (
            "outside memory",
            ALL,
            Box::new(|d| {
                d.add(&[(MEM_LEN as u64 - 20, len, 0)]);
            }),
        ),
        (
            "address wraps",
            ALL,
            Box::new(|d| {
                d.add(&[(u64::MAX - 10, len, 0)]);
            }),
        ),
        (
            "descriptor loop",
            ALL,
            Box::new(|d| {
                d.store(0, BUF, 20, NEXT, 1);
                d.store(1, BUF + 20, 20, NEXT, 0);
                d.make_available(0);
            }),
        ),
        (
            "self loop",
            ALL,
            Box::new(|d| {
                d.store(3, BUF, 1, NEXT, 3);
                d.make_available(3);
            }),
        ),
        (
            "next out of range",
            ALL,
            Box::new(|d| {
                d.store(0, BUF, len, NEXT, 200);
                d.make_available(0);
            }),
        ),
        (
            "head out of range",
            ALL,
            Box::new(|d| {
                d.make_available(QSIZE + 3);
            }),
        ),
        (
            "nested indirect",
            ALL,
            Box::new(|d| {
                let t = DescriptorTable::new(d.mem, GuestAddress(INDIRECT_TABLE), 1);
                t.store(
                    0,
                    RawDescriptor::from(SplitDescriptor::new(INDIRECT_TABLE, 16, INDIRECT, 0)),
                )
                .unwrap();
                d.add(&[(INDIRECT_TABLE, 16, INDIRECT)]);
            }),
        ),
        (
            "indirect table length not a multiple of 16",
            ALL,
            Box::new(|d| {
                d.add(&[(INDIRECT_TABLE, 17, INDIRECT)]);
            }),
        ),
        (
            "csum without CSUM",
            NO_OFFLOADS,
            Box::new(|d| {
                write_hdr(vnet_hdr(1, 0, 0, 0, 34, 16));
                d.add(&[(BUF2, 12, 0), (BUF + 12, len - 12, 0)]);
            }),
        ),
        (
            "csum past the frame",
            ALL,
            Box::new(|d| {
                write_hdr(vnet_hdr(1, 0, 0, 0, 90, 9));
                d.add(&[(BUF2, 12, 0), (BUF + 12, len - 12, 0)]);
            }),
        ),
        (
            "TSO4 without HOST_TSO4",
            NO_OFFLOADS,
            Box::new(|d| {
                write_hdr(vnet_hdr(0, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 54, 1448, 0, 0));
                d.add(&[(BUF2, 12, 0), (BUF + 12, len - 12, 0)]);
            }),
        ),
        (
            "UDP GSO (UFO not offered)",
            ALL,
            Box::new(|d| {
                write_hdr(vnet_hdr(0, VIRTIO_NET_HDR_GSO_UDP as u8, 42, 1400, 0, 0));
                d.add(&[(BUF2, 12, 0), (BUF + 12, len - 12, 0)]);
            }),
        ),
        (
            "unknown GSO type",
            ALL,
            Box::new(|d| {
                write_hdr(vnet_hdr(0, 7, 42, 1400, 0, 0));
                d.add(&[(BUF2, 12, 0), (BUF + 12, len - 12, 0)]);
            }),
        ),
        (
            "GSO size 0",
            ALL,
            Box::new(|d| {
                write_hdr(vnet_hdr(0, VIRTIO_NET_HDR_GSO_TCPV6 as u8, 74, 0, 0, 0));
                d.add(&[(BUF2, 12, 0), (BUF + 12, len - 12, 0)]);
            }),
        ),
        (
            "GSO hdr_len past the frame",
            ALL,
            Box::new(|d| {
                write_hdr(vnet_hdr(
                    0,
                    VIRTIO_NET_HDR_GSO_TCPV4 as u8,
                    2000,
                    1448,
                    0,
                    0,
                ));
                d.add(&[(BUF2, 12, 0), (BUF + 12, len - 12, 0)]);
            }),
        ),
        (
            "ECN bit without GSO",
            ALL,
            Box::new(|d| {
                write_hdr(vnet_hdr(0, VIRTIO_NET_HDR_GSO_ECN as u8, 0, 0, 0, 0));
                d.add(&[(BUF2, 12, 0), (BUF + 12, len - 12, 0)]);
            }),
        ),
    ];
    for (name, features, setup) in cases {
        let mut d = Driver::new(&mem, TXQ);
        let (mut p, h, stats) = processor(features);
        setup(&mut d);
        let run = tx(&mut p, &mut d);
        assert_eq!(run.processed, 1, "{name}");
        let s = stats.snapshot();
        assert_eq!(s.malformed, 1, "{name}");
        assert_eq!(s.tx_frames, 0, "{name}");
        assert!(h.take_sent().is_empty(), "{name}");
        if name == "head out of range" {
            assert_eq!(d.used_idx(), 0, "{name}: nothing to complete");
        } else {
            assert_eq!(d.used_idx(), 1, "{name}: not completed");
            assert_eq!(d.used(0).1, 0, "{name}: used len");
        }
        // No stall: a good frame still goes through.
        d.next_desc = 8;
        d.add(&[(BUF, len, 0)]);
        let run = tx(&mut p, &mut d);
        assert_eq!(run.processed, 1, "{name}");
        assert_eq!(h.take_sent(), vec![good.clone()], "{name}");
    }
}

/// A chain longer than one writev takes (through an indirect table, so longer than the queue)
/// is dropped before any of it reaches the back-end; one at the limit goes through.
#[test]
fn tx_chains_longer_than_uio_maxiov_are_dropped() {
    let mem = guest_memory();
    let mut frame = vnet_hdr(0, 0, 0, 0, 0, 0);
    frame.extend_from_slice(&eth_frame(MAX_TX_SEGMENTS + 1, 3));
    mem.write_slice(&frame, GuestAddress(BUF)).unwrap();
    let (mut p, h, stats) = processor(ALL);
    let mut d = Driver::new(&mem, TXQ);
    for n in [MAX_TX_SEGMENTS + 1, MAX_TX_SEGMENTS] {
        // n descriptors: the header, then one byte each, then the rest of the frame.
        let table = DescriptorTable::new(&mem, GuestAddress(INDIRECT_TABLE), n as u16);
        let last = n as u16 - 1;
        for i in 0..n as u16 {
            let (addr, len) = match i {
                0 => (BUF, 12),
                i if i == last => (
                    BUF + 11 + u64::from(i),
                    frame.len() as u32 - 11 - u32::from(i),
                ),
                i => (BUF + 11 + u64::from(i), 1),
            };
            let flags = if i == last { 0 } else { NEXT };
            table
                .store(
                    i,
                    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, i + 1)),
                )
                .unwrap();
        }
        d.add(&[(INDIRECT_TABLE, 16 * n as u32, INDIRECT)]);
        tx(&mut p, &mut d);
    }
    let s = stats.snapshot();
    assert_eq!((s.malformed, s.tx_frames), (1, 1));
    assert_eq!(h.take_sent(), vec![frame]);
}

#[test]
fn tx_backend_errors_are_counted_as_dropped() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, TXQ);
    let (mut p, h, stats) = processor(ALL);
    let len = put_small_tx_frame(&mem);
    h.with(|s| s.send_errno = Some(libc::EIO));
    d.add(&[(BUF, len, 0)]);
    d.add(&[(BUF, len, 0)]);
    assert_eq!(tx(&mut p, &mut d).processed, 2);
    let s = stats.snapshot();
    assert_eq!((s.tx_dropped, s.tx_frames, s.malformed), (2, 0, 0));
    assert_eq!(d.used_idx(), 2);
}

#[test]
fn tx_budget_and_notification_suppression() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, TXQ);
    let (mut p, h, _) = processor(NO_OFFLOADS);
    let len = put_small_tx_frame(&mem);
    for _ in 0..5 {
        d.add(&[(BUF, len, 0)]);
    }
    let run = p.process_tx(&mut d.queue, &mem, 3).unwrap();
    assert_eq!((run.processed, run.more), (3, true));
    assert_eq!(
        d.used_flags(),
        VRING_USED_F_NO_NOTIFY as u16,
        "notifications stay off while more work is queued"
    );
    let run = p.process_tx(&mut d.queue, &mem, 3).unwrap();
    assert_eq!((run.processed, run.more), (2, false));
    assert_eq!(d.used_flags(), 0, "notifications back on when idle");
    assert_eq!(h.take_sent().len(), 5);
}

#[test]
fn tx_event_idx_suppresses_interrupts() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, TXQ);
    d.queue.set_event_idx(true);
    let (mut p, _h, _) = processor(ALL);
    let len = put_small_tx_frame(&mem);
    // The driver asks for an interrupt only once used idx passes 2.
    d.set_used_event(2);
    d.add(&[(BUF, len, 0)]);
    assert!(!tx(&mut p, &mut d).needs_interrupt, "used idx 1");
    d.add(&[(BUF, len, 0)]);
    assert!(!tx(&mut p, &mut d).needs_interrupt, "used idx 2");
    d.add(&[(BUF, len, 0)]);
    assert!(
        tx(&mut p, &mut d).needs_interrupt,
        "used idx 3 passes used_event 2"
    );
}

/// Writes a TX chain's bytes at BUF (an all-zero vnet header and a 64-byte frame); returns
/// their length.
fn put_small_tx_frame(mem: &GuestMemoryMmap) -> u32 {
    let mut w = vnet_hdr(0, 0, 0, 0, 0, 0);
    w.extend_from_slice(&eth_frame(64, 0));
    mem.write_slice(&w, GuestAddress(BUF)).unwrap();
    w.len() as u32
}

/// The used index as the driver would read it (used ring at `base + 0x2000`).
fn used_idx_at(mem: &GuestMemoryMmap, base: u64) -> u16 {
    mem.read_obj(GuestAddress(base + 0x2000 + 2)).unwrap()
}

#[test]
fn tx_completes_and_notifies_each_frame_as_it_is_sent() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, TXQ);
    let (mut p, h, _) = processor(NO_OFFLOADS);
    let len = put_small_tx_frame(&mem);
    for _ in 0..3 {
        d.add(&[(BUF, len, 0)]);
    }
    // Without EVENT_IDX and with interrupts not suppressed by the driver, every completion is
    // signalled, each right after its own frame (not after the batch).
    let mut seen = Vec::new();
    let run = p
        .process_tx_notify(&mut d.queue, &mem, 256, &mut || {
            seen.push(used_idx_at(&mem, TXQ_BASE))
        })
        .unwrap();
    assert_eq!(seen, [1, 2, 3]);
    assert!(run.needs_interrupt);
    assert_eq!(h.take_sent().len(), 3);

    // With EVENT_IDX the driver decides: used_event 4 → one interrupt, when used idx is 5.
    d.queue.set_event_idx(true);
    d.set_used_event(4);
    for _ in 0..3 {
        d.add(&[(BUF, len, 0)]);
    }
    let mut seen = Vec::new();
    p.process_tx_notify(&mut d.queue, &mem, 256, &mut || {
        seen.push(used_idx_at(&mem, TXQ_BASE))
    })
    .unwrap();
    assert_eq!(seen, [5]);
}

// ---------------------------------------------------------------------------------------------
// RX

fn rx_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vnet_hdr(2, 0, 0, 0, 0, 0); // DATA_VALID
    f.extend_from_slice(&eth_frame(len, seed));
    f
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn with_num_buffers(f: &[u8], n: u16) -> Vec<u8> {
    let mut f = f.to_vec();
    f[10..12].copy_from_slice(&n.to_le_bytes());
    f
}

#[test]
fn rx_frame_lands_in_guest_buffers_with_the_header() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RXQ);
    let (mut p, h, stats) = processor(NO_OFFLOADS);
    let f = rx_frame(1514, 5);
    h.push_rx(f.clone());
    // One chain of two descriptors: header and frame may span them.
    let head = d.add(&[(BUF, 1000, WRITE), (BUF2, 1000, WRITE)]);
    let run = rx(&mut p, &mut d);
    assert_eq!((run.delivered, run.used, run.out_of_buffers), (1, 1, false));
    assert!(run.needs_interrupt);
    assert_eq!(d.used(0), (u32::from(head), f.len() as u32));
    let mut got = read(&mem, BUF, 1000);
    got.extend(read(&mem, BUF2, f.len() - 1000));
    assert_eq!(got, with_num_buffers(&f, 1));
    let s = stats.snapshot();
    assert_eq!((s.rx_frames, s.rx_bytes), (1, 1514));
    // The back-end was read until it had nothing more.
    assert_eq!(h.recv_calls(), 2);
}

#[test]
fn rx_mergeable_buffers_carry_num_buffers() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RXQ);
    let (mut p, h, stats) = processor(ALL);
    let f = rx_frame(3000, 8);
    h.push_rx(f.clone());
    let heads: Vec<u16> = (0..4)
        .map(|i| d.add(&[(BUF + i * 0x1000, 1024, WRITE)]))
        .collect();
    let run = rx(&mut p, &mut d);
    assert_eq!((run.delivered, run.used), (1, 3));
    assert_eq!(d.used_idx(), 3);
    let total = f.len();
    let expect = [1024, 1024, total - 2048];
    let mut got = Vec::new();
    for (i, &n) in expect.iter().enumerate() {
        assert_eq!(d.used(i as u16), (u32::from(heads[i]), n as u32));
        got.extend(read(&mem, BUF + i as u64 * 0x1000, n));
    }
    assert_eq!(got, with_num_buffers(&f, 3));

    // The fourth buffer is still held and takes the next frame.
    let f2 = rx_frame(100, 1);
    h.push_rx(f2.clone());
    let run = rx(&mut p, &mut d);
    assert_eq!(run.delivered, 1);
    assert_eq!(d.used(3), (u32::from(heads[3]), f2.len() as u32));
    assert_eq!(read(&mem, BUF + 0x3000, f2.len()), with_num_buffers(&f2, 1));
    assert_eq!(stats.snapshot().rx_frames, 2);
}

#[test]
fn rx_never_writes_past_the_guest_buffers() {
    let mem = guest_memory();
    let canary = vec![0xa5u8; 0x3000];
    mem.write_slice(&canary, GuestAddress(BUF)).unwrap();
    let mut d = Driver::new(&mem, RXQ);
    let (mut p, h, _) = processor(ALL);
    // Three buffers of 100, 50 and 1000 bytes inside the canary area.
    d.add(&[(BUF + 0x100, 100, WRITE)]);
    d.add(&[(BUF + 0x200, 30, WRITE), (BUF + 0x300, 20, WRITE)]);
    d.add(&[(BUF + 0x1000, 1000, WRITE)]);
    let f = rx_frame(400, 2);
    h.push_rx(f.clone());
    let run = rx(&mut p, &mut d);
    assert_eq!((run.delivered, run.used), (1, 3));
    let after = read(&mem, BUF, 0x3000);
    let inside = |a: usize| {
        (0x100..0x164).contains(&a)
            || (0x200..0x21e).contains(&a)
            || (0x300..0x314).contains(&a)
            || (0x1000..0x1000 + 262).contains(&a)
    };
    for (a, &b) in after.iter().enumerate() {
        if !inside(a) {
            assert_eq!(b, 0xa5, "byte at BUF+{a:#x} written");
        }
    }
    assert_eq!(d.used(2).1, f.len() as u32 - 150);
}

#[test]
fn rx_too_small_buffers_drop_the_frame() {
    let mem = guest_memory();
    mem.write_slice(&[0xa5; 0x1000], GuestAddress(BUF)).unwrap();
    let mut d = Driver::new(&mem, RXQ);
    let (mut p, h, stats) = processor(NO_OFFLOADS);
    let head = d.add(&[(BUF, 1000, WRITE)]);
    h.push_rx(rx_frame(1500, 0));
    let run = rx(&mut p, &mut d);
    assert_eq!((run.delivered, run.used), (0, 1));
    assert_eq!(d.used(0), (u32::from(head), 0));
    assert_eq!(read(&mem, BUF, 0x1000), vec![0xa5; 0x1000]);
    let s = stats.snapshot();
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 0));

    // With MRG_RXBUF: even the whole ring is not enough for a 64 KiB frame of 16-byte
    // buffers: the frame is dropped, the buffers kept for the next (small) frame.
    let mut d = Driver::new(&mem, RXQ);
    let (mut p, h, stats) = processor(ALL);
    for i in 0..QSIZE {
        d.add(&[(BUF + u64::from(i) * 16, 16, WRITE)]);
    }
    h.push_rx(rx_frame(60_000, 0));
    let small = rx_frame(14, 3);
    h.push_rx(small.clone());
    let run = rx(&mut p, &mut d);
    assert_eq!(run.delivered, 1);
    assert_eq!(stats.snapshot().rx_dropped, 1);
    assert_eq!((d.used_idx(), d.used(0).1), (2, 16));
    assert_eq!(d.used(1).1, 10);
    let mut got = read(&mem, BUF, 16);
    got.extend(read(&mem, BUF + 16, 10));
    assert_eq!(got, with_num_buffers(&small, 2));

    // A runt from the back-end (shorter than a header) is dropped too.
    h.push_rx(vec![1, 2, 3]);
    rx(&mut p, &mut d);
    assert_eq!(stats.snapshot().rx_dropped, 2);
}

#[test]
fn rx_without_buffers_stops_reading_the_backend_until_refilled() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RXQ);
    let (mut p, h, stats) = processor(NO_OFFLOADS);
    let f1 = rx_frame(200, 1);
    let f2 = rx_frame(300, 2);
    h.push_rx(f1.clone());
    h.push_rx(f2.clone());
    let run = rx(&mut p, &mut d);
    assert!(run.out_of_buffers);
    assert_eq!((run.delivered, run.used), (0, 0));
    assert!(!run.needs_interrupt);
    assert_eq!(h.recv_calls(), 1, "one frame read and held");
    assert!(p.has_pending_frame());
    assert_eq!(d.used_flags(), 0, "the driver is asked to notify");
    // Again (e.g. a spurious wake-up): the back-end is not read.
    assert!(rx(&mut p, &mut d).out_of_buffers);
    assert_eq!(h.recv_calls(), 1);
    assert_eq!(stats.snapshot().rx_no_buffers, 2);

    // The guest adds one buffer: the held frame goes in; then out of buffers again.
    d.add(&[(BUF, 2048, WRITE)]);
    let run = rx(&mut p, &mut d);
    assert_eq!((run.delivered, run.out_of_buffers), (1, true));
    assert_eq!(read(&mem, BUF, f1.len()), with_num_buffers(&f1, 1));
    assert_eq!(h.recv_calls(), 2);
    d.add(&[(BUF2, 2048, WRITE)]);
    let run = rx(&mut p, &mut d);
    assert_eq!((run.delivered, run.out_of_buffers), (1, false));
    assert_eq!(read(&mem, BUF2, f2.len()), with_num_buffers(&f2, 1));
    assert_eq!(stats.snapshot().rx_frames, 2);
    assert_eq!(stats.snapshot().rx_dropped, 0);
}

#[test]
fn rx_malformed_chains_are_returned_unused() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RXQ);
    let (mut p, h, stats) = processor(ALL);
    let f = rx_frame(100, 0);
    h.push_rx(f.clone());
    let bad1 = d.add(&[(BUF, 2048, 0)]); // device-readable
    let bad2 = d.add(&[(MEM_LEN as u64 - 100, 2048, WRITE)]); // outside memory
    let bad3 = d.add(&[(BUF, 8, WRITE)]); // smaller than a header
    d.store(10, BUF, 100, WRITE | NEXT, 10); // loop
    d.make_available(10);
    let good = d.add(&[(BUF2, 2048, WRITE)]);
    let run = rx(&mut p, &mut d);
    assert_eq!((run.delivered, run.used), (1, 5));
    for (i, head) in [bad1, bad2, bad3, 10].into_iter().enumerate() {
        assert_eq!(d.used(i as u16), (u32::from(head), 0));
    }
    assert_eq!(d.used(4), (u32::from(good), f.len() as u32));
    assert_eq!(stats.snapshot().malformed, 4);
}

#[test]
fn rx_budget_bounds_the_work() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RXQ);
    let (mut p, h, _) = processor(NO_OFFLOADS);
    for i in 0..5 {
        h.push_rx(rx_frame(60, i));
        d.add(&[(BUF + u64::from(i) * 0x1000, 2048, WRITE)]);
    }
    let run = p.process_rx(&mut d.queue, &mem, 3).unwrap();
    assert_eq!((run.delivered, run.more), (3, true));
    let run = p.process_rx(&mut d.queue, &mem, 3).unwrap();
    assert_eq!((run.delivered, run.more), (2, false));
}

#[test]
fn rx_event_idx_interrupts() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, RXQ);
    d.queue.set_event_idx(true);
    let (mut p, h, _) = processor(ALL);
    d.set_used_event(1);
    for i in 0..3 {
        d.add(&[(BUF + i * 0x1000, 2048, WRITE)]);
    }
    h.push_rx(rx_frame(60, 0));
    assert!(!rx(&mut p, &mut d).needs_interrupt, "used idx 1");
    h.push_rx(rx_frame(60, 0));
    assert!(
        rx(&mut p, &mut d).needs_interrupt,
        "used idx 2 passes used_event 1"
    );
}

// ---------------------------------------------------------------------------------------------
// The device with its worker thread

#[derive(Default)]
struct TestInterrupt {
    seen: Mutex<Vec<VirtioInterruptType>>,
    cv: Condvar,
}

impl VirtioInterrupt for TestInterrupt {
    fn trigger(&self, t: VirtioInterruptType) -> std::io::Result<()> {
        self.seen.lock().unwrap().push(t);
        self.cv.notify_all();
        Ok(())
    }
}

impl TestInterrupt {
    fn wait_for(&self, t: VirtioInterruptType, timeout: Duration) -> bool {
        let g = self.seen.lock().unwrap();
        let (mut g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |v| !v.contains(&t))
            .unwrap();
        let found = g.contains(&t);
        g.retain(|x| *x != t);
        found
    }
}

struct Guest {
    mem: GuestMemoryMmap,
    rx_notify: EventFd,
    tx_notify: EventFd,
    irq: Arc<TestInterrupt>,
}

impl Guest {
    fn new() -> Guest {
        Guest {
            mem: guest_memory(),
            rx_notify: EventFd::new(EFD_NONBLOCK).unwrap(),
            tx_notify: EventFd::new(EFD_NONBLOCK).unwrap(),
            irq: Arc::new(TestInterrupt::default()),
        }
    }

    fn activate(&self, dev: &mut VirtioNet) {
        let queues = vec![
            QueueActivation {
                index: 0,
                queue: RXQ.ready_queue(),
                notify: self.rx_notify.try_clone().unwrap(),
            },
            QueueActivation {
                index: 1,
                queue: TXQ.ready_queue(),
                notify: self.tx_notify.try_clone().unwrap(),
            },
        ];
        dev.activate(
            VmGuestMemoryAtomic::new(self.mem.clone()),
            self.irq.clone(),
            queues,
        )
        .unwrap();
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn worker_moves_frames_both_ways_and_survives_reset() {
    crate::worker_hook::recorder::install();
    let g = Guest::new();
    let (b, h) = MockBackend::new();
    let mut dev = VirtioNet::new(Box::new(b), MAC);
    let stats = dev.stats();
    dev.set_acked_features(ALL);
    g.activate(&mut dev);
    assert!(dev.is_active());
    assert_eq!(
        h.with(|s| s.offload),
        Some(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
    );
    // (The name is set by the new thread itself once it runs.)
    wait_until("a thread named virtio-net", || {
        std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
            std::fs::read_to_string(t.unwrap().path().join("comm"))
                .map(|c| c.trim() == "virtio-net")
                .unwrap_or(false)
        })
    });
    // The worker runs the VMM's start hook (kvmrun's seccomp filter) on its own thread.
    wait_until("the worker start hook", || {
        crate::worker_hook::recorder::saw("virtio-net")
    });

    for round in 0..2u8 {
        let mut txd = Driver::new(&g.mem, TXQ);
        let mut rxd = Driver::new(&g.mem, RXQ);
        // TX: guest → back-end.
        let mut w = vnet_hdr(0, 0, 0, 0, 0, 0);
        w.extend_from_slice(&eth_frame(1000, round));
        g.mem.write_slice(&w, GuestAddress(BUF)).unwrap();
        txd.add(&[(BUF, w.len() as u32, 0)]);
        g.tx_notify.write(1).unwrap();
        assert!(g
            .irq
            .wait_for(VirtioInterruptType::Queue(1), Duration::from_secs(10)));
        assert_eq!(h.take_sent(), vec![w]);
        assert_eq!(txd.used_idx(), 1);

        // RX: back-end → guest, with no buffers first.
        let before = h.recv_calls();
        let f = rx_frame(500, round);
        h.push_rx(f.clone());
        wait_until("the frame to be read", || h.recv_calls() > before);
        std::thread::sleep(Duration::from_millis(100));
        let calls = h.recv_calls() - before;
        assert!(
            calls <= 2,
            "the back-end is polled without buffers: {calls} reads"
        );
        rxd.add(&[(BUF2, 2048, WRITE)]);
        g.rx_notify.write(1).unwrap();
        assert!(g
            .irq
            .wait_for(VirtioInterruptType::Queue(0), Duration::from_secs(10)));
        assert_eq!(rxd.used(0), (0, f.len() as u32));
        assert_eq!(read(&g.mem, BUF2, f.len()), with_num_buffers(&f, 1));

        // With a buffer available, the back-end's readability alone drives RX. (EVENT_IDX:
        // the driver asks for the next interrupt as Linux does, through used_event.)
        rxd.set_used_event(1);
        rxd.add(&[(BUF2 + 0x1000, 2048, WRITE)]);
        let f2 = rx_frame(80, round);
        h.push_rx(f2.clone());
        assert!(g
            .irq
            .wait_for(VirtioInterruptType::Queue(0), Duration::from_secs(10)));
        assert_eq!(rxd.used(1).1, f2.len() as u32);

        // Reset: the worker stops, the back-end comes back; re-activate for the next round.
        dev.reset();
        assert!(!dev.is_active());
        assert_eq!(dev.acked_features(), 0);
        assert_eq!(h.with(|s| s.offload), Some(0));
        g.mem.write_slice(&[0u8; 0x3000], GuestAddress(0)).unwrap();
        g.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(TXQ_BASE))
            .unwrap();
        let _ = g.rx_notify.read();
        let _ = g.tx_notify.read();
        dev.set_acked_features(ALL);
        g.activate(&mut dev);
    }
    let s = stats.snapshot();
    assert_eq!((s.tx_frames, s.rx_frames), (2, 4));
    drop(dev);
}

#[test]
fn worker_reports_link_changes() {
    let g = Guest::new();
    let (b, h) = MockBackend::new();
    let mut dev = VirtioNet::new(Box::new(b), MAC);
    dev.set_acked_features(ALL);
    g.activate(&mut dev);
    h.set_link_up(false);
    assert!(g
        .irq
        .wait_for(VirtioInterruptType::Config, Duration::from_secs(5)));
    let mut s = [0xff; 2];
    dev.read_config(6, &mut s);
    assert_eq!(s, [0, 0]);
    h.set_link_up(true);
    assert!(g
        .irq
        .wait_for(VirtioInterruptType::Config, Duration::from_secs(5)));
    dev.read_config(6, &mut s);
    assert_eq!(s, [1, 0]);
    dev.reset();
}

#[test]
fn activate_rejects_missing_queues_and_keeps_the_backend() {
    let g = Guest::new();
    let (b, _h) = MockBackend::new();
    let mut dev = VirtioNet::new(Box::new(b), MAC);
    let only_rx = vec![QueueActivation {
        index: 0,
        queue: RXQ.ready_queue(),
        notify: g.rx_notify.try_clone().unwrap(),
    }];
    let e = dev
        .activate(
            VmGuestMemoryAtomic::new(g.mem.clone()),
            g.irq.clone(),
            only_rx,
        )
        .unwrap_err();
    assert!(e.to_string().contains("queue"), "{e}");
    // A queue with rings outside guest memory.
    let mut bad = RXQ.ready_queue();
    bad.try_set_used_ring_address(GuestAddress(MEM_LEN as u64 + 0x1000))
        .unwrap();
    let queues = vec![
        QueueActivation {
            index: 0,
            queue: bad,
            notify: g.rx_notify.try_clone().unwrap(),
        },
        QueueActivation {
            index: 1,
            queue: TXQ.ready_queue(),
            notify: g.tx_notify.try_clone().unwrap(),
        },
    ];
    assert!(dev
        .activate(
            VmGuestMemoryAtomic::new(g.mem.clone()),
            g.irq.clone(),
            queues
        )
        .is_err());
    // Still usable.
    g.activate(&mut dev);
    assert!(dev.is_active());
}

/// The device over a real tap, inside a network namespace this test creates: a guest frame
/// comes out of the interface, a frame sent on the interface lands in a guest buffer.
#[test]
fn tap_round_trip_through_the_device_in_a_private_netns() {
    use crate::net::tap::netns::{in_new_netns, packet_socket, ETHERTYPE};
    use crate::net::tap::Tap;
    use std::os::fd::AsRawFd;

    let r = in_new_netns(|| {
        let tap = match Tap::open("kvmnet0") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        tap.set_up(true).unwrap();
        let sock = packet_socket("kvmnet0");
        let g = Guest::new();
        let mut dev = VirtioNet::new(Box::new(tap), MAC);
        let mut c = [0u8; 2];
        dev.read_config(6, &mut c);
        assert_eq!(c, [1, 0], "link up");
        // Without EVENT_IDX: every used buffer interrupts (the test polls the rings anyway).
        dev.set_acked_features(ALL & !(1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX));
        g.activate(&mut dev);
        let mut rxd = Driver::new(&g.mem, RXQ);
        for i in 0..8 {
            rxd.add(&[(BUF2 + i * 0x1000, 4096, WRITE)]);
        }
        g.rx_notify.write(1).unwrap();

        // Guest → host.
        let mut f = eth_frame(200, 7);
        f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        let mut w = vnet_hdr(0, 0, 0, 0, 0, 0);
        w.extend_from_slice(&f);
        g.mem.write_slice(&w, GuestAddress(BUF)).unwrap();
        let mut txd = Driver::new(&g.mem, TXQ);
        txd.add(&[(BUF, 12, 0), (BUF + 12, f.len() as u32, 0)]);
        g.tx_notify.write(1).unwrap();
        let mut buf = [0u8; 2048];
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(
            n > 0,
            "no frame on the interface: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(&buf[..n as usize], &f[..]);
        wait_until("the TX chain to be used", || txd.used_idx() == 1);

        // Host → guest (other traffic, e.g. IPv6 router solicitations, may come first).
        let mut back = eth_frame(300, 9);
        back[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        // SAFETY: valid buffer.
        let n = unsafe { libc::send(sock.as_raw_fd(), back.as_ptr().cast(), back.len(), 0) };
        assert_eq!(n as usize, back.len());
        wait_until("the frame in a guest buffer", || {
            (0..rxd.used_idx()).any(|i| {
                let (id, len) = rxd.used(i);
                let addr = BUF2 + u64::from(id) * 0x1000;
                len as usize == 12 + back.len() && read(&g.mem, addr + 12, back.len()) == back
            })
        });
        assert!(g
            .irq
            .wait_for(VirtioInterruptType::Queue(0), Duration::from_secs(5)));
        dev.reset();
    });
    if r.is_none() {
        eprintln!("skipped: no network namespace");
    }
}
