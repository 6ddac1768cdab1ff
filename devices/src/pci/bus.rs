//! PCI bus 0: configuration mechanism #1, the host bridge, BAR dispatch and BAR allocation.
//!
//! - [`PciRoot`] is the [`BusDevice`] for ports 0xcf8..0xcff (PCI Local Bus Specification 3.0,
//!   §3.2.2.3.2): CONFIG_ADDRESS is the DWORD at 0xcf8, CONFIG_DATA the DWORD at 0xcfc, read or
//!   written as bytes, words or the whole DWORD at 0xcfc + n.
//! - [`PciWindow`]s are [`BusDevice`]s that cover a whole PCI MMIO or I/O window and forward
//!   accesses to whichever BAR the guest programmed there. The `Bus` they sit on never changes;
//!   a BAR move only updates the window's small table (behind an `RwLock` taken for reading on
//!   the hot path).
//! - [`BarAllocator`] places BARs at boot, naturally aligned and without overlap.
//! - INTx: slot `s`, pin `p` (0 = INTA#) is wired to GSI `16 + (s + p) % 8`, the convention the
//!   MP table and ACPI `_PRT` of the `boot` crate describe; [`PciRoot::irq_routes`] lists the
//!   routes of the populated slots.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;

use super::config_space::{
    BarKind, BarReprogram, PciBar, PciConfigError, PciConfigSpace, PciHeader, COMMAND,
    COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, INTERRUPT_LINE, INTERRUPT_PIN,
};
use crate::bus::BusDevice;
use crate::lock;
use crate::log_once::LogOnce;

/// Device (slot) numbers on a bus (§3.2.2.3.2: 5 bits).
pub const NUM_SLOTS: u8 = 32;
/// First GSI used for PCI INTx (the IOAPIC pins above the 16 ISA IRQs).
pub const PCI_INTX_GSI_BASE: u8 = 16;
/// Number of GSIs the INTx lines are spread over (16..=23 of the 24 IOAPIC pins).
pub const PCI_INTX_GSI_COUNT: u8 = 8;

/// Intel, so that Linux's `pci_sanity_check` accepts configuration mechanism #1.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Device ID of the host bridge (the one Cloud Hypervisor and others use for a virtual one).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;
/// Class code 06/00/00: bridge, host bridge.
pub const HOST_BRIDGE_CLASS: u32 = 0x06_00_00;

// CONFIG_ADDRESS (§3.2.2.3.2): bit 31 enable, 30:24 reserved, 23:16 bus, 15:11 device,
// 10:8 function, 7:2 register, 1:0 read-only 0.
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
const CONFIG_ADDRESS_MASK: u32 = 0x80ff_fffc;

/// A PCI function as the bus sees it.
///
/// Methods take `&self`: devices keep their state behind their own lock, so several vCPUs can
/// reach different devices at once. Offsets and lengths come from the guest and may be
/// anything; implementations must not panic on any of them.
pub trait PciDevice: Send + Sync {
    /// Reads configuration space at `offset` (0..256 through mechanism #1).
    fn config_read(&self, offset: u64, data: &mut [u8]);
    /// Writes configuration space; returns the BARs this moved.
    fn config_write(&self, offset: u64, data: &[u8]) -> Vec<BarReprogram>;
    /// Reads `data.len()` bytes at `offset` inside BAR `bar`.
    fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes inside BAR `bar`.
    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]);
    /// The implemented BARs and where they decode now.
    fn bars(&self) -> Vec<PciBar>;
    /// Places a BAR (boot-time assignment by the VMM; not a guest move).
    fn set_bar_address(&self, index: usize, addr: u64) -> Result<(), PciConfigError>;
}

/// Told about every BAR the guest moves, after the windows were updated: the VMM moves the
/// device's ioeventfds (e.g. KVM_IOEVENTFD deassign at `old + off`, assign at `new + off`).
pub trait PciBarObserver: Send + Sync {
    fn bar_moved(&self, slot: u8, event: &BarReprogram);
}

