//! An address bus (port I/O or MMIO) mapping non-overlapping ranges to devices.
//!
//! The bus is filled before the vCPUs start and then shared as `Arc<Bus>` and only read: a
//! lookup is a binary search over a sorted `Vec`, and dispatch takes no bus-wide lock (each
//! device locks its own state).

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::log_once::LogOnce;

/// A device that answers reads and writes in one bus range.
///
/// Devices use interior mutability (their own lock), so several vCPUs can dispatch to the bus
/// at once. `offset` is relative to the base the device was inserted at; `data.len()` is the
/// access size chosen by the guest and may be anything, including 0 or more than 8.
pub trait BusDevice: Send + Sync {
    /// Fills `data` with the value read at `offset`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Handles the guest writing `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]);
}

/// Why a range could not be inserted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BusError {
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength { base: u64 },
    #[error("bus range at {base:#x} with length {len:#x} overflows the address space")]
    Overflow { base: u64, len: u64 },
    #[error(
        "bus range {base:#x}+{len:#x} overlaps the existing range {existing_base:#x}+{existing_len:#x}"
    )]
    Overlap {
        base: u64,
        len: u64,
        existing_base: u64,
        existing_len: u64,
    },
}

struct Range {
    base: u64,
    len: u64,
    dev: Arc<dyn BusDevice>,
}

/// Sorted, non-overlapping ranges, each mapped to a device.
pub struct Bus {
    name: &'static str,
    ranges: Vec<Range>,
    unknown: LogOnce,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<(u64, u64)> = self.ranges.iter().map(|r| (r.base, r.len)).collect();
        f.debug_struct("Bus")
            .field("name", &self.name)
            .field("ranges", &ranges)
            .finish()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    /// An empty bus; its log messages say "bus".
    pub fn new() -> Self {
        Self::with_name("bus")
    }

    /// An empty bus whose log messages carry `name` (e.g. "pio", "mmio").
    pub fn with_name(name: &'static str) -> Self {
        Bus {
            name,
            ranges: Vec::new(),
            unknown: LogOnce::new(name),
        }
    }

