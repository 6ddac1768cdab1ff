//! Transmit (8254x SDM §3.3): legacy descriptors (§3.3.3), the TCP/IP context descriptor
//! (§3.3.6) and data descriptors (§3.3.7), checksum offload (§3.3.4, §3.3.6) and TCP
//! segmentation (§3.5).
//!
//! TSO is done here, in the device: every segment gets a copy of the header with the IPv4 total
//! length / IPv6 payload length, IPv4 identification (+1 per segment) and checksum, TCP
//! sequence number and flags (PSH and FIN only on the last segment) or UDP length rewritten and
//! the TCP/UDP checksum completed, then goes to the back-end with an all-zero vnet header.
//! Handing the whole frame to the tap with a GSO vnet header would be cheaper per byte but
//! needs the header rewritten to what the host kernel expects (total length, pseudo-header sum
//! including the length); segmenting keeps the device independent of the back-end's offloads.

use std::io::IoSlice;
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress};

use super::csum::{self, get16, put16};
use super::regs::*;
use super::State;
use crate::net::{NetBackend, VNET_HDR_LEN};
use crate::virtio::GuestMemoryMmap;

// Descriptor command bits (byte 11; same positions in legacy CMD, DCMD and TUCMD for these).
pub const CMD_EOP: u8 = 1 << 0;
pub const CMD_IFCS: u8 = 1 << 1;
pub const CMD_IC: u8 = 1 << 2; // legacy: insert checksum
pub const DCMD_TSE: u8 = 1 << 2; // data descriptor: TCP segmentation enable
pub const CMD_RS: u8 = 1 << 3;
pub const CMD_DEXT: u8 = 1 << 5;
pub const CMD_VLE: u8 = 1 << 6;
pub const CMD_IDE: u8 = 1 << 7;
// TUCMD of the context descriptor.
pub const TUCMD_TCP: u8 = 1 << 0;
pub const TUCMD_IP: u8 = 1 << 1;
pub const TUCMD_TSE: u8 = 1 << 2;
// POPTS of the data descriptor.
pub const POPTS_IXSM: u8 = 1 << 0;
pub const POPTS_TXSM: u8 = 1 << 1;
/// Descriptor done, in the status byte (byte 12).
pub const STA_DD: u8 = 1 << 0;
pub const DTYP_CONTEXT: u32 = 0;
pub const DTYP_DATA: u32 = 1;

/// Largest packet assembled from descriptors (a 64 KiB TSO payload plus headers, with room):
/// more is dropped, so a chain without EOP cannot grow memory.
pub const MAX_TX_PACKET: usize = 128 * 1024;
/// Largest frame sent as is (no TSO).
pub const MAX_TX_FRAME: usize = 65535;
/// Most segments one TSO packet may produce (a 64 KiB payload at MSS 48 is 1366).
pub const MAX_TSO_SEGMENTS: usize = 2048;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;

/// The TCP/IP context (§3.3.6).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxContext {
    pub ipcss: u8,
    pub ipcso: u8,
    pub ipcse: u16,
    pub tucss: u8,
    pub tucso: u8,
    pub tucse: u16,
    pub paylen: u32,
    pub tucmd: u8,
    pub hdrlen: u8,
    pub mss: u16,
}

impl TxContext {
    fn parse(d: &[u8; 16]) -> Self {
        TxContext {
            ipcss: d[0],
            ipcso: d[1],
            ipcse: u16::from_le_bytes([d[2], d[3]]),
            tucss: d[4],
            tucso: d[5],
            tucse: u16::from_le_bytes([d[6], d[7]]),
            paylen: u32::from_le_bytes([d[8], d[9], d[10], d[11]]) & 0xf_ffff,
            tucmd: d[11],
            hdrlen: d[13],
            mss: u16::from_le_bytes([d[14], d[15]]),
        }
    }
}

/// The packet being assembled from descriptors.
#[derive(Debug, Default)]
pub struct TxState {
    pub ctx: TxContext,
    pub pkt: Vec<u8>,
    /// A descriptor of the current packet was seen (its first one fixed the options below).
    started: bool,
    /// Data descriptor options of the first descriptor: POPTS and TSE; None for legacy.
    ext: Option<(u8, bool)>,
    /// The packet is dropped at EOP (too long, unreadable buffer).
    drop: bool,
    /// Scratch for one TSO segment.
    seg: Vec<u8>,
}

