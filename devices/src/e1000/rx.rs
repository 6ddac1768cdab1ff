//! Receive (8254x SDM §3.2): address filtering (§3.2.1; multicast hash §13.5.1 MTA), legacy
//! receive descriptors (§3.2.3) with buffer sizes per RCTL.BSIZE/BSEX (§13.4.22), descriptor
//! write-back, checksum status (§3.2.9), RXDMT0 (§3.2.7 / RCTL.RDMTS) and the receive timers.
//!
//! A frame from the back-end carries a vnet header. The legacy descriptor cannot express a
//! partial checksum, so NEEDS_CSUM frames are completed here; GSO frames are dropped (the tap
//! is told to send none: `set_offload(0)`).
//!
//! A frame that does not fit the descriptors the driver has handed over stays with the worker
//! (RNBC counts the stall) and the worker stops reading the back-end until the driver writes
//! RDT; only a frame larger than the whole ring is dropped (MPC, RXO).

use std::time::Instant;

use vm_memory::{Bytes, GuestAddress};

use super::csum::{self, get16, put16};
use super::regs::*;
use super::State;
use crate::net::VNET_HDR_LEN;
use crate::virtio::GuestMemoryMmap;

// Receive descriptor status (byte 12) and errors (byte 13), §3.2.3.1-2.
pub const RXD_STAT_DD: u8 = 1 << 0;
pub const RXD_STAT_EOP: u8 = 1 << 1;
pub const RXD_STAT_IXSM: u8 = 1 << 2;
pub const RXD_STAT_VP: u8 = 1 << 3;
pub const RXD_STAT_TCPCS: u8 = 1 << 5;
pub const RXD_STAT_IPCS: u8 = 1 << 6;
pub const RXD_ERR_IPE: u8 = 1 << 6;
pub const RXD_ERR_RXE: u8 = 1 << 7;

/// vnet header flags (virtio 1.2 §5.1.6).
const VNET_F_NEEDS_CSUM: u8 = 1;
const VNET_F_DATA_VALID: u8 = 2;
/// Shortest frame on the wire without FCS.
const ETH_ZLEN: usize = 60;
/// Longest frame without RCTL.LPE: 1518 + a VLAN tag; with LPE (§13.4.22): 16384.
const MAX_FRAME: usize = 1522;
const MAX_FRAME_LPE: usize = 16384;

/// What happened to a frame offered to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    Delivered,
    /// Filtered out or invalid: consumed, not delivered.
    Dropped,
    /// Not enough descriptors: keep the frame and retry after the next RDT write.
    NoRoom,
}

/// Receive buffer size from RCTL (§13.4.22).
pub fn buffer_size(rctl: u32) -> usize {
    let bsize = (rctl >> RCTL_BSIZE_SHIFT) & 3;
    if rctl & RCTL_BSEX != 0 {
        match bsize {
            1 => 16384,
            2 => 8192,
            3 => 4096,
            _ => 2048, // reserved: treated as BSEX = 0
        }
    } else {
        [2048, 1024, 512, 256][bsize as usize]
    }
}

/// Bit index in the 4096-bit multicast table for `dst` (§13.5.1: RCTL.MO picks bits
/// [47:36], [46:35], [45:34] or [43:32] of the address).
pub fn mta_hash(dst: &[u8; 6], mo: u32) -> usize {
    let shift = [4, 3, 2, 0][(mo & 3) as usize];
    let v = u16::from_le_bytes([dst[4], dst[5]]) >> shift;
    usize::from(v & 0xfff)
}

/// L3/L4 facts the checksum status needs: (IPv4 header range, is TCP/UDP not a fragment).
fn classify(f: &[u8]) -> (Option<(usize, usize)>, bool) {
    let Some(ethertype) = get16(f, 12) else {
        return (None, false);
    };
    match ethertype {
        0x0800 => {
            let Some(&vihl) = f.get(14) else {
                return (None, false);
            };
            let ihl = usize::from(vihl & 0xf) * 4;
            if vihl >> 4 != 4 || ihl < 20 || f.len() < 14 + ihl {
                return (None, false);
            }
            let frag = get16(f, 14 + 6).unwrap_or(0) & 0x3fff != 0;
            let proto = f[14 + 9];
            (Some((14, 14 + ihl)), !frag && (proto == 6 || proto == 17))
        }
        0x86dd => {
            let nh = f.get(14 + 6).copied().unwrap_or(0);
            (None, f.len() >= 54 && (nh == 6 || nh == 17))
        }
        _ => (None, false),
    }
}

