//! An emulated Intel 82540EM Gigabit Ethernet controller ("e1000"), written to the Intel PCI/
//! PCI-X Family of Gigabit Ethernet Controllers Software Developer's Manual (8254x SDM; section
//! numbers below refer to it).
//!
//! # PCI
//! Vendor 8086, device 100E, subsystem 8086:001E, class 020000 (Ethernet), INTA#.
//! - BAR 0: 128 KiB of memory-mapped registers (§13, table 13-2).
//! - BAR 1: 8 bytes of I/O space, IOADDR at 0 and IODATA at 4 (§13.2.2: indirect access to any
//!   register: write its offset to IOADDR, then read or write IODATA).
//!
//! # Interrupts
//! Legacy INTx only, level-triggered: the line is raised by writing the `EventFd` given to
//! [`E1000::new`] (register it as a KVM irqfd with a resample fd); when the resample fd fires
//! the VMM calls [`E1000::intx_resample`], which raises the line again while
//! `ICR & IMS != 0`. Reading ICR clears it (§13.4.17), so the line drops at the following EOI.
//! Moderation: RDTR/RADV delay RXT0 (§3.2.7), TIDV/TADV delay TXDW for descriptors with IDE
//! (§3.3.7.2), and ITR (§13.4.18) is a minimum gap between interrupts raised by the worker.
//!
//! # Threads
//! Register accesses run on the vCPU thread under the device lock and never touch the rings.
//! A TDT write kicks the worker thread ([`E1000::start_worker`]) through an eventfd; the worker
//! sends up to [`TX_BUDGET`] descriptors and receives up to [`RX_BUDGET`] frames per wake-up,
//! polls the back-end only while the receive ring has room, and sleeps until the next
//! moderation deadline. [`E1000::process`] runs one such pass synchronously (tests, benches).
//!
//! # Back-end
//! Frames travel through a [`NetBackend`] with a 12-byte vnet header. TSO and checksum offload
//! are done in the device ([`tx`]); frames go out with an all-zero header. The tap is told to
//! send no offloaded frames (`set_offload(0)`); a NEEDS_CSUM frame is completed anyway ([`rx`]).

pub mod csum;
pub mod eeprom;
pub mod phy;
pub mod regs;
pub mod rx;
pub mod tx;

#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::lock;
use crate::log_once::LogOnce;
use crate::net::{NetBackend, VNET_HDR_LEN};
use crate::pci::config_space::{
    BarKind, BarReprogram, PciBar, PciConfigError, PciConfigSpace, PciHeader, COMMAND_BUS_MASTER,
};
use crate::pci::PciDevice;
use crate::virtio::GuestMemoryAtomic;
use eeprom::{Microwire, EEPROM_WORDS};
use phy::Phy;
use regs::*;
use rx::RxOutcome;
use tx::TxState;

pub const E1000_VENDOR_ID: u16 = 0x8086;
/// 82540EM, desktop (copper).
pub const E1000_DEVICE_ID: u16 = 0x100e;
pub const E1000_SUBSYSTEM_VENDOR_ID: u16 = 0x8086;
/// PRO/1000 MT Desktop Adapter.
pub const E1000_SUBSYSTEM_ID: u16 = 0x001e;
pub const E1000_REVISION: u8 = 0x03;
pub const E1000_CLASS: u32 = 0x02_00_00;
pub const MMIO_BAR: usize = 0;
pub const MMIO_BAR_SIZE: u64 = 0x20000;
pub const IO_BAR: usize = 1;
pub const IO_BAR_SIZE: u64 = 8;
/// Descriptors sent per worker wake-up.
pub const TX_BUDGET: usize = 256;
/// Frames received per worker wake-up.
pub const RX_BUDGET: usize = 64;
/// Room for the largest frame a back-end hands over (64 KiB + vnet header).
const RX_BUF_LEN: usize = 65536 + VNET_HDR_LEN;
const REG_WORDS: usize = (MMIO_BAR_SIZE / 4) as usize;
/// RDTR/RADV/TIDV/TADV count 1.024 µs units (§13.4.30).
const DELAY_UNIT_NS: u64 = 1024;
/// ITR counts 256 ns units (§13.4.18).
const ITR_UNIT_NS: u64 = 256;