impl TxState {
    pub fn reset(&mut self) {
        self.ctx = TxContext::default();
        self.end_packet();
    }

    fn end_packet(&mut self) {
        self.pkt.clear();
        self.started = false;
        self.ext = None;
        self.drop = false;
        // Do not keep a huge buffer around after one big packet.
        if self.pkt.capacity() > MAX_TX_PACKET {
            self.pkt = Vec::new();
        }
    }
}

/// Where checksum `what` of `frame[start..end]` goes, checked against the frame.
fn insert_checksum(frame: &mut [u8], start: usize, end: usize, at: usize, extra: u64) -> bool {
    if start >= end || end > frame.len() || at.saturating_add(2) > frame.len() {
        return false;
    }
    let c = !csum::fold(csum::add(extra, &frame[start..end]));
    put16(frame, at, c)
}

/// End (exclusive) of a checksum region whose inclusive end is `cse` (0 = end of packet).
fn region_end(cse: u16, len: usize) -> usize {
    if cse == 0 {
        len
    } else {
        (usize::from(cse) + 1).min(len)
    }
}

impl State {
    /// Serves the transmit ring: at most `budget` descriptors. Returns true if descriptors
    /// are left (call again).
    pub(crate) fn process_tx(
        &mut self,
        mem: &GuestMemoryMmap,
        backend: &mut dyn NetBackend,
        now: Instant,
        budget: usize,
    ) -> bool {
        if self.reg(TCTL) & TCTL_EN == 0 || !self.bus_master() {
            return false;
        }
        let Some((base, n)) = self.ring(TDBAL, TDBAH, TDLEN) else {
            return false;
        };
        let mut head = self.reg(TDH);
        let tail = self.reg(TDT);
        if head >= n || tail >= n {
            self.counters.bad_ring += 1;
            if self.warn.first(0x1_0000 | u64::from(TDH)) {
                log::warn!("e1000: TX head {head} or tail {tail} outside a ring of {n}");
            }
            return false;
        }
        let mut done = 0;
        let mut written_back = false;
        let mut delayed = false;
        while head != tail && done < budget {
            let addr = GuestAddress(base + u64::from(head) * 16);
            let mut d = [0u8; 16];
            if mem.read_slice(&mut d, addr).is_err() {
                self.counters.dma_errors += 1;
                if self.warn.first(0x2_0000) {
                    log::warn!("e1000: TX descriptor at {:#x} outside guest memory", addr.0);
                }
                return false;
            }
            let cmd = d[11];
            self.tx_descriptor(mem, backend, &d);
            if cmd & CMD_RS != 0 {
                // §3.3.3.2: write back DD in the status byte.
                let sta = d[12] | STA_DD;
                if mem.write_slice(&[sta], GuestAddress(addr.0 + 12)).is_err() {
                    self.counters.dma_errors += 1;
                }
                written_back = true;
                if cmd & CMD_IDE != 0 && self.reg(TIDV) != 0 {
                    delayed = true;
                }
            }
            head = (head + 1) % n;
            self.set_reg(TDH, head);
            done += 1;
        }
        let mut causes = 0;
        if written_back {
            if delayed {
                self.arm_tx_delay(now);
            } else {
                causes |= ICR_TXDW;
            }
        }
        if head == tail {
            causes |= ICR_TXQE;
        }
        if causes != 0 {
            self.cause_throttled(causes, now);
        }
        head != tail
    }

    fn tx_descriptor(&mut self, mem: &GuestMemoryMmap, backend: &mut dyn NetBackend, d: &[u8; 16]) {
        let cmd = d[11];
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
        let special = u16::from_le_bytes([d[14], d[15]]);
        if cmd & CMD_DEXT == 0 {
            // Legacy (§3.3.3).
            let len = usize::from(u16::from_le_bytes([d[8], d[9]]));
            if !self.tx.started {
                self.tx.started = true;
                self.tx.ext = None;
            }
            self.tx_append(mem, addr, len);
            if cmd & CMD_EOP != 0 {
                let (cso, css) = (usize::from(d[10]), usize::from(d[13]));
                let mut pkt = std::mem::take(&mut self.tx.pkt);
                if !self.tx.drop && cmd & CMD_IC != 0 {
                    let len = pkt.len();
                    // §3.3.3.1: from CSS to the end of the packet, stored at CSO.
                    if !insert_checksum(&mut pkt, css, len, cso, 0) {
                        self.counters.tx_bad_offload += 1;
                    }
                }
                self.tx_finish(backend, pkt, cmd, special);
            }
            return;
        }
        let dword = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
        match (dword >> 20) & 0xf {
            DTYP_CONTEXT => self.tx.ctx = TxContext::parse(d),
            DTYP_DATA => {
                let len = (dword & 0xf_ffff) as usize;
                if !self.tx.started {
                    self.tx.started = true;
                    self.tx.ext = Some((d[13], cmd & DCMD_TSE != 0));
                }
                self.tx_append(mem, addr, len);
                if cmd & CMD_EOP != 0 {
                    let pkt = std::mem::take(&mut self.tx.pkt);
                    self.tx_finish(backend, pkt, cmd, special);
                }
            }
            _ => {
                self.counters.tx_bad_desc += 1;
                if self.warn.first(0x3_0000) {
                    log::warn!(
                        "e1000: TX descriptor of unknown type {:#x}",
                        dword >> 20 & 0xf
                    );
                }
            }
        }
    }

