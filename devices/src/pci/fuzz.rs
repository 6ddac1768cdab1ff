//! Fuzzing harness for PCI configuration space and BAR dispatch (used by
//! `fuzz/fuzz_targets/pci_config.rs` and by the seed-corpus replay test).
//!
//! The machine is bus 0 as kvmrun builds it: the host bridge at 00:00.0, a virtio-pci device
//! (the real modern transport with its MSI-X table and PBA, around an inert [`VirtioDevice`]
//! whose `activate` starts no worker, so runs are deterministic and thread-free) at 00:01.0, an
//! e1000 (real model, in-memory back-end, no worker) at 00:02.0, and an empty slot 3. Accesses
//! go through the same entry points a vCPU uses: [`PciRoot`] at ports 0xcf8..0xcff
//! (configuration mechanism #1) and the MMIO and I/O [`PciWindow`]s.
//!
//! Input: a list of 8-byte operations `[op, a, b, c, value (u32 LE)]`; a trailing partial
//! operation is ignored. `slot = a % 4`, `len = [1, 2, 4][op / 6 % 3]`:
//! - op % 6 == 0: configuration write of `len` bytes of `value` to register `b` of `slot`
//!   (CONFIG_ADDRESS then CONFIG_DATA + (b & 3), as a driver does);
//! - 1: configuration read, same addressing;
//! - 2 / 3: MMIO write / read of `len` bytes at offset `u16(b, c)` from where BAR `a / 4 % 6`
//!   of `slot` decodes now (so MSI-X table and PBA offsets are reached directly), or from the
//!   window base when that BAR does not exist;
//! - 4: I/O window write (`value & 1 == 0`) or read at the same kind of address;
//! - 5: raw access to ports 0xcf8 + (b % 8) with length `c % 5` (0..=4), write if `a` is odd.
//!
//! After every operation the harness checks what the PCI specification requires and kvmrun's
//! dispatch relies on: every BAR is naturally aligned (§6.2.5.1: the low bits of a BAR are
//! read-only zero, which is what makes sizing work), and the window tables agree with where
//! each device says its BARs are. After a DWORD write of an address (not the all-ones sizing
//! probe) to a 32-bit BAR register, the BAR decodes at that address with its low bits cleared.

use std::io;
use std::sync::Arc;

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::bus::{PciRoot, PciWindow};
use super::config_space::{BarKind, BAR0};
use super::msix::{MsiMessage, MsiVectorRouter};
use crate::bus::BusDevice;
use crate::e1000::fuzz::MockBackend;
use crate::e1000::E1000;
use crate::virtio::{
    ActivateError, GuestMemoryAtomic, GuestMemoryMmap, QueueActivation, VirtioDevice,
    VirtioInterrupt, VirtioPciDevice,
};

const MMIO_BASE: u64 = 0xc000_0000;
const MMIO_SIZE: u64 = 0x3ec0_0000;
const IO_BASE: u64 = 0xc000;
const IO_SIZE: u64 = 0x4000;
const OP_LEN: usize = 8;

/// A virtio device that does nothing: the harness is about the transport and PCI layers.
struct InertDevice {
    config: [u8; 16],
}

impl VirtioDevice for InertDevice {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256, 256, 64]
    }
    fn device_features(&self) -> u64 {
        1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1
            | 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::device_config::read(&self.config, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        _mem: GuestMemoryAtomic,
        _interrupt: Arc<dyn VirtioInterrupt>,
        _queues: Vec<QueueActivation>,
    ) -> Result<(), ActivateError> {
        Ok(())
    }
    fn reset(&mut self) {}
}

/// Records nothing; delivery always succeeds.
struct NullRouter;

impl MsiVectorRouter for NullRouter {
    fn update(&self, _vector: u16, _msg: Option<MsiMessage>) -> io::Result<()> {
        Ok(())
    }
    fn trigger(&self, _vector: u16) -> io::Result<()> {
        Ok(())
    }
}

/// Bus 0 with its devices, as the harness drives it.
pub struct Machine {
    pub root: PciRoot,
    mmio: Arc<PciWindow>,
    io: Arc<PciWindow>,
    // The INTx eventfds must stay open for the devices to signal them.
    _intx: Vec<EventFd>,
}

