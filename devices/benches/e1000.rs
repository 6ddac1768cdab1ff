//! The e1000 (82540EM) device model alone: frames per second through its TX and RX descriptor
//! rings with guest memory in this process, the in-memory back-end, and no VM, worker thread or
//! interrupt delivery.
//!
//! The device is driven the way Linux's e1000 driver drives it, through BAR 0 registers
//! (`PciDevice::bar_write` / `bar_read`): descriptors are written once; each iteration hands a
//! batch to the device with one tail write (TDT / RDT), runs one pass with `E1000::process`
//! (what the worker does on the tail write's kick), checks the head caught up and every
//! frame's descriptor has DD set, and clears DD as the driver's clean-up does. TX: legacy
//! descriptors (one per frame, RS|EOP|IFCS), and a TCP checksum offload case as Linux sends it
//! (a context descriptor then two data descriptors, headers and payload, per frame; the device
//! sums the 1460-byte payload). RX: the back-end holds the batch, the device copies each frame
//! into a 2 KiB guest buffer and appends the FCS (RCTL.SECRC clear, as Linux sets it), and
//! checks the IPv4 header checksum (RXCSUM's reset value). Interrupts are masked (IMS = 0), as
//! during a NAPI poll. TX frames are counted by the back-end, not copied. Throughput is in
//! frames (criterion "elements") per second.
//!
//! Run: `cargo bench -p devices --bench e1000` (`-- --quick` for a short run).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use devices::e1000::regs::*;
use devices::e1000::rx::RXD_STAT_DD;
use devices::e1000::tx::{
    CMD_DEXT, CMD_EOP, CMD_IFCS, CMD_RS, DTYP_DATA, POPTS_TXSM, STA_DD, TUCMD_TCP,
};
use devices::e1000::{E1000, MMIO_BAR};
use devices::net::VNET_HDR_LEN;
use devices::pci::config_space::{COMMAND, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE};
use devices::pci::PciDevice;
use devices::virtio::net::mock::{MockBackend, MockHandle};
use devices::virtio::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PEER: [u8; 6] = [0x52, 0x54, 0x00, 0x65, 0x43, 0x21];
const BATCH: u32 = 64;
/// Batches per ring: the tails go round the ring as the driver's do.
const BATCHES_PER_RING: u32 = 4;
const TX_RING: u64 = 0x1_0000;
const RX_RING: u64 = 0x2_0000;
const BUFS: u64 = 0x10_0000;
const HDR_BUFS: u64 = 0x08_0000;
const RX_BUFS: u64 = 0x20_0000;
const BUF_LEN: u64 = 2048;
const MEM_LEN: usize = 0x40_0000;
/// Ethernet + IPv4 + TCP headers.
const HDR_LEN: usize = 54;

/// A device with memory space and bus mastering on, and the back-end's handle.
fn device(mem: &GuestMemoryMmap) -> (E1000, MockHandle) {
    let (b, h) = MockBackend::new();
    h.with(|s| s.keep_sent = false);
    let dev = E1000::new(
        MAC,
        GuestMemoryAtomic::new(mem.clone()),
        EventFd::new(EFD_NONBLOCK).unwrap(),
        Box::new(b),
    )
    .unwrap();
    dev.config_write(
        COMMAND as u64,
        &(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER).to_le_bytes(),
    );
    (dev, h)
}

fn w(dev: &E1000, off: u32, v: u32) {
    dev.bar_write(MMIO_BAR, u64::from(off), &v.to_le_bytes());
}