/// Things the guest did that the device refused or could not do (not guest-visible; for
/// logs, tests and the fuzzer).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct E1000Counters {
    /// Head or tail outside the ring.
    pub bad_ring: u64,
    /// Descriptor or buffer outside guest memory.
    pub dma_errors: u64,
    pub tx_bad_desc: u64,
    /// Packets longer than the device assembles (a chain without EOP, say).
    pub tx_too_long: u64,
    pub tx_dropped: u64,
    pub tx_bad_offload: u64,
    /// TSO contexts with impossible HDRLEN/MSS/offsets.
    pub tx_bad_tso: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub rx_filtered: u64,
    pub rx_bad_csum_request: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Timers {
    rx_pkt: Option<Instant>,
    rx_abs: Option<Instant>,
    tx_pkt: Option<Instant>,
    tx_abs: Option<Instant>,
    itr: Option<Instant>,
}

fn due(t: Option<Instant>, now: Instant) -> bool {
    t.is_some_and(|t| t <= now)
}

/// Register state; one lock, taken by vCPU threads for register access and by the worker.
pub(crate) struct State {
    regs: Vec<u32>,
    mac: [u8; 6],
    eeprom: [u16; EEPROM_WORDS],
    eecd: u32,
    mw: Microwire,
    phy: Phy,
    /// §13.7 counters, by (offset - 0x4000) / 4; a 64-bit counter lives at its low index.
    stats: [u64; 64],
    config: PciConfigSpace,
    io_addr: u32,
    link_up: bool,
    pub(crate) tx: TxState,
    rx_scratch: Vec<u8>,
    rx_stalled: bool,
    timers: Timers,
    last_irq: Option<Instant>,
    /// Raise INTx when the lock is released.
    raise: bool,
    counters: E1000Counters,
    warn: LogOnce,
    unknown: LogOnce,
}

/// The kick the worker needs after a register write.
const KICK_TX: u8 = 1;
const KICK_RX: u8 = 2;

fn is_stat64_low(off: u32) -> bool {
    matches!(off, GORCL | GOTCL | TORL | TOTL)
}

impl State {
    fn new(mac: [u8; 6], config: PciConfigSpace, link_up: bool) -> Self {
        let mut s = State {
            regs: vec![0; REG_WORDS],
            mac,
            eeprom: eeprom::image(
                mac,
                E1000_DEVICE_ID,
                E1000_SUBSYSTEM_VENDOR_ID,
                E1000_SUBSYSTEM_ID,
            ),
            eecd: 0,
            mw: Microwire::default(),
            phy: Phy::new(),
            stats: [0; 64],
            config,
            io_addr: 0,
            link_up,
            tx: TxState::default(),
            rx_scratch: Vec::new(),
            rx_stalled: false,
            timers: Timers::default(),
            last_irq: None,
            raise: false,
            counters: E1000Counters::default(),
            warn: LogOnce::new("e1000"),
            unknown: LogOnce::new("e1000-registers"),
        };
        s.reset();
        s
    }

    /// Device reset (CTRL.RST, §13.4.1): every MAC register to its initial value, the PHY
    /// too, the MAC address reloaded from the EEPROM into RAL0/RAH0 (§5.6.1).
    fn reset(&mut self) {
        self.regs.fill(0);
        for off in [CTRL, EECD, MDIC, VET, LEDCTL, PBA, RXCSUM, TIPG] {
            self.set_reg(off, reset_value(off));
        }
        self.set_reg(RA, u32::from_le_bytes(self.mac[..4].try_into().unwrap()));
        self.set_reg(
            RA + 4,
            u32::from(u16::from_le_bytes([self.mac[4], self.mac[5]])) | RAH_AV,
        );
        self.eecd = 0;
        self.mw = Microwire::default();
        self.phy = Phy::new();
        self.stats = [0; 64];
        self.tx.reset();
        self.rx_stalled = false;
        self.timers = Timers::default();
        self.last_irq = None;
    }

