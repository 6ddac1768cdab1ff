//! Fuzzing harness for the e1000 register and descriptor paths (used by
//! `fuzz/fuzz_targets/e1000.rs` and by the seed-corpus replay test), plus the in-memory
//! [`MockBackend`] the unit tests share.
//!
//! Input layout:
//! - byte 0: number of operations `k`; then `k` operations of 6 bytes each:
//!   `[op, sel, value (u32 LE)]`, op % 4: 0 register write, 1 register read, 2 queue a frame
//!   for the receive side (its bytes come from guest memory at `value & 0xfff0`, length
//!   `sel * 8`), 3 run one worker pass. `sel` < 64 picks a register from a list of the
//!   interesting ones; otherwise the offset is `value >> 12` (any offset of BAR 0).
//! - the rest: the content of guest memory, which is two regions with a hole between them
//!   (0x0-0xffff and 0x11000-0x11fff). Before the operations the device is set up like a
//!   driver would: TX ring at 0x1000 (64 descriptors), RX ring at 0x2000 (32), both enabled,
//!   bus mastering on.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic as VmGuestMemoryAtomic};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::regs::*;
use super::{E1000Counters, E1000, MMIO_BAR};
use crate::net::NetBackend;
use crate::pci::config_space::{COMMAND, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE};
use crate::pci::PciDevice;
use crate::virtio::GuestMemoryMmap;

pub const REGION0_LEN: usize = 0x10000;
pub const REGION1_START: u64 = 0x11000;
pub const REGION1_LEN: usize = 0x1000;
pub const TX_RING: u32 = 0x1000;
pub const RX_RING: u32 = 0x2000;
/// Frames the back-end may hold at once in a run.
const MAX_QUEUED: usize = 64;

/// The registers an operation's `sel` picks by index (the rest of the values of `sel` fall back
/// to any offset); the property test in `tests.rs` picks from them too. The order is part of the
/// input format (seeds name a register by its index here): append, never reorder or remove.
pub(crate) const REGS: &[u32] = &[
    CTRL,
    STATUS,
    EECD,
    EERD,
    MDIC,
    ICR,
    ICS,
    IMS,
    IMC,
    ITR,
    RCTL,
    TCTL,
    RDBAL,
    RDBAH,
    RDLEN,
    RDH,
    RDT,
    RDTR,
    RADV,
    TDBAL,
    TDBAH,
    TDLEN,
    TDH,
    TDT,
    TIDV,
    TADV,
    RXCSUM,
    RA,
    RA + 4,
    RA + 8,
    RA + 12,
    MTA,
    MTA + 4,
    VET,
    GPRC,
    GPTC,
    GORCL,
    GORCH,
    TPR,
    TPT,
    MPC,
    RNBC,
];

/// In-memory back-end: frames to the guest in `rx`, frames from the guest in `sent`.
#[derive(Clone)]
pub struct MockBackend {
    pub rx: Arc<Mutex<VecDeque<Vec<u8>>>>,
    pub sent: Arc<Mutex<Vec<Vec<u8>>>>,
    /// What `link_up` answers (a tap deleted or set down on the host: false).
    pub link: Arc<std::sync::atomic::AtomicBool>,
    /// Called at each `recv` (tests look at the device from there).
    pub on_recv: Arc<Mutex<Option<RecvHook>>>,
    fd: Arc<EventFd>,
}

pub type RecvHook = Box<dyn FnMut() + Send>;

impl MockBackend {
    pub fn new() -> Self {
        MockBackend {
            rx: Arc::default(),
            sent: Arc::default(),
            link: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            on_recv: Arc::default(),
            fd: Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")),
        }
    }

    /// Queues a frame with a vnet header.
    pub fn push(&self, hdr: [u8; 12], frame: &[u8]) {
        let mut v = hdr.to_vec();
        v.extend_from_slice(frame);
        crate::lock(&self.rx).push_back(v);
        let _ = self.fd.write(1);
    }
}

