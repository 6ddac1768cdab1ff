//! Unit tests of the 82540EM model: registers, EEPROM, PHY, interrupts, TX, RX, hostile rings.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic as VmGuestMemoryAtomic};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::csum::{self, get16};
use super::regs::*;
use super::rx::*;
use super::tx::*;
use super::*;
use crate::pci::config_space::{COMMAND, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE};
use crate::virtio::GuestMemoryMmap;

pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const MEM_SIZE: usize = 0x10_0000;
const TX_RING: u64 = 0x1000;
const RX_RING: u64 = 0x2000;
const BUF: u64 = 0x10000;
const RX_BUF: u64 = 0x80000;

pub use super::fuzz::MockBackend;

pub struct T {
    pub dev: E1000,
    pub mem: GuestMemoryMmap,
    pub be: MockBackend,
    pub intx: EventFd,
}

impl T {
    pub fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let be = MockBackend::new();
        let intx = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = E1000::new(
            MAC,
            VmGuestMemoryAtomic::new(mem.clone()),
            intx.try_clone().unwrap(),
            Box::new(be.clone()),
        )
        .unwrap();
        dev.config_write(
            COMMAND as u64,
            &(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER).to_le_bytes(),
        );
        T { dev, mem, be, intx }
    }
    pub fn r(&self, off: u32) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(MMIO_BAR, u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }
    pub fn w(&self, off: u32, v: u32) {
        self.dev
            .bar_write(MMIO_BAR, u64::from(off), &v.to_le_bytes());
    }
    fn irqs(&self) -> u64 {
        self.intx.read().unwrap_or(0)
    }
    fn sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.be.sent.lock().unwrap())
    }
    /// A TX ring of `n` descriptors at TX_RING, enabled.
    fn tx_setup(&self, n: u32) {
        self.w(TDBAL, TX_RING as u32);
        self.w(TDBAH, 0);
        self.w(TDLEN, n * 16);
        self.w(TDH, 0);
        self.w(TDT, 0);
        self.w(TCTL, TCTL_EN);
    }
    fn put_desc(&self, ring: u64, i: u32, d: [u8; 16]) {
        self.mem
            .write_slice(&d, GuestAddress(ring + u64::from(i) * 16))
            .unwrap();
    }
    fn desc(&self, ring: u64, i: u32) -> [u8; 16] {
        let mut d = [0u8; 16];
        self.mem
            .read_slice(&mut d, GuestAddress(ring + u64::from(i) * 16))
            .unwrap();
        d
    }
    /// An RX ring of `n` descriptors, buffers of 2 KiB at RX_BUF, all handed to the device.
    fn rx_setup(&self, n: u32, rctl: u32) {
        for i in 0..n {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&(RX_BUF + u64::from(i) * 0x4000).to_le_bytes());
            self.put_desc(RX_RING, i, d);
        }
        self.w(RDBAL, RX_RING as u32);
        self.w(RDLEN, n * 16);
        self.w(RDH, 0);
        self.w(RDT, n - 1);
        self.w(RCTL, RCTL_EN | rctl);
    }
    fn rx_frame(&self, i: u32) -> (Vec<u8>, u8, u8) {
        let d = self.desc(RX_RING, i);
        let len = usize::from(u16::from_le_bytes([d[8], d[9]]));
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(RX_BUF + u64::from(i) * 0x4000))
            .unwrap();
        (v, d[12], d[13])
    }
}

pub fn legacy(addr: u64, len: u16, cmd: u8, cso: u8, css: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..10].copy_from_slice(&len.to_le_bytes());
    d[10] = cso;
    d[11] = cmd;
    d[13] = css;
    d
}

pub fn context(c: &TxContext) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0] = c.ipcss;
    d[1] = c.ipcso;
    d[2..4].copy_from_slice(&c.ipcse.to_le_bytes());
    d[4] = c.tucss;
    d[5] = c.tucso;
    d[6..8].copy_from_slice(&c.tucse.to_le_bytes());
    let dw = (c.paylen & 0xf_ffff) | (u32::from(c.tucmd | CMD_DEXT) << 24);
    d[8..12].copy_from_slice(&dw.to_le_bytes());
    d[13] = c.hdrlen;
    d[14..16].copy_from_slice(&c.mss.to_le_bytes());
    d
}

pub fn data(addr: u64, len: u32, dcmd: u8, popts: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    let dw = (len & 0xf_ffff) | (DTYP_DATA << 20) | (u32::from(dcmd | CMD_DEXT) << 24);
    d[8..12].copy_from_slice(&dw.to_le_bytes());
    d[13] = popts;
    d
}

const SRC_IP: [u8; 4] = [10, 0, 0, 1];
const DST_IP: [u8; 4] = [10, 0, 0, 2];

/// Ethernet + IPv4 + TCP (flags PSH|ACK|FIN) + payload; checksums 0.
pub fn tcp_frame(dst: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 20 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0]);
    f.extend_from_slice(&SRC_IP);
    f.extend_from_slice(&DST_IP);
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50]); // ports 12345 -> 80
    f.extend_from_slice(&1000u32.to_be_bytes()); // seq
    f.extend_from_slice(&0u32.to_be_bytes()); // ack
    f.extend_from_slice(&[0x50, 0x19, 0xff, 0xff, 0, 0, 0, 0]); // FIN|PSH|ACK
    f.extend_from_slice(payload);
    f
}

/// A context with the checksum offsets of a [`tcp_frame`]: the IPv4 header from 14 to 33
/// (checksum at 24), TCP from 34 to the end of the frame (checksum at 50).
pub fn tcp_frame_context() -> TxContext {
    TxContext {
        ipcss: 14,
        ipcso: 24,
        ipcse: 33,
        tucss: 34,
        tucso: 50,
        tucse: 0,
        ..Default::default()
    }
}

/// The pseudo-header sum (folded, not inverted) with the TCP length `len`.
fn pseudo(len: u16) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(&SRC_IP);
    p.extend_from_slice(&DST_IP);
    p.extend_from_slice(&[0, 6]);
    p.extend_from_slice(&len.to_be_bytes());
    csum::fold(csum::add(0, &p))
}

fn ip_ok(f: &[u8]) -> bool {
    csum::fold(csum::add(0, &f[14..34])) == 0xffff
}

fn tcp_ok(f: &[u8]) -> bool {
    let l4 = &f[34..];
    csum::fold(csum::add(u64::from(pseudo(l4.len() as u16)), l4)) == 0xffff
}

// ---------------------------------------------------------------------------------------
// PCI and registers