impl<F: Fn(u8, &BarReprogram) + Send + Sync> PciBarObserver for F {
    fn bar_moved(&self, slot: u8, event: &BarReprogram) {
        self(slot, event)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PciError {
    #[error("PCI slot {0} is out of range or reserved for the host bridge")]
    SlotOutOfRange(u8),
    #[error("PCI slot {0} is already in use")]
    SlotInUse(u8),
    #[error("no free PCI slot")]
    NoFreeSlot,
    #[error("no room for a {kind:?} BAR of {size:#x} bytes in the PCI window")]
    OutOfSpace { kind: BarKind, size: u64 },
    #[error("PCI window {base:#x}+{size:#x} is empty or overflows")]
    BadWindow { base: u64, size: u64 },
    #[error(transparent)]
    Config(#[from] PciConfigError),
}

/// A bump allocator for BARs inside one window: every block is naturally aligned (a BAR's
/// address is a multiple of its size, §6.2.5.1) and blocks never overlap.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl BarAllocator {
    /// Allocates from `[base, base + size)`; a window that overflows `u64` is cut at the top.
    pub fn new(base: u64, size: u64) -> Self {
        BarAllocator {
            next: base,
            end: base.saturating_add(size),
        }
    }

    /// A naturally aligned block of `size` bytes (a power of two), or None if it does not fit.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        let start = self.next.checked_next_multiple_of(size)?;
        let end = start.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }
}

/// A device in a slot, with the decode enables of its command register, readable without
/// taking the device's lock.
struct Slot {
    dev: Arc<dyn PciDevice>,
    mem_enabled: AtomicBool,
    io_enabled: AtomicBool,
}

impl Slot {
    /// Re-reads the command register after a configuration write that touched it.
    fn sync_command(&self) {
        let mut b = [0u8; 2];
        self.dev.config_read(COMMAND as u64, &mut b);
        let cmd = u16::from_le_bytes(b);
        self.mem_enabled
            .store(cmd & COMMAND_MEMORY_SPACE != 0, Ordering::Release);
        self.io_enabled
            .store(cmd & COMMAND_IO_SPACE != 0, Ordering::Release);
    }
}

struct WindowEntry {
    base: u64,
    size: u64,
    slot_nr: u8,
    bar: usize,
    slot: Arc<Slot>,
}

/// Which address space a window decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpace {
    Mmio,
    Io,
}

/// A [`BusDevice`] over a whole PCI window that forwards each access to the BAR that decodes
/// it. Insert it on the MMIO (or port I/O) bus at [`base`](Self::base) with length
/// [`size`](Self::size).
///
/// An access is forwarded only if it lies entirely inside one BAR and the device's command
/// register enables that space; otherwise reads return all ones and writes are dropped, as for
/// an unclaimed bus cycle. If the guest programs overlapping BARs, the first one placed wins.
pub struct PciWindow {
    space: WindowSpace,
    base: u64,
    size: u64,
    entries: RwLock<Vec<WindowEntry>>,
    unknown: LogOnce,
}

impl PciWindow {
    fn new(space: WindowSpace, base: u64, size: u64) -> Result<Self, PciError> {
        if size == 0 || base.checked_add(size).is_none() {
            return Err(PciError::BadWindow { base, size });
        }
        Ok(PciWindow {
            space,
            base,
            size,
            entries: RwLock::new(Vec::new()),
            unknown: LogOnce::new(match space {
                WindowSpace::Mmio => "pci-mmio-window",
                WindowSpace::Io => "pci-io-window",
            }),
        })
    }

    pub fn space(&self) -> WindowSpace {
        self.space
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The device, BAR and offset in it for an access of `len` bytes at absolute `addr`.
    fn lookup(&self, addr: u64, len: usize) -> Option<(Arc<Slot>, usize, u64)> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let end = addr.checked_add(len as u64)?;
        let e = entries
            .iter()
            .find(|e| addr >= e.base && end <= e.base.saturating_add(e.size) && e.size > 0)?;
        let enabled = match self.space {
            WindowSpace::Mmio => &e.slot.mem_enabled,
            WindowSpace::Io => &e.slot.io_enabled,
        };
        if !enabled.load(Ordering::Acquire) {
            return None;
        }
        Some((e.slot.clone(), e.bar, addr - e.base))
    }

    fn insert(&self, entry: WindowEntry) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
    }

    fn relocate(&self, slot_nr: u8, bar: usize, new: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries
            .iter_mut()
            .find(|e| e.slot_nr == slot_nr && e.bar == bar)
        {
            e.base = new;
        }
    }

    /// (slot, bar, base, size) of every BAR in this window's table.
    pub fn mappings(&self) -> Vec<(u8, usize, u64, u64)> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .map(|e| (e.slot_nr, e.bar, e.base, e.size))
            .collect()
    }

    fn log_unclaimed(&self, what: &str, addr: u64, len: usize) {
        if self.unknown.first(addr) {
            log::debug!(
                "{:?} window: unclaimed {what} of {len} byte(s) at {addr:#x} (further ones there not logged)",
                self.space
            );
        }
    }
}

impl BusDevice for PciWindow {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let Some(addr) = self.base.checked_add(offset) else {
            data.fill(0xff);
            return;
        };
        match self.lookup(addr, data.len()) {
            Some((slot, bar, off)) => slot.dev.bar_read(bar, off, data),
            None => {
                data.fill(0xff);
                self.log_unclaimed("read", addr, data.len());
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(addr) = self.base.checked_add(offset) else {
            return;
        };
        match self.lookup(addr, data.len()) {
            Some((slot, bar, off)) => slot.dev.bar_write(bar, off, data),
            None => self.log_unclaimed("write", addr, data.len()),
        }
    }
}

/// The host bridge at 00:00.0: identification only, no BARs.
pub struct PciHostBridge {
    config: Mutex<PciConfigSpace>,
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciHostBridge {
    pub fn new() -> Self {
        PciHostBridge {
            config: Mutex::new(PciConfigSpace::new(&PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                class_code: HOST_BRIDGE_CLASS,
                ..Default::default()
            })),
        }
    }
}

impl PciDevice for PciHostBridge {
    fn config_read(&self, offset: u64, data: &mut [u8]) {
        lock(&self.config).read(offset, data)
    }
    fn config_write(&self, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        lock(&self.config).write(offset, data)
    }
    fn bar_read(&self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff)
    }
    fn bar_write(&self, _bar: usize, _offset: u64, _data: &[u8]) {}
    fn bars(&self) -> Vec<PciBar> {
        Vec::new()
    }
    fn set_bar_address(&self, index: usize, _addr: u64) -> Result<(), PciConfigError> {
        Err(PciConfigError::NoSuchBar(index))
    }
}

