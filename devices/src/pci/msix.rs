//! MSI-X (PCI Local Bus Specification 3.0, §6.8.2).
//!
//! The capability in configuration space holds the Message Control word (table size, Function
//! Mask, MSI-X Enable) and the BAR/offset of the vector table and the Pending Bit Array (PBA).
//! Each table entry is 16 bytes (§6.8.2.6-9): Message Address, Message Upper Address, Message
//! Data and Vector Control, whose bit 0 masks the vector. A vector that fires while masked
//! (by its own mask bit or the Function Mask) sets its pending bit instead, and the message is
//! sent when it is unmasked (§6.8.2.9).
//!
//! Delivery goes through [`MsiVectorRouter`], which the VMM implements with KVM GSI routing
//! (one GSI per vector) and an irqfd per vector.

use std::io;
use std::sync::Arc;

use thiserror::Error;

/// MSI-X capability ID (§6.8.2.1).
pub const MSIX_CAP_ID: u8 = 0x11;
/// Size of one vector table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// The table size field is 11 bits: at most 2048 vectors (§6.8.2.3).
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Message Control: MSI-X Enable.
pub const MSIX_CTRL_ENABLE: u16 = 1 << 15;
/// Message Control: Function Mask.
pub const MSIX_CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector Control: Mask Bit.
const VECTOR_CTRL_MASK: u32 = 1;

/// The MSI message of one vector: a DWORD write of `data` to `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
}

/// What the VMM provides to deliver MSI-X vectors of one device.
///
/// With KVM: one GSI per vector, `update(v, Some(msg))` installs an MSI route for it
/// (KVM_SET_GSI_ROUTING with the whole routing table), `update(v, None)` removes the route
/// (the vector is masked or MSI-X is disabled), and `trigger(v)` writes the vector's irqfd.
/// Initially every vector counts as masked: no `update` is made until the guest enables MSI-X
/// and unmasks a vector, and `trigger` is only called for vectors with a route.
pub trait MsiVectorRouter: Send + Sync {
    fn update(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()>;
    fn trigger(&self, vector: u16) -> io::Result<()>;
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MsixError {
    #[error("an MSI-X table has 1 to 2048 vectors, not {0}")]
    VectorCount(usize),
    #[error("MSI-X table/PBA offset {0:#x} is not 8-byte aligned")]
    Alignment(u32),
}

/// The contents of an MSI-X capability (§6.8.2.1-5): 12 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCapability {
    pub num_vectors: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl MsixCapability {
    /// Length of the capability structure.
    pub const LEN: usize = 12;
    /// Offset of Message Control inside the capability.
    pub const MESSAGE_CONTROL: usize = 2;

    /// The capability bytes (next pointer 0; filled in by the configuration space).
    pub fn bytes(&self) -> Result<[u8; Self::LEN], MsixError> {
        if self.num_vectors == 0 || self.num_vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::VectorCount(self.num_vectors.into()));
        }
        for off in [self.table_offset, self.pba_offset] {
            if off & 7 != 0 {
                return Err(MsixError::Alignment(off));
            }
        }
        let mut b = [0u8; Self::LEN];
        b[0] = MSIX_CAP_ID;
        b[2..4].copy_from_slice(&(self.num_vectors - 1).to_le_bytes());
        b[4..8].copy_from_slice(&(self.table_offset | u32::from(self.table_bar & 7)).to_le_bytes());
        b[8..12].copy_from_slice(&(self.pba_offset | u32::from(self.pba_bar & 7)).to_le_bytes());
        Ok(b)
    }

    /// Write mask: only MSI-X Enable and Function Mask are read/write (§6.8.2.3).
    pub fn write_mask() -> [u8; Self::LEN] {
        let mut m = [0u8; Self::LEN];
        m[3] = ((MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK) >> 8) as u8;
        m
    }

    /// Size in bytes of the vector table.
    pub fn table_size(&self) -> u64 {
        u64::from(self.num_vectors) * MSIX_TABLE_ENTRY_SIZE
    }