    /// Maps `[base, base + len)` to `dev`.
    ///
    /// Fails if `len` is 0, if `base + len` overflows `u64` (a range cannot end past the top of
    /// the address space), or if the range overlaps one already inserted.
    pub fn insert(&mut self, base: u64, len: u64, dev: Arc<dyn BusDevice>) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overflow { base, len })?;
        // Index of the first range starting at or after `base`.
        let pos = self.ranges.partition_point(|r| r.base < base);
        let overlap = |r: &Range| BusError::Overlap {
            base,
            len,
            existing_base: r.base,
            existing_len: r.len,
        };
        if let Some(prev) = pos.checked_sub(1).map(|i| &self.ranges[i]) {
            // Existing ranges never overflow, so prev.base + prev.len is exact.
            if prev.base + prev.len > base {
                return Err(overlap(prev));
            }
        }
        if let Some(next) = self.ranges.get(pos) {
            if next.base < end {
                return Err(overlap(next));
            }
        }
        self.ranges.insert(pos, Range { base, len, dev });
        Ok(())
    }

    /// Number of ranges on the bus.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True if no range was inserted.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The device whose range holds all of `[addr, addr + size)`, and the offset of `addr` in
    /// it. An access that starts in a range but runs past its end belongs to no device: it
    /// would otherwise let a guest reach past the registers a device declared.
    pub fn lookup(&self, addr: u64, size: usize) -> Option<(&Arc<dyn BusDevice>, u64)> {
        let idx = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let r = &self.ranges[idx];
        let offset = addr - r.base;
        if offset >= r.len {
            return None;
        }
        let end = offset.checked_add(u64::try_from(size).ok()?)?;
        if end > r.len {
            return None;
        }
        Some((&r.dev, offset))
    }

    /// Reads `data.len()` bytes at `addr`. Returns false, with `data` all ones, if no device
    /// holds the whole access (the floating-bus value, which a probing driver reads as "no
    /// device here").
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((dev, offset)) => {
                dev.read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.log_unknown("read", addr, data.len());
                false
            }
        }
    }

    /// Writes `data` at `addr`. Returns false, dropping the write, if no device holds the whole
    /// access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((dev, offset)) => {
                dev.write(offset, data);
                true
            }
            None => {
                self.log_unknown("write", addr, data.len());
                false
            }
        }
    }

    fn log_unknown(&self, what: &str, addr: u64, size: usize) {
        // Debug level: guests probe empty ports and addresses as a matter of course (legacy
        // COM/LPT/RTC ports, PCI config space), which is not a problem worth a warning.
        if self.unknown.first(addr) {
            log::debug!(
                "{}: unhandled {what} of {size} byte(s) at {addr:#x} (reads as all ones; further accesses there not logged)",
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records accesses; reads return the low byte of the offset in every byte.
    #[derive(Default)]
    struct Recorder {
        writes: Mutex<Vec<(u64, Vec<u8>)>>,
    }

    impl BusDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.writes.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    #[test]
    fn insert_rejects_zero_length_and_overflow() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert(0x10, 0, dev()),
            Err(BusError::ZeroLength { base: 0x10 })
        );
        assert_eq!(
            bus.insert(u64::MAX, 1, dev()),
            Err(BusError::Overflow {
                base: u64::MAX,
                len: 1
            })
        );
        assert!(matches!(
            bus.insert(1, u64::MAX, dev()),
            Err(BusError::Overflow { .. })
        ));
        // The largest range that still ends inside the address space is fine.
        bus.insert(u64::MAX - 1, 1, dev()).unwrap();
        assert_eq!(bus.len(), 1);
    }

    #[test]
    fn insert_rejects_overlap() {
        let mut bus = Bus::new();
        bus.insert(0x10, 0x10, dev()).unwrap();
        for (base, len) in [
            (0x10, 0x10),
            (0x0f, 2),
            (0x1f, 1),
            (0x18, 0x100),
            (0x0, 0x100),
            (0x12, 1),
        ] {
            assert!(
                matches!(
                    bus.insert(base, len, dev()),
                    Err(BusError::Overlap {
                        existing_base: 0x10,
                        existing_len: 0x10,
                        ..
                    })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        // Adjacent on both sides is fine.
        bus.insert(0x20, 1, dev()).unwrap();
        bus.insert(0x0f, 1, dev()).unwrap();
        bus.insert(0, 0x0f, dev()).unwrap();
        assert_eq!(bus.len(), 4);
        // Between two ranges, touching neither.
        bus.insert(0x30, 0x10, dev()).unwrap();
        assert!(bus.insert(0x21, 0x10, dev()).is_err());
        bus.insert(0x21, 0x0f, dev()).unwrap();
        assert_eq!(bus.len(), 6);
    }

    #[test]
    fn lookup_at_range_edges() {
        let mut bus = Bus::new();
        let a = dev();
        let b = dev();
        bus.insert(0x100, 8, a.clone()).unwrap();
        bus.insert(0x108, 2, b.clone()).unwrap();

        let mut d = [0u8; 1];
        assert!(bus.read(0x100, &mut d));
        assert_eq!(d, [0]);
        assert!(bus.read(0x107, &mut d));
        assert_eq!(d, [7]);
        assert!(bus.read(0x108, &mut d)); // first byte of b
        assert_eq!(d, [0]);
        assert!(bus.read(0x109, &mut d));
        assert_eq!(d, [1]);
        assert!(!bus.read(0x10a, &mut d)); // one past b
        assert_eq!(d, [0xff]);
        assert!(!bus.read(0xff, &mut d)); // one before a
        assert_eq!(d, [0xff]);

        assert!(bus.write(0x107, &[0xaa]));
        assert!(bus.write(0x108, &[0xbb, 0xcc]));
        assert_eq!(*a.writes.lock().unwrap(), vec![(7, vec![0xaa])]);
        assert_eq!(*b.writes.lock().unwrap(), vec![(0, vec![0xbb, 0xcc])]);
    }

    #[test]
    fn straddling_access_goes_nowhere() {
        let mut bus = Bus::new();
        let a = dev();
        let b = dev();
        bus.insert(0x100, 8, a.clone()).unwrap();
        bus.insert(0x108, 8, b.clone()).unwrap();

        // Crosses from a into b.
        let mut d = [0u8; 2];
        assert!(!bus.read(0x107, &mut d));
        assert_eq!(d, [0xff, 0xff]);
        assert!(!bus.write(0x107, &[1, 2]));
        // Runs past the end of b into nothing.
        let mut d = [0u8; 4];
        assert!(!bus.read(0x10e, &mut d));
        assert_eq!(d, [0xff; 4]);
        // Exactly fills a.
        let mut d = [0u8; 8];
        assert!(bus.read(0x100, &mut d));
        assert!(bus.write(0x100, &[0; 8]));
        // Longer than a, from its start.
        let mut d = [0u8; 9];
        assert!(!bus.read(0x100, &mut d));
        assert!(a.writes.lock().unwrap().len() == 1 && b.writes.lock().unwrap().is_empty());
    }

    #[test]
    fn unknown_addresses() {
        let bus = Bus::with_name("test");
        assert!(bus.is_empty());
        let mut d = [0u8; 4];
        assert!(!bus.read(0, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.read(u64::MAX, &mut d));
        assert!(!bus.write(u64::MAX, &[1, 2, 3]));
        // Repeated unknown accesses are fine (and logged only once).
        for _ in 0..1000 {
            assert!(!bus.read(0x80, &mut d));
        }
    }

    #[test]
    fn zero_length_access() {
        let mut bus = Bus::new();
        let a = dev();
        bus.insert(0x10, 1, a.clone()).unwrap();
        assert!(bus.read(0x10, &mut []));
        assert!(bus.write(0x10, &[]));
        // Zero bytes right past the end still start outside the range.
        assert!(!bus.read(0x11, &mut []));
        assert_eq!(a.writes.lock().unwrap().len(), 1);
    }

    #[test]
    fn lookup_at_top_of_address_space() {
        let mut bus = Bus::new();
        bus.insert(u64::MAX - 0x10, 0x10, dev()).unwrap();
        let mut d = [0u8; 8];
        assert!(bus.read(u64::MAX - 8, &mut d));
        assert!(!bus.read(u64::MAX - 7, &mut d));
        assert!(!bus.read(u64::MAX, &mut d[..1]));
    }
}