#[test]
fn pci_identity_and_bars() {
    let t = T::new();
    let mut b = [0u8; 4];
    t.dev.config_read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x100e_8086);
    t.dev.config_read(0x2c, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x001e_8086);
    t.dev.config_read(0x08, &mut b);
    assert_eq!(u32::from_le_bytes(b) >> 8, 0x02_00_00);
    t.dev.config_read(0x3c, &mut b);
    assert_eq!(b[1], 1, "INTA#");
    let bars = t.dev.bars();
    assert_eq!(bars.len(), 2);
    assert_eq!((bars[0].kind, bars[0].size), (BarKind::Mmio32, 0x20000));
    assert_eq!((bars[1].kind, bars[1].size), (BarKind::Io, 8));
}

#[test]
fn reset_values() {
    let t = T::new();
    let status = t.r(STATUS);
    assert_ne!(status & STATUS_LU, 0);
    assert_ne!(status & STATUS_FD, 0);
    assert_eq!(status & (3 << 6), STATUS_SPEED_1000);
    assert_ne!(t.r(CTRL) & CTRL_SLU, 0);
    assert_ne!(t.r(EECD) & EECD_PRES, 0);
    assert_eq!(t.r(EECD) & (1 << 9), 0, "64-word EEPROM");
    assert_eq!(t.r(RXCSUM), RXCSUM_IPOFLD | RXCSUM_TUOFLD);
    assert_eq!(t.r(VET), 0x8100);
    assert_eq!(t.r(PBA), 0x0010_0030);
    assert_eq!(t.r(ICR), 0);
    assert_eq!(t.r(IMS), 0);
    assert_eq!(t.r(RCTL), 0);
    assert_eq!(t.r(TCTL), 0);
    assert_eq!(t.r(MDIC) & MDIC_READY, MDIC_READY);
    // STATUS is read-only.
    t.w(STATUS, 0);
    assert_eq!(t.r(STATUS), status);
}

#[test]
fn unknown_offsets_read_zero_and_ignore_writes() {
    let t = T::new();
    for off in [0x0044, 0x0104, 0x1ff00, 0x1fffc, 0x8000, 0x5008] {
        t.w(off, 0xdead_beef);
        assert_eq!(t.r(off), 0, "offset {off:#x}");
    }
    // Odd widths and offsets, and past the BAR: no panic.
    let mut b = [0u8; 8];
    t.dev.bar_read(MMIO_BAR, 0x1fffe, &mut b[..2]);
    t.dev.bar_read(MMIO_BAR, 0x1ffff, &mut b[..4]);
    assert_eq!(&b[..4], &[0xff; 4]);
    t.dev.bar_read(MMIO_BAR, u64::MAX, &mut b);
    t.dev.bar_write(MMIO_BAR, u64::MAX - 1, &b);
    t.dev.bar_read(MMIO_BAR, 0, &mut b);
    t.dev.bar_read(5, 0, &mut b);
    t.dev.bar_write(5, 0, &b);
    t.dev.bar_read(MMIO_BAR, 0, &mut []);
}

#[test]
fn partial_writes_merge() {
    let t = T::new();
    t.w(RDTR, 0x1234);
    t.dev.bar_write(MMIO_BAR, u64::from(RDTR) + 1, &[0x56]);
    assert_eq!(t.r(RDTR), 0x5634);
    let mut b = [0u8; 2];
    t.dev.bar_read(MMIO_BAR, u64::from(RDTR), &mut b);
    assert_eq!(b, [0x34, 0x56]);
    // An 8-byte access covers two registers.
    t.dev.bar_write(
        MMIO_BAR,
        u64::from(RDBAL),
        &0x0000_0001_0000_2000u64.to_le_bytes(),
    );
    assert_eq!((t.r(RDBAL), t.r(RDBAH)), (0x2000, 1));
}

#[test]
fn eeprom_image_checksum_and_eerd() {
    let img = eeprom::image(MAC, E1000_DEVICE_ID, 0x8086, 0x001e);
    let sum = img.iter().fold(0u16, |s, &w| s.wrapping_add(w));
    assert_eq!(sum, eeprom::EEPROM_SUM);
    let t = T::new();
    let mut words = Vec::new();
    for a in 0..64u32 {
        t.w(EERD, (a << EERD_ADDR_SHIFT) | EERD_START);
        let v = t.r(EERD);
        assert_ne!(v & EERD_DONE, 0);
        assert_eq!((v >> 8) & 0xff, a);
        words.push((v >> 16) as u16);
    }
    assert_eq!(words, img.to_vec());
    assert_eq!(words[0].to_le_bytes(), [MAC[0], MAC[1]]);
    assert_eq!(words[2].to_le_bytes(), [MAC[4], MAC[5]]);
    assert_eq!(&words[0x0b..=0x0e], &[0x001e, 0x8086, 0x100e, 0x8086]);
    // Past the part: all ones, no panic.
    t.w(EERD, (0xff << EERD_ADDR_SHIFT) | EERD_START);
    assert_eq!(t.r(EERD) >> 16, 0xffff);
}

/// Reads a word the way Linux's e1000_read_eeprom does for the 82540 (Microwire bit-bang).
fn microwire_read(t: &T, addr: u16) -> u16 {
    let mut eecd = t.r(EECD) | EECD_REQ;
    t.w(EECD, eecd);
    assert_ne!(t.r(EECD) & EECD_GNT, 0);
    eecd &= !(EECD_DI | EECD_SK);
    t.w(EECD, eecd);
    eecd |= EECD_CS;
    t.w(EECD, eecd);
    let shift_out = |eecd: &mut u32, data: u32, count: u32| {
        for i in (0..count).rev() {
            *eecd &= !EECD_DI;
            if data >> i & 1 != 0 {
                *eecd |= EECD_DI;
            }
            t.w(EECD, *eecd);
            t.w(EECD, *eecd | EECD_SK);
            t.w(EECD, *eecd);
        }
        *eecd &= !EECD_DI;
        t.w(EECD, *eecd);
    };
    shift_out(&mut eecd, 0b110, 3);
    shift_out(&mut eecd, u32::from(addr), 6);
    let mut data = 0u16;
    for _ in 0..16 {
        data <<= 1;
        t.w(EECD, eecd | EECD_SK);
        if t.r(EECD) & EECD_DO != 0 {
            data |= 1;
        }
        t.w(EECD, eecd);
    }
    // Standby / release.
    t.w(EECD, eecd & !(EECD_CS | EECD_SK | EECD_REQ));
    data
}