    /// Size in bytes of the PBA: one bit per vector in QWORDs (§6.8.2.10).
    pub fn pba_size(&self) -> u64 {
        u64::from(self.num_vectors).div_ceil(64) * 8
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Entry {
    /// Reset state: everything 0 but the mask bit, which is set (§6.8.2.9).
    const RESET: Entry = Entry {
        addr_lo: 0,
        addr_hi: 0,
        data: 0,
        ctrl: VECTOR_CTRL_MASK,
    };

    fn dword(&self, i: usize) -> u32 {
        [self.addr_lo, self.addr_hi, self.data, self.ctrl][i]
    }

    fn set_dword(&mut self, i: usize, v: u32) {
        match i {
            // Message Address bits 1:0 are DWORD alignment; kept zero.
            0 => self.addr_lo = v & !3,
            1 => self.addr_hi = v,
            2 => self.data = v,
            // Vector Control: only the Mask Bit is defined, the rest reads 0.
            _ => self.ctrl = v & VECTOR_CTRL_MASK,
        }
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            addr: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }
}

/// The MSI-X state of one function: vector table, PBA, enable and function mask.
pub struct Msix {
    entries: Vec<Entry>,
    pba: Vec<u64>,
    enabled: bool,
    function_mask: bool,
    /// What the router was last told per vector.
    routed: Vec<Option<MsiMessage>>,
    router: Arc<dyn MsiVectorRouter>,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .field("function_mask", &self.function_mask)
            .finish()
    }
}

impl Msix {
    /// A table of `num_vectors` entries, all masked, MSI-X disabled.
    pub fn new(num_vectors: u16, router: Arc<dyn MsiVectorRouter>) -> Result<Self, MsixError> {
        if num_vectors == 0 || num_vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::VectorCount(num_vectors.into()));
        }
        let n = usize::from(num_vectors);
        Ok(Msix {
            entries: vec![Entry::RESET; n],
            pba: vec![0; n.div_ceil(64)],
            enabled: false,
            function_mask: false,
            routed: vec![None; n],
            router,
        })
    }

    pub fn num_vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// MSI-X Enable is set: the function uses MSI-X, not INTx.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn function_masked(&self) -> bool {
        self.function_mask
    }

    /// Takes the Message Control word after a guest write to the capability.
    pub fn set_message_control(&mut self, ctrl: u16) {
        let enabled = ctrl & MSIX_CTRL_ENABLE != 0;
        let function_mask = ctrl & MSIX_CTRL_FUNCTION_MASK != 0;
        if (enabled, function_mask) == (self.enabled, self.function_mask) {
            return;
        }
        self.enabled = enabled;
        self.function_mask = function_mask;
        for v in 0..self.entries.len() {
            self.sync_vector(v);
        }
    }

    /// Reads the vector table at `offset` (relative to the table start). Bytes outside the
    /// table read 0. Drivers use aligned DWORD/QWORD accesses; any other size works bytewise.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match self.table_byte_index(offset, i) {
                Some((e, d, s)) => self.entries[e].dword(d).to_le_bytes()[s],
                None => 0,
            };
        }
    }

    /// Writes the vector table; updates routes and delivers pending vectors that got unmasked.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let mut first_last: Option<(usize, usize)> = None;
        for (i, &v) in data.iter().enumerate() {
            let Some((e, d, s)) = self.table_byte_index(offset, i) else {
                break;
            };
            let mut bytes = self.entries[e].dword(d).to_le_bytes();
            bytes[s] = v;
            self.entries[e].set_dword(d, u32::from_le_bytes(bytes));
            first_last = Some(first_last.map_or((e, e), |(f, _)| (f, e)));
        }
        if let Some((first, last)) = first_last {
            for e in first..=last {
                self.sync_vector(e);
            }
        }
    }

    /// Reads the PBA at `offset` (relative to its start); bytes outside read 0.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let q = self.pba.get(usize::try_from(o / 8).ok()?)?;
                    Some(q.to_le_bytes()[(o % 8) as usize])
                })
                .unwrap_or(0);
        }
    }

    /// Writes to the PBA are ignored: it is read-only (§6.8.2.10).
    pub fn pba_write(&mut self, _offset: u64, _data: &[u8]) {}

    /// True if `vector` is pending (fired while masked).
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|q| q & (1 << (v % 64)) != 0)
    }

    /// True if `vector` exists and is masked by its own bit or the Function Mask.
    pub fn is_masked(&self, vector: u16) -> bool {
        self.entries
            .get(usize::from(vector))
            .is_none_or(|e| self.function_mask || e.ctrl & VECTOR_CTRL_MASK != 0)
    }

    /// Sends `vector`, or marks it pending if it is masked. Fails for a vector outside the
    /// table; does nothing while MSI-X is disabled (the function then uses INTx).
    pub fn trigger(&mut self, vector: u16) -> io::Result<()> {
        let v = usize::from(vector);
        if v >= self.entries.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MSI-X vector {vector} out of range"),
            ));
        }
        if !self.enabled {
            return Ok(());
        }
        if self.is_masked(vector) {
            self.pba[v / 64] |= 1 << (v % 64);
            return Ok(());
        }
        self.router.trigger(vector)
    }

    /// Function-level reset: every vector masked, MSI-X disabled, nothing pending.
    pub fn reset(&mut self) {
        self.enabled = false;
        self.function_mask = false;
        self.entries.fill(Entry::RESET);
        self.pba.fill(0);
        for v in 0..self.entries.len() {
            self.sync_vector(v);
        }
    }

    /// (entry, dword in entry, byte in dword) of byte `i` of an access at `offset`.
    fn table_byte_index(&self, offset: u64, i: usize) -> Option<(usize, usize, usize)> {
        let o = offset.checked_add(i as u64)?;
        let e = usize::try_from(o / MSIX_TABLE_ENTRY_SIZE).ok()?;
        if e >= self.entries.len() {
            return None;
        }
        let within = (o % MSIX_TABLE_ENTRY_SIZE) as usize;
        Some((e, within / 4, within % 4))
    }

    /// Brings the router in line with vector `v`'s state; sends it if it is pending and now
    /// unmasked.
    fn sync_vector(&mut self, v: usize) {
        let vector = v as u16;
        let live = self.enabled && !self.is_masked(vector);
        let want = live.then(|| self.entries[v].message());
        if want != self.routed[v] {
            if let Err(e) = self.router.update(vector, want) {
                log::warn!("MSI-X: cannot update the route of vector {vector}: {e}");
            }
            self.routed[v] = want;
        }
        if live && self.is_pending(vector) {
            self.pba[v / 64] &= !(1 << (v % 64));
            if let Err(e) = self.router.trigger(vector) {
                log::warn!("MSI-X: cannot deliver pending vector {vector}: {e}");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Call {
        Update(u16, Option<MsiMessage>),
        Trigger(u16),
    }

    /// Records calls; the last call to `update` per vector is its route.
    #[derive(Default)]
    pub(crate) struct MockRouter {
        pub(crate) calls: Mutex<Vec<Call>>,
    }

    impl MockRouter {
        pub(crate) fn take(&self) -> Vec<Call> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    impl MsiVectorRouter for MockRouter {
        fn update(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()> {
            self.calls.lock().unwrap().push(Call::Update(vector, msg));
            Ok(())
        }
        fn trigger(&self, vector: u16) -> io::Result<()> {
            self.calls.lock().unwrap().push(Call::Trigger(vector));
            Ok(())
        }
    }

    fn setup(n: u16) -> (Msix, Arc<MockRouter>) {
        let r = Arc::new(MockRouter::default());
        (Msix::new(n, r.clone()).unwrap(), r)
    }

    fn write_entry(m: &mut Msix, v: u64, addr: u64, data: u32, masked: bool) {
        let base = v * 16;
        m.table_write(base, &(addr as u32).to_le_bytes());
        m.table_write(base + 4, &((addr >> 32) as u32).to_le_bytes());
        m.table_write(base + 8, &data.to_le_bytes());
        m.table_write(base + 12, &u32::from(masked).to_le_bytes());
    }

    fn msg(addr: u64, data: u32) -> MsiMessage {
        MsiMessage { addr, data }
    }

    #[test]
    fn capability_bytes() {
        let cap = MsixCapability {
            num_vectors: 3,
            table_bar: 0,
            table_offset: 0x4000,
            pba_bar: 2,
            pba_offset: 0x6000,
        };
        let b = cap.bytes().unwrap();
        assert_eq!(b[0], 0x11);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 2);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 0x6002);
        assert_eq!(cap.table_size(), 48);
        assert_eq!(cap.pba_size(), 8);
        assert_eq!(
            MsixCapability {
                num_vectors: 65,
                ..cap
            }
            .pba_size(),
            16
        );
        assert_eq!(MsixCapability::write_mask()[3], 0xc0);
        assert!(MsixCapability {
            num_vectors: 0,
            ..cap
        }
        .bytes()
        .is_err());
        assert!(MsixCapability {
            num_vectors: 2049,
            ..cap
        }
        .bytes()
        .is_err());
        assert!(MsixCapability {
            table_offset: 4,
            ..cap
        }
        .bytes()
        .is_err());
        assert!(Msix::new(0, Arc::new(MockRouter::default())).is_err());
        assert!(Msix::new(2049, Arc::new(MockRouter::default())).is_err());
    }

    #[test]
    fn table_reset_state_and_readback() {
        let (mut m, r) = setup(4);
        let mut d = [0u8; 16];
        m.table_read(16, &mut d);
        assert_eq!(d, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        write_entry(&mut m, 1, 0x1_fee0_1003, 0x4041, true);
        m.table_read(16, &mut d);
        // Address bits 1:0 dropped, vector control reserved bits read 0.
        assert_eq!(u32::from_le_bytes(d[0..4].try_into().unwrap()), 0xfee0_1000);
        assert_eq!(u32::from_le_bytes(d[4..8].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(d[8..12].try_into().unwrap()), 0x4041);
        m.table_write(28, &0xffff_ffffu32.to_le_bytes());
        let mut c = [0u8; 4];
        m.table_read(28, &mut c);
        assert_eq!(c, [1, 0, 0, 0]);
        // QWORD access.
        m.table_write(32, &0x0000_0002_fee0_0000u64.to_le_bytes());
        let mut q = [0u8; 8];
        m.table_read(32, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x0000_0002_fee0_0000);
        // Outside the table: reads 0, writes ignored.
        m.table_read(64, &mut c);
        assert_eq!(c, [0; 4]);
        m.table_write(64, &[0xff; 4]);
        m.table_read(u64::MAX, &mut c);
        m.table_write(u64::MAX - 1, &[0xff; 4]);
        // Masked and disabled: no route was ever installed.
        assert!(r.take().is_empty());
    }

    #[test]
    fn routes_follow_enable_and_masks() {
        let (mut m, r) = setup(4);
        write_entry(&mut m, 0, 0xfee0_0000, 0x30, false);
        // Unmasked but MSI-X disabled: no route.
        assert!(r.take().is_empty());
        m.set_message_control(MSIX_CTRL_ENABLE);
        assert_eq!(
            r.take(),
            vec![Call::Update(0, Some(msg(0xfee0_0000, 0x30)))]
        );
        // Changing the data of a live vector updates the route.
        m.table_write(8, &0x31u32.to_le_bytes());
        assert_eq!(
            r.take(),
            vec![Call::Update(0, Some(msg(0xfee0_0000, 0x31)))]
        );
        // Rewriting the same value does nothing.
        m.table_write(8, &0x31u32.to_le_bytes());
        assert!(r.take().is_empty());
        // Function mask removes every live route.
        m.set_message_control(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
        assert_eq!(r.take(), vec![Call::Update(0, None)]);
        m.set_message_control(MSIX_CTRL_ENABLE);
        assert_eq!(
            r.take(),
            vec![Call::Update(0, Some(msg(0xfee0_0000, 0x31)))]
        );
        // Masking one vector.
        m.table_write(12, &1u32.to_le_bytes());
        assert_eq!(r.take(), vec![Call::Update(0, None)]);
        m.table_write(12, &0u32.to_le_bytes());
        assert_eq!(
            r.take(),
            vec![Call::Update(0, Some(msg(0xfee0_0000, 0x31)))]
        );
        // Disabling.
        m.set_message_control(0);
        assert_eq!(r.take(), vec![Call::Update(0, None)]);
        m.set_message_control(0);
        assert!(r.take().is_empty());
    }

    #[test]
    fn masked_vectors_pend_and_deliver_on_unmask() {
        let (mut m, r) = setup(70);
        m.set_message_control(MSIX_CTRL_ENABLE);
        write_entry(&mut m, 65, 0xfee0_0000, 0x41, true);
        r.take();
        // Fires while masked: pending bit in the second PBA qword.
        m.trigger(65).unwrap();
        assert!(m.is_pending(65));
        assert!(r.take().is_empty());
        let mut q = [0u8; 8];
        m.pba_read(8, &mut q);
        assert_eq!(u64::from_le_bytes(q), 1 << 1);
        // The PBA is read-only.
        m.pba_write(8, &[0; 8]);
        assert!(m.is_pending(65));
        // Unmask: route installed, then the pending message sent and the bit cleared.
        m.table_write(65 * 16 + 12, &0u32.to_le_bytes());
        assert_eq!(
            r.take(),
            vec![
                Call::Update(65, Some(msg(0xfee0_0000, 0x41))),
                Call::Trigger(65)
            ]
        );
        assert!(!m.is_pending(65));
        // Unmasked: straight through.
        m.trigger(65).unwrap();
        assert_eq!(r.take(), vec![Call::Trigger(65)]);
        // Function mask: pends, delivered when the function mask is cleared.
        m.set_message_control(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
        r.take();
        m.trigger(65).unwrap();
        assert!(m.is_pending(65));
        m.set_message_control(MSIX_CTRL_ENABLE);
        assert_eq!(
            r.take(),
            vec![
                Call::Update(65, Some(msg(0xfee0_0000, 0x41))),
                Call::Trigger(65)
            ]
        );
        // Out of range vector, disabled MSI-X.
        assert!(m.trigger(70).is_err());
        m.set_message_control(0);
        r.take();
        m.trigger(65).unwrap();
        assert!(!m.is_pending(65));
        assert!(r.take().is_empty());
        let mut d = [0xffu8; 4];
        m.pba_read(16, &mut d);
        assert_eq!(d, [0; 4]);
        m.pba_read(u64::MAX, &mut d);
    }

    #[test]
    fn reset_masks_everything() {
        let (mut m, r) = setup(2);
        m.set_message_control(MSIX_CTRL_ENABLE);
        write_entry(&mut m, 1, 0xfee0_0000, 7, false);
        m.table_write(12, &1u32.to_le_bytes());
        m.trigger(0).unwrap();
        r.take();
        m.reset();
        assert!(!m.enabled() && !m.function_masked());
        assert!(!m.is_pending(0));
        assert!(m.is_masked(1));
        assert_eq!(r.take(), vec![Call::Update(1, None)]);
    }

    #[test]
    fn byte_writes_spanning_entries() {
        let (mut m, r) = setup(2);
        m.set_message_control(MSIX_CTRL_ENABLE);
        // One 32-byte write unmasks both entries.
        let mut buf = [0u8; 32];
        buf[0..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        buf[16..20].copy_from_slice(&0xfee0_1000u32.to_le_bytes());
        m.table_write(0, &buf);
        assert_eq!(
            r.take(),
            vec![
                Call::Update(0, Some(msg(0xfee0_0000, 0))),
                Call::Update(1, Some(msg(0xfee0_1000, 0)))
            ]
        );
    }
}