fn r(dev: &E1000, off: u32) -> u32 {
    let mut b = [0u8; 4];
    dev.bar_read(MMIO_BAR, u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

fn put_desc(mem: &GuestMemoryMmap, ring: u64, i: u32, d: [u8; 16]) {
    mem.write_slice(&d, GuestAddress(ring + u64::from(i) * 16))
        .unwrap();
}

/// Internet checksum, folded (not inverted).
fn sum16(data: &[u8], mut s: u64) -> u16 {
    let mut c = data.chunks_exact(2);
    for p in &mut c {
        s += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [b] = c.remainder() {
        s += u64::from(*b) << 8;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// An Ethernet + IPv4 (checksummed) + TCP frame of `len` bytes from PEER to `dst`. TCP
/// checksum: the pseudo-header sum when `partial` (CHECKSUM_PARTIAL, for the device to
/// complete), else the full checksum.
fn tcp_frame(dst: [u8; 6], len: usize, partial: bool) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&PEER);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 2, 2]);
    ip[16..20].copy_from_slice(&[10, 0, 2, 15]);
    let c = !sum16(ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..];
    tcp[0..4].copy_from_slice(&[0x30, 0x39, 0x00, 0x50]);
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x18; // PSH|ACK
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    for (i, b) in tcp[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&[10, 0, 2, 2]);
    pseudo[4..8].copy_from_slice(&[10, 0, 2, 15]);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    let ph = sum16(&pseudo, 0);
    let c = if partial {
        ph
    } else {
        !sum16(&f[34..], u64::from(ph))
    };
    f[34 + 16..34 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// The TX side as the driver sees it: a ring of `BATCHES_PER_RING` batches of frames, each
/// frame `per_frame` descriptors, RS on the last one.
struct TxRing<'a> {
    mem: &'a GuestMemoryMmap,
    dev: E1000,
    h: MockHandle,
    per_frame: u32,
    n: u32,
    tail: u32,
}

impl<'a> TxRing<'a> {
    /// `frame(i)` gives frame i's descriptors (slots i * per_frame ..).
    fn new(mem: &'a GuestMemoryMmap, per_frame: u32, frame: impl Fn(u32) -> Vec<[u8; 16]>) -> Self {
        let (dev, h) = device(mem);
        let n = BATCH * BATCHES_PER_RING * per_frame;
        for f in 0..BATCH * BATCHES_PER_RING {
            let descs = frame(f % BATCH);
            assert_eq!(descs.len() as u32, per_frame);
            for (j, d) in descs.into_iter().enumerate() {
                put_desc(mem, TX_RING, f * per_frame + j as u32, d);
            }
        }
        w(&dev, TDBAL, TX_RING as u32);
        w(&dev, TDBAH, 0);
        w(&dev, TDLEN, n * 16);
        w(&dev, TDH, 0);
        w(&dev, TDT, 0);
        w(&dev, TCTL, TCTL_EN);
        TxRing {
            mem,
            dev,
            h,
            per_frame,
            n,
            tail: 0,
        }
    }

    /// Hands over one batch, runs a pass, checks it was all sent and reclaims it.
    fn batch(&mut self) {
        let first = self.tail;
        self.tail = (self.tail + BATCH * self.per_frame) % self.n;
        w(&self.dev, TDT, self.tail);
        self.dev.process();
        assert_eq!(r(&self.dev, TDH), self.tail);
        for f in 0..BATCH {
            let last = first + (f + 1) * self.per_frame - 1;
            let at = GuestAddress(TX_RING + u64::from(last) * 16 + 12);
            let sta: u8 = self.mem.read_obj(at).unwrap();
            assert_ne!(sta & STA_DD, 0);
            self.mem.write_obj(0u8, at).unwrap();
        }
    }

    /// Sends one batch with the back-end keeping the frames, and returns them.
    fn sample(&mut self) -> Vec<Vec<u8>> {
        self.h.with(|s| s.keep_sent = true);
        self.batch();
        self.h.with(|s| s.keep_sent = false);
        self.h.take_sent()
    }
}

fn legacy(addr: u64, len: usize, cmd: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..10].copy_from_slice(&(len as u16).to_le_bytes());
    d[11] = cmd;
    d
}

/// The context descriptor Linux's e1000_tx_csum writes: TUCSS/TUCSO only, no IP checksum.
fn tcp_csum_context() -> [u8; 16] {
    let mut d = [0u8; 16];
    d[4] = 34; // TUCSS
    d[5] = 34 + 16; // TUCSO
    d[11] = TUCMD_TCP | CMD_DEXT;
    d
}

fn data(addr: u64, len: usize, dcmd: u8, popts: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    let dw = (len as u32 & 0xf_ffff) | (DTYP_DATA << 20) | (u32::from(dcmd | CMD_DEXT) << 24);
    d[8..12].copy_from_slice(&dw.to_le_bytes());
    d[13] = popts;
    d
}

fn buf(i: u32) -> u64 {
    BUFS + u64::from(i) * BUF_LEN
}

fn bench(c: &mut Criterion) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_LEN)]).unwrap();
    let mut g = c.benchmark_group("e1000");
    g.throughput(Throughput::Elements(u64::from(BATCH)));

    for frame_len in [60usize, 1514] {
        // TX, legacy descriptors: one per frame.
        let frame = tcp_frame(PEER, frame_len, false);
        for i in 0..BATCH {
            mem.write_slice(&frame, GuestAddress(buf(i))).unwrap();
        }
        let mut ring = TxRing::new(&mem, 1, |i| {
            vec![legacy(buf(i), frame_len, CMD_EOP | CMD_IFCS | CMD_RS)]
        });
        let sent = ring.sample();
        assert_eq!(sent.len(), BATCH as usize);
        assert_eq!(sent[0][VNET_HDR_LEN..], frame[..]);
        g.bench_function(format!("tx_legacy_{frame_len}"), |b| {
            b.iter(|| ring.batch())
        });
    }

    // TX, TCP checksum offload: context + header + payload descriptors per frame.
    let frame = tcp_frame(PEER, 1514, true);
    for i in 0..BATCH {
        mem.write_slice(
            &frame[..HDR_LEN],
            GuestAddress(HDR_BUFS + u64::from(i) * 64),
        )
        .unwrap();
        mem.write_slice(&frame[HDR_LEN..], GuestAddress(buf(i)))
            .unwrap();
    }
    let mut ring = TxRing::new(&mem, 3, |i| {
        vec![
            tcp_csum_context(),
            data(HDR_BUFS + u64::from(i) * 64, HDR_LEN, CMD_IFCS, POPTS_TXSM),
            data(
                buf(i),
                1514 - HDR_LEN,
                CMD_EOP | CMD_IFCS | CMD_RS,
                POPTS_TXSM,
            ),
        ]
    });
    let sent = ring.sample();
    assert_eq!(sent.len(), BATCH as usize);
    assert_eq!(
        sent[0][VNET_HDR_LEN..],
        tcp_frame(PEER, 1514, false)[..],
        "checksum completed"
    );
    g.bench_function("tx_csum_1514", |b| b.iter(|| ring.batch()));

    for frame_len in [60usize, 1514] {
        // RX: one 2 KiB buffer per frame; each RDT write hands the device a batch of them.
        let (dev, h) = device(&mem);
        let n = BATCH * BATCHES_PER_RING;
        for i in 0..n {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&(RX_BUFS + u64::from(i) * BUF_LEN).to_le_bytes());
            put_desc(&mem, RX_RING, i, d);
        }
        w(&dev, RDBAL, RX_RING as u32);
        w(&dev, RDBAH, 0);
        w(&dev, RDLEN, n * 16);
        w(&dev, RDH, 0);
        w(&dev, RDT, 0);
        // Linux's e1000_setup_rctl: broadcast accept, RDMTS half, 2 KiB buffers, FCS kept.
        w(&dev, RCTL, RCTL_EN | RCTL_BAM);
        let mut pkt = vec![0u8; VNET_HDR_LEN];
        pkt.extend_from_slice(&tcp_frame(MAC, frame_len, false));
        let mut tail = 0;
        let mut rx_batch = || {
            for _ in 0..BATCH {
                h.push_rx(pkt.clone());
            }
            let first = tail;
            tail = (tail + BATCH) % n;
            w(&dev, RDT, tail);
            dev.process();
            assert_eq!(r(&dev, RDH), tail);
            for i in first..first + BATCH {
                let at = GuestAddress(RX_RING + u64::from(i) * 16 + 12);
                let sta: u8 = mem.read_obj(at).unwrap();
                assert_ne!(sta & RXD_STAT_DD, 0);
                mem.write_obj(0u8, at).unwrap();
            }
        };
        rx_batch();
        let mut got = vec![0u8; frame_len];
        mem.read_slice(&mut got, GuestAddress(RX_BUFS)).unwrap();
        assert_eq!(got[..], pkt[VNET_HDR_LEN..]);
        assert_eq!(dev.counters().rx_dropped + dev.counters().rx_filtered, 0);
        g.bench_function(format!("rx_{frame_len}"), |b| b.iter(&mut rx_batch));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