#[test]
fn eeprom_microwire_bitbang() {
    let t = T::new();
    let img = eeprom::image(MAC, E1000_DEVICE_ID, 0x8086, 0x001e);
    let mut sum = 0u16;
    for a in 0..64u16 {
        let w = microwire_read(&t, a);
        assert_eq!(w, img[usize::from(a)], "word {a:#x}");
        sum = sum.wrapping_add(w);
    }
    assert_eq!(sum, 0xbaba);
}

fn mdic_read(t: &T, phy: u32, reg: u32) -> u32 {
    t.w(
        MDIC,
        MDIC_OP_READ | (phy << MDIC_PHY_SHIFT) | (reg << MDIC_REG_SHIFT),
    );
    t.r(MDIC)
}

#[test]
fn mdic_phy() {
    let t = T::new();
    let id1 = mdic_read(&t, 1, 2);
    assert_ne!(id1 & MDIC_READY, 0);
    assert_eq!(id1 & 0xffff, 0x0141);
    assert_eq!(mdic_read(&t, 1, 3) & 0xffff, 0x0c20);
    let st = mdic_read(&t, 1, 1) & 0xffff;
    assert_ne!(st & 0x0004, 0, "link up");
    assert_ne!(st & 0x0020, 0, "auto-negotiation complete");
    assert_eq!(mdic_read(&t, 1, 0x11) & 0xc000, 0x8000, "1000 Mb/s");
    // Wrong PHY address: error bit.
    assert_ne!(mdic_read(&t, 2, 1) & MDIC_ERROR, 0);
    // Writes: control reset and restart self-clear; read-only registers stay.
    t.w(
        MDIC,
        MDIC_OP_WRITE | (1 << MDIC_PHY_SHIFT) | (0 << MDIC_REG_SHIFT) | 0x9340,
    );
    assert_eq!(mdic_read(&t, 1, 0) & 0xffff, 0x1140);
    t.w(
        MDIC,
        MDIC_OP_WRITE | (1 << MDIC_PHY_SHIFT) | (2 << MDIC_REG_SHIFT) | 0x1234,
    );
    assert_eq!(mdic_read(&t, 1, 2) & 0xffff, 0x0141);
    t.w(
        MDIC,
        MDIC_OP_WRITE | (1 << MDIC_PHY_SHIFT) | (4 << MDIC_REG_SHIFT) | 0x0de1,
    );
    assert_eq!(mdic_read(&t, 1, 4) & 0xffff, 0x0de1);
    // MDIC with I set raises MDAC.
    t.w(MDIC, MDIC_OP_READ | MDIC_INT_EN | (1 << MDIC_PHY_SHIFT));
    assert_ne!(t.r(ICR) & ICR_MDAC, 0);
}

#[test]
fn icr_ics_ims_imc_and_intx() {
    let t = T::new();
    t.w(ICS, ICR_LSC);
    assert_eq!(t.irqs(), 0, "masked");
    t.w(IMS, ICR_LSC | ICR_RXT0);
    assert_eq!(t.r(IMS), ICR_LSC | ICR_RXT0);
    assert_eq!(t.irqs(), 1, "unmasking a pending cause raises");
    // Line stays up across a resample while the cause is pending.
    t.dev.intx_resample();
    assert_eq!(t.irqs(), 1);
    let mut b = [0u8; 2];
    t.dev.config_read(0x06, &mut b);
    assert_ne!(u16::from_le_bytes(b) & (1 << 3), 0, "PCI status: interrupt");
    // Read-to-clear.
    assert_eq!(t.r(ICR), ICR_LSC);
    assert_eq!(t.r(ICR), 0);
    t.dev.intx_resample();
    assert_eq!(t.irqs(), 0);
    // Write-1-to-clear.
    t.w(ICS, ICR_RXT0 | ICR_TXDW);
    assert_eq!(t.irqs(), 1);
    t.w(ICR, ICR_RXT0);
    assert_eq!(t.r(ICR), ICR_TXDW);
    // IMC masks.
    t.w(IMC, ICR_LSC);
    assert_eq!(t.r(IMS), ICR_RXT0);
    t.w(ICS, ICR_LSC);
    assert_eq!(t.irqs(), 0);
    // INTx disabled in the command register: nothing raised.
    t.dev.config_write(
        COMMAND as u64,
        &(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | 1 << 10).to_le_bytes(),
    );
    t.w(ICS, ICR_RXT0);
    assert_eq!(t.irqs(), 0);
    t.dev.intx_resample();
    assert_eq!(t.irqs(), 0);
}

#[test]
fn link_change_raises_lsc() {
    let t = T::new();
    t.w(IMS, ICR_LSC);
    t.dev.set_link(false);
    assert_eq!(t.irqs(), 1);
    assert_eq!(t.r(STATUS) & STATUS_LU, 0);
    assert_eq!(mdic_read(&t, 1, 1) & 4, 0);
    assert_eq!(t.r(ICR), ICR_LSC);
    t.dev.set_link(true);
    assert_ne!(t.r(STATUS) & STATUS_LU, 0);
}

#[test]
fn receive_addresses() {
    let t = T::new();
    assert_eq!(
        t.r(RA),
        u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]])
    );
    assert_eq!(
        t.r(RA + 4),
        RAH_AV | u32::from(u16::from_le_bytes([MAC[4], MAC[5]]))
    );
    t.w(RA + 8, 0x4433_2211);
    t.w(RA + 12, RAH_AV | 0x7fff_6655);
    assert_eq!(t.r(RA + 8), 0x4433_2211);
    assert_eq!(t.r(RA + 12), RAH_AV | 0x3_6655);
    t.w(MTA + 4 * 127, 0x8000_0001);
    assert_eq!(t.r(MTA + 4 * 127), 0x8000_0001);
}

#[test]
fn ctrl_rst_resets() {
    let t = T::new();
    t.w(RCTL, RCTL_EN);
    t.w(IMS, 0xff);
    t.w(RA + 4, 0);
    t.w(CTRL, t.r(CTRL) | CTRL_RST);
    assert_eq!(t.r(CTRL) & CTRL_RST, 0, "self-clearing");
    assert_eq!(t.r(RCTL), 0);
    assert_eq!(t.r(IMS), 0);
    assert_ne!(t.r(RA + 4) & RAH_AV, 0, "MAC reloaded");
}