impl Machine {
    pub fn new() -> Self {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("guest memory"),
        );
        let intx: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
            .collect();
        let mut root = PciRoot::new(MMIO_BASE, MMIO_SIZE, IO_BASE, IO_SIZE).expect("PCI root");
        let virtio = VirtioPciDevice::new(
            Box::new(InertDevice {
                config: *b"0123456789abcdef",
            }),
            mem.clone(),
            Arc::new(NullRouter),
            intx[0].try_clone().expect("eventfd"),
        )
        .expect("virtio-pci device");
        root.add_device_at(1, Arc::new(virtio))
            .expect("virtio slot");
        let e1000 = E1000::new(
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            mem,
            intx[1].try_clone().expect("eventfd"),
            Box::new(MockBackend::new()),
        )
        .expect("e1000");
        root.add_device_at(2, Arc::new(e1000)).expect("e1000 slot");
        let mmio = root.mmio_window();
        let io = root.io_window();
        Machine {
            root,
            mmio,
            io,
            _intx: intx,
        }
    }

    fn select(&self, slot: u8, register: u8) {
        let addr = 1u32 << 31 | u32::from(slot) << 11 | u32::from(register & 0xfc);
        self.root.write(0, &addr.to_le_bytes());
    }

    /// Window offset for `offset` bytes into BAR `bar` of `slot` (or into the window).
    fn bar_offset(&self, slot: u8, bar: usize, offset: u64, window: &PciWindow) -> u64 {
        let base = self
            .root
            .device(slot)
            .and_then(|d| d.bars().into_iter().find(|b| b.index == bar))
            .map(|b| b.addr)
            .unwrap_or(window.base());
        base.wrapping_add(offset).wrapping_sub(window.base())
    }

    /// After `value` was written as a DWORD to configuration register `register` of `slot`:
    /// if that is a 32-bit BAR, it must now decode at `value` without its low bits.
    fn check_bar_written(&self, slot: u8, register: u8, value: u32) {
        let Some(dev) = self.root.device(slot) else {
            return;
        };
        let reg = usize::from(register);
        let Some(bar) = dev
            .bars()
            .into_iter()
            .find(|b| b.kind != BarKind::Mmio64 && BAR0 + 4 * b.index == reg)
        else {
            return;
        };
        let want = u64::from(value) & !(bar.size - 1) & 0xffff_ffff;
        assert_eq!(
            bar.addr, want,
            "slot {slot} BAR {} at {:#x} after {value:#x} was written to it",
            bar.index, bar.addr
        );
    }

    /// Checks the invariants listed in the module documentation; panics on a violation.
    pub fn check(&self) {
        for slot in 1..=2u8 {
            let Some(dev) = self.root.device(slot) else {
                continue;
            };
            for b in dev.bars() {
                assert!(
                    b.size.is_power_of_two() && b.addr % b.size == 0,
                    "slot {slot} BAR {} at {:#x} is not aligned to its size {:#x}",
                    b.index,
                    b.addr,
                    b.size
                );
                let window = if b.kind.is_mmio() {
                    &self.mmio
                } else {
                    &self.io
                };
                let mapped: Vec<_> = window
                    .mappings()
                    .into_iter()
                    .filter(|m| m.0 == slot && m.1 == b.index)
                    .collect();
                assert_eq!(
                    mapped,
                    vec![(slot, b.index, b.addr, b.size)],
                    "window table and device disagree on slot {slot} BAR {}",
                    b.index
                );
            }
        }
    }
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs one input; returns the number of operations executed.
pub fn run(data: &[u8]) -> usize {
    let m = Machine::new();
    let mut n = 0;
    for op in data.chunks_exact(OP_LEN) {
        let (kind, a, b, c) = (op[0] % 6, op[1], op[2], op[3]);
        let value = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        let slot = a % 4;
        let len = [1usize, 2, 4][usize::from(op[0] / 6 % 3)];
        let bytes = value.to_le_bytes();
        let mut buf = [0u8; 4];
        match kind {
            0 | 1 => {
                m.select(slot, b);
                // A DWORD access stays DWORD aligned, a word one inside the DWORD (§3.2.2.3.2).
                let offset = 4 + u64::from(b & 3) / len as u64 * len as u64;
                if kind == 0 {
                    m.root.write(offset, &bytes[..len]);
                    if len == 4 && value != u32::MAX {
                        m.check_bar_written(slot, b & 0xfc, value);
                    }
                } else {
                    m.root.read(offset, &mut buf[..len]);
                }
            }
            2 | 3 => {
                let bar = usize::from(a / 4 % 6);
                let off = m.bar_offset(slot, bar, u64::from(u16::from_le_bytes([b, c])), &m.mmio);
                if kind == 2 {
                    m.mmio.write(off, &bytes[..len]);
                } else {
                    m.mmio.read(off, &mut buf[..len]);
                }
            }
            4 => {
                let off = m.bar_offset(slot, 1, u64::from(b & 0xf), &m.io);
                if value & 1 == 0 {
                    m.io.write(off, &bytes[..len]);
                } else {
                    m.io.read(off, &mut buf[..len]);
                }
            }
            _ => {
                let len = usize::from(c % 5);
                let offset = u64::from(b % 8);
                if a & 1 == 1 {
                    m.root.write(offset, &bytes[..len]);
                } else {
                    m.root.read(offset, &mut buf[..len]);
                }
            }
        }
        m.check();
        n += 1;
    }
    n
}