    pub(crate) fn reg(&self, off: u32) -> u32 {
        self.regs.get(off as usize / 4).copied().unwrap_or(0)
    }

    fn set_reg(&mut self, off: u32, v: u32) {
        if let Some(r) = self.regs.get_mut(off as usize / 4) {
            *r = v;
        }
    }

    pub(crate) fn bus_master(&self) -> bool {
        self.config.command() & COMMAND_BUS_MASTER != 0
    }

    /// A descriptor ring: (base, descriptors) if its length is usable (RDLEN/TDLEN keep bits
    /// 19:7, so a length is a multiple of 128 bytes: 8 descriptors) and it does not wrap.
    pub(crate) fn ring(&self, bal: u32, bah: u32, len: u32) -> Option<(u64, u32)> {
        let base = (u64::from(self.reg(bah)) << 32) | u64::from(self.reg(bal) & !0xf);
        let len = self.reg(len);
        if len == 0 || base.checked_add(u64::from(len)).is_none() {
            return None;
        }
        Some((base, len / 16))
    }

    fn status(&self) -> u32 {
        let s = reset_value(STATUS);
        if self.link_up {
            s
        } else {
            s & !STATUS_LU
        }
    }

    pub(crate) fn bump_stat(&mut self, off: u32, by: u64) {
        if let Some(s) = self.stats.get_mut(((off - STATS_START) / 4) as usize) {
            *s = s.saturating_add(by);
        }
    }

    fn read_stat(&mut self, off: u32, side_effects: bool) -> u32 {
        let i = ((off - STATS_START) / 4) as usize;
        if i > 0 && is_stat64_low(off - 4) {
            // High half of a 64-bit counter: reading it clears the counter (§13.7).
            let v = (self.stats[i - 1] >> 32) as u32;
            if side_effects {
                self.stats[i - 1] = 0;
            }
            return v;
        }
        if is_stat64_low(off) {
            return self.stats[i] as u32;
        }
        let v = self.stats[i].min(u64::from(u32::MAX)) as u32;
        if side_effects {
            self.stats[i] = 0;
        }
        v
    }

    fn irq_pending(&self) -> bool {
        self.reg(ICR) & self.reg(IMS) != 0
    }

    /// Sets interrupt causes from a register access: raised at once.
    fn cause(&mut self, bits: u32) {
        let icr = self.reg(ICR) | (bits & ICR_VALID);
        self.set_reg(ICR, icr);
        if bits & self.reg(IMS) != 0 {
            self.raise = true;
        }
    }

    /// Sets interrupt causes from the worker: raised at once unless ITR asks for a gap since
    /// the previous interrupt, then when the gap has passed.
    pub(crate) fn cause_throttled(&mut self, bits: u32, now: Instant) {
        let icr = self.reg(ICR) | (bits & ICR_VALID);
        self.set_reg(ICR, icr);
        if bits & self.reg(IMS) == 0 {
            return;
        }
        let gap = Duration::from_nanos(u64::from(self.reg(ITR) & 0xffff) * ITR_UNIT_NS);
        match self.last_irq {
            Some(t) if !gap.is_zero() && now < t + gap => {
                self.timers.itr = Some(t + gap);
            }
            _ => {
                self.raise = true;
                self.last_irq = Some(now);
            }
        }
    }

    fn delay(units: u32) -> Duration {
        Duration::from_nanos(u64::from(units & 0xffff) * DELAY_UNIT_NS)
    }

    /// A packet was received with RDTR != 0: restart the packet timer, start the absolute
    /// timer if RADV is set and it is not running (§3.2.7.1).
    pub(crate) fn arm_rx_delay(&mut self, now: Instant) {
        self.timers.rx_pkt = Some(now + Self::delay(self.reg(RDTR)));
        if self.reg(RADV) & 0xffff != 0 && self.timers.rx_abs.is_none() {
            self.timers.rx_abs = Some(now + Self::delay(self.reg(RADV)));
        }
    }