#[test]
fn io_bar_indirect_access() {
    let t = T::new();
    t.dev.bar_write(IO_BAR, 0, &RDTR.to_le_bytes());
    let mut b = [0u8; 4];
    t.dev.bar_read(IO_BAR, 0, &mut b);
    assert_eq!(u32::from_le_bytes(b), RDTR);
    t.dev.bar_write(IO_BAR, 4, &0x77u32.to_le_bytes());
    assert_eq!(t.r(RDTR), 0x77);
    t.dev.bar_write(IO_BAR, 0, &STATUS.to_le_bytes());
    t.dev.bar_read(IO_BAR, 4, &mut b);
    assert_eq!(u32::from_le_bytes(b), t.r(STATUS));
    // ICR through IODATA is read-to-clear too.
    t.w(ICS, ICR_TXQE);
    t.dev.bar_write(IO_BAR, 0, &ICR.to_le_bytes());
    t.dev.bar_read(IO_BAR, 4, &mut b);
    assert_eq!(u32::from_le_bytes(b), ICR_TXQE);
    assert_eq!(t.r(ICR), 0);
    // Other offsets and widths: all ones, ignored writes.
    t.dev.bar_read(IO_BAR, 2, &mut b[..2]);
    assert_eq!(&b[..2], &[0xff, 0xff]);
    t.dev.bar_write(IO_BAR, 6, &[1, 2]);
    t.dev.bar_write(IO_BAR, 0, &0xffff_ffffu32.to_le_bytes());
    t.dev.bar_read(IO_BAR, 4, &mut b);
}

// ---------------------------------------------------------------------------------------
// TX

#[test]
fn tx_legacy_two_descriptors() {
    let t = T::new();
    t.tx_setup(8);
    t.w(IMS, ICR_TXDW | ICR_TXQE);
    let f = tcp_frame([0x02, 0, 0, 0, 0, 9], b"hello world");
    t.mem.write_slice(&f[..20], GuestAddress(BUF)).unwrap();
    t.mem
        .write_slice(&f[20..], GuestAddress(BUF + 0x1000))
        .unwrap();
    t.put_desc(TX_RING, 0, legacy(BUF, 20, CMD_IFCS, 0, 0));
    t.put_desc(
        TX_RING,
        1,
        legacy(BUF + 0x1000, (f.len() - 20) as u16, CMD_EOP | CMD_RS, 0, 0),
    );
    t.w(TDT, 2);
    let r = t.dev.process();
    assert!(!r.more);
    let sent = t.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0][..12], &[0; 12], "zero vnet header");
    assert_eq!(&sent[0][12..], &f[..]);
    assert_eq!(t.r(TDH), 2);
    assert_eq!(t.desc(TX_RING, 1)[12] & STA_DD, STA_DD);
    assert_eq!(t.desc(TX_RING, 0)[12] & STA_DD, 0, "no RS, no write-back");
    assert_eq!(t.r(ICR), ICR_TXDW | ICR_TXQE);
    assert_eq!(t.irqs(), 1);
    // Statistics, clear on read; 64-bit octet counters clear on the high half.
    assert_eq!(t.r(GPTC), 1);
    assert_eq!(t.r(GPTC), 0);
    assert_eq!(t.r(TPT), 1);
    assert_eq!(t.r(GOTCL), f.len() as u32 + 4);
    assert_eq!(t.r(GOTCL), f.len() as u32 + 4);
    assert_eq!(t.r(GOTCH), 0);
    assert_eq!(t.r(GOTCL), 0);
}

#[test]
fn tx_legacy_insert_checksum() {
    let t = T::new();
    t.tx_setup(8);
    let mut f = tcp_frame([0x02, 0, 0, 0, 0, 9], b"payload!");
    let l4 = (f.len() - 34) as u16;
    f[50..52].copy_from_slice(&pseudo(l4).to_be_bytes());
    t.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    t.put_desc(
        TX_RING,
        0,
        legacy(BUF, f.len() as u16, CMD_EOP | CMD_IC | CMD_RS, 50, 34),
    );
    t.w(TDT, 1);
    t.dev.process();
    let s = &t.sent()[0][12..];
    assert!(tcp_ok(s));
}

#[test]
fn tx_context_data_checksum_offload() {
    let t = T::new();
    t.tx_setup(8);
    let mut f = tcp_frame([0x02, 0, 0, 0, 0, 9], &[0xa5; 301]);
    let l4 = (f.len() - 34) as u16;
    // The driver's part: pseudo-header sum in the TCP checksum field, IP checksum 0.
    f[50..52].copy_from_slice(&pseudo(l4).to_be_bytes());
    f[24..26].copy_from_slice(&[0xde, 0xad]);
    t.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    let ctx = TxContext {
        tucmd: TUCMD_TCP | TUCMD_IP,
        ..tcp_frame_context()
    };
    t.put_desc(TX_RING, 0, context(&ctx));
    t.put_desc(TX_RING, 1, data(BUF, 100, 0, POPTS_IXSM | POPTS_TXSM));
    t.put_desc(
        TX_RING,
        2,
        data(BUF + 100, (f.len() - 100) as u32, CMD_EOP | CMD_RS, 0),
    );
    t.w(TDT, 3);
    t.dev.process();
    let sent = t.sent();
    assert_eq!(sent.len(), 1);
    let s = &sent[0][12..];
    assert_eq!(s.len(), f.len());
    assert!(ip_ok(s), "IPv4 header checksum");
    assert!(tcp_ok(s), "TCP checksum");
    assert_eq!(&s[54..], &f[54..]);
    assert_eq!(t.r(TDH), 3);
    assert_ne!(t.desc(TX_RING, 2)[12] & STA_DD, 0);
}

fn tso_setup(t: &T, payload: usize, mss: u16, hdrlen: u8) -> Vec<u8> {
    let pl: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let mut f = tcp_frame([0x02, 0, 0, 0, 0, 9], &pl);
    // Linux e1000_tso: IP total length and checksum 0, TCP checksum = pseudo without length.
    f[16..18].copy_from_slice(&[0, 0]);
    f[24..26].copy_from_slice(&[0, 0]);
    f[50..52].copy_from_slice(&pseudo(0).to_be_bytes());
    t.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    let ctx = TxContext {
        paylen: payload as u32,
        tucmd: TUCMD_TCP | TUCMD_IP | TUCMD_TSE,
        hdrlen,
        mss,
        ..tcp_frame_context()
    };
    t.put_desc(TX_RING, 0, context(&ctx));
    t.put_desc(TX_RING, 1, data(BUF, 54, DCMD_TSE, POPTS_IXSM | POPTS_TXSM));
    t.put_desc(
        TX_RING,
        2,
        data(
            BUF + 54,
            (f.len() - 54) as u32,
            DCMD_TSE | CMD_EOP | CMD_RS,
            0,
        ),
    );
    t.w(TDT, 3);
    f
}