/// The GSI that INTx pin `pin` (0 = INTA#) of `slot` is wired to.
pub fn intx_gsi(slot: u8, pin: u8) -> u8 {
    PCI_INTX_GSI_BASE + slot.wrapping_add(pin) % PCI_INTX_GSI_COUNT
}

/// PCI bus 0 behind configuration mechanism #1, with its MMIO and I/O windows.
///
/// Build it, add the devices, optionally set a [`PciBarObserver`], then share it as `Arc`:
/// insert it on the port I/O bus at 0xcf8 with length 8 and the two windows
/// ([`mmio_window`](Self::mmio_window), [`io_window`](Self::io_window)) at their ranges.
pub struct PciRoot {
    config_address: AtomicU32,
    slots: Vec<Option<Arc<Slot>>>,
    mmio: Arc<PciWindow>,
    io: Arc<PciWindow>,
    mmio_alloc: BarAllocator,
    io_alloc: BarAllocator,
    observer: Option<Arc<dyn PciBarObserver>>,
    unknown: LogOnce,
}

impl PciRoot {
    /// Port of CONFIG_ADDRESS; the root's bus range is `CONFIG_PORT..CONFIG_PORT + 8`.
    pub const CONFIG_PORT: u64 = 0xcf8;
    /// Length of the configuration mechanism #1 port range.
    pub const CONFIG_PORT_LEN: u64 = 8;

    /// A bus with the host bridge at 00:00.0; BARs are allocated from the MMIO window
    /// `[mmio_base, mmio_base + mmio_size)` (32- and 64-bit BARs alike) and the I/O window.
    pub fn new(
        mmio_base: u64,
        mmio_size: u64,
        io_base: u64,
        io_size: u64,
    ) -> Result<Self, PciError> {
        let mut root = PciRoot {
            config_address: AtomicU32::new(0),
            slots: (0..NUM_SLOTS).map(|_| None).collect(),
            mmio: Arc::new(PciWindow::new(WindowSpace::Mmio, mmio_base, mmio_size)?),
            io: Arc::new(PciWindow::new(WindowSpace::Io, io_base, io_size)?),
            mmio_alloc: BarAllocator::new(mmio_base, mmio_size),
            io_alloc: BarAllocator::new(io_base, io_size),
            observer: None,
            unknown: LogOnce::new("pci-conf1"),
        };
        root.slots[0] = Some(Arc::new(Slot {
            dev: Arc::new(PciHostBridge::new()),
            mem_enabled: AtomicBool::new(false),
            io_enabled: AtomicBool::new(false),
        }));
        Ok(root)
    }

    pub fn mmio_window(&self) -> Arc<PciWindow> {
        self.mmio.clone()
    }

    pub fn io_window(&self) -> Arc<PciWindow> {
        self.io.clone()
    }

    /// Called for every BAR the guest moves.
    pub fn set_bar_observer(&mut self, observer: Arc<dyn PciBarObserver>) {
        self.observer = Some(observer);
    }

    /// Adds `dev` in the first free slot (1..=31); returns the slot.
    pub fn add_device(&mut self, dev: Arc<dyn PciDevice>) -> Result<u8, PciError> {
        let slot = (1..NUM_SLOTS)
            .find(|&s| self.slots[usize::from(s)].is_none())
            .ok_or(PciError::NoFreeSlot)?;
        self.add_device_at(slot, dev)
    }