    fn tx_append(&mut self, mem: &GuestMemoryMmap, addr: u64, len: usize) {
        if self.tx.drop || len == 0 {
            return;
        }
        let old = self.tx.pkt.len();
        if old + len > MAX_TX_PACKET {
            self.tx.drop = true;
            self.counters.tx_too_long += 1;
            return;
        }
        self.tx.pkt.resize(old + len, 0);
        if mem
            .read_slice(&mut self.tx.pkt[old..], GuestAddress(addr))
            .is_err()
        {
            self.tx.drop = true;
            self.counters.dma_errors += 1;
        }
    }

    /// EOP: offloads, then send. `pkt` was taken out of `self.tx.pkt`; its buffer goes back.
    fn tx_finish(&mut self, backend: &mut dyn NetBackend, mut pkt: Vec<u8>, cmd: u8, special: u16) {
        let vlan = (cmd & CMD_VLE != 0 && self.reg(CTRL) & CTRL_VME != 0).then_some(special);
        if !self.tx.drop {
            match self.tx.ext {
                Some((popts, true)) => self.tso(backend, &pkt, popts, vlan),
                Some((popts, false)) => {
                    self.offload_checksums(&mut pkt, popts);
                    self.tx_send(backend, &pkt, vlan);
                }
                None => self.tx_send(backend, &pkt, vlan),
            }
        } else {
            self.counters.tx_dropped += 1;
        }
        self.tx.pkt = pkt;
        self.tx.end_packet();
    }

    /// Checksum offload of a non-TSO packet (§3.3.6: IPCSS/IPCSO/IPCSE, TUCSS/TUCSO/TUCSE).
    fn offload_checksums(&mut self, pkt: &mut [u8], popts: u8) {
        let c = self.tx.ctx;
        let len = pkt.len();
        if popts & POPTS_IXSM != 0 {
            let (s, at) = (usize::from(c.ipcss), usize::from(c.ipcso));
            let ok = put16(pkt, at, 0) && insert_checksum(pkt, s, region_end(c.ipcse, len), at, 0);
            if !ok {
                self.counters.tx_bad_offload += 1;
            }
        }
        if popts & POPTS_TXSM != 0 {
            let (s, at) = (usize::from(c.tucss), usize::from(c.tucso));
            if !insert_checksum(pkt, s, region_end(c.tucse, len), at, 0) {
                self.counters.tx_bad_offload += 1;
            } else if c.tucmd & TUCMD_TCP == 0 && get16(pkt, at) == Some(0) {
                // UDP: a computed 0 is sent as 0xffff (0 means "no checksum").
                put16(pkt, at, 0xffff);
            }
        }
    }