#[test]
fn tx_tso_segments() {
    let t = T::new();
    t.tx_setup(8);
    let f = tso_setup(&t, 3000, 1448, 54);
    t.dev.process();
    let sent = t.sent();
    assert_eq!(sent.len(), 3);
    let mut off = 0;
    for (i, s) in sent.iter().enumerate() {
        assert_eq!(&s[..12], &[0; 12]);
        let s = &s[12..];
        let pl = if i < 2 { 1448 } else { 3000 - 2 * 1448 };
        assert_eq!(s.len(), 54 + pl);
        assert_eq!(get16(s, 16), Some((40 + pl) as u16), "IP total length");
        assert_eq!(get16(s, 18), Some(0x1234 + i as u16), "IP id");
        let seq = u32::from_be_bytes(s[38..42].try_into().unwrap());
        assert_eq!(seq, 1000 + off as u32);
        let flags = s[47];
        if i < 2 {
            assert_eq!(flags & 0x09, 0, "no FIN/PSH before the last");
        } else {
            assert_eq!(flags & 0x09, 0x09);
        }
        assert!(ip_ok(s), "segment {i} IP checksum");
        assert!(tcp_ok(s), "segment {i} TCP checksum");
        assert_eq!(&s[54..], &f[54 + off..54 + off + pl]);
        off += pl;
    }
    assert_eq!(t.r(TSCTC), 1);
    assert_eq!(t.r(GPTC), 3);
}

#[test]
fn tx_tso_impossible_contexts_dropped() {
    let cases = [
        (0u16, 54u8, 3000),
        (1448, 0, 3000),
        (1448, 255, 100),
        (1448, 20, 3000),
        (1, 54, 3000),
    ];
    for (mss, hdrlen, payload) in cases {
        let t = T::new();
        t.tx_setup(8);
        // 3000 bytes at MSS 1 would be more segments than allowed.
        tso_setup(&t, payload, mss, hdrlen);
        t.dev.process();
        assert!(t.sent().is_empty(), "mss {mss} hdrlen {hdrlen}");
        assert_eq!(t.dev.counters().tx_bad_tso, 1);
        assert_eq!(t.r(TDH), 3, "descriptors consumed");
        assert_eq!(t.r(TSCTFC), 1);
    }
}

#[test]
fn tx_hostile_rings() {
    // Ring outside guest memory.
    let t = T::new();
    t.tx_setup(8);
    t.w(TDBAL, 0xfff0_0000);
    t.w(TDT, 1);
    t.dev.process();
    assert_eq!(t.dev.counters().dma_errors, 1);
    assert_eq!(t.r(TDH), 0);
    // Ring at the very top of the address space.
    t.w(TDBAH, 0xffff_ffff);
    t.dev.process();
    // Head/tail beyond the ring.
    let t = T::new();
    t.tx_setup(8);
    t.w(TDT, 9);
    t.dev.process();
    assert_eq!(t.dev.counters().bad_ring, 1);
    // TDLEN not a multiple of 128: masked down (here to 0: no ring).
    let t = T::new();
    t.tx_setup(8);
    t.w(TDLEN, 100);
    assert_eq!(t.r(TDLEN), 0);
    t.w(TDT, 1);
    t.dev.process();
    assert!(t.sent().is_empty());
    // Zero-length and buffer-outside-memory descriptors.
    let t = T::new();
    t.tx_setup(8);
    t.put_desc(TX_RING, 0, legacy(BUF, 0, CMD_EOP | CMD_RS, 0, 0));
    t.put_desc(
        TX_RING,
        1,
        legacy(0xffff_0000_0000, 1000, CMD_EOP | CMD_RS, 0, 0),
    );
    t.put_desc(
        TX_RING,
        2,
        data(BUF, 0xf_ffff, CMD_EOP, POPTS_TXSM | POPTS_IXSM),
    );
    t.put_desc(TX_RING, 3, legacy(BUF, 60, CMD_EOP | CMD_IC, 250, 200));
    t.w(TDT, 4);
    t.dev.process();
    assert_eq!(t.r(TDH), 4);
    let sent = t.sent();
    assert_eq!(sent.len(), 1, "only the last is a sendable frame");
    let c = t.dev.counters();
    assert!(
        c.dma_errors >= 1 && c.tx_too_long == 1 && c.tx_bad_offload == 1,
        "{c:?}"
    );
}

#[test]
fn tx_chain_without_eop_is_bounded() {
    let t = T::new();
    t.tx_setup(256);
    for i in 0..256 {
        t.put_desc(TX_RING, i, legacy(BUF, 0xffff, 0, 0, 0));
    }
    // The driver keeps handing the same descriptors round the ring.
    for round in 0..4 {
        t.w(TDT, 255);
        let r = t.dev.process();
        assert!(!r.more, "round {round}");
        t.w(TDT, 0);
        t.dev.process();
        t.w(TDT, 128);
        t.dev.process();
    }
    assert!(t.sent().is_empty());
    assert!(t.dev.counters().tx_too_long >= 1);
    // A packet with EOP afterwards is dropped (it belongs to the overlong one), the next one
    // goes out.
    t.put_desc(TX_RING, 128, legacy(BUF, 60, CMD_EOP, 0, 0));
    t.put_desc(TX_RING, 129, legacy(BUF, 60, CMD_EOP, 0, 0));
    t.w(TDT, 130);
    t.dev.process();
    assert_eq!(t.sent().len(), 1);
}

#[test]
fn tx_budget_per_pass() {
    let t = T::new();
    t.tx_setup(1024);
    for i in 0..1024 {
        t.put_desc(TX_RING, i, legacy(BUF, 60, CMD_EOP, 0, 0));
    }
    t.w(TDT, 1023);
    let r = t.dev.process();
    assert!(r.more);
    assert_eq!(t.r(TDH), TX_BUDGET as u32);
    while t.dev.process().more {}
    assert_eq!(t.r(TDH), 1023);
    assert_eq!(t.sent().len(), 1023);
}

#[test]
fn tx_vlan_insertion() {
    let t = T::new();
    t.tx_setup(8);
    t.w(CTRL, t.r(CTRL) | CTRL_VME);
    let f = tcp_frame([0x02, 0, 0, 0, 0, 9], b"x");
    t.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    let mut d = legacy(BUF, f.len() as u16, CMD_EOP | CMD_VLE, 0, 0);
    d[14..16].copy_from_slice(&0x0123u16.to_le_bytes());
    t.put_desc(TX_RING, 0, d);
    t.w(TDT, 1);
    t.dev.process();
    let s = &t.sent()[0][12..];
    assert_eq!(&s[12..16], &[0x81, 0x00, 0x01, 0x23]);
    assert_eq!(&s[16..], &f[12..]);
}