/// Builds fuzz inputs by hand (for the seed corpus and tests).
#[derive(Default)]
pub struct InputBuilder {
    bytes: Vec<u8>,
}

impl InputBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// One operation of `kind` (0..6) with an access of `len` (1, 2 or 4) bytes.
    fn op(&mut self, kind: u8, len: u8, a: u8, b: u8, c: u8, value: u32) -> &mut Self {
        let len_sel = match len {
            1 => 0,
            2 => 1,
            _ => 2,
        };
        self.bytes.extend_from_slice(&[kind + 6 * len_sel, a, b, c]);
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A DWORD configuration write.
    pub fn config_write(&mut self, slot: u8, register: u8, value: u32) -> &mut Self {
        self.op(0, 4, slot, register, 0, value)
    }

    /// A configuration write of `len` (1, 2 or 4) bytes.
    pub fn config_write_len(&mut self, slot: u8, register: u8, len: u8, value: u32) -> &mut Self {
        self.op(0, len, slot, register, 0, value)
    }

    pub fn config_read(&mut self, slot: u8, register: u8) -> &mut Self {
        self.op(1, 4, slot, register, 0, 0)
    }

    /// A DWORD MMIO write at `offset` into BAR `bar` of `slot`.
    pub fn mmio_write(&mut self, slot: u8, bar: u8, offset: u16, value: u32) -> &mut Self {
        let [b, c] = offset.to_le_bytes();
        self.op(2, 4, slot + 4 * bar, b, c, value)
    }

    pub fn mmio_read(&mut self, slot: u8, bar: u8, offset: u16) -> &mut Self {
        let [b, c] = offset.to_le_bytes();
        self.op(3, 4, slot + 4 * bar, b, c, 0)
    }

    pub fn io_access(&mut self, slot: u8, offset: u8, write: bool, value: u32) -> &mut Self {
        self.op(4, 4, slot, offset, 0, (value & !1) | u32::from(!write))
    }

    /// `len` 0..=4 (the raw port access takes any length).
    pub fn raw_port(&mut self, write: bool, offset: u8, len: u8, value: u32) -> &mut Self {
        self.op(5, 1, u8::from(write), offset, len, value)
    }

    pub fn build(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

/// The hand-written seeds: what a driver does at probe time, and what a hostile one tries.
pub fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();

    // BAR sizing (§6.2.5.1): all ones, read back, restore, for every BAR of both devices.
    let mut sizing = InputBuilder::new();
    for slot in [1u8, 2] {
        for bar in 0..6u8 {
            let reg = 0x10 + 4 * bar;
            sizing
                .config_read(slot, reg)
                .config_write(slot, reg, 0xffff_ffff)
                .config_read(slot, reg)
                .config_write(slot, reg, 0);
        }
    }
    seeds.push(("bar_sizing", sizing.build()));

    // Move the virtio BAR (64-bit, two registers) and the e1000 BARs, enable decoding, then
    // touch the moved BARs.
    let mut moved = InputBuilder::new();
    moved
        .config_write(1, 0x10, 0xd000_0000)
        .config_write(1, 0x14, 0)
        .config_write(2, 0x10, 0xd100_0000)
        .config_write(2, 0x14, 0xc100)
        .config_write_len(1, 0x04, 2, 0x0007)
        .config_write_len(2, 0x04, 2, 0x0007)
        .mmio_read(1, 0, 0x0000)
        .mmio_read(2, 0, 0x0008)
        .io_access(2, 0, true, 0x8)
        .io_access(2, 4, false, 0);
    seeds.push(("bar_move", moved.build()));

    // Command register: decode off and on, INTx disable, bus master, W1C status bits.
    let mut command = InputBuilder::new();
    for cmd in [0u32, 0x2, 0x6, 0x406, 0xffff, 0xffff_0000] {
        command
            .config_write(1, 0x04, cmd)
            .config_read(1, 0x04)
            .config_write(2, 0x04, cmd)
            .mmio_read(2, 0, 0x0008);
    }
    seeds.push(("command", command.build()));

    // MSI-X: enable through the capability's Message Control, program and unmask vector 0 in
    // the table (BAR 0 + 0x4000), read the PBA (BAR 0 + 0x6000), mask the function.
    let mut msix = InputBuilder::new();
    msix.config_write_len(1, 0x04, 2, 0x0006);
    // The capability list starts at 0x40; walk it as a driver does.
    for reg in (0x40u8..0x80).step_by(4) {
        msix.config_read(1, reg);
    }
    for reg in (0x40u8..0x80).step_by(4) {
        // Set MSI-X Enable (bit 15 of Message Control, the upper half of the capability's
        // first DWORD) wherever the capability is; other capabilities ignore it.
        msix.config_write_len(1, reg + 2, 2, 0x8000);
    }
    msix.mmio_write(1, 0, 0x4000, 0xfee0_0000)
        .mmio_write(1, 0, 0x4004, 0)
        .mmio_write(1, 0, 0x4008, 0x41)
        .mmio_write(1, 0, 0x400c, 0)
        .mmio_read(1, 0, 0x6000)
        .mmio_write(1, 0, 0x6000, 0xffff_ffff)
        .mmio_read(1, 0, 0x4000);
    for reg in (0x40u8..0x80).step_by(4) {
        msix.config_write_len(1, reg + 2, 2, 0xc000);
    }
    seeds.push(("msix", msix.build()));

    // Odd accesses: every length at every port of 0xcf8..0xcff, the empty slot, the host
    // bridge's read-only header, registers past the header.
    let mut odd = InputBuilder::new();
    for offset in 0..8u8 {
        for len in 0..5u8 {
            odd.raw_port(true, offset, len, 0x8000_0810)
                .raw_port(false, offset, len, 0);
        }
    }
    odd.config_write(3, 0x10, 0xffff_ffff)
        .config_read(3, 0x00)
        .config_write(0, 0x00, 0)
        .config_write(0, 0x10, 0xffff_ffff)
        .config_write(1, 0xfc, 0xffff_ffff)
        .config_write(2, 0x30, 0xffff_ffff);
    seeds.push(("odd_accesses", odd.build()));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_u32(m: &Machine, slot: u8, reg: u8) -> u32 {
        m.select(slot, reg);
        let mut b = [0u8; 4];
        m.root.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn seeds_run_every_operation() {
        for (name, input) in seed_inputs() {
            assert_eq!(run(&input), input.len() / OP_LEN, "{name}");
        }
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let m = Machine::new();
        // e1000 BAR 0: 128 KiB of 32-bit memory; BAR 1: 8 bytes of I/O (§6.2.5.1).
        m.select(2, 0x10);
        m.root.write(4, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(config_u32(&m, 2, 0x10), !(0x20000u32 - 1));
        m.select(2, 0x14);
        m.root.write(4, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(config_u32(&m, 2, 0x14) & !0x3, !(8u32 - 1) & !0x3);
        m.check();
    }

    #[test]
    fn the_check_catches_a_window_out_of_step() {
        let m = Machine::new();
        let dev = m.root.device(2).unwrap();
        // Move the BAR behind the window's back: the check must notice.
        dev.set_bar_address(0, 0xd000_0000).unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.check()));
        assert!(caught.is_err());
    }

    crate::fuzz_corpus::corpus_tests!(
        target: "pci_config",
        seeds: seed_inputs(),
        run: run,
        write_seeds: write_pci_seed_corpus,
    );

    #[test]
    fn short_and_empty_inputs() {
        assert_eq!(run(&[]), 0);
        assert_eq!(run(&[0; 7]), 0);
        assert_eq!(run(&[0xff; 64]), 8);
    }
}