    /// The same for TXDW with TIDV/TADV (§3.4.1).
    pub(crate) fn arm_tx_delay(&mut self, now: Instant) {
        self.timers.tx_pkt = Some(now + Self::delay(self.reg(TIDV)));
        if self.reg(TADV) & 0xffff != 0 && self.timers.tx_abs.is_none() {
            self.timers.tx_abs = Some(now + Self::delay(self.reg(TADV)));
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        if due(self.timers.rx_pkt, now) || due(self.timers.rx_abs, now) {
            self.timers.rx_pkt = None;
            self.timers.rx_abs = None;
            self.cause_throttled(ICR_RXT0, now);
        }
        if due(self.timers.tx_pkt, now) || due(self.timers.tx_abs, now) {
            self.timers.tx_pkt = None;
            self.timers.tx_abs = None;
            self.cause_throttled(ICR_TXDW, now);
        }
        if due(self.timers.itr, now) {
            self.timers.itr = None;
            if self.irq_pending() {
                self.raise = true;
                self.last_irq = Some(now);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let t = self.timers;
        [t.rx_pkt, t.rx_abs, t.tx_pkt, t.tx_abs, t.itr]
            .into_iter()
            .flatten()
            .min()
    }

    /// Reads the register at `off` (a multiple of 4). `side_effects` false: a peek (for the
    /// read half of a partial write), which clears nothing.
    fn read_reg(&mut self, off: u32, side_effects: bool) -> u32 {
        match off {
            CTRL | CTRL_DUP => self.reg(CTRL),
            STATUS => self.status(),
            EECD => self.mw.eecd(self.eecd, &self.eeprom),
            ICR => {
                let v = self.reg(ICR);
                if side_effects {
                    self.set_reg(ICR, 0);
                }
                v
            }
            // Write-only (§13.4.19, §13.4.21).
            ICS | IMC => 0,
            EERD | MDIC | ITR | IMS | RCTL | TCTL | RDBAL | RDBAH | RDLEN | RDH | RDT | RDTR
            | RADV | TDBAL | TDBAH | TDLEN | TDH | TDT | TIDV | TADV => self.reg(off),
            STATS_START..STATS_END => self.read_stat(off, side_effects),
            _ if is_plain(off) => self.reg(off),
            _ => {
                if side_effects && self.unknown.first(u64::from(off)) {
                    log::info!("e1000: read of unimplemented register {off:#x}: 0");
                }
                0
            }
        }
    }

    /// Writes the register at `off`; returns the worker kicks it needs.
    fn write_reg(&mut self, off: u32, v: u32, now: Instant) -> u8 {
        match off {
            CTRL | CTRL_DUP => {
                if v & CTRL_RST != 0 {
                    // Self-clearing (§13.4.1); the link comes back up at once.
                    self.reset();
                    return KICK_TX | KICK_RX;
                }
                if v & CTRL_PHY_RST != 0 {
                    self.phy = Phy::new();
                }
                self.set_reg(CTRL, v & !CTRL_RST);
            }
            EECD => {
                self.eecd = v;
                self.mw.write(v);
            }
            EERD => {
                if v & EERD_START != 0 {
                    let addr = (v >> EERD_ADDR_SHIFT) & 0xff;
                    let data = self.eeprom.get(addr as usize).copied().unwrap_or(0xffff);
                    self.set_reg(
                        EERD,
                        (u32::from(data) << EERD_DATA_SHIFT)
                            | (addr << EERD_ADDR_SHIFT)
                            | EERD_DONE,
                    );
                } else {
                    self.set_reg(EERD, v & 0xff00);
                }
            }
            MDIC => self.mdic(v),
            ICR => {
                let icr = self.reg(ICR) & !v;
                self.set_reg(ICR, icr);
            }
            ICS => self.cause(v),
            IMS => {
                let ims = self.reg(IMS) | (v & ICR_VALID);
                self.set_reg(IMS, ims);
                if self.irq_pending() {
                    self.raise = true;
                }
            }
            IMC => {
                let ims = self.reg(IMS) & !v;
                self.set_reg(IMS, ims);
            }
            ITR | RADV | TIDV | TADV => self.set_reg(off, v & 0xffff),
            RDTR => {
                self.set_reg(RDTR, v & 0xffff);
                if v & RDTR_FPD != 0
                    && (self.timers.rx_pkt.is_some() || self.timers.rx_abs.is_some())
                {
                    self.timers.rx_pkt = None;
                    self.timers.rx_abs = None;
                    self.cause_throttled(ICR_RXT0, now);
                }
            }
            RCTL => {
                self.set_reg(RCTL, v);
                return KICK_RX;
            }
            TCTL => {
                self.set_reg(TCTL, v);
                return KICK_TX;
            }
            RDBAL | TDBAL => self.set_reg(off, v & !0xf),
            RDBAH | TDBAH => self.set_reg(off, v),
            RDLEN | TDLEN => self.set_reg(off, v & 0x000f_ff80),
            RDH | TDH => self.set_reg(off, v & 0xffff),
            RDT => {
                self.set_reg(RDT, v & 0xffff);
                self.rx_stalled = false;
                return KICK_RX;
            }
            TDT => {
                self.set_reg(TDT, v & 0xffff);
                return KICK_TX;
            }
            // Read-only.
            STATUS | STATS_START..STATS_END => {}
            _ if (RA..RA_END).contains(&off) && off % 8 == 4 => {
                self.set_reg(off, v & (RAH_AV | 0x3_ffff));
            }
            _ if is_plain(off) => self.set_reg(off, v),
            _ => {
                if self.unknown.first(u64::from(off)) {
                    log::info!("e1000: write {v:#x} to unimplemented register {off:#x} ignored");
                }
            }
        }
        0
    }

    /// An MDI access (§13.4.7): completes at once; PHY addresses other than 1 set the error
    /// bit.
    fn mdic(&mut self, v: u32) {
        let reg = ((v >> MDIC_REG_SHIFT) & 0x1f) as usize;
        let phy = (v >> MDIC_PHY_SHIFT) & 0x1f;
        let op = v & (3 << 26);
        let mut out = v & !(MDIC_READY | MDIC_ERROR);
        if phy != phy::PHY_ADDR {
            out |= MDIC_ERROR;
        } else if op == MDIC_OP_READ {
            out = (out & !MDIC_DATA_MASK) | u32::from(self.phy.read(reg, self.link_up));
        } else if op == MDIC_OP_WRITE {
            self.phy.write(reg, v as u16);
        } else {
            out |= MDIC_ERROR;
        }
        self.set_reg(MDIC, out | MDIC_READY);
        if v & MDIC_INT_EN != 0 {
            self.cause(ICR_MDAC);
        }
    }

    /// A read of any length at any offset of BAR 0.
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(end) = offset.checked_add(data.len() as u64) else {
            data.fill(0xff);
            return;
        };
        if end > MMIO_BAR_SIZE {
            data.fill(0xff);
            return;
        }
        let mut pos = offset;
        let mut i = 0;
        while i < data.len() {
            let dw = (pos & !3) as u32;
            let v = self.read_reg(dw, true).to_le_bytes();
            let mut b = (pos & 3) as usize;
            while b < 4 && i < data.len() {
                data[i] = v[b];
                b += 1;
                i += 1;
                pos += 1;
            }
        }
    }

    /// A write of any length at any offset of BAR 0: whole registers are written at once;
    /// partial ones are merged with the current value.
    fn mmio_write(&mut self, offset: u64, data: &[u8], now: Instant) -> u8 {
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return 0;
        };
        if end > MMIO_BAR_SIZE {
            return 0;
        }
        let mut kicks = 0;
        let mut pos = offset;
        let mut i = 0;
        while i < data.len() {
            let dw = (pos & !3) as u32;
            let mut v = if pos & 3 == 0 && data.len() - i >= 4 {
                [0; 4]
            } else {
                self.read_reg(dw, false).to_le_bytes()
            };
            let mut b = (pos & 3) as usize;
            while b < 4 && i < data.len() {
                v[b] = data[i];
                b += 1;
                i += 1;
                pos += 1;
            }
            kicks |= self.write_reg(dw, u32::from_le_bytes(v), now);
        }
        kicks
    }

    fn io_read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.io_addr.to_le_bytes()),
            (4, 4) => {
                let off = u64::from(self.io_addr & 0x1fffc);
                self.mmio_read(off, data);
            }
            _ => data.fill(0xff),
        }
    }

    fn io_write(&mut self, offset: u64, data: &[u8], now: Instant) -> u8 {
        match (offset, data.len()) {
            (0, 4) => {
                self.io_addr = u32::from_le_bytes(data.try_into().unwrap());
                0
            }
            (4, 4) => {
                let off = u64::from(self.io_addr & 0x1fffc);
                self.mmio_write(off, data, now)
            }
            _ => 0,
        }
    }
}