#[test]
fn tx_disabled_or_no_bus_master_does_nothing() {
    let t = T::new();
    t.tx_setup(8);
    t.put_desc(TX_RING, 0, legacy(BUF, 60, CMD_EOP, 0, 0));
    t.w(TCTL, 0);
    t.w(TDT, 1);
    t.dev.process();
    assert_eq!(t.r(TDH), 0);
    t.w(TCTL, TCTL_EN);
    t.dev
        .config_write(COMMAND as u64, &COMMAND_MEMORY_SPACE.to_le_bytes());
    t.dev.process();
    assert_eq!(t.r(TDH), 0);
}

#[test]
fn tx_delayed_interrupt_tidv() {
    let t = T::new();
    t.tx_setup(8);
    t.w(IMS, ICR_TXDW);
    t.w(TIDV, 2000); // ~2 ms
    t.put_desc(
        TX_RING,
        0,
        legacy(BUF, 60, CMD_EOP | CMD_RS | CMD_IDE, 0, 0),
    );
    t.w(TDT, 1);
    let r = t.dev.process();
    assert_eq!(t.irqs(), 0, "TXDW delayed");
    assert!(r.deadline.is_some());
    std::thread::sleep(Duration::from_millis(3));
    t.dev.process();
    assert_eq!(t.irqs(), 1);
    assert_ne!(t.r(ICR) & ICR_TXDW, 0);
}

// ---------------------------------------------------------------------------------------
// RX

const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];

#[test]
fn rx_unicast_delivery_and_writeback() {
    let t = T::new();
    t.rx_setup(8, RCTL_SECRC);
    t.w(IMS, ICR_RXT0);
    let f = tcp_frame(MAC, &[7; 100]);
    t.be.push([0; 12], &f);
    t.dev.process();
    assert_eq!(t.r(RDH), 1);
    let (got, status, errors) = t.rx_frame(0);
    assert_eq!(got, f);
    assert_eq!(
        status & (RXD_STAT_DD | RXD_STAT_EOP),
        RXD_STAT_DD | RXD_STAT_EOP
    );
    assert_ne!(status & RXD_STAT_IPCS, 0, "IPv4 header checked");
    assert_eq!(status & RXD_STAT_TCPCS, 0, "no TCP checksum information");
    assert_eq!(errors, RXD_ERR_IPE, "the test frame's IP checksum is 0");
    assert_eq!(t.r(ICR) & ICR_RXT0, ICR_RXT0);
    assert_eq!(t.irqs(), 1);
    assert_eq!(t.r(GPRC), 1);
    assert_eq!(t.r(TPR), 1);
    assert_eq!(t.r(GORCL), f.len() as u32);
}

#[test]
fn rx_raises_a_frames_interrupt_before_taking_the_next() {
    let t = T::new();
    t.rx_setup(8, RCTL_SECRC);
    t.w(IMS, ICR_RXT0);
    for i in 0..3 {
        t.be.push([0; 12], &tcp_frame(MAC, &[i; 100]));
    }
    // What the guest would have seen on its interrupt line each time the device went back to
    // the back-end for a frame.
    let intx = t.intx.try_clone().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    *t.be.on_recv.lock().unwrap() = Some(Box::new(move || {
        s.lock().unwrap().push(intx.read().unwrap_or(0))
    }));
    t.dev.process();
    assert_eq!(t.r(RDH), 3);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[..2],
        [0, 1],
        "frame 1's interrupt came before frame 2 was read"
    );
}

#[test]
fn rx_fcs_padding_and_ixsm() {
    let t = T::new();
    t.rx_setup(8, 0);
    t.w(RXCSUM, 0);
    let f = [MAC.as_slice(), &[2, 0, 0, 0, 0, 1, 0x08, 0x06], &[1; 20]].concat();
    t.be.push([0; 12], &f);
    t.dev.process();
    let (got, status, _) = t.rx_frame(0);
    assert_eq!(got.len(), 64, "padded to 60 plus FCS");
    assert_eq!(&got[..f.len()], &f[..]);
    assert_eq!(&got[60..], &csum::fcs(&got[..60]));
    assert_ne!(status & RXD_STAT_IXSM, 0);
}

#[test]
fn rx_filtering() {
    let t = T::new();
    t.rx_setup(16, RCTL_SECRC);
    let frame = |dst: [u8; 6]| tcp_frame(dst, b"x");
    // Unicast mismatch.
    t.be.push([0; 12], &frame(OTHER));
    t.dev.process();
    assert_eq!(t.r(RDH), 0);
    // Broadcast needs BAM.
    t.be.push([0; 12], &frame([0xff; 6]));
    t.dev.process();
    assert_eq!(t.r(RDH), 0);
    t.w(RCTL, RCTL_EN | RCTL_SECRC | RCTL_BAM);
    t.be.push([0; 12], &frame([0xff; 6]));
    t.dev.process();
    assert_eq!(t.r(RDH), 1);
    assert_eq!(t.r(BPRC), 1);
    // Multicast: through the MTA hash (MO = 0: bits 47:36).
    let mc = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
    t.be.push([0; 12], &frame(mc));
    t.dev.process();
    assert_eq!(t.r(RDH), 1);
    let h = mta_hash(&mc, 0);
    assert_eq!(h, 0xfb0);
    t.w(MTA + 4 * (h as u32 >> 5), 1 << (h & 31));
    t.be.push([0; 12], &frame(mc));
    t.dev.process();
    assert_eq!(t.r(RDH), 2);
    assert_eq!(t.r(MPRC), 1);
    // Another multicast address whose hash is not set.
    t.be.push([0; 12], &frame([0x01, 0, 0x5e, 0, 0, 0x01]));
    t.dev.process();
    assert_eq!(t.r(RDH), 2);
    // MPE: all multicast.
    t.w(RCTL, RCTL_EN | RCTL_SECRC | RCTL_MPE);
    t.be.push([0; 12], &frame([0x01, 0, 0x5e, 0, 0, 0x01]));
    t.dev.process();
    assert_eq!(t.r(RDH), 3);
    // Second receive address.
    t.w(
        RA + 8,
        u32::from_le_bytes([OTHER[0], OTHER[1], OTHER[2], OTHER[3]]),
    );
    t.w(
        RA + 12,
        RAH_AV | u32::from(u16::from_le_bytes([OTHER[4], OTHER[5]])),
    );
    t.be.push([0; 12], &frame(OTHER));
    t.dev.process();
    assert_eq!(t.r(RDH), 4);
    // UPE: any unicast.
    t.w(RCTL, RCTL_EN | RCTL_SECRC | RCTL_UPE);
    t.be.push([0; 12], &frame([0x02, 9, 9, 9, 9, 9]));
    t.dev.process();
    assert_eq!(t.r(RDH), 5);
    // MO = 3: bits 43:32.
    assert_eq!(mta_hash(&[1, 0, 0, 0, 0xab, 0xcd], 3), 0xdab);
}

