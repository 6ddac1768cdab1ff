//! The 256-byte type-0 PCI configuration space header (PCI Local Bus Specification 3.0, §6).
//!
//! Every byte has a write mask (bits the guest may change; everything else is read-only) and a
//! write-1-to-clear mask (the error bits of the status register, §6.2.3). Accesses of any
//! offset and length are accepted: bytes outside the 256-byte space read as 0 and ignore
//! writes, as do all registers this model does not implement (§6.1: "read-only, return 0").
//!
//! BARs (§6.2.5.1) are modelled through the write masks: the address bits below the BAR's size
//! are read-only zero, so the sizing sequence (write all ones, read back) returns the size mask
//! without special cases. A write that moves a BAR is reported to the caller as a
//! [`BarReprogram`], so it can move its MMIO/PIO dispatch and ioeventfds.

use thiserror::Error;

/// Size of the conventional configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;

// Register offsets of the type-0 header (PCI 3.0 §6.1, figure 6-1).
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
/// Programming interface; sub-class at 0x0a, base class at 0x0b.
pub const CLASS_CODE: usize = 0x09;
pub const CACHE_LINE_SIZE: usize = 0x0c;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const EXPANSION_ROM: usize = 0x30;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;
/// First byte after the header: capabilities live from here on (§6.7).
pub const CAPABILITIES_START: usize = 0x40;

// Command register bits (§6.2.2).
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
pub const COMMAND_SERR_ENABLE: u16 = 1 << 8;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

// Status register bits (§6.2.3).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// Master data parity error, signaled target abort, received target abort, received master
/// abort, signaled system error, detected parity error: all write-1-to-clear.
pub const STATUS_W1C: u16 = 1 << 8 | 1 << 11 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15;

// BAR low bits (§6.2.5.1).
const BAR_IO_SPACE: u32 = 1 << 0;
const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
const BAR_PREFETCHABLE: u32 = 1 << 3;
const BAR_MEM_FLAGS: u32 = 0xf;
const BAR_IO_FLAGS: u32 = 0x3;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// Memory space, anywhere in the low 4 GiB (BAR type 00b).
    Mmio32,
    /// Memory space, 64-bit address (BAR type 10b); takes two BAR slots.
    Mmio64,
    /// I/O space.
    Io,
}

impl BarKind {
    /// True for the memory kinds.
    pub fn is_mmio(self) -> bool {
        !matches!(self, BarKind::Io)
    }
}

/// An implemented BAR and its current (decoded) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBar {
    pub index: usize,
    pub kind: BarKind,
    pub prefetchable: bool,
    pub size: u64,
    pub addr: u64,
}

/// The guest moved a BAR from `old` to `new`: dispatch for `[old, old + size)` must move to
/// `[new, new + size)` (and ioeventfds inside it with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarReprogram {
    pub index: usize,
    pub kind: BarKind,
    pub size: u64,
    pub old: u64,
    pub new: u64,
}

/// Errors in setting up a configuration space (VMM bugs, not guest actions).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PciConfigError {
    #[error("BAR index {0} out of range (a 64-bit BAR needs two slots)")]
    BarIndex(usize),
    #[error("BAR {0} is already in use")]
    BarInUse(usize),
    #[error("BAR {index}: invalid size {size:#x} for {kind:?}")]
    BarSize {
        index: usize,
        kind: BarKind,
        size: u64,
    },
    #[error("BAR {0} is not implemented")]
    NoSuchBar(usize),
    #[error("BAR {index}: address {addr:#x} is not aligned to its size or out of range")]
    BarAddress { index: usize, addr: u64 },
    #[error("I/O BARs cannot be prefetchable")]
    PrefetchableIo,
    #[error("capability of {0} bytes is too short or its mask has another length")]
    CapabilityLength(usize),
    #[error("no room for a capability of {0} bytes")]
    CapabilitySpace(usize),
}

#[derive(Debug, Clone, Copy)]
struct BarInfo {
    kind: BarKind,
    prefetchable: bool,
    size: u64,
    /// Last address reported (or set by the VMM): what dispatch currently uses.
    addr: u64,
}

#[derive(Debug, Clone, Copy)]
enum BarSlot {
    Unused,
    Bar(BarInfo),
    /// Upper half of the 64-bit BAR in the slot below.
    Upper,
}