    /// Adds `dev` as function 0 of `slot` (1..=31): allocates its BARs in the windows (largest
    /// first, naturally aligned) and sets its Interrupt Line to the GSI of its INTx pin.
    /// Afterwards `dev.bars()` tells where its BARs are.
    pub fn add_device_at(&mut self, slot: u8, dev: Arc<dyn PciDevice>) -> Result<u8, PciError> {
        if slot == 0 || slot >= NUM_SLOTS {
            return Err(PciError::SlotOutOfRange(slot));
        }
        if self.slots[usize::from(slot)].is_some() {
            return Err(PciError::SlotInUse(slot));
        }
        let mut bars = dev.bars();
        bars.sort_by_key(|b| std::cmp::Reverse(b.size));
        // Allocate on copies, so a failure leaves the allocators untouched.
        let mut mmio_alloc = self.mmio_alloc.clone();
        let mut io_alloc = self.io_alloc.clone();
        let mut placed = Vec::with_capacity(bars.len());
        for b in &bars {
            let alloc = if b.kind.is_mmio() {
                &mut mmio_alloc
            } else {
                &mut io_alloc
            };
            let addr = alloc.allocate(b.size).ok_or(PciError::OutOfSpace {
                kind: b.kind,
                size: b.size,
            })?;
            placed.push((b.index, addr));
        }
        for &(index, addr) in &placed {
            dev.set_bar_address(index, addr)?;
        }
        self.mmio_alloc = mmio_alloc;
        self.io_alloc = io_alloc;

        let mut pin = [0u8];
        dev.config_read(INTERRUPT_PIN as u64, &mut pin);
        if (1..=4).contains(&pin[0]) {
            dev.config_write(INTERRUPT_LINE as u64, &[intx_gsi(slot, pin[0] - 1)]);
        }

        let s = Arc::new(Slot {
            dev,
            mem_enabled: AtomicBool::new(false),
            io_enabled: AtomicBool::new(false),
        });
        s.sync_command();
        for b in s.dev.bars() {
            let window = if b.kind.is_mmio() {
                &self.mmio
            } else {
                &self.io
            };
            window.insert(WindowEntry {
                base: b.addr,
                size: b.size,
                slot_nr: slot,
                bar: b.index,
                slot: s.clone(),
            });
        }
        self.slots[usize::from(slot)] = Some(s);
        Ok(slot)
    }

    /// The device in `slot`, if any (slot 0 is the host bridge).
    pub fn device(&self, slot: u8) -> Option<Arc<dyn PciDevice>> {
        self.slots
            .get(usize::from(slot))?
            .as_ref()
            .map(|s| s.dev.clone())
    }

    /// (slot, pin with 0 = INTA#, GSI) for every device that uses an INTx pin; the same wiring
    /// as `boot::acpi::pci_irq_routes`, for the MP table and `_PRT`.
    pub fn irq_routes(&self) -> Vec<(u8, u8, u8)> {
        let mut routes = Vec::new();
        for (nr, s) in self.slots.iter().enumerate() {
            let Some(s) = s else { continue };
            let mut pin = [0u8];
            s.dev.config_read(INTERRUPT_PIN as u64, &mut pin);
            if (1..=4).contains(&pin[0]) {
                let slot = nr as u8;
                routes.push((slot, pin[0] - 1, intx_gsi(slot, pin[0] - 1)));
            }
        }
        routes
    }

    /// Device and register offset for a CONFIG_DATA access `data_offset` bytes into 0xcfc.
    fn target(&self, data_offset: u64) -> Option<(u8, &Arc<Slot>, u64)> {
        let addr = self.config_address.load(Ordering::Acquire);
        if addr & CONFIG_ADDRESS_ENABLE == 0 {
            return None;
        }
        let bus = (addr >> 16) & 0xff;
        let device = (addr >> 11) & 0x1f;
        let function = (addr >> 8) & 0x7;
        let register = u64::from(addr & 0xfc);
        if bus != 0 || function != 0 {
            return None;
        }
        let slot = self.slots[device as usize].as_ref()?;
        Some((device as u8, slot, register + data_offset))
    }

    fn apply_moves(&self, slot_nr: u8, moved: &[BarReprogram]) {
        for m in moved {
            let window = if m.kind.is_mmio() {
                &self.mmio
            } else {
                &self.io
            };
            window.relocate(slot_nr, m.index, m.new);
            log::debug!(
                "pci: 00:{slot_nr:02x}.0 BAR {} moved {:#x} -> {:#x}",
                m.index,
                m.old,
                m.new
            );
            if let Some(o) = &self.observer {
                o.bar_moved(slot_nr, m);
            }
        }
    }
}