#[test]
fn rx_multi_descriptor_frame() {
    let t = T::new();
    // BSIZE 256 (BSEX 0, BSIZE 11).
    t.rx_setup(8, RCTL_SECRC | 3 << RCTL_BSIZE_SHIFT);
    let f = tcp_frame(MAC, &[9; 600]);
    t.be.push([0; 12], &f);
    t.dev.process();
    let n = f.len().div_ceil(256) as u32;
    assert_eq!(t.r(RDH), n);
    let mut got = Vec::new();
    for i in 0..n {
        let (part, status, _) = t.rx_frame(i);
        assert_ne!(status & RXD_STAT_DD, 0);
        assert_eq!(
            status & RXD_STAT_EOP != 0,
            i + 1 == n,
            "EOP on the last only"
        );
        got.extend_from_slice(&part);
    }
    assert_eq!(got, f);
    // One descriptor left for a frame that needs three: held (RNBC), delivered after RDT.
    t.w(RDT, n + 1);
    t.be.push([0; 12], &f);
    let r = t.dev.process();
    assert!(!r.want_rx);
    assert_eq!(t.r(RDH), n);
    assert_eq!(t.r(RNBC), 1);
    t.w(RDT, 7);
    t.dev.process();
    assert_eq!(t.r(RDH), 2 * n);
    assert_eq!(buffer_size(RCTL_BSEX | 1 << RCTL_BSIZE_SHIFT), 16384);
    assert_eq!(buffer_size(RCTL_BSEX | 3 << RCTL_BSIZE_SHIFT), 4096);
    assert_eq!(buffer_size(0), 2048);
}

#[test]
fn rx_ring_full_holds_frame_until_rdt() {
    let t = T::new();
    t.rx_setup(8, RCTL_SECRC);
    t.w(RDT, 5); // five descriptors for the device
    t.w(IMS, ICR_RXT0 | ICR_RXDMT0);
    for i in 0..7u8 {
        t.be.push([0; 12], &tcp_frame(MAC, &[i; 10]));
    }
    let r = t.dev.process();
    assert_eq!(t.r(RDH), 5);
    assert!(!r.want_rx, "ring full: stop polling the back-end");
    assert_eq!(
        t.be.rx.lock().unwrap().len(),
        2,
        "no room: left in the back-end"
    );
    // RDMTS = 1/2: 4 of 8 free descriptors left after the first frame.
    assert_ne!(t.r(ICR) & ICR_RXDMT0, 0);
    t.w(RDT, 4);
    let r = t.dev.process();
    assert_eq!(t.r(RDH), 7);
    assert!(r.want_rx);
    for i in 0..7 {
        assert_eq!(t.rx_frame(i).0[54], i as u8, "order kept");
    }
}

#[test]
fn rx_frame_larger_than_ring_dropped() {
    let t = T::new();
    t.rx_setup(8, RCTL_SECRC | RCTL_LPE | 3 << RCTL_BSIZE_SHIFT);
    t.w(IMS, ICR_RXO);
    t.be.push([0; 12], &tcp_frame(MAC, &[1; 3000]));
    t.be.push([0; 12], &tcp_frame(MAC, &[2; 100]));
    t.dev.process();
    assert_eq!(t.r(MPC), 1);
    assert_ne!(t.r(ICR) & ICR_RXO, 0);
    assert_eq!(t.r(RDH), 1, "the next frame still arrives");
    // Too long without LPE.
    t.w(RCTL, RCTL_EN | RCTL_SECRC);
    t.be.push([0; 12], &tcp_frame(MAC, &[1; 1600]));
    t.dev.process();
    assert_eq!(t.r(ROC), 1);
}

#[test]
fn rx_needs_csum_completed() {
    let t = T::new();
    t.rx_setup(8, RCTL_SECRC);
    let mut f = tcp_frame(MAC, &[0x42; 333]);
    let ipc = csum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&ipc.to_be_bytes());
    let l4 = (f.len() - 34) as u16;
    f[50..52].copy_from_slice(&pseudo(l4).to_be_bytes());
    let mut hdr = [0u8; 12];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    t.be.push(hdr, &f);
    // GSO frames are dropped.
    let mut gso = hdr;
    gso[1] = 1;
    t.be.push(gso, &f);
    t.dev.process();
    assert_eq!(t.r(RDH), 1);
    let (got, status, errors) = t.rx_frame(0);
    assert!(tcp_ok(&got));
    assert!(ip_ok(&got));
    assert_ne!(status & RXD_STAT_TCPCS, 0);
    assert_ne!(status & RXD_STAT_IPCS, 0);
    assert_eq!(errors, 0);
    assert_eq!(t.dev.counters().rx_dropped, 1);
}

#[test]
fn rx_vlan_strip() {
    let t = T::new();
    t.rx_setup(8, RCTL_SECRC);
    t.w(CTRL, t.r(CTRL) | CTRL_VME);
    let f = tcp_frame(MAC, b"v");
    let tagged = [&f[..12], &[0x81, 0x00, 0x00, 0x05], &f[12..]].concat();
    t.be.push([0; 12], &tagged);
    t.dev.process();
    let (got, status, _) = t.rx_frame(0);
    assert_eq!(got.len(), 60);
    assert_eq!(&got[..f.len()], &f[..]);
    assert_ne!(status & RXD_STAT_VP, 0);
    assert_eq!(
        u16::from_le_bytes(t.desc(RX_RING, 0)[14..16].try_into().unwrap()),
        5
    );
}

#[test]
fn rx_delay_rdtr_radv() {
    let t = T::new();
    t.rx_setup(8, RCTL_SECRC);
    t.w(IMS, ICR_RXT0);
    t.w(RDTR, 2000);
    t.w(RADV, 3000);
    t.be.push([0; 12], &tcp_frame(MAC, b"a"));
    let r = t.dev.process();
    assert_eq!(t.irqs(), 0);
    assert!(r.deadline.is_some());
    // FPD flushes at once.
    t.w(RDTR, 2000 | RDTR_FPD);
    assert_eq!(t.irqs(), 1);
    assert_eq!(t.r(RDTR), 2000);
    assert_eq!(t.r(ICR), ICR_RXT0);
    t.be.push([0; 12], &tcp_frame(MAC, b"b"));
    t.dev.process();
    assert_eq!(t.irqs(), 0);
    std::thread::sleep(Duration::from_millis(3));
    t.dev.process();
    assert_eq!(t.irqs(), 1);
}