/// The identity of a function: fixed fields of the header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision_id: u8,
    /// 24 bits: base class, sub-class, programming interface (e.g. 0x060000 host bridge).
    pub class_code: u32,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    /// 0 = no INTx, 1..=4 = INTA#..INTD# (§6.2.4).
    pub interrupt_pin: u8,
}

/// A type-0 configuration space.
#[derive(Debug, Clone)]
pub struct PciConfigSpace {
    regs: [u8; CONFIG_SPACE_SIZE],
    wmask: [u8; CONFIG_SPACE_SIZE],
    w1c: [u8; CONFIG_SPACE_SIZE],
    bars: [BarSlot; NUM_BARS],
    /// Per BAR register: the last guest write to it was all ones (a sizing probe).
    sizing: [bool; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfigSpace {
    /// A header with `h`'s identity, no BARs and no capabilities; command register 0.
    pub fn new(h: &PciHeader) -> Self {
        let mut c = PciConfigSpace {
            regs: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            w1c: [0; CONFIG_SPACE_SIZE],
            bars: [BarSlot::Unused; NUM_BARS],
            sizing: [false; NUM_BARS],
            last_cap: None,
            next_cap: CAPABILITIES_START,
        };
        c.set_raw(VENDOR_ID, &h.vendor_id.to_le_bytes());
        c.set_raw(DEVICE_ID, &h.device_id.to_le_bytes());
        c.regs[REVISION_ID] = h.revision_id;
        c.set_raw(CLASS_CODE, &h.class_code.to_le_bytes()[..3]);
        c.regs[HEADER_TYPE] = 0; // type 0, single function
        c.set_raw(SUBSYSTEM_VENDOR_ID, &h.subsystem_vendor_id.to_le_bytes());
        c.set_raw(SUBSYSTEM_ID, &h.subsystem_id.to_le_bytes());
        c.regs[INTERRUPT_PIN] = if h.interrupt_pin <= 4 {
            h.interrupt_pin
        } else {
            0
        };

        let cmd = COMMAND_BUS_MASTER
            | COMMAND_PARITY_ERROR_RESPONSE
            | COMMAND_SERR_ENABLE
            | COMMAND_INTX_DISABLE;
        c.wmask[COMMAND..COMMAND + 2].copy_from_slice(&cmd.to_le_bytes());
        c.w1c[STATUS..STATUS + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        c.wmask[CACHE_LINE_SIZE] = 0xff;
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the header read as 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = index(offset, i).map_or(0, |o| self.regs[o]);
        }
    }

    /// A guest write of `data` at `offset`, through the write masks. Returns the BARs it moved.
    ///
    /// A write of all ones to a BAR register is the sizing probe (§6.2.5.1), not a move: it
    /// changes what the register reads back but not where the BAR decodes, until a real address
    /// is written to it (to both halves of a 64-bit BAR).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        // Per BAR register: touched by this write, and whether every byte written to it was 0xff.
        let mut touched = [false; NUM_BARS];
        let mut all_ones = [true; NUM_BARS];
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = index(offset, i) else { break };
            self.regs[o] = (self.regs[o] & !self.wmask[o]) | (v & self.wmask[o]);
            self.regs[o] &= !(v & self.w1c[o]);
            if (BAR0..BAR0 + 4 * NUM_BARS).contains(&o) {
                touched[(o - BAR0) / 4] = true;
                all_ones[(o - BAR0) / 4] &= v == 0xff;
            }
        }
        let mut touched_bars = [false; NUM_BARS];
        for reg in 0..NUM_BARS {
            if touched[reg] {
                self.sizing[reg] = all_ones[reg];
                let bar = if matches!(self.bars[reg], BarSlot::Upper) {
                    reg - 1
                } else {
                    reg
                };
                touched_bars[bar] = true;
            }
        }
        let mut moved = Vec::new();
        for (slot, _) in touched_bars.iter().enumerate().filter(|(_, &t)| t) {
            if let BarSlot::Bar(info) = self.bars[slot] {
                // While either half of the BAR holds the sizing probe, its value is no address
                // (Linux sizes both halves of a 64-bit BAR before restoring either).
                if self.sizing[slot] || (info.kind == BarKind::Mmio64 && self.sizing[slot + 1]) {
                    continue;
                }
                let new = self.decode_bar_address(slot, &info);
                if new != info.addr {
                    moved.push(BarReprogram {
                        index: slot,
                        kind: info.kind,
                        size: info.size,
                        old: info.addr,
                        new,
                    });
                    self.bars[slot] = BarSlot::Bar(BarInfo { addr: new, ..info });
                }
            }
        }
        moved
    }