    /// TCP segmentation (§3.5) of `pkt` per the current context.
    fn tso(&mut self, backend: &mut dyn NetBackend, pkt: &[u8], popts: u8, vlan: Option<u16>) {
        let c = self.tx.ctx;
        let hdrlen = usize::from(c.hdrlen);
        let mss = usize::from(c.mss);
        let (ipcss, ipcso, tucss, tucso) = (
            usize::from(c.ipcss),
            usize::from(c.ipcso),
            usize::from(c.tucss),
            usize::from(c.tucso),
        );
        let ipv4 = c.tucmd & TUCMD_IP != 0;
        let tcp = c.tucmd & TUCMD_TCP != 0;
        let l4_min = if tcp { 20 } else { 8 };
        let l3_min = if ipv4 { 20 } else { 40 };
        let payload = pkt.len().saturating_sub(hdrlen);
        let valid = hdrlen >= 14
            && hdrlen < pkt.len()
            && mss > 0
            && ipcss + l3_min <= tucss
            && tucss + l4_min <= hdrlen
            && tucso + 2 <= hdrlen
            && (!ipv4 || ipcso + 2 <= hdrlen)
            && payload.div_ceil(mss.max(1)) <= MAX_TSO_SEGMENTS;
        if !valid {
            self.counters.tx_bad_tso += 1;
            self.counters.tx_dropped += 1;
            self.bump_stat(TSCTFC, 1);
            if self.warn.first(0x4_0000) {
                log::warn!(
                    "e1000: TSO context rejected (HDRLEN {hdrlen}, MSS {mss}, packet {} bytes)",
                    pkt.len()
                );
            }
            return;
        }
        let hdr = &pkt[..hdrlen];
        let ip_id = get16(hdr, ipcss + 4).unwrap_or(0);
        let seq = u32::from_be_bytes(hdr[tucss + 4..tucss + 8].try_into().unwrap());
        let nseg = payload.div_ceil(mss);
        let mut seg = std::mem::take(&mut self.tx.seg);
        for i in 0..nseg {
            let off = i * mss;
            let chunk = &pkt[hdrlen + off..hdrlen + (off + mss).min(payload)];
            let last = i + 1 == nseg;
            seg.clear();
            seg.extend_from_slice(hdr);
            seg.extend_from_slice(chunk);
            let len = seg.len();
            if ipv4 {
                put16(&mut seg, ipcss + 2, (len - ipcss) as u16);
                put16(&mut seg, ipcss + 4, ip_id.wrapping_add(i as u16));
                if popts & POPTS_IXSM != 0 {
                    put16(&mut seg, ipcso, 0);
                    let end = region_end(c.ipcse, tucss);
                    insert_checksum(&mut seg, ipcss, end, ipcso, 0);
                }
            } else {
                put16(&mut seg, ipcss + 4, (len - ipcss - 40) as u16);
            }
            if tcp {
                let s = seq.wrapping_add(off as u32).to_be_bytes();
                seg[tucss + 4..tucss + 8].copy_from_slice(&s);
                if !last {
                    seg[tucss + 13] &= !(TCP_FIN | TCP_PSH);
                }
            } else {
                put16(&mut seg, tucss + 4, (len - tucss) as u16);
            }
            if popts & POPTS_TXSM != 0 {
                // The driver left the pseudo-header sum without the length in the checksum
                // field (§3.5.2); the length of this segment's L4 part is added here.
                insert_checksum(&mut seg, tucss, len, tucso, (len - tucss) as u64);
            }
            self.tx_send(backend, &seg, vlan);
        }
        self.tx.seg = seg;
        self.bump_stat(TSCTC, 1);
    }

    fn tx_send(&mut self, backend: &mut dyn NetBackend, frame: &[u8], vlan: Option<u16>) {
        if frame.len() < 14 || frame.len() > MAX_TX_FRAME {
            self.counters.tx_dropped += 1;
            return;
        }
        let hdr = [0u8; VNET_HDR_LEN];
        let res = match vlan {
            Some(tci) => {
                let tag = [
                    (self.reg(VET) >> 8) as u8,
                    self.reg(VET) as u8,
                    (tci >> 8) as u8,
                    tci as u8,
                ];
                backend.send(&[
                    IoSlice::new(&hdr),
                    IoSlice::new(&frame[..12]),
                    IoSlice::new(&tag),
                    IoSlice::new(&frame[12..]),
                ])
            }
            None => backend.send(&[IoSlice::new(&hdr), IoSlice::new(frame)]),
        };
        match res {
            Ok(_) => {
                let octets = frame.len() as u64 + 4 + if vlan.is_some() { 4 } else { 0 };
                self.bump_stat(TPT, 1);
                self.bump_stat(GPTC, 1);
                self.bump_stat(GOTCL, octets);
                self.bump_stat(TOTL, octets);
                if frame[0] & 1 != 0 {
                    if frame[..6] == [0xff; 6] {
                        self.bump_stat(BPTC, 1);
                    } else {
                        self.bump_stat(MPTC, 1);
                    }
                }
            }
            Err(e) => {
                self.counters.tx_errors += 1;
                if self.warn.first(0x5_0000) {
                    log::warn!("e1000: back-end send failed: {e}");
                }
            }
        }
    }
}