impl Default for MockBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl NetBackend for MockBackend {
    fn send(&mut self, iovs: &[IoSlice]) -> io::Result<usize> {
        let v: Vec<u8> = iovs.iter().flat_map(|s| s.iter().copied()).collect();
        let n = v.len();
        crate::lock(&self.sent).push(v);
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(hook) = crate::lock(&self.on_recv).as_mut() {
            hook();
        }
        match crate::lock(&self.rx).pop_front() {
            Some(f) => {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                Ok(n)
            }
            None => {
                let _ = self.fd.read();
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn set_offload(&self, _flags: u32) -> io::Result<()> {
        Ok(())
    }

    fn link_up(&self) -> bool {
        self.link.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs one input; returns what the device refused.
pub fn run(data: &[u8]) -> E1000Counters {
    let (k, rest) = match data.split_first() {
        Some((&k, rest)) => (usize::from(k), rest),
        None => (0, data),
    };
    let ops_len = (k * 6).min(rest.len());
    let (ops, memory) = rest.split_at(ops_len);
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION0_LEN),
        (GuestAddress(REGION1_START), REGION1_LEN),
    ])
    .expect("guest memory");
    let (a, b) = memory.split_at(memory.len().min(REGION0_LEN));
    mem.write_slice(a, GuestAddress(0)).expect("region 0");
    mem.write_slice(&b[..b.len().min(REGION1_LEN)], GuestAddress(REGION1_START))
        .expect("region 1");

    let be = MockBackend::new();
    let intx = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let dev = E1000::new(
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        VmGuestMemoryAtomic::new(mem.clone()),
        intx,
        Box::new(be.clone()),
    )
    .expect("device");
    dev.config_write(
        COMMAND as u64,
        &(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER).to_le_bytes(),
    );
    let w = |off: u32, v: u32| dev.bar_write(MMIO_BAR, u64::from(off), &v.to_le_bytes());
    w(TDBAL, TX_RING);
    w(TDLEN, 64 * 16);
    w(TCTL, TCTL_EN);
    w(RDBAL, RX_RING);
    w(RDLEN, 32 * 16);
    w(RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC);
    w(IMS, 0xffff_ffff);

    for op in ops.chunks_exact(6) {
        let sel = op[1];
        let v = u32::from_le_bytes([op[2], op[3], op[4], op[5]]);
        let off = REGS
            .get(usize::from(sel))
            .copied()
            .unwrap_or((v >> 12) & 0x1ffff);
        match op[0] % 4 {
            0 => w(off, v),
            1 => {
                let mut b = [0u8; 4];
                dev.bar_read(MMIO_BAR, u64::from(off), &mut b);
            }
            2 => {
                if crate::lock(&be.rx).len() < MAX_QUEUED {
                    let start = (v & 0xfff0) as u64;
                    let len = usize::from(sel) * 8;
                    let mut f = vec![0u8; len];
                    let _ = mem.read_slice(&mut f, GuestAddress(start));
                    let mut hdr = [0u8; 12];
                    hdr[0] = (v >> 16) as u8 & 3;
                    hdr[6] = (v >> 24) as u8;
                    hdr[8] = (v >> 20) as u8 & 0xf;
                    be.push(hdr, &f);
                }
            }
            _ => {
                dev.process();
            }
        }
    }
    dev.process();
    dev.intx_resample();
    dev.counters()
}

/// Builds fuzz inputs by hand (seed corpus, tests).
pub struct InputBuilder {
    ops: Vec<[u8; 6]>,
    mem: Vec<u8>,
}

impl Default for InputBuilder {
    fn default() -> Self {
        InputBuilder {
            ops: Vec::new(),
            mem: vec![0; REGION0_LEN],
        }
    }
}

impl InputBuilder {
    fn reg(off: u32) -> u8 {
        REGS.iter()
            .position(|&r| r == off)
            .expect("listed register") as u8
    }
    pub fn write(&mut self, off: u32, v: u32) -> &mut Self {
        let b = v.to_le_bytes();
        self.ops.push([0, Self::reg(off), b[0], b[1], b[2], b[3]]);
        self
    }
    pub fn process(&mut self) -> &mut Self {
        self.ops.push([3, 0, 0, 0, 0, 0]);
        self
    }
    /// Queues `len8 * 8` bytes at `addr` as a received frame.
    pub fn frame(&mut self, addr: u16, len8: u8) -> &mut Self {
        let b = u32::from(addr).to_le_bytes();
        self.ops.push([2, len8, b[0], b[1], b[2], b[3]]);
        self
    }
    pub fn poke(&mut self, addr: usize, bytes: &[u8]) -> &mut Self {
        self.mem[addr..addr + bytes.len()].copy_from_slice(bytes);
        self
    }
    pub fn build(&self) -> Vec<u8> {
        let mut v = vec![self.ops.len() as u8];
        for o in &self.ops {
            v.extend_from_slice(o);
        }
        v.extend_from_slice(&self.mem);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{context, data, legacy, tcp_frame, tcp_frame_context};
    use super::super::tx::*;
    use super::*;

    fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
        let frame = tcp_frame([0x52, 0x54, 0, 0x12, 0x34, 0x56], &[0x5a; 200]);
        let t = TX_RING as usize;
        let mut out = Vec::new();
        // Legacy TX frame.
        let mut b = InputBuilder::default();
        b.poke(0x8000, &frame)
            .poke(
                t,
                &legacy(0x8000, frame.len() as u16, CMD_EOP | CMD_RS, 0, 0),
            )
            .write(TDT, 1)
            .process();
        out.push(("tx_legacy", b.build()));
        // Context + data with TSO.
        let ctx = TxContext {
            paylen: 200,
            tucmd: TUCMD_TCP | TUCMD_IP | TUCMD_TSE,
            hdrlen: 54,
            mss: 64,
            ..tcp_frame_context()
        };
        let mut b = InputBuilder::default();
        b.poke(0x8000, &frame)
            .poke(t, &context(&ctx))
            .poke(
                t + 16,
                &data(0x8000, frame.len() as u32, CMD_EOP | CMD_RS | DCMD_TSE, 3),
            )
            .write(TDT, 2)
            .process();
        out.push(("tx_tso", b.build()));
        // RX: descriptors pointing into both regions and the hole.
        let mut b = InputBuilder::default();
        b.poke(0x8000, &frame);
        for (i, addr) in [0x9000u64, 0x11800, 0x10400, 0xa000].iter().enumerate() {
            b.poke(RX_RING as usize + i * 16, &addr.to_le_bytes());
        }
        b.write(RDT, 4)
            .frame(0x8000, (frame.len() / 8) as u8)
            .frame(0x8000, 255)
            .frame(0x8000, 1)
            .process();
        out.push(("rx", b.build()));
        // Hostile: ring in the hole, tail past the ring, a chain without EOP.
        let mut b = InputBuilder::default();
        for i in 0..64 {
            b.poke(t + i * 16, &legacy(0x100, 0x8000, 0, 0, 0));
        }
        b.write(TDT, 63)
            .process()
            .write(TDT, 0)
            .process()
            .write(TDBAL, 0x10000)
            .write(TDT, 5)
            .process()
            .write(RDT, 0xffff)
            .process();
        out.push(("hostile", b.build()));
        out
    }

    #[test]
    fn seeds_run() {
        let s = seed_inputs();
        let c = run(&s[0].1);
        assert_eq!(c, E1000Counters::default());
        let c = run(&s[3].1);
        assert!(
            c.tx_too_long >= 1 && c.dma_errors + c.bad_ring >= 1,
            "{c:?}"
        );
        run(&[]);
        run(&[255]);
    }

    crate::fuzz_corpus::corpus_tests!(
        target: "e1000",
        seeds: seed_inputs(),
        run: run,
        write_seeds: e1000_write_seed_corpus,
    );
}