    /// Sets bytes bypassing the write masks: for the device model's own registers (capability
    /// contents, status bits). Bytes past the header are dropped.
    pub fn set_raw(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            if let Some(b) = offset.checked_add(i).and_then(|o| self.regs.get_mut(o)) {
                *b = v;
            }
        }
    }

    pub fn read_u8(&self, offset: usize) -> u8 {
        self.regs.get(offset).copied().unwrap_or(0)
    }

    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset as u64, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset as u64, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Memory space decoding enabled (command bit 1).
    pub fn mem_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY_SPACE != 0
    }

    /// I/O space decoding enabled (command bit 0).
    pub fn io_enabled(&self) -> bool {
        self.command() & COMMAND_IO_SPACE != 0
    }

    /// INTx assertion disabled by the driver (command bit 10).
    pub fn intx_disabled(&self) -> bool {
        self.command() & COMMAND_INTX_DISABLE != 0
    }

    /// Sets or clears the read-only Interrupt Status bit (status bit 3).
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let s = self.read_u16(STATUS);
        let s = if asserted {
            s | STATUS_INTERRUPT
        } else {
            s & !STATUS_INTERRUPT
        };
        self.set_raw(STATUS, &s.to_le_bytes());
    }

    /// Implements BAR `index` (PCI 3.0 §6.2.5.1). Memory BARs are at least 16 bytes, I/O BARs
    /// 4 to 256 bytes; sizes are powers of two. A 64-bit BAR also takes slot `index + 1`.
    /// The BAR starts at address 0 until [`set_bar_address`](Self::set_bar_address).
    pub fn add_bar(
        &mut self,
        index: usize,
        size: u64,
        kind: BarKind,
        prefetchable: bool,
    ) -> Result<(), PciConfigError> {
        let slots = if kind == BarKind::Mmio64 { 2 } else { 1 };
        if index + slots > NUM_BARS {
            return Err(PciConfigError::BarIndex(index));
        }
        for s in index..index + slots {
            if !matches!(self.bars[s], BarSlot::Unused) {
                return Err(PciConfigError::BarInUse(s));
            }
        }
        let (min, max) = match kind {
            BarKind::Io => (4, 256),
            BarKind::Mmio32 => (16, 1 << 31),
            BarKind::Mmio64 => (16, 1 << 63),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciConfigError::BarSize { index, kind, size });
        }
        if prefetchable && kind == BarKind::Io {
            return Err(PciConfigError::PrefetchableIo);
        }

        let size_mask = !(size - 1);
        let (flags, lo_mask, cmd_bit) = match kind {
            BarKind::Io => (
                BAR_IO_SPACE,
                size_mask as u32 & !BAR_IO_FLAGS,
                COMMAND_IO_SPACE,
            ),
            BarKind::Mmio32 | BarKind::Mmio64 => {
                let mut f = if kind == BarKind::Mmio64 {
                    BAR_MEM_TYPE_64
                } else {
                    0
                };
                if prefetchable {
                    f |= BAR_PREFETCHABLE;
                }
                (f, size_mask as u32 & !BAR_MEM_FLAGS, COMMAND_MEMORY_SPACE)
            }
        };
        let reg = BAR0 + 4 * index;
        self.set_raw(reg, &flags.to_le_bytes());
        self.wmask[reg..reg + 4].copy_from_slice(&lo_mask.to_le_bytes());
        if kind == BarKind::Mmio64 {
            self.set_raw(reg + 4, &[0; 4]);
            let hi_mask = (size_mask >> 32) as u32;
            self.wmask[reg + 4..reg + 8].copy_from_slice(&hi_mask.to_le_bytes());
            self.bars[index + 1] = BarSlot::Upper;
        }
        self.bars[index] = BarSlot::Bar(BarInfo {
            kind,
            prefetchable,
            size,
            addr: 0,
        });
        self.wmask[COMMAND] |= cmd_bit as u8;
        Ok(())
    }

    /// Places BAR `index` at `addr` (firmware-style assignment by the VMM, not reported as a
    /// move). `addr` must be aligned to the BAR's size and the BAR must fit its address space.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<(), PciConfigError> {
        let Some(BarSlot::Bar(info)) = self.bars.get(index).copied() else {
            return Err(PciConfigError::NoSuchBar(index));
        };
        let limit: u128 = if info.kind == BarKind::Mmio64 {
            1 << 64
        } else {
            1 << 32
        };
        if !addr.is_multiple_of(info.size) || u128::from(addr) + u128::from(info.size) > limit {
            return Err(PciConfigError::BarAddress { index, addr });
        }
        let reg = BAR0 + 4 * index;
        let flags = self.read_u32(reg)
            & if info.kind == BarKind::Io {
                BAR_IO_FLAGS
            } else {
                BAR_MEM_FLAGS
            };
        self.set_raw(reg, &((addr as u32) | flags).to_le_bytes());
        if info.kind == BarKind::Mmio64 {
            self.set_raw(reg + 4, &((addr >> 32) as u32).to_le_bytes());
        }
        self.sizing[index] = false;
        if info.kind == BarKind::Mmio64 {
            self.sizing[index + 1] = false;
        }
        self.bars[index] = BarSlot::Bar(BarInfo { addr, ..info });
        Ok(())
    }

    /// BAR `index` if implemented (an upper half of a 64-bit BAR is not a BAR).
    pub fn bar(&self, index: usize) -> Option<PciBar> {
        match self.bars.get(index)? {
            BarSlot::Bar(i) => Some(PciBar {
                index,
                kind: i.kind,
                prefetchable: i.prefetchable,
                size: i.size,
                addr: i.addr,
            }),
            _ => None,
        }
    }

    /// All implemented BARs.
    pub fn bars(&self) -> Vec<PciBar> {
        (0..NUM_BARS).filter_map(|i| self.bar(i)).collect()
    }

    /// Where BAR `index` decodes (the last address the guest or the VMM programmed).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        self.bar(index).map(|b| b.addr)
    }

    pub fn bar_size(&self, index: usize) -> Option<u64> {
        self.bar(index).map(|b| b.size)
    }

    /// Adds a read-only capability (PCI 3.0 §6.7). `body[0]` is the capability ID; `body[1]`
    /// (the next pointer) is filled in. Returns its offset in configuration space.
    pub fn add_capability(&mut self, body: &[u8]) -> Result<usize, PciConfigError> {
        self.add_capability_with_mask(body, &vec![0; body.len()])
    }

    /// Adds a capability whose bits set in `write_mask` the guest may change (the ID and next
    /// pointer always stay read-only).
    pub fn add_capability_with_mask(
        &mut self,
        body: &[u8],
        write_mask: &[u8],
    ) -> Result<usize, PciConfigError> {
        if body.len() < 2 || write_mask.len() != body.len() {
            return Err(PciConfigError::CapabilityLength(body.len()));
        }
        let off = self.next_cap;
        if off + body.len() > CONFIG_SPACE_SIZE {
            return Err(PciConfigError::CapabilitySpace(body.len()));
        }
        self.set_raw(off, body);
        self.regs[off + 1] = 0;
        self.wmask[off..off + body.len()].copy_from_slice(write_mask);
        self.wmask[off] = 0;
        self.wmask[off + 1] = 0;
        match self.last_cap {
            Some(prev) => self.regs[prev + 1] = off as u8,
            None => self.regs[CAPABILITIES_POINTER] = off as u8,
        }
        self.last_cap = Some(off);
        // Capabilities are DWORD aligned (§6.7).
        self.next_cap = (off + body.len() + 3) & !3;
        let status = self.read_u16(STATUS) | STATUS_CAPABILITIES_LIST;
        self.set_raw(STATUS, &status.to_le_bytes());
        Ok(off)
    }

    fn decode_bar_address(&self, slot: usize, info: &BarInfo) -> u64 {
        let reg = BAR0 + 4 * slot;
        let lo = self.read_u32(reg);
        match info.kind {
            BarKind::Io => u64::from(lo & !BAR_IO_FLAGS),
            BarKind::Mmio32 => u64::from(lo & !BAR_MEM_FLAGS),
            BarKind::Mmio64 => {
                u64::from(lo & !BAR_MEM_FLAGS) | u64::from(self.read_u32(reg + 4)) << 32
            }
        }
    }
}