/// The back-end side, owned by whoever runs the rings (the worker).
struct Io {
    backend: Box<dyn NetBackend>,
    rx_buf: Vec<u8>,
    /// A received frame waiting for descriptors (its length in `rx_buf`).
    pending: Option<usize>,
}

struct Shared {
    state: Mutex<State>,
    io: Mutex<Io>,
    mem: GuestMemoryAtomic,
    intx: EventFd,
    tx_kick: EventFd,
    rx_kick: EventFd,
    kill: EventFd,
}

/// What one pass left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassResult {
    /// A budget ran out: run again without sleeping.
    pub more: bool,
    /// The next moderation deadline.
    pub deadline: Option<Instant>,
    /// Poll the back-end for frames (the ring has room and no frame is held).
    pub want_rx: bool,
}

impl Shared {
    /// Raises INTx if the last operation asked for it (and the driver did not disable INTx
    /// in the command register).
    fn finish(&self, st: &mut State) {
        if std::mem::take(&mut st.raise) && !st.config.intx_disabled() {
            if let Err(e) = self.intx.write(1) {
                log::warn!("e1000: cannot raise INTx: {e}");
            }
        }
    }

    fn kick(&self, kicks: u8) {
        if kicks & KICK_TX != 0 {
            let _ = self.tx_kick.write(1);
        }
        if kicks & KICK_RX != 0 {
            let _ = self.rx_kick.write(1);
        }
    }