impl BusDevice for PciRoot {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        if offset == 0 && len == 4 {
            data.copy_from_slice(&self.config_address.load(Ordering::Acquire).to_le_bytes());
            return;
        }
        // CONFIG_DATA: bytes 0xcfc..0xcff, any access inside them.
        if (4..8).contains(&offset) && offset.saturating_add(len) <= 8 {
            if let Some((_, slot, reg)) = self.target(offset - 4) {
                slot.dev.config_read(reg, data);
                return;
            }
        } else if self.unknown.first(offset) {
            log::debug!(
                "pci: {len}-byte read at port {:#x} ignored",
                0xcf8u64.wrapping_add(offset)
            );
        }
        data.fill(0xff);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        if offset == 0 && len == 4 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.config_address
                .store(v & CONFIG_ADDRESS_MASK, Ordering::Release);
            return;
        }
        if (4..8).contains(&offset) && offset.saturating_add(len) <= 8 {
            // One snapshot of CONFIG_ADDRESS for the whole access: another vCPU may rewrite it
            // meanwhile (a racing guest; Linux serialises with pci_config_lock).
            let Some((nr, slot, reg)) = self.target(offset - 4) else {
                return;
            };
            let moved = slot.dev.config_write(reg, data);
            // The command register (0x04..0x06) holds the decode enables.
            if reg < COMMAND as u64 + 2 && reg + len > COMMAND as u64 {
                slot.sync_command();
            }
            if !moved.is_empty() {
                self.apply_moves(nr, &moved);
            }
        } else if self.unknown.first(offset) {
            // Byte and word accesses to 0xcf8..0xcfb are not CONFIG_ADDRESS (§3.2.2.3.2);
            // Linux's type-1 probe writes 0xcfb, and 0xcf9 is a reset register on some
            // chipsets, which this machine does not have.
            log::debug!(
                "pci: {len}-byte write at port {:#x} ignored",
                0xcf8u64.wrapping_add(offset)
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pci::config_space::{BAR0, COMMAND_BUS_MASTER};
    use proptest::prelude::*;

    /// A device with a configuration space and BARs that record accesses; reads return the low
    /// byte of the offset.
    struct TestDev {
        config: Mutex<PciConfigSpace>,
        accesses: Mutex<Vec<(&'static str, usize, u64, usize)>>,
    }

    impl TestDev {
        fn new(pin: u8, bars: &[(usize, u64, BarKind)]) -> Arc<Self> {
            let mut c = PciConfigSpace::new(&PciHeader {
                vendor_id: 0x1234,
                device_id: 0x5678,
                class_code: 0xff0000,
                interrupt_pin: pin,
                ..Default::default()
            });
            for &(i, size, kind) in bars {
                c.add_bar(i, size, kind, false).unwrap();
            }
            Arc::new(TestDev {
                config: Mutex::new(c),
                accesses: Mutex::new(Vec::new()),
            })
        }
        fn take(&self) -> Vec<(&'static str, usize, u64, usize)> {
            std::mem::take(&mut *self.accesses.lock().unwrap())
        }
    }

    impl PciDevice for TestDev {
        fn config_read(&self, offset: u64, data: &mut [u8]) {
            self.config.lock().unwrap().read(offset, data)
        }
        fn config_write(&self, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
            self.config.lock().unwrap().write(offset, data)
        }
        fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) {
            self.accesses
                .lock()
                .unwrap()
                .push(("r", bar, offset, data.len()));
            data.fill(offset as u8);
        }
        fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) {
            self.accesses
                .lock()
                .unwrap()
                .push(("w", bar, offset, data.len()));
        }
        fn bars(&self) -> Vec<PciBar> {
            self.config.lock().unwrap().bars()
        }
        fn set_bar_address(&self, index: usize, addr: u64) -> Result<(), PciConfigError> {
            self.config.lock().unwrap().set_bar_address(index, addr)
        }
    }

    /// A logger that formats every record and drops it, so that log arguments are evaluated
    /// in tests (an overflow in one would otherwise only show with logging on).
    struct FormatAll;
    impl log::Log for FormatAll {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            let _ = record.args().to_string();
        }
        fn flush(&self) {}
    }

    pub(crate) fn format_all_logs() {
        static LOGGER: FormatAll = FormatAll;
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
    }

    const MMIO_BASE: u64 = 0xc000_0000;
    const MMIO_SIZE: u64 = 0x3ec0_0000;
    const IO_BASE: u64 = 0xc000;
    const IO_SIZE: u64 = 0x4000;

    fn root() -> PciRoot {
        PciRoot::new(MMIO_BASE, MMIO_SIZE, IO_BASE, IO_SIZE).unwrap()
    }

    fn cfg_addr(dev: u32, func: u32, reg: u32) -> u32 {
        0x8000_0000 | dev << 11 | func << 8 | reg
    }

    fn set_addr(r: &PciRoot, a: u32) {
        r.write(0, &a.to_le_bytes());
    }

    fn read32(r: &PciRoot, dev: u32, reg: u32) -> u32 {
        set_addr(r, cfg_addr(dev, 0, reg));
        let mut d = [0u8; 4];
        r.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    fn write32(r: &PciRoot, dev: u32, reg: u32, v: u32) {
        set_addr(r, cfg_addr(dev, 0, reg));
        r.write(4, &v.to_le_bytes());
    }

    #[test]
    fn allocator_is_aligned_and_disjoint() {
        let mut a = BarAllocator::new(0x1000, 0x10000);
        assert_eq!(a.allocate(0x10), Some(0x1000));
        assert_eq!(a.allocate(0x4000), Some(0x4000));
        assert_eq!(a.allocate(0x20), Some(0x8000));
        assert_eq!(a.allocate(0x3000), None); // not a power of two
        assert_eq!(a.allocate(0), None);
        // 0x10000..0x18000 would run past the end at 0x11000.
        assert_eq!(a.allocate(0x8000), None);
        assert_eq!(a.allocate(0x1000), Some(0x9000));
        assert_eq!(a.allocate(0x10), Some(0xa000));
        assert_eq!(a.allocate(0x4000), Some(0xc000));
        assert_eq!(a.allocate(0x1000), Some(0x10000));
        assert_eq!(a.allocate(4), None);
    }

    #[test]
    fn allocator_edges() {
        let mut a = BarAllocator::new(0x1000, 0x1000);
        assert_eq!(a.allocate(0x2000), None);
        assert_eq!(a.allocate(0x1000), Some(0x1000));
        assert_eq!(a.allocate(4), None);
        // Near the top of the address space.
        let mut a = BarAllocator::new(u64::MAX - 0xfff, 0x1000);
        assert_eq!(a.allocate(0x1000), None); // would end past u64::MAX
        assert_eq!(a.allocate(0x800), Some(u64::MAX - 0xfff));
        assert_eq!(a.allocate(1 << 63), None);
        let mut a = BarAllocator::new(0xfff0, 0x10);
        assert_eq!(a.allocate(0x10), Some(0xfff0));
    }

    #[test]
    fn conf1_address_register() {
        let r = root();
        set_addr(&r, 0xffff_ffff);
        let mut d = [0u8; 4];
        r.read(0, &mut d);
        // Reserved bits 30:24 and 1:0 read 0.
        assert_eq!(u32::from_le_bytes(d), 0x80ff_fffc);
        // Linux's probe: byte write at 0xcfb, then dword at 0xcf8.
        r.write(3, &[0x01]);
        set_addr(&r, 0x8000_0000);
        r.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        // Narrow accesses to 0xcf8..0xcfb don't touch CONFIG_ADDRESS and read all ones.
        r.write(0, &[0, 0]);
        r.write(1, &[0]);
        let mut b = [0u8; 2];
        r.read(0, &mut b);
        assert_eq!(b, [0xff; 2]);
        r.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
    }

    #[test]
    fn host_bridge_passes_linux_sanity_check() {
        let r = root();
        assert_eq!(read32(&r, 0, 0), 0x0d57_8086);
        set_addr(&r, cfg_addr(0, 0, 0x08));
        let mut w = [0u8; 2];
        r.read(4 + 2, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0600);
        assert_eq!(read32(&r, 0, 0x0c) >> 16 & 0x7f, 0); // header type 0
        assert_eq!(read32(&r, 0, 0x10), 0);
    }

    #[test]
    fn config_data_byte_word_dword() {
        let mut r = root();
        let dev = TestDev::new(1, &[]);
        assert_eq!(r.add_device(dev).unwrap(), 1);
        set_addr(&r, cfg_addr(1, 0, 0));
        for n in 0..4u64 {
            let mut b = [0u8];
            r.read(4 + n, &mut b);
            assert_eq!(b[0], [0x34, 0x12, 0x78, 0x56][n as usize]);
        }
        let mut w = [0u8; 2];
        r.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x5678);
        let mut w3 = [0u8; 3];
        r.read(5, &mut w3);
        assert_eq!(w3, [0x12, 0x78, 0x56]);
        // Byte write to Interrupt Line at 0x3c + 0 and readback as word at 0xcfc.
        set_addr(&r, cfg_addr(1, 0, 0x3c));
        r.write(4, &[0x0b]);
        r.read(4, &mut w);
        assert_eq!(w, [0x0b, 0x01]);
        // Word write at 0xcfe hits register 0x3e (read-only min_gnt/max_lat).
        r.write(6, &[0xff, 0xff]);
        assert_eq!(read32(&r, 1, 0x3c), 0x0000_010b);
        // The register field ignores bits 1:0 of CONFIG_ADDRESS (they read 0).
        set_addr(&r, cfg_addr(1, 0, 0) | 3);
        let mut d = [0u8; 4];
        r.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x5678_1234);
    }

    #[test]
    fn absent_disabled_and_out_of_range() {
        format_all_logs();
        let mut r = root();
        r.add_device(TestDev::new(1, &[])).unwrap();
        // Absent slot, other function, other bus: all ones, writes dropped.
        assert_eq!(read32(&r, 2, 0), 0xffff_ffff);
        assert_eq!(read32(&r, 31, 0), 0xffff_ffff);
        set_addr(&r, cfg_addr(1, 1, 0));
        let mut d = [0u8; 4];
        r.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        set_addr(&r, cfg_addr(1, 0, 0) | 1 << 16);
        r.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        r.write(4, &[0; 4]);
        write32(&r, 5, 0x3c, 0);
        // Enable bit clear: all ones even for a present device.
        set_addr(&r, cfg_addr(1, 0, 0) & !0x8000_0000);
        r.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        r.write(4, &[0; 4]);
        // Accesses running past 0xcff, zero-length and oversized ones.
        set_addr(&r, cfg_addr(1, 0, 0));
        r.read(6, &mut d);
        assert_eq!(d, [0xff; 4]);
        r.write(6, &[0; 4]);
        r.read(4, &mut []);
        r.write(4, &[]);
        let mut big = [0u8; 16];
        r.read(0, &mut big);
        assert_eq!(big, [0xff; 16]);
        r.read(u64::MAX, &mut d);
        r.write(u64::MAX, &d);
        assert_eq!(read32(&r, 1, 0), 0x5678_1234);
    }

    #[test]
    fn slots_fill_up() {
        let mut r = root();
        for s in 1..32 {
            assert_eq!(r.add_device(TestDev::new(0, &[])).unwrap(), s);
        }
        assert_eq!(
            r.add_device(TestDev::new(0, &[])),
            Err(PciError::NoFreeSlot)
        );
        let mut r = root();
        assert_eq!(
            r.add_device_at(0, TestDev::new(0, &[])),
            Err(PciError::SlotOutOfRange(0))
        );
        assert_eq!(
            r.add_device_at(32, TestDev::new(0, &[])),
            Err(PciError::SlotOutOfRange(32))
        );
        r.add_device_at(5, TestDev::new(0, &[])).unwrap();
        assert_eq!(
            r.add_device_at(5, TestDev::new(0, &[])),
            Err(PciError::SlotInUse(5))
        );
        assert!(r.device(5).is_some() && r.device(4).is_none() && r.device(0).is_some());
        assert!(r.device(200).is_none());
        assert!(matches!(
            PciRoot::new(u64::MAX, 2, 0, 1),
            Err(PciError::BadWindow { .. })
        ));
        assert!(matches!(
            PciRoot::new(0, 1, 0, 0),
            Err(PciError::BadWindow { .. })
        ));
    }

    #[test]
    fn bar_allocation_at_add() {
        let mut r = root();
        let a = TestDev::new(
            1,
            &[
                (0, 0x1000, BarKind::Mmio32),
                (1, 0x20, BarKind::Io),
                (2, 0x10_0000, BarKind::Mmio64),
            ],
        );
        let b = TestDev::new(2, &[(0, 0x4000, BarKind::Mmio64), (2, 0x100, BarKind::Io)]);
        r.add_device(a.clone()).unwrap();
        r.add_device(b.clone()).unwrap();
        let mut all: Vec<PciBar> = a.bars();
        all.extend(b.bars());
        for x in &all {
            assert_eq!(x.addr % x.size, 0, "{x:?}");
            let (base, size) = if x.kind.is_mmio() {
                (MMIO_BASE, MMIO_SIZE)
            } else {
                (IO_BASE, IO_SIZE)
            };
            assert!(x.addr >= base && x.addr + x.size <= base + size, "{x:?}");
            for y in &all {
                if std::ptr::eq(x, y) || x.kind.is_mmio() != y.kind.is_mmio() {
                    continue;
                }
                assert!(
                    x.addr + x.size <= y.addr || y.addr + y.size <= x.addr,
                    "{x:?} {y:?}"
                );
            }
        }
        // The guest sees the addresses in the BAR registers.
        let bar2 = a.bars().into_iter().find(|b| b.index == 2).unwrap();
        assert_eq!(
            u64::from(read32(&r, 1, 0x18) & !0xf),
            bar2.addr & 0xffff_ffff
        );
        assert_eq!(r.mmio_window().mappings().len(), 3);
        assert_eq!(r.io_window().mappings().len(), 2);
        // Interrupt line = GSI of the pin.
        assert_eq!(
            read32(&r, 1, 0x3c) & 0xffff,
            0x0100 | u32::from(intx_gsi(1, 0))
        );
        assert_eq!(
            read32(&r, 2, 0x3c) & 0xffff,
            0x0200 | u32::from(intx_gsi(2, 1))
        );

        // A window too small for a BAR fails and leaves nothing allocated.
        let mut r = PciRoot::new(MMIO_BASE, 0x2000, IO_BASE, 0x100).unwrap();
        let big = TestDev::new(
            0,
            &[(0, 0x1000, BarKind::Mmio32), (1, 0x4000, BarKind::Mmio32)],
        );
        assert_eq!(
            r.add_device(big),
            Err(PciError::OutOfSpace {
                kind: BarKind::Mmio32,
                size: 0x4000
            })
        );
        let fits = TestDev::new(0, &[(0, 0x2000, BarKind::Mmio32)]);
        r.add_device(fits.clone()).unwrap();
        assert_eq!(fits.bars()[0].addr, MMIO_BASE);
    }

    #[test]
    fn window_dispatch_needs_decode_enable() {
        let mut r = root();
        let a = TestDev::new(1, &[(0, 0x1000, BarKind::Mmio32), (1, 0x20, BarKind::Io)]);
        r.add_device(a.clone()).unwrap();
        let mmio = r.mmio_window();
        let io = r.io_window();
        let m = a.bars()[0].addr - MMIO_BASE;
        let p = a.bars()[1].addr - IO_BASE;
        let mut d = [0u8; 4];
        // Command register 0: nothing decodes.
        mmio.read(m + 8, &mut d);
        assert_eq!(d, [0xff; 4]);
        io.write(p, &[1]);
        assert!(a.take().is_empty());
        // Memory only.
        write32(
            &r,
            1,
            COMMAND as u32,
            u32::from(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER),
        );
        mmio.read(m + 8, &mut d);
        assert_eq!(d, [8; 4]);
        mmio.write(m + 0xffc, &[0; 4]);
        io.write(p, &[1]);
        assert_eq!(a.take(), vec![("r", 0, 8, 4), ("w", 0, 0xffc, 4)]);
        // Both, through a byte write to the command register.
        set_addr(&r, cfg_addr(1, 0, 4));
        r.write(4, &[0x07]);
        io.write(p + 0x1f, &[1]);
        // Straddling the end of a BAR: nowhere.
        mmio.read(m + 0xffe, &mut d);
        assert_eq!(d, [0xff; 4]);
        io.write(p + 0x1f, &[1, 2]);
        assert_eq!(a.take(), vec![("w", 1, 0x1f, 1)]);
        // Outside any BAR, and offsets that overflow.
        mmio.read(0x3000_0000, &mut d);
        mmio.read(u64::MAX, &mut d);
        mmio.write(u64::MAX - 1, &d);
        assert!(a.take().is_empty());
    }

    #[test]
    fn relocation_moves_dispatch_and_tells_observer() {
        let mut r = root();
        let a = TestDev::new(1, &[(0, 0x4000, BarKind::Mmio64), (2, 0x20, BarKind::Io)]);
        let slot = r.add_device(a.clone()).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        r.set_bar_observer(Arc::new(move |slot: u8, e: &BarReprogram| {
            s2.lock().unwrap().push((slot, *e));
        }));
        let old = a.bars()[0].addr;
        write32(&r, 1, COMMAND as u32, 3);
        // Linux-style sizing of the 64-bit BAR: no move.
        let lo = read32(&r, 1, 0x10);
        let hi = read32(&r, 1, 0x14);
        write32(&r, 1, 0x10, !0);
        write32(&r, 1, 0x14, !0);
        assert_eq!(read32(&r, 1, 0x10), 0xffff_c004);
        write32(&r, 1, 0x10, lo);
        write32(&r, 1, 0x14, hi);
        assert!(seen.lock().unwrap().is_empty());

        let new = MMIO_BASE + 0x1000_0000;
        write32(&r, 1, BAR0 as u32, new as u32);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(
                slot,
                BarReprogram {
                    index: 0,
                    kind: BarKind::Mmio64,
                    size: 0x4000,
                    old,
                    new
                }
            )]
        );
        let mmio = r.mmio_window();
        let mut d = [0u8; 1];
        mmio.read(old - MMIO_BASE + 4, &mut d);
        assert_eq!(d, [0xff]);
        mmio.read(new - MMIO_BASE + 4, &mut d);
        assert_eq!(d, [4]);
        assert_eq!(a.take(), vec![("r", 0, 4, 1)]);

        // I/O BAR.
        let old_io = a.bars()[1].addr;
        write32(&r, 1, 0x18, 0xd001);
        assert_eq!(seen.lock().unwrap()[1].1.old, old_io);
        assert_eq!(seen.lock().unwrap()[1].1.new, 0xd000);
        let io = r.io_window();
        io.read(0xd000 - IO_BASE + 2, &mut d);
        assert_eq!(a.take(), vec![("r", 2, 2, 1)]);
    }

    #[test]
    fn irq_routes_for_populated_slots() {
        let mut r = root();
        r.add_device_at(1, TestDev::new(1, &[])).unwrap();
        r.add_device_at(3, TestDev::new(0, &[])).unwrap();
        r.add_device_at(7, TestDev::new(4, &[])).unwrap();
        r.add_device_at(31, TestDev::new(2, &[])).unwrap();
        assert_eq!(r.irq_routes(), vec![(1, 0, 17), (7, 3, 18), (31, 1, 16)]);
        for s in 0..32u8 {
            for p in 0..4u8 {
                let g = intx_gsi(s, p);
                assert!((16..24).contains(&g));
            }
        }
    }

    proptest! {
        #[test]
        fn random_conf1_and_window_traffic(
            ops in proptest::collection::vec(
                (0u8..6, any::<u32>(), 0u64..10, 0usize..9, any::<u64>()), 0..200)
        ) {
            format_all_logs();
            let mut r = root();
            let a = TestDev::new(1, &[(0, 0x4000, BarKind::Mmio64), (2, 0x20, BarKind::Io), (3, 0x1000, BarKind::Mmio32)]);
            r.add_device(a).unwrap();
            let mmio = r.mmio_window();
            let io = r.io_window();
            for (kind, addr, off, len, val) in ops {
                let mut buf = vec![0u8; len];
                let bytes: Vec<u8> = val.to_le_bytes().iter().cycle().take(len).copied().collect();
                match kind {
                    // Aim mostly at slot 1 and the host bridge, any register.
                    0 => set_addr(&r, 0x8000_0000 | (addr & 0x0800) | (addr & 0xfc)),
                    1 => r.write(off, &bytes),
                    2 => r.read(off, &mut buf),
                    3 => mmio.write(u64::from(addr) % MMIO_SIZE, &bytes),
                    4 => mmio.read(u64::from(addr) % MMIO_SIZE, &mut buf),
                    _ => { io.write(u64::from(addr) % IO_SIZE, &bytes); io.read(u64::from(addr) % IO_SIZE, &mut buf) }
                }
            }
            prop_assert_eq!(read32(&r, 1, 0), 0x5678_1234);
            prop_assert_eq!(read32(&r, 0, 0), 0x0d57_8086);
        }
    }
}