/// `offset + i` as an index into the configuration space, if it is inside it.
fn index(offset: u64, i: usize) -> Option<usize> {
    let o = offset.checked_add(i as u64)?;
    (o < CONFIG_SPACE_SIZE as u64).then_some(o as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision_id: 1,
            class_code: 0x018000,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
            interrupt_pin: 1,
        }
    }

    fn w32(c: &mut PciConfigSpace, off: usize, v: u32) -> Vec<BarReprogram> {
        c.write(off as u64, &v.to_le_bytes())
    }

    #[test]
    fn identity_registers_are_read_only() {
        let mut c = PciConfigSpace::new(&header());
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        assert_eq!(c.read_u32(0x08), 0x0180_0001);
        assert_eq!(c.read_u32(0x2c), 0x0040_1af4);
        assert_eq!(c.read_u8(HEADER_TYPE), 0);
        assert_eq!(c.read_u8(INTERRUPT_PIN), 1);
        for off in [0usize, 0x08, 0x0c, 0x2c, 0x3c] {
            let before = c.read_u32(off);
            w32(&mut c, off, 0xffff_ffff);
            let after = c.read_u32(off);
            if off == 0x0c {
                // Cache line size is read/write, latency timer, header type and BIST are not.
                assert_eq!(after, before | 0xff);
            } else if off == 0x3c {
                // Interrupt line is read/write, pin, min_gnt and max_lat are not.
                assert_eq!(after, (before & !0xff) | 0xff);
            } else {
                assert_eq!(after, before, "{off:#x}");
            }
        }
        // Expansion ROM: not implemented, sizing reads 0 (no ROM).
        w32(&mut c, EXPANSION_ROM, 0xffff_ffff);
        assert_eq!(c.read_u32(EXPANSION_ROM), 0);
    }

    #[test]
    fn bad_interrupt_pin_becomes_none() {
        let c = PciConfigSpace::new(&PciHeader {
            interrupt_pin: 9,
            ..header()
        });
        assert_eq!(c.read_u8(INTERRUPT_PIN), 0);
    }

    #[test]
    fn command_register_mask_follows_bars() {
        let mut c = PciConfigSpace::new(&header());
        c.write(COMMAND as u64, &0xffffu16.to_le_bytes());
        // No BARs: IO and MEM hardwired to 0.
        assert_eq!(
            c.command(),
            COMMAND_BUS_MASTER
                | COMMAND_PARITY_ERROR_RESPONSE
                | COMMAND_SERR_ENABLE
                | COMMAND_INTX_DISABLE
        );
        assert!(!c.mem_enabled() && !c.io_enabled() && c.intx_disabled());
        c.add_bar(0, 0x1000, BarKind::Mmio32, false).unwrap();
        c.write(COMMAND as u64, &[0x03]);
        assert!(c.mem_enabled() && !c.io_enabled());
        c.add_bar(1, 0x20, BarKind::Io, false).unwrap();
        c.write(COMMAND as u64, &[0x03]);
        assert!(c.mem_enabled() && c.io_enabled());
        c.write(COMMAND as u64, &[0]);
        assert!(!c.mem_enabled() && !c.io_enabled());
    }

    #[test]
    fn status_register_w1c_and_read_only_bits() {
        let mut c = PciConfigSpace::new(&header());
        c.add_capability(&[0x09, 0, 0, 0]).unwrap();
        c.set_raw(
            STATUS,
            &(STATUS_W1C | STATUS_CAPABILITIES_LIST).to_le_bytes(),
        );
        // Writing zeros changes nothing.
        c.write(STATUS as u64, &[0, 0]);
        assert_eq!(c.read_u16(STATUS), STATUS_W1C | STATUS_CAPABILITIES_LIST);
        // Writing 1 to bit 15 clears only bit 15; bit 4 and the interrupt bit are read-only.
        c.set_interrupt_status(true);
        c.write(STATUS as u64, &(0x8000u16 | 0x18).to_le_bytes());
        assert_eq!(
            c.read_u16(STATUS),
            (STATUS_W1C & !0x8000) | STATUS_CAPABILITIES_LIST | STATUS_INTERRUPT
        );
        c.write(STATUS as u64, &0xffffu16.to_le_bytes());
        assert_eq!(
            c.read_u16(STATUS),
            STATUS_CAPABILITIES_LIST | STATUS_INTERRUPT
        );
        c.set_interrupt_status(false);
        assert_eq!(c.read_u16(STATUS), STATUS_CAPABILITIES_LIST);
        // A dword write at the command register reaches status too.
        c.set_raw(
            STATUS,
            &(STATUS_W1C | STATUS_CAPABILITIES_LIST).to_le_bytes(),
        );
        w32(&mut c, COMMAND, 0x4000_0004);
        assert_eq!(c.command(), COMMAND_BUS_MASTER);
        assert_eq!(
            c.read_u16(STATUS),
            (STATUS_W1C & !0x4000) | STATUS_CAPABILITIES_LIST
        );
    }

    #[test]
    fn bar32_sizing_and_relocation() {
        let mut c = PciConfigSpace::new(&header());
        c.add_bar(0, 0x4000, BarKind::Mmio32, false).unwrap();
        c.set_bar_address(0, 0xc000_4000).unwrap();
        assert_eq!(c.read_u32(BAR0), 0xc000_4000);
        assert_eq!(c.bar_address(0), Some(0xc000_4000));

        // Sizing: not a move; reads back the size mask.
        assert!(w32(&mut c, BAR0, 0xffff_ffff).is_empty());
        assert_eq!(c.read_u32(BAR0), 0xffff_c000);
        assert_eq!(c.bar_address(0), Some(0xc000_4000));
        // Restoring the old value is not a move either.
        assert!(w32(&mut c, BAR0, 0xc000_4000).is_empty());

        // Low bits of a new address are dropped (size alignment, flags read-only).
        let moved = w32(&mut c, BAR0, 0xd000_1fff);
        assert_eq!(
            moved,
            vec![BarReprogram {
                index: 0,
                kind: BarKind::Mmio32,
                size: 0x4000,
                old: 0xc000_4000,
                new: 0xd000_0000
            }]
        );
        assert_eq!(c.read_u32(BAR0), 0xd000_0000);
        assert_eq!(c.bar_address(0), Some(0xd000_0000));
        // Byte writes move it too.
        let moved = c.write(BAR0 as u64 + 3, &[0xe0]);
        assert_eq!(moved[0].old, 0xd000_0000);
        assert_eq!(moved[0].new, 0xe000_0000);
    }

    #[test]
    fn bar32_prefetchable_flag() {
        let mut c = PciConfigSpace::new(&header());
        c.add_bar(2, 0x10, BarKind::Mmio32, true).unwrap();
        w32(&mut c, BAR0 + 8, 0xffff_ffff);
        assert_eq!(c.read_u32(BAR0 + 8), 0xffff_fff8);
    }

    #[test]
    fn bar64_sizing_and_relocation() {
        let mut c = PciConfigSpace::new(&header());
        c.add_bar(2, 0x4000, BarKind::Mmio64, false).unwrap();
        c.set_bar_address(2, 0xc000_0000).unwrap();
        assert_eq!(c.read_u32(BAR0 + 8), 0xc000_0004);
        assert_eq!(c.read_u32(BAR0 + 12), 0);
        assert!(c.bar(3).is_none());

        assert!(w32(&mut c, BAR0 + 8, 0xffff_ffff).is_empty());
        assert!(w32(&mut c, BAR0 + 12, 0xffff_ffff).is_empty());
        assert_eq!(c.read_u32(BAR0 + 8), 0xffff_c004);
        assert_eq!(c.read_u32(BAR0 + 12), 0xffff_ffff);
        assert!(w32(&mut c, BAR0 + 8, 0xc000_0000).is_empty());
        assert!(w32(&mut c, BAR0 + 12, 0).is_empty());
        assert_eq!(c.bar_address(2), Some(0xc000_0000));

        // Move above 4 GiB: low half, then high half, two moves.
        let m1 = w32(&mut c, BAR0 + 8, 0x8000_0000);
        let m2 = w32(&mut c, BAR0 + 12, 0x1);
        assert_eq!((m1[0].old, m1[0].new), (0xc000_0000, 0x8000_0000));
        assert_eq!((m2[0].old, m2[0].new), (0x8000_0000, 0x1_8000_0000));
        assert_eq!(m2[0].index, 2);
        assert_eq!(c.bar_address(2), Some(0x1_8000_0000));
        // A qword write at once is one move.
        let m = c.write(BAR0 as u64 + 8, &0x2_0000_0000u64.to_le_bytes());
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].new, 0x2_0000_0000);
    }

    #[test]
    fn huge_bar64_upper_half_mask() {
        let mut c = PciConfigSpace::new(&header());
        c.add_bar(0, 1 << 33, BarKind::Mmio64, true).unwrap();
        w32(&mut c, BAR0, 0xffff_ffff);
        w32(&mut c, BAR0 + 4, 0xffff_ffff);
        assert_eq!(c.read_u32(BAR0), 0x0000_000c);
        assert_eq!(c.read_u32(BAR0 + 4), 0xffff_fffe);
    }

    #[test]
    fn io_bar_sizing_and_relocation() {
        let mut c = PciConfigSpace::new(&header());
        c.add_bar(4, 0x40, BarKind::Io, false).unwrap();
        c.set_bar_address(4, 0xc000).unwrap();
        assert_eq!(c.read_u32(BAR0 + 16), 0xc001);
        assert!(w32(&mut c, BAR0 + 16, 0xffff_ffff).is_empty());
        assert_eq!(c.read_u32(BAR0 + 16), 0xffff_ffc1);
        let m = w32(&mut c, BAR0 + 16, 0xc040);
        assert_eq!(m[0].kind, BarKind::Io);
        assert_eq!((m[0].old, m[0].new), (0xc000, 0xc040));
        assert_eq!(c.read_u32(BAR0 + 16), 0xc041);
    }

    #[test]
    fn unimplemented_bars_read_zero() {
        let mut c = PciConfigSpace::new(&header());
        c.add_bar(0, 0x1000, BarKind::Mmio32, false).unwrap();
        for i in 1..NUM_BARS {
            assert!(w32(&mut c, BAR0 + 4 * i, 0xffff_ffff).is_empty());
            assert_eq!(c.read_u32(BAR0 + 4 * i), 0);
        }
        assert_eq!(c.bars().len(), 1);
    }

    #[test]
    fn add_bar_validation() {
        let mut c = PciConfigSpace::new(&header());
        use PciConfigError::*;
        assert_eq!(
            c.add_bar(6, 0x1000, BarKind::Mmio32, false),
            Err(BarIndex(6))
        );
        assert_eq!(
            c.add_bar(5, 0x1000, BarKind::Mmio64, false),
            Err(BarIndex(5))
        );
        for (size, kind) in [
            (0, BarKind::Mmio32),
            (8, BarKind::Mmio32),
            (0x1800, BarKind::Mmio32),
            (1 << 32, BarKind::Mmio32),
            (2, BarKind::Io),
            (512, BarKind::Io),
            (0, BarKind::Mmio64),
        ] {
            assert!(
                matches!(c.add_bar(0, size, kind, false), Err(BarSize { .. })),
                "{size:#x} {kind:?}"
            );
        }
        assert_eq!(c.add_bar(0, 4, BarKind::Io, true), Err(PrefetchableIo));
        c.add_bar(0, 0x1000, BarKind::Mmio64, false).unwrap();
        assert_eq!(
            c.add_bar(1, 0x1000, BarKind::Mmio32, false),
            Err(BarInUse(1))
        );
        c.add_bar(2, 16, BarKind::Mmio32, false).unwrap();
        assert_eq!(
            c.add_bar(1, 0x1000, BarKind::Mmio64, false),
            Err(BarInUse(1))
        );
        // set_bar_address checks alignment and range.
        assert!(matches!(
            c.set_bar_address(0, 0x800),
            Err(BarAddress { .. })
        ));
        assert!(matches!(
            c.set_bar_address(2, 0xffff_fff8),
            Err(BarAddress { .. })
        ));
        assert!(matches!(
            c.set_bar_address(2, 0x1_0000_0000),
            Err(BarAddress { .. })
        ));
        assert_eq!(c.set_bar_address(1, 0), Err(NoSuchBar(1)));
        assert_eq!(c.set_bar_address(7, 0), Err(NoSuchBar(7)));
        c.set_bar_address(0, 0xffff_ffff_ffff_f000).unwrap();
        c.set_bar_address(2, 0xffff_fff0).unwrap();
    }

    /// Walks the capability list the way a driver does; returns (offset, id) pairs.
    fn walk(c: &PciConfigSpace) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        if c.read_u16(STATUS) & STATUS_CAPABILITIES_LIST == 0 {
            return out;
        }
        let mut p = c.read_u8(CAPABILITIES_POINTER) as usize & !3;
        while p != 0 && out.len() < 64 {
            out.push((p, c.read_u8(p)));
            p = c.read_u8(p + 1) as usize & !3;
        }
        out
    }

    #[test]
    fn capability_chain() {
        let mut c = PciConfigSpace::new(&header());
        assert!(walk(&c).is_empty());
        assert_eq!(c.read_u8(CAPABILITIES_POINTER), 0);
        let a = c.add_capability(&[0x09, 0xee, 16, 1, 0]).unwrap();
        let b = c
            .add_capability_with_mask(&[0x11, 0, 0, 0, 7, 7], &[0xff, 0xff, 0, 0xc0, 0x0f, 0])
            .unwrap();
        let d = c.add_capability(&[0x09, 0, 4, 2]).unwrap();
        assert_eq!((a, b, d), (0x40, 0x48, 0x50));
        assert_eq!(walk(&c), vec![(0x40, 0x09), (0x48, 0x11), (0x50, 0x09)]);
        assert_eq!(c.read_u8(0x42), 16);

        // ID and next pointer are read-only even if the mask says otherwise; the rest follows
        // the mask.
        w32(&mut c, b, 0xffff_ffff);
        w32(&mut c, b + 4, 0xffff_ffff);
        assert_eq!(c.read_u32(b), 0xc000_5011);
        assert_eq!(c.read_u32(b + 4), 0x0000_070f);
        w32(&mut c, a, 0);
        assert_eq!(c.read_u8(a + 2), 16);
        assert_eq!(walk(&c).len(), 3);
    }

    #[test]
    fn capability_space_runs_out() {
        let mut c = PciConfigSpace::new(&header());
        assert_eq!(
            c.add_capability(&[1]),
            Err(PciConfigError::CapabilityLength(1))
        );
        assert_eq!(
            c.add_capability_with_mask(&[1, 0, 0], &[0]),
            Err(PciConfigError::CapabilityLength(3))
        );
        c.add_capability(&[0x09; 0xbc]).unwrap();
        assert_eq!(
            c.add_capability(&[0x09; 8]),
            Err(PciConfigError::CapabilitySpace(8))
        );
        c.add_capability(&[0x05; 4]).unwrap(); // exactly fills to 0x100
        assert_eq!(walk(&c).last(), Some(&(0xfc, 0x05)));
        assert_eq!(
            c.add_capability(&[0x09; 2]),
            Err(PciConfigError::CapabilitySpace(2))
        );
    }

    #[test]
    fn out_of_range_and_odd_accesses() {
        let mut c = PciConfigSpace::new(&header());
        let mut d = [0xaau8; 8];
        c.read(0xfc, &mut d);
        assert_eq!(d, [0; 8]);
        c.read(u64::MAX - 1, &mut d);
        assert_eq!(d, [0; 8]);
        c.read(0, &mut []);
        assert!(c.write(u64::MAX, &[0xff; 16]).is_empty());
        assert!(c.write(0, &[]).is_empty());
        // A 16-byte read from 0 returns the header bytes.
        let mut d = [0u8; 16];
        c.read(0, &mut d);
        assert_eq!(&d[..4], &[0xf4, 0x1a, 0x42, 0x10]);
        assert_eq!(c.read_u32(0xfe), 0);
        assert_eq!(c.read_u8(0x100), 0);
    }

    proptest! {
        #[test]
        fn random_writes_keep_read_only_fields(
            ops in proptest::collection::vec((0u64..300, proptest::collection::vec(any::<u8>(), 0..12)), 0..64)
        ) {
            let mut c = PciConfigSpace::new(&header());
            c.add_bar(0, 0x4000, BarKind::Mmio64, false).unwrap();
            c.add_bar(2, 0x100, BarKind::Io, false).unwrap();
            c.add_bar(3, 0x1000, BarKind::Mmio32, true).unwrap();
            c.add_capability_with_mask(&[0x11, 0, 1, 0], &[0, 0, 0, 0xc0]).unwrap();
            for (off, data) in &ops {
                let moved = c.write(*off, data);
                for m in moved {
                    prop_assert_eq!(m.new % m.size, 0);
                    prop_assert_eq!(c.bar_address(m.index), Some(m.new));
                }
                let mut buf = vec![0; data.len()];
                c.read(*off, &mut buf);
            }
            prop_assert_eq!(c.read_u32(0), 0x1042_1af4);
            prop_assert_eq!(c.read_u32(0x08), 0x0180_0001);
            prop_assert_eq!(c.read_u32(BAR0) & 0xf, 0x4);
            prop_assert_eq!(c.read_u32(BAR0 + 8) & 0x3, 0x1);
            prop_assert_eq!(c.read_u32(BAR0 + 12) & 0xf, 0x8);
            prop_assert_eq!(c.read_u8(0x40), 0x11);
            prop_assert_eq!(c.read_u8(0x41), 0);
            prop_assert!(c.read_u16(STATUS) & STATUS_CAPABILITIES_LIST != 0);
        }
    }
}