    /// Reads the back-end's link and reports a change to the driver.
    fn poll_link(&self) {
        let up = lock(&self.io).backend.link_up();
        self.set_link(up);
    }

    /// §13.4.2 STATUS.LU follows the link; a change raises ICR.LSC (§13.4.17), on which the
    /// driver reads the PHY status.
    fn set_link(&self, up: bool) {
        let mut st = lock(&self.state);
        if st.link_up != up {
            st.link_up = up;
            log::info!("e1000: link {}", if up { "up" } else { "down" });
            st.cause(ICR_LSC);
            self.finish(&mut st);
        }
    }

    fn pass(&self, now: Instant) -> PassResult {
        let mut io = lock(&self.io);
        let Io {
            backend,
            rx_buf,
            pending,
        } = &mut *io;
        let mem = self.mem.memory();
        let mut more = {
            let mut st = lock(&self.state);
            st.fire_timers(now);
            let more = st.process_tx(&mem, backend.as_mut(), now, TX_BUDGET);
            self.finish(&mut st);
            more
        };
        // The register lock is taken once per frame, not for the batch: the guest's register
        // accesses (its interrupt handler reading ICR, RDT writes handing buffers back) wait
        // for one frame at most, and an interrupt a frame causes is raised at once, so the
        // driver starts on the first frames of a burst while the rest are copied.
        for i in 0..RX_BUDGET {
            let len = match *pending {
                Some(len) => len,
                None => {
                    if !lock(&self.state).rx_ready() {
                        break;
                    }
                    match backend.recv(rx_buf) {
                        Ok(len) => len.min(rx_buf.len()),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            if lock(&self.state).warn.first(0x6_0000) {
                                log::warn!("e1000: back-end receive failed: {e}");
                            }
                            break;
                        }
                    }
                }
            };
            let mut st = lock(&self.state);
            let outcome = st.receive(&mem, &rx_buf[..len], now);
            self.finish(&mut st);
            if outcome == RxOutcome::NoRoom {
                *pending = Some(len);
                break;
            }
            *pending = None;
            if i + 1 == RX_BUDGET {
                more = true;
            }
        }
        let st = lock(&self.state);
        PassResult {
            more,
            deadline: st.next_deadline(),
            want_rx: pending.is_none() && st.rx_ready(),
        }
    }
}