impl State {
    /// Whether the driver has enabled the receiver and handed over at least one descriptor.
    pub(crate) fn rx_ready(&self) -> bool {
        if self.reg(RCTL) & RCTL_EN == 0 || !self.bus_master() {
            return false;
        }
        match self.ring(RDBAL, RDBAH, RDLEN) {
            Some((_, n)) => self.rx_free(n).is_some_and(|f| f > 0),
            None => false,
        }
    }

    /// Descriptors owned by the device: RDH up to, not including, RDT.
    fn rx_free(&self, n: u32) -> Option<u32> {
        let (h, t) = (self.reg(RDH), self.reg(RDT));
        (h < n && t < n).then(|| (t + n - h) % n)
    }

    /// Whether the receive filters accept a frame for `dst` (§3.2.1).
    pub(crate) fn rx_accept(&self, dst: &[u8; 6]) -> bool {
        let rctl = self.reg(RCTL);
        let multicast = dst[0] & 1 != 0;
        let broadcast = *dst == [0xff; 6];
        if broadcast && rctl & (RCTL_BAM | RCTL_MPE) != 0 {
            return true;
        }
        if multicast && rctl & RCTL_MPE != 0 || !multicast && rctl & RCTL_UPE != 0 {
            return true;
        }
        for i in 0..NUM_RA as u32 {
            let rah = self.reg(RA + 8 * i + 4);
            if rah & RAH_AV == 0 {
                continue;
            }
            let ral = self.reg(RA + 8 * i).to_le_bytes();
            let hi = (rah as u16).to_le_bytes();
            if dst[..4] == ral && dst[4..] == hi {
                return true;
            }
        }
        if multicast {
            let bit = mta_hash(dst, rctl >> RCTL_MO_SHIFT);
            return self.reg(MTA + 4 * (bit as u32 >> 5)) >> (bit & 31) & 1 != 0;
        }
        false
    }