#[test]
fn itr_spaces_interrupts() {
    let t = T::new();
    t.rx_setup(8, RCTL_SECRC);
    t.w(IMS, ICR_RXT0);
    t.w(ITR, 8000); // 2.048 ms
    t.be.push([0; 12], &tcp_frame(MAC, b"a"));
    t.dev.process();
    assert_eq!(t.irqs(), 1);
    assert_eq!(t.r(ICR), ICR_RXT0);
    t.be.push([0; 12], &tcp_frame(MAC, b"b"));
    let r = t.dev.process();
    assert_eq!(t.irqs(), 0, "within the ITR gap");
    let d = r.deadline.expect("ITR deadline");
    assert!(d > Instant::now());
    std::thread::sleep(Duration::from_millis(3));
    t.dev.process();
    assert_eq!(t.irqs(), 1);
}

#[test]
fn rx_hostile_rings() {
    // Ring outside memory.
    let t = T::new();
    t.rx_setup(8, RCTL_SECRC);
    t.w(RDBAL, 0xffff_f000);
    t.be.push([0; 12], &tcp_frame(MAC, b"a"));
    t.dev.process();
    assert!(t.dev.counters().dma_errors >= 1);
    // Head/tail beyond the ring: not ready, nothing read.
    let t = T::new();
    t.rx_setup(8, RCTL_SECRC);
    t.w(RDT, 100);
    t.be.push([0; 12], &tcp_frame(MAC, b"a"));
    let r = t.dev.process();
    assert!(!r.want_rx);
    assert_eq!(t.be.rx.lock().unwrap().len(), 1);
    // Buffer outside memory: written back with RXE.
    let t = T::new();
    t.rx_setup(8, RCTL_SECRC);
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&0xdead_0000_0000u64.to_le_bytes());
    t.put_desc(RX_RING, 0, d);
    t.be.push([0; 12], &tcp_frame(MAC, b"a"));
    t.dev.process();
    assert_eq!(t.r(RDH), 1);
    assert_ne!(t.desc(RX_RING, 0)[13] & RXD_ERR_RXE, 0);
    // Runt frames and garbage vnet headers.
    t.be.push([0xff; 12], &[1, 2, 3]);
    let mut h = [0u8; 12];
    h[0] = 1;
    h[6..8].copy_from_slice(&0xfff0u16.to_le_bytes());
    h[8..10].copy_from_slice(&0xfff0u16.to_le_bytes());
    t.be.push(h, &tcp_frame(MAC, b"z"));
    t.dev.process();
    assert_eq!(t.dev.counters().rx_bad_csum_request, 1);
}

#[test]
fn worker_thread_end_to_end() {
    crate::worker_hook::recorder::install();
    let t = T::new();
    t.tx_setup(8);
    t.rx_setup(8, RCTL_SECRC);
    t.w(IMS, ICR_RXT0 | ICR_TXDW);
    t.dev.start_worker().unwrap();
    t.mem
        .write_slice(&tcp_frame(OTHER, b"out"), GuestAddress(BUF))
        .unwrap();
    t.put_desc(TX_RING, 0, legacy(BUF, 57, CMD_EOP | CMD_RS, 0, 0));
    t.w(TDT, 1);
    t.be.push([0; 12], &tcp_frame(MAC, b"in"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while (t.r(TDH) != 1 || t.r(RDH) != 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(t.r(TDH), 1);
    assert_eq!(t.r(RDH), 1);
    assert_eq!(t.be.sent.lock().unwrap().len(), 1);
    // The worker ran the VMM's start hook (kvmrun's seccomp filter) on its own thread.
    assert!(crate::worker_hook::recorder::saw("e1000"));
    t.dev.stop_worker();
}

#[test]
fn worker_reports_the_back_ends_link_going_down_and_up() {
    use std::sync::atomic::Ordering;
    let t = T::new();
    t.w(IMS, ICR_LSC);
    t.dev.start_worker().unwrap();
    let wait_for = |lu: u32| {
        let deadline = Instant::now() + LINK_POLL_INTERVAL * 3;
        while t.r(STATUS) & STATUS_LU != lu && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        t.r(STATUS) & STATUS_LU
    };
    assert_ne!(wait_for(STATUS_LU), 0);
    // The tap is deleted: the next link poll clears STATUS.LU and interrupts with LSC.
    t.be.link.store(false, Ordering::Relaxed);
    assert_eq!(wait_for(0), 0, "STATUS.LU still set");
    assert_eq!(t.r(ICR) & ICR_LSC, ICR_LSC);
    assert!(t.irqs() >= 1);
    t.be.link.store(true, Ordering::Relaxed);
    assert_ne!(wait_for(STATUS_LU), 0, "STATUS.LU not back");
    assert_eq!(t.r(ICR) & ICR_LSC, ICR_LSC);
    t.dev.stop_worker();
}

mod prop {
    use super::super::fuzz::REGS;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn random_registers_and_descriptors(
            ops in proptest::collection::vec((0usize..64, any::<u32>()), 1..64),
            ring in proptest::collection::vec(any::<u8>(), 0..2048),
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4),
        ) {
            let t = T::new();
            t.mem.write_slice(&ring, GuestAddress(TX_RING)).unwrap();
            t.mem.write_slice(&ring, GuestAddress(RX_RING)).unwrap();
            t.tx_setup(64);
            t.rx_setup(16, RCTL_SECRC);
            for f in &frames {
                t.be.push([0; 12], f);
            }
            for (i, (sel, v)) in ops.iter().enumerate() {
                let off = REGS.get(*sel).copied().unwrap_or((v >> 8) & 0x1fffc);
                // Keep the rings mostly in memory so descriptor processing is exercised.
                let v = match off {
                    TDBAL | RDBAL => v & 0xf_ffff,
                    TDBAH | RDBAH => v & 1,
                    CTRL if i % 2 == 0 => v & !CTRL_RST,
                    _ => *v,
                };
                t.w(off, v);
                if i % 8 == 0 {
                    t.dev.process();
                }
            }
            t.dev.process();
            t.dev.intx_resample();
        }
    }
}