/// The 82540EM. Implements [`PciDevice`]: add it to the [`PciRoot`](crate::pci::PciRoot)
/// beside the virtio devices.
pub struct E1000 {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl E1000 {
    /// An 82540EM with station address `mac`, DMA into `mem`, INTx through `intx` (a
    /// level-triggered irqfd with resample) and frames through `backend`. The device is
    /// passive until [`start_worker`](Self::start_worker).
    pub fn new(
        mac: [u8; 6],
        mem: GuestMemoryAtomic,
        intx: EventFd,
        backend: Box<dyn NetBackend>,
    ) -> io::Result<Self> {
        let mut config = PciConfigSpace::new(&PciHeader {
            vendor_id: E1000_VENDOR_ID,
            device_id: E1000_DEVICE_ID,
            revision_id: E1000_REVISION,
            class_code: E1000_CLASS,
            subsystem_vendor_id: E1000_SUBSYSTEM_VENDOR_ID,
            subsystem_id: E1000_SUBSYSTEM_ID,
            interrupt_pin: 1,
        });
        let to_io = |e: PciConfigError| io::Error::other(e.to_string());
        config
            .add_bar(MMIO_BAR, MMIO_BAR_SIZE, BarKind::Mmio32, false)
            .map_err(to_io)?;
        config
            .add_bar(IO_BAR, IO_BAR_SIZE, BarKind::Io, false)
            .map_err(to_io)?;
        let link_up = backend.link_up();
        Ok(E1000 {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new(mac, config, link_up)),
                io: Mutex::new(Io {
                    backend,
                    rx_buf: vec![0; RX_BUF_LEN],
                    pending: None,
                }),
                mem,
                intx,
                tx_kick: EventFd::new(EFD_NONBLOCK)?,
                rx_kick: EventFd::new(EFD_NONBLOCK)?,
                kill: EventFd::new(EFD_NONBLOCK)?,
            }),
            worker: Mutex::new(None),
        })
    }

    /// The station address.
    pub fn mac(&self) -> [u8; 6] {
        lock(&self.shared.state).mac
    }

    /// The INTx eventfd given at construction.
    pub fn intx_eventfd(&self) -> &EventFd {
        &self.shared.intx
    }

    /// Call when the INTx resample fd fires (the guest EOI'd the interrupt): raises the line
    /// again while an unmasked cause is pending.
    pub fn intx_resample(&self) {
        let st = lock(&self.shared.state);
        if st.irq_pending() && !st.config.intx_disabled() {
            if let Err(e) = self.shared.intx.write(1) {
                log::warn!("e1000: cannot re-raise INTx: {e}");
            }
        }
    }

    /// The link went up or down (the tap appeared or vanished): STATUS.LU, the PHY's link
    /// bits and an LSC interrupt. The worker does this by itself every [`LINK_POLL_INTERVAL`].
    pub fn set_link(&self, up: bool) {
        self.shared.set_link(up);
    }

    /// What the device refused so far.
    pub fn counters(&self) -> E1000Counters {
        lock(&self.shared.state).counters
    }

    /// One worker pass, synchronously: fire due timers, send, receive. For tests and
    /// benchmarks; do not mix with a running worker's timing expectations.
    pub fn process(&self) -> PassResult {
        self.shared.pass(Instant::now())
    }

    /// Starts the worker thread ("e1000"): it tells the back-end to send no offloaded frames,
    /// then serves the rings on TDT/RDT kicks, back-end readiness and moderation deadlines.
    pub fn start_worker(&self) -> io::Result<()> {
        let mut w = lock(&self.worker);
        if w.is_some() {
            return Ok(());
        }
        lock(&self.shared.io).backend.set_offload(0)?;
        let shared = self.shared.clone();
        *w = Some(
            std::thread::Builder::new()
                .name("e1000".into())
                .spawn(move || {
                    crate::worker_hook::worker_started("e1000");
                    worker_loop(&shared)
                })?,
        );
        Ok(())
    }

    /// Stops and joins the worker (also done on drop).
    pub fn stop_worker(&self) {
        if let Some(h) = lock(&self.worker).take() {
            let _ = self.shared.kill.write(1);
            let _ = h.join();
            let _ = self.shared.kill.read();
        }
    }
}