    /// Offers one frame (`pkt` = vnet header + frame) to the receive ring.
    pub(crate) fn receive(&mut self, mem: &GuestMemoryMmap, pkt: &[u8], now: Instant) -> RxOutcome {
        if pkt.len() < VNET_HDR_LEN + 14 {
            self.counters.rx_dropped += 1;
            return RxOutcome::Dropped;
        }
        let (vh, frame) = pkt.split_at(VNET_HDR_LEN);
        let (flags, gso_type) = (vh[0], vh[1]);
        let csum_start = usize::from(u16::from_le_bytes([vh[6], vh[7]]));
        let csum_offset = usize::from(u16::from_le_bytes([vh[8], vh[9]]));
        self.bump_stat(TPR, 1);
        self.bump_stat(TORL, frame.len() as u64 + 4);
        if gso_type != 0 {
            self.counters.rx_dropped += 1;
            return RxOutcome::Dropped;
        }
        let dst: [u8; 6] = frame[..6].try_into().unwrap();
        if !self.rx_accept(&dst) {
            self.counters.rx_filtered += 1;
            return RxOutcome::Dropped;
        }
        let rctl = self.reg(RCTL);
        let max = if rctl & RCTL_LPE != 0 {
            MAX_FRAME_LPE
        } else {
            MAX_FRAME
        };
        if frame.len() > max {
            self.bump_stat(ROC, 1);
            return RxOutcome::Dropped;
        }
        let Some((base, n)) = self.ring(RDBAL, RDBAH, RDLEN) else {
            return RxOutcome::NoRoom;
        };
        let Some(free) = self.rx_free(n) else {
            self.counters.bad_ring += 1;
            return RxOutcome::NoRoom;
        };
        let bsize = buffer_size(rctl);
        // The frame as it lands in guest memory: VLAN tag stripped (CTRL.VME), padded to the
        // minimum length, FCS appended unless RCTL.SECRC.
        let mut buf = std::mem::take(&mut self.rx_scratch);
        buf.clear();
        let mut special = 0u16;
        let mut status = 0u8;
        if self.reg(CTRL) & CTRL_VME != 0 && get16(frame, 12) == Some(self.reg(VET) as u16) {
            special = get16(frame, 14).unwrap_or(0);
            status |= RXD_STAT_VP;
            buf.extend_from_slice(&frame[..12]);
            buf.extend_from_slice(&frame[16..]);
        } else {
            buf.extend_from_slice(frame);
        }
        let mut csum_ok = flags & VNET_F_DATA_VALID != 0;
        if flags & VNET_F_NEEDS_CSUM != 0 {
            // Offsets are relative to the frame as the back-end gave it.
            let shift = if status & RXD_STAT_VP != 0 { 4 } else { 0 };
            let start = csum_start.wrapping_sub(shift);
            let at = start.saturating_add(csum_offset);
            if csum_start >= 14 + shift && at + 2 <= buf.len() {
                let c = csum::checksum(&buf[start..]);
                put16(&mut buf, at, c);
                csum_ok = true;
            } else {
                self.counters.rx_bad_csum_request += 1;
            }
        }
        if buf.len() < ETH_ZLEN {
            buf.resize(ETH_ZLEN, 0);
        }
        if rctl & RCTL_SECRC == 0 {
            let fcs = csum::fcs(&buf);
            buf.extend_from_slice(&fcs);
        }
        let needed = buf.len().div_ceil(bsize) as u32;
        if needed > n.saturating_sub(1) {
            // Can never fit: the ring is smaller than the frame.
            self.bump_stat(MPC, 1);
            self.rx_scratch = buf;
            self.cause_throttled(ICR_RXO, now);
            return RxOutcome::Dropped;
        }
        if needed > free {
            if !self.rx_stalled {
                self.rx_stalled = true;
                self.bump_stat(RNBC, 1);
            }
            self.rx_scratch = buf;
            return RxOutcome::NoRoom;
        }
        self.rx_stalled = false;

        // Checksum status (§3.2.9).
        let rxcsum = self.reg(RXCSUM);
        let mut errors = 0u8;
        if rxcsum & (RXCSUM_IPOFLD | RXCSUM_TUOFLD) == 0 {
            status |= RXD_STAT_IXSM;
        } else {
            let (ipv4, l4) = classify(&buf);
            if let (Some((s, e)), true) = (ipv4, rxcsum & RXCSUM_IPOFLD != 0) {
                status |= RXD_STAT_IPCS;
                if csum::fold(csum::add(0, &buf[s..e])) != 0xffff {
                    errors |= RXD_ERR_IPE;
                }
            }
            if l4 && csum_ok && rxcsum & RXCSUM_TUOFLD != 0 {
                status |= RXD_STAT_TCPCS;
            }
        }

        let mut head = self.reg(RDH);
        let chunks = buf.chunks(bsize);
        let count = chunks.len();
        for (i, chunk) in chunks.enumerate() {
            let daddr = GuestAddress(base + u64::from(head) * 16);
            let mut d = [0u8; 16];
            let mut err = errors;
            if mem.read_slice(&mut d[..8], daddr).is_err() {
                // The ring itself is outside guest memory: nothing can be written back.
                self.counters.dma_errors += 1;
                self.rx_scratch = buf;
                return RxOutcome::Dropped;
            }
            let baddr = u64::from_le_bytes(d[..8].try_into().unwrap());
            if mem.write_slice(chunk, GuestAddress(baddr)).is_err() {
                self.counters.dma_errors += 1;
                err |= RXD_ERR_RXE;
            }
            let last = i + 1 == count;
            let mut wb = [0u8; 8];
            wb[0..2].copy_from_slice(&(chunk.len() as u16).to_le_bytes());
            wb[4] = RXD_STAT_DD
                | if last {
                    RXD_STAT_EOP | status
                } else {
                    status & RXD_STAT_VP
                };
            wb[5] = if last { err } else { err & RXD_ERR_RXE };
            wb[6..8].copy_from_slice(&special.to_le_bytes());
            // Length first, then status with DD, so the driver never sees DD before the length.
            let ok = mem.write_slice(&wb[..4], GuestAddress(daddr.0 + 8)).is_ok()
                && mem
                    .write_slice(&wb[4..], GuestAddress(daddr.0 + 12))
                    .is_ok();
            if !ok {
                self.counters.dma_errors += 1;
            }
            head = (head + 1) % n;
            self.set_reg(RDH, head);
        }
        self.bump_stat(GPRC, 1);
        self.bump_stat(GORCL, buf.len() as u64);
        if dst == [0xff; 6] {
            self.bump_stat(BPRC, 1);
        } else if dst[0] & 1 != 0 {
            self.bump_stat(MPRC, 1);
        }
        self.rx_scratch = buf;

        let mut causes = 0;
        let left = free - needed;
        let thresh = n >> (1 + ((rctl >> RCTL_RDMTS_SHIFT) & 3));
        if left <= thresh && free > thresh {
            causes |= ICR_RXDMT0;
        }
        if self.reg(RDTR) & 0xffff == 0 {
            causes |= ICR_RXT0;
        } else {
            self.arm_rx_delay(now);
        }
        if causes != 0 {
            self.cause_throttled(causes, now);
        }
        RxOutcome::Delivered
    }
}