impl Drop for E1000 {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// How often the worker looks at the back-end's link (the tap deleted, or set down on the host).
pub const LINK_POLL_INTERVAL: Duration = Duration::from_secs(1);

fn worker_loop(shared: &Shared) {
    let backend_fd = lock(&shared.io).backend.raw_fd();
    let mut next_link_poll = Instant::now() + LINK_POLL_INTERVAL;
    loop {
        let now = Instant::now();
        if now >= next_link_poll {
            shared.poll_link();
            next_link_poll = now + LINK_POLL_INTERVAL;
        }
        let r = shared.pass(now);
        let deadline = r.deadline.map_or(next_link_poll, |d| d.min(next_link_poll));
        let timeout = if r.more {
            Some(Duration::ZERO)
        } else {
            Some(deadline.saturating_duration_since(now))
        };
        // A detached tap reports POLLERR whatever is asked: not watched while the link is
        // down (the link poll notices when it is back).
        let link_up = lock(&shared.state).link_up;
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
        });
        let mut fds = [
            libc::pollfd {
                fd: shared.kill.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.tx_kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.rx_kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if link_up { backend_fd } else { -1 },
                events: if r.want_rx { libc::POLLIN } else { 0 },
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of pollfd for its length; `ts` outlives the call.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                ts.as_ref().map_or(std::ptr::null(), |t| t as *const _),
                std::ptr::null(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("e1000: worker poll failed: {e}");
                return;
            }
            continue;
        }
        if fds[0].revents != 0 {
            return;
        }
        if fds[1].revents != 0 {
            let _ = shared.tx_kick.read();
        }
        if fds[2].revents != 0 {
            let _ = shared.rx_kick.read();
        }
        if fds[3].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            // A back-end that keeps failing must not spin the worker: wait for a kick.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl PciDevice for E1000 {
    fn config_read(&self, offset: u64, data: &mut [u8]) {
        let mut st = lock(&self.shared.state);
        let asserted = st.irq_pending();
        st.config.set_interrupt_status(asserted);
        st.config.read(offset, data);
    }

    fn config_write(&self, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        let mut st = lock(&self.shared.state);
        let moved = st.config.write(offset, data);
        // Bus mastering may just have been enabled: let the worker look at the rings.
        self.shared.kick(KICK_TX | KICK_RX);
        moved
    }

    fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) {
        let mut st = lock(&self.shared.state);
        match bar {
            MMIO_BAR => st.mmio_read(offset, data),
            IO_BAR => st.io_read(offset, data),
            _ => data.fill(0xff),
        }
        self.shared.finish(&mut st);
    }

    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) {
        let now = Instant::now();
        let mut st = lock(&self.shared.state);
        let kicks = match bar {
            MMIO_BAR => st.mmio_write(offset, data, now),
            IO_BAR => st.io_write(offset, data, now),
            _ => 0,
        };
        self.shared.finish(&mut st);
        drop(st);
        self.shared.kick(kicks);
    }

    fn bars(&self) -> Vec<PciBar> {
        lock(&self.shared.state).config.bars()
    }

    fn set_bar_address(&self, index: usize, addr: u64) -> Result<(), PciConfigError> {
        lock(&self.shared.state).config.set_bar_address(index, addr)
    }
}
