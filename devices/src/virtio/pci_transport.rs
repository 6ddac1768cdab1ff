//! The modern virtio-pci transport (virtio 1.2 §4.1), for any [`VirtioDevice`].
//!
//! PCI identity (§4.1.2): vendor 0x1af4, device 0x1040 + device type, revision 1 (modern only,
//! no legacy I/O BAR), subsystem vendor 0x1af4, subsystem 0x40.
//!
//! Everything lives in one 64-bit, non-prefetchable memory BAR ([`VIRTIO_BAR`], 32 KiB),
//! described to the driver by vendor-specific capabilities (§4.1.4):
//!
//! | BAR offset | what | capability |
//! |---|---|---|
//! | 0x0000 | common configuration (§4.1.4.3) | cfg_type 1 |
//! | 0x1000 | ISR status (§4.1.4.5) | cfg_type 3 |
//! | 0x2000 | device-specific configuration (§4.1.4.6) | cfg_type 4 |
//! | 0x3000 | notifications, queue n at 0x3000 + 4n (§4.1.4.4) | cfg_type 2, multiplier 4 |
//! | 0x4000 | MSI-X table, queues + 1 vectors (PCI 3.0 §6.8.2) | MSI-X capability |
//! | 0x6000 | MSI-X PBA | |
//!
//! plus the PCI configuration access capability (cfg_type 5, §4.1.4.9) for drivers that cannot
//! map the BAR.
//!
//! Notifications: one `EventFd` per queue. The VMM registers each as a KVM ioeventfd at
//! BAR address + offset ([`VirtioPciDevice::ioeventfds`]) and moves it when the guest moves the
//! BAR; a notify write that reaches the device anyway (no ioeventfd) signals the same `EventFd`.
//!
//! Interrupts: with MSI-X enabled, configuration and queue interrupts go to the vectors the
//! driver chose (`config_msix_vector`, `queue_msix_vector`) through the [`MsiVectorRouter`].
//! Otherwise they set the ISR bit and raise INTx by writing the INTx `EventFd` given at
//! construction (a level-triggered irqfd with resample: on each resample the VMM calls
//! [`VirtioPciDevice::intx_resample`], which re-raises the line while the ISR is not zero).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    ActivateError, GuestMemoryAtomic, QueueActivation, VirtioDevice, VirtioInterrupt,
    VirtioInterruptType,
};
use crate::lock;
use crate::log_once::LogOnce;
use crate::pci::config_space::{
    BarKind, BarReprogram, PciBar, PciConfigError, PciConfigSpace, PciHeader,
};
use crate::pci::msix::{MsiVectorRouter, Msix, MsixCapability, MsixError};
use crate::pci::PciDevice;

/// PCI vendor ID of virtio devices (§4.1.2).
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device type (§4.1.2.1).
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID of the transport's devices.
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x40;
/// Revision ID of a modern-only device (§4.1.2.1: "at least 1").
pub const VIRTIO_PCI_REVISION: u8 = 1;

/// The BAR holding all virtio structures, the notify region and MSI-X.
pub const VIRTIO_BAR: usize = 0;
/// Its size.
pub const VIRTIO_BAR_SIZE: u64 = 0x8000;
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Length of the common configuration structure (up to `queue_device`; `queue_notify_data`
/// and `queue_reset` need features this transport does not offer).
pub const COMMON_CFG_LEN: u64 = 0x38;
pub const ISR_OFFSET: u64 = 0x1000;
pub const ISR_LEN: u64 = 1;
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
pub const DEVICE_CFG_LEN: u64 = 0x1000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// `notify_off_multiplier`: queue n is notified at `NOTIFY_OFFSET + n * 4`.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Each region is one 4 KiB page of the BAR (the MSI-X table two).
const REGION_LEN: u64 = 0x1000;
/// Vectors are queues + 1, and the table has room for 512 vectors.
pub const MAX_QUEUES: usize = 511;
/// The largest split virtqueue (§2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// "No vector" for `config_msix_vector` / `queue_msix_vector` (§4.1.5.1.2).
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// ISR bits (§4.1.4.5).
pub const VIRTIO_ISR_QUEUE: u8 = 0x1;
pub const VIRTIO_ISR_CONFIG: u8 = 0x2;

// Vendor-specific capability types (§4.1.4).
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
const PCI_CAP_ID_VNDR: u8 = 0x09;

// Common configuration fields (§4.1.4.3): offset and width.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
const COMMON_FIELDS: [(u64, u64); 16] = [
    (DEVICE_FEATURE_SELECT, 4),
    (DEVICE_FEATURE, 4),
    (DRIVER_FEATURE_SELECT, 4),
    (DRIVER_FEATURE, 4),
    (CONFIG_MSIX_VECTOR, 2),
    (NUM_QUEUES, 2),
    (DEVICE_STATUS, 1),
    (CONFIG_GENERATION, 1),
    (QUEUE_SELECT, 2),
    (QUEUE_SIZE, 2),
    (QUEUE_MSIX_VECTOR, 2),
    (QUEUE_ENABLE, 2),
    (QUEUE_NOTIFY_OFF, 2),
    (QUEUE_DESC, 8),
    (QUEUE_DRIVER, 8),
    (QUEUE_DEVICE, 8),
];

const STATUS_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const STATUS_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const STATUS_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

/// Errors in building the transport (VMM or device-model bugs, not guest actions).
#[derive(Debug, Error)]
pub enum VirtioPciError {
    #[error("a virtio-pci device has 1 to {MAX_QUEUES} queues, not {0}")]
    QueueCount(usize),
    #[error("queue {index}: maximum size {size} is not a power of two in 1..=32768")]
    QueueMaxSize { index: usize, size: u16 },
    #[error("device type {0} does not fit a PCI device ID")]
    DeviceType(u32),
    #[error("the device does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
    #[error("configuration space: {0}")]
    Config(#[from] PciConfigError),
    #[error("MSI-X: {0}")]
    Msix(#[from] MsixError),
    #[error("cannot create a queue notification eventfd: {0}")]
    EventFd(#[source] io::Error),
}

/// PCI class code by device type: block → mass storage/other, net → network/Ethernet,
/// anything else → "device does not fit any defined class".
fn class_code(device_type: u32) -> u32 {
    match device_type {
        1 => 0x02_00_00,
        2 => 0x01_80_00,
        _ => 0xff_00_00,
    }
}

/// A `struct virtio_pci_cap` (§4.1.4) with optional trailing bytes.
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut c = vec![
        PCI_CAP_ID_VNDR,
        0,
        (16 + extra.len()) as u8,
        cfg_type,
        VIRTIO_BAR as u8,
        0, // id: only one structure of each type
        0,
        0,
    ];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    c.extend_from_slice(extra);
    c
}

/// Interrupt delivery for one device; shared with the device's worker thread.
struct PciInterrupt {
    msix: Mutex<Msix>,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    isr: AtomicU8,
    intx: EventFd,
    intx_disabled: AtomicBool,
}

impl PciInterrupt {
    fn raise_intx(&self, bit: u8) -> io::Result<()> {
        self.isr.fetch_or(bit, Ordering::AcqRel);
        if self.intx_disabled.load(Ordering::Acquire) {
            return Ok(());
        }
        self.intx.write(1)
    }

    fn msix_enabled(&self) -> bool {
        lock(&self.msix).enabled()
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn trigger(&self, int_type: VirtioInterruptType) -> io::Result<()> {
        let (vector, isr_bit) = match int_type {
            VirtioInterruptType::Config => (&self.config_vector, VIRTIO_ISR_CONFIG),
            VirtioInterruptType::Queue(q) => match self.queue_vectors.get(usize::from(q)) {
                Some(v) => (v, VIRTIO_ISR_QUEUE),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("virtio-pci: interrupt for queue {q}, which does not exist"),
                    ))
                }
            },
        };
        let mut msix = lock(&self.msix);
        if msix.enabled() {
            // §4.1.5.1.2: with MSI-X enabled, an event mapped to NO_VECTOR is not signalled.
            let v = vector.load(Ordering::Acquire);
            if v == VIRTIO_MSI_NO_VECTOR {
                return Ok(());
            }
            return msix.trigger(v);
        }
        drop(msix);
        self.raise_intx(isr_bit)
    }
}

#[derive(Debug, Clone, Copy)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

struct Inner {
    config: PciConfigSpace,
    device: Box<dyn VirtioDevice>,
    msix_cap: usize,
    pci_cfg_cap: usize,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<QueueConfig>,
    activated: bool,
}

/// A virtio device on PCI (modern transport). Implements [`PciDevice`]; add it to a
/// [`PciRoot`](crate::pci::PciRoot).
pub struct VirtioPciDevice {
    inner: Mutex<Inner>,
    interrupt: Arc<PciInterrupt>,
    notify: Vec<EventFd>,
    mem: GuestMemoryAtomic,
    device_features: u64,
    unknown: LogOnce,
}

impl VirtioPciDevice {
    /// Wraps `device`. `msi_router` delivers its MSI-X vectors (0 = first, queues + 1 of
    /// them); `intx` is the level-triggered INTx irqfd (used while MSI-X is disabled).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryAtomic,
        msi_router: Arc<dyn MsiVectorRouter>,
        intx: EventFd,
    ) -> Result<Self, VirtioPciError> {
        let device_type = device.device_type();
        let id_offset = u16::try_from(device_type)
            .ok()
            .filter(|&t| t <= 0xffff - VIRTIO_PCI_DEVICE_ID_BASE)
            .ok_or(VirtioPciError::DeviceType(device_type))?;
        let max_sizes = device.queue_max_sizes();
        if max_sizes.is_empty() || max_sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(max_sizes.len()));
        }
        for (index, &size) in max_sizes.iter().enumerate() {
            if !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
                return Err(VirtioPciError::QueueMaxSize { index, size });
            }
        }
        let device_features = device.device_features();
        if device_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(VirtioPciError::NoVersion1);
        }
        let num_queues = max_sizes.len();

        let mut config = PciConfigSpace::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE + id_offset,
            revision_id: VIRTIO_PCI_REVISION,
            class_code: class_code(device_type),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
            interrupt_pin: 1,
        });
        config.add_bar(VIRTIO_BAR, VIRTIO_BAR_SIZE, BarKind::Mmio64, false)?;
        config.add_capability(&virtio_cap(
            VIRTIO_PCI_CAP_COMMON_CFG,
            COMMON_CFG_OFFSET,
            COMMON_CFG_LEN,
            &[],
        ))?;
        config.add_capability(&virtio_cap(
            VIRTIO_PCI_CAP_ISR_CFG,
            ISR_OFFSET,
            ISR_LEN,
            &[],
        ))?;
        config.add_capability(&virtio_cap(
            VIRTIO_PCI_CAP_DEVICE_CFG,
            DEVICE_CFG_OFFSET,
            DEVICE_CFG_LEN,
            &[],
        ))?;
        config.add_capability(&virtio_cap(
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            NOTIFY_OFFSET,
            num_queues as u64 * u64::from(NOTIFY_OFF_MULTIPLIER),
            &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
        ))?;
        // virtio_pci_cfg_cap: bar, offset, length and pci_cfg_data are read/write.
        let cfg_cap = virtio_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, &[0; 4]);
        let mut cfg_mask = vec![0u8; cfg_cap.len()];
        cfg_mask[4] = 0xff;
        cfg_mask[8..20].fill(0xff);
        let pci_cfg_cap = config.add_capability_with_mask(&cfg_cap, &cfg_mask)?;
        let num_vectors = num_queues as u16 + 1;
        let msix_cap = MsixCapability {
            num_vectors,
            table_bar: VIRTIO_BAR as u8,
            table_offset: MSIX_TABLE_OFFSET as u32,
            pba_bar: VIRTIO_BAR as u8,
            pba_offset: MSIX_PBA_OFFSET as u32,
        };
        let msix_cap =
            config.add_capability_with_mask(&msix_cap.bytes()?, &MsixCapability::write_mask())?;

        let notify = (0..num_queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(VirtioPciError::EventFd)?;
        let interrupt = Arc::new(PciInterrupt {
            msix: Mutex::new(Msix::new(num_vectors, msi_router)?),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: (0..num_queues)
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
            isr: AtomicU8::new(0),
            intx,
            intx_disabled: AtomicBool::new(false),
        });
        Ok(VirtioPciDevice {
            inner: Mutex::new(Inner {
                config,
                device,
                msix_cap,
                pci_cfg_cap,
                device_feature_select: 0,
                driver_feature_select: 0,
                driver_features: 0,
                status: 0,
                config_generation: 0,
                queue_select: 0,
                queues: max_sizes.into_iter().map(QueueConfig::new).collect(),
                activated: false,
            }),
            interrupt,
            notify,
            mem,
            device_features,
            unknown: LogOnce::new("virtio-pci"),
        })
    }

    /// (offset inside [`VIRTIO_BAR`], eventfd) of each queue's notification address, in queue
    /// order. Register each as a KVM ioeventfd at `bar address + offset` (any access length,
    /// no datamatch) and move them when the BAR moves.
    pub fn ioeventfds(&self) -> Vec<(u64, &EventFd)> {
        self.notify
            .iter()
            .enumerate()
            .map(|(q, e)| (notify_offset(q), e))
            .collect()
    }

    /// The INTx eventfd passed at construction (register as irqfd with a resample fd).
    pub fn intx_eventfd(&self) -> &EventFd {
        &self.interrupt.intx
    }

    /// Call when the INTx resample fd fires (the guest EOI'd the level interrupt): raises the
    /// line again while the ISR still has bits set, the driver not having read it yet.
    pub fn intx_resample(&self) {
        let i = &self.interrupt;
        if i.isr.load(Ordering::Acquire) != 0
            && !i.intx_disabled.load(Ordering::Acquire)
            && !i.msix_enabled()
        {
            if let Err(e) = i.intx.write(1) {
                log::warn!("virtio-pci: cannot re-raise INTx: {e}");
            }
        }
    }

    /// Tells the driver the device configuration changed (§4.1.4.3: config_generation moves,
    /// then a configuration change interrupt).
    pub fn config_changed(&self) {
        {
            let mut inner = lock(&self.inner);
            inner.config_generation = inner.config_generation.wrapping_add(1);
        }
        if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Config) {
            log::warn!("virtio-pci: cannot signal a configuration change: {e}");
        }
    }

    /// The interrupt object handed to the device at activation.
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.interrupt.clone()
    }

    /// The device status byte (§2.1).
    pub fn device_status(&self) -> u8 {
        lock(&self.inner).status
    }

    fn bar_read_inner(&self, inner: Option<&mut Inner>, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        let Some(end) = offset.checked_add(len) else {
            data.fill(0);
            return;
        };
        // Every access must lie inside one region; otherwise it reads 0 (§4.1.3.1: the driver
        // accesses each field with its own width).
        let rel = offset % REGION_LEN;
        if !in_one_region(offset, end) {
            self.log_odd("read", offset, data.len());
            data.fill(0);
            return;
        }
        match offset {
            o if o < ISR_OFFSET => {
                with_inner(&self.inner, inner, |i| self.common_read(i, rel, data))
            }
            o if o < DEVICE_CFG_OFFSET => {
                data.fill(0);
                // §4.1.4.5: reading the ISR clears it (and deasserts INTx, at the next resample).
                if rel == 0 && !data.is_empty() {
                    data[0] = self.interrupt.isr.swap(0, Ordering::AcqRel);
                }
            }
            o if o < NOTIFY_OFFSET => with_inner(&self.inner, inner, |i| {
                i.device.read_config(rel, data);
            }),
            o if o < MSIX_TABLE_OFFSET => data.fill(0),
            o if o < MSIX_PBA_OFFSET => {
                lock(&self.interrupt.msix).table_read(o - MSIX_TABLE_OFFSET, data)
            }
            _ => lock(&self.interrupt.msix).pba_read(offset - MSIX_PBA_OFFSET, data),
        }
    }

    fn bar_write_inner(&self, inner: Option<&mut Inner>, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let Some(end) = offset.checked_add(len) else {
            return;
        };
        let rel = offset % REGION_LEN;
        if !in_one_region(offset, end) || data.is_empty() {
            self.log_odd("write", offset, data.len());
            return;
        }
        match offset {
            o if o < ISR_OFFSET => {
                with_inner(&self.inner, inner, |i| self.common_write(i, rel, data))
            }
            // The ISR is read-only.
            o if o < DEVICE_CFG_OFFSET => self.log_odd("write", offset, data.len()),
            o if o < NOTIFY_OFFSET => with_inner(&self.inner, inner, |i| {
                i.device.write_config(rel, data);
            }),
            o if o < MSIX_TABLE_OFFSET => {
                // §4.1.4.4: the driver writes the queue index at the queue's notify address;
                // like the ioeventfd, any value and width counts.
                let q = (rel / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
                match self.notify.get(q) {
                    Some(e) if rel.is_multiple_of(u64::from(NOTIFY_OFF_MULTIPLIER)) => {
                        if let Err(err) = e.write(1) {
                            log::warn!("virtio-pci: cannot signal queue {q}: {err}");
                        }
                    }
                    _ => self.log_odd("write", offset, data.len()),
                }
            }
            o if o < MSIX_PBA_OFFSET => {
                lock(&self.interrupt.msix).table_write(o - MSIX_TABLE_OFFSET, data)
            }
            // The PBA is read-only.
            _ => self.log_odd("write", offset, data.len()),
        }
    }

    fn log_odd(&self, what: &str, offset: u64, len: usize) {
        if self.unknown.first(offset) {
            log::debug!("virtio-pci: ignored {len}-byte {what} at BAR offset {offset:#x}");
        }
    }

    fn common_field(&self, inner: &Inner, field: u64) -> u64 {
        let queue = inner.queues.get(usize::from(inner.queue_select));
        let qv = |f: fn(&QueueConfig) -> u64| queue.map_or(0, f);
        match field {
            DEVICE_FEATURE_SELECT => inner.device_feature_select.into(),
            DEVICE_FEATURE => feature_half(self.device_features, inner.device_feature_select),
            DRIVER_FEATURE_SELECT => inner.driver_feature_select.into(),
            DRIVER_FEATURE => feature_half(inner.driver_features, inner.driver_feature_select),
            CONFIG_MSIX_VECTOR => self.interrupt.config_vector.load(Ordering::Acquire).into(),
            NUM_QUEUES => inner.queues.len() as u64,
            DEVICE_STATUS => inner.status.into(),
            CONFIG_GENERATION => inner.config_generation.into(),
            QUEUE_SELECT => inner.queue_select.into(),
            QUEUE_SIZE => qv(|q| q.size.into()),
            QUEUE_MSIX_VECTOR => self
                .interrupt
                .queue_vectors
                .get(usize::from(inner.queue_select))
                .map_or(u64::from(VIRTIO_MSI_NO_VECTOR), |v| {
                    v.load(Ordering::Acquire).into()
                }),
            QUEUE_ENABLE => qv(|q| q.enabled.into()),
            QUEUE_NOTIFY_OFF => queue.map_or(0, |_| inner.queue_select.into()),
            QUEUE_DESC => qv(|q| q.desc),
            QUEUE_DRIVER => qv(|q| q.driver),
            QUEUE_DEVICE => qv(|q| q.device),
            _ => 0,
        }
    }

    fn common_read(&self, inner: &mut Inner, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            *b = match common_field_at(o) {
                Some((field, width)) => {
                    let v = self.common_field(inner, field);
                    let shift = 8 * (o - field);
                    debug_assert!(shift < 8 * width);
                    (v >> shift) as u8
                }
                None => 0,
            };
        }
    }

    fn common_write(&self, inner: &mut Inner, offset: u64, data: &[u8]) {
        let Some((field, width)) = common_field_at(offset) else {
            self.log_odd("write", offset, data.len());
            return;
        };
        // The access must stay inside the field; a part of a field (e.g. one half of a 64-bit
        // address, §4.1.3.1) is merged with the rest of its current value.
        let start = offset - field;
        if start + data.len() as u64 > width {
            self.log_odd("write", offset, data.len());
            return;
        }
        let mut bytes = self.common_field(inner, field).to_le_bytes();
        bytes[start as usize..start as usize + data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(bytes);
        let driver_ok = inner.status & STATUS_DRIVER_OK != 0;
        let sel = usize::from(inner.queue_select);
        match field {
            DEVICE_FEATURE_SELECT => inner.device_feature_select = v as u32,
            DRIVER_FEATURE_SELECT => inner.driver_feature_select = v as u32,
            // §2.2.2: features are fixed once FEATURES_OK is set.
            DRIVER_FEATURE if inner.status & STATUS_FEATURES_OK == 0 => {
                let f = inner.driver_features;
                inner.driver_features = match inner.driver_feature_select {
                    0 => (f & !0xffff_ffff) | (v & 0xffff_ffff),
                    1 => (f & 0xffff_ffff) | (v << 32),
                    _ => f,
                };
            }
            CONFIG_MSIX_VECTOR => {
                let vec = self.checked_vector(v as u16);
                self.interrupt.config_vector.store(vec, Ordering::Release);
            }
            DEVICE_STATUS => self.set_status(inner, v as u8),
            QUEUE_SELECT => inner.queue_select = v as u16,
            QUEUE_MSIX_VECTOR => {
                if let Some(q) = self.interrupt.queue_vectors.get(sel) {
                    q.store(self.checked_vector(v as u16), Ordering::Release);
                }
            }
            QUEUE_SIZE | QUEUE_ENABLE | QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE => {
                let Some(q) = inner.queues.get_mut(sel) else {
                    return;
                };
                // §4.1.4.3.2: the queue is configured before it is enabled and before DRIVER_OK;
                // 0 is never written to queue_enable (no queue reset without VIRTIO_F_RING_RESET).
                if q.enabled || driver_ok {
                    self.log_odd("write (queue already live)", offset, data.len());
                    return;
                }
                match field {
                    QUEUE_SIZE => q.size = v as u16,
                    QUEUE_ENABLE => q.enabled = v as u16 == 1,
                    QUEUE_DESC => q.desc = v,
                    QUEUE_DRIVER => q.driver = v,
                    _ => q.device = v,
                }
            }
            // device_feature, num_queues, config_generation, queue_notify_off: read-only.
            _ => {}
        }
    }

    /// A vector the driver asked for, or NO_VECTOR if the table has no such entry
    /// (§4.1.5.1.2: the device reports NO_VECTOR when it cannot use the vector).
    fn checked_vector(&self, v: u16) -> u16 {
        if v < lock(&self.interrupt.msix).num_vectors() {
            v
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    /// A driver write to device_status (§2.1, §3.1.1).
    fn set_status(&self, inner: &mut Inner, v: u8) {
        if v == 0 {
            self.reset(inner);
            return;
        }
        let old = inner.status;
        // Only a reset clears status bits (§2.1.1: the driver never clears one).
        let mut new = old | v;
        if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
            let unknown = inner.driver_features & !self.device_features;
            if unknown != 0 || inner.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                // §2.2.2 / §6.1: FEATURES_OK stays clear, so the driver sees the rejection.
                log::warn!(
                    "virtio-pci: driver features {:#x} rejected (unknown {unknown:#x} or no VERSION_1)",
                    inner.driver_features
                );
                new &= !STATUS_FEATURES_OK;
            } else {
                inner.device.set_acked_features(inner.driver_features);
            }
        }
        if new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
            if new & STATUS_FEATURES_OK == 0 {
                log::warn!("virtio-pci: DRIVER_OK without FEATURES_OK ignored");
                new &= !STATUS_DRIVER_OK;
            } else {
                match self.activate(inner) {
                    Ok(()) => inner.activated = true,
                    Err(e) => {
                        // §2.1.2: the device signals an unrecoverable error with
                        // DEVICE_NEEDS_RESET and a configuration change notification.
                        log::error!("virtio-pci: activation failed: {e}");
                        new |= STATUS_NEEDS_RESET;
                        inner.status = new;
                        if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Config) {
                            log::warn!("virtio-pci: cannot signal DEVICE_NEEDS_RESET: {e}");
                        }
                    }
                }
            }
        }
        inner.status = new;
    }

    /// Builds the enabled queues from the driver's configuration and starts the device.
    fn activate(&self, inner: &mut Inner) -> Result<(), ActivateError> {
        let mem = self.mem.memory();
        let event_idx = inner.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::new();
        for (index, qc) in inner.queues.iter().enumerate().filter(|(_, q)| q.enabled) {
            let bad = |what: String| ActivateError::BadQueue(format!("queue {index}: {what}"));
            let mut q = Queue::new(qc.max_size).map_err(|e| bad(e.to_string()))?;
            q.try_set_size(qc.size)
                .map_err(|e| bad(format!("size {}: {e}", qc.size)))?;
            q.try_set_desc_table_address(GuestAddress(qc.desc))
                .map_err(|e| bad(format!("descriptor table {:#x}: {e}", qc.desc)))?;
            q.try_set_avail_ring_address(GuestAddress(qc.driver))
                .map_err(|e| bad(format!("driver area {:#x}: {e}", qc.driver)))?;
            q.try_set_used_ring_address(GuestAddress(qc.device))
                .map_err(|e| bad(format!("device area {:#x}: {e}", qc.device)))?;
            q.set_event_idx(event_idx);
            q.set_ready(true);
            if !q.is_valid(&*mem) {
                return Err(bad("rings not inside guest memory".into()));
            }
            let notify = self.notify[index]
                .try_clone()
                .map_err(ActivateError::Worker)?;
            queues.push(QueueActivation {
                index: index as u16,
                queue: q,
                notify,
            });
        }
        if queues.is_empty() {
            return Err(ActivateError::BadQueue("no queue enabled".into()));
        }
        inner
            .device
            .activate(self.mem.clone(), self.interrupt.clone(), queues)
    }

    /// Device reset (§2.4, §4.1.4.3.1): stops the device and returns every register of the
    /// transport to its initial value. MSI-X (a PCI function-level state) is left alone.
    fn reset(&self, inner: &mut Inner) {
        if inner.activated || inner.status != 0 {
            inner.device.reset();
        }
        inner.activated = false;
        inner.status = 0;
        inner.device_feature_select = 0;
        inner.driver_feature_select = 0;
        inner.driver_features = 0;
        inner.queue_select = 0;
        for q in &mut inner.queues {
            *q = QueueConfig::new(q.max_size);
        }
        self.interrupt
            .config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        for v in &self.interrupt.queue_vectors {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        }
        self.interrupt.isr.store(0, Ordering::Release);
        // Drop notifications the old queues did not consume.
        for e in &self.notify {
            let _ = e.read();
        }
    }

    /// Refreshes what other threads read without the lock after a configuration write.
    fn sync_after_config_write(&self, inner: &Inner) {
        self.interrupt
            .intx_disabled
            .store(inner.config.intx_disabled(), Ordering::Release);
        let ctrl = inner
            .config
            .read_u16(inner.msix_cap + MsixCapability::MESSAGE_CONTROL);
        lock(&self.interrupt.msix).set_message_control(ctrl);
    }

    /// For the virtio PCI configuration access capability (§4.1.4.9): the BAR window its
    /// `bar`/`offset`/`length` fields select, if valid.
    fn pci_cfg_window(inner: &Inner) -> Option<(u64, usize)> {
        let cap = inner.pci_cfg_cap;
        let bar = inner.config.read_u8(cap + 4);
        let offset = u64::from(inner.config.read_u32(cap + 8));
        let len = inner.config.read_u32(cap + 12) as usize;
        let valid = usize::from(bar) == VIRTIO_BAR
            && matches!(len, 1 | 2 | 4)
            && offset % len as u64 == 0
            && offset + len as u64 <= VIRTIO_BAR_SIZE;
        valid.then_some((offset, len))
    }
}

/// Runs `f` on `inner` if the caller already holds the lock, else takes it.
fn with_inner<R>(
    m: &Mutex<Inner>,
    inner: Option<&mut Inner>,
    f: impl FnOnce(&mut Inner) -> R,
) -> R {
    match inner {
        Some(i) => f(i),
        None => f(&mut lock(m)),
    }
}

/// Whether `[offset, end)` lies inside the BAR and inside one of its regions (the 4 KiB pages,
/// except that the MSI-X table spans two).
fn in_one_region(offset: u64, end: u64) -> bool {
    if offset >= VIRTIO_BAR_SIZE || end > VIRTIO_BAR_SIZE {
        return false;
    }
    let region_end = if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&offset) {
        MSIX_PBA_OFFSET
    } else {
        (offset / REGION_LEN + 1) * REGION_LEN
    };
    end <= region_end
}

fn notify_offset(queue: usize) -> u64 {
    NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)
}

fn feature_half(features: u64, select: u32) -> u64 {
    match select {
        0 => features & 0xffff_ffff,
        1 => features >> 32,
        _ => 0,
    }
}

/// The common configuration field holding byte `offset`: (field offset, width).
fn common_field_at(offset: u64) -> Option<(u64, u64)> {
    COMMON_FIELDS
        .iter()
        .copied()
        .find(|&(f, w)| offset >= f && offset < f + w)
}

/// Whether `[a, a + alen)` and `[b, b + blen)` overlap.
fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&self, offset: u64, data: &mut [u8]) {
        let mut inner = lock(&self.inner);
        let asserted =
            self.interrupt.isr.load(Ordering::Acquire) != 0 && !self.interrupt.msix_enabled();
        inner.config.set_interrupt_status(asserted);
        let data_off = inner.pci_cfg_cap as u64 + 16;
        if overlaps(offset, data.len() as u64, data_off, 4) {
            if let Some((bar_off, len)) = Self::pci_cfg_window(&inner) {
                let mut buf = [0u8; 4];
                self.bar_read_inner(Some(&mut inner), bar_off, &mut buf[..len]);
                inner.config.set_raw(data_off as usize, &buf);
            }
        }
        inner.config.read(offset, data);
    }

    fn config_write(&self, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        let mut inner = lock(&self.inner);
        let moved = inner.config.write(offset, data);
        let data_off = inner.pci_cfg_cap as u64 + 16;
        if overlaps(offset, data.len() as u64, data_off, 4) {
            if let Some((bar_off, len)) = Self::pci_cfg_window(&inner) {
                let mut buf = [0u8; 4];
                inner.config.read(data_off, &mut buf);
                self.bar_write_inner(Some(&mut inner), bar_off, &buf[..len]);
            }
        }
        self.sync_after_config_write(&inner);
        moved
    }

    fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == VIRTIO_BAR {
            self.bar_read_inner(None, offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) {
        if bar == VIRTIO_BAR {
            self.bar_write_inner(None, offset, data);
        }
    }

    fn bars(&self) -> Vec<PciBar> {
        lock(&self.inner).config.bars()
    }

    fn set_bar_address(&self, index: usize, addr: u64) -> Result<(), PciConfigError> {
        lock(&self.inner).config.set_bar_address(index, addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config_space::{
        CAPABILITIES_POINTER, COMMAND, COMMAND_INTX_DISABLE, STATUS, STATUS_INTERRUPT,
    };
    use crate::pci::msix::tests::{Call, MockRouter};
    use crate::pci::msix::{MsiMessage, MSIX_CTRL_ENABLE};
    use crate::virtio::GuestMemoryMmap;
    use proptest::prelude::*;

    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
    const FLUSH: u64 = 1 << 9;
    const MEM_SIZE: usize = 0x10_0000;

    /// (index, size, event_idx, desc, avail, used) of a queue handed to the device.
    type SeenQueue = (u16, u16, bool, u64, u64, u64);

    /// What the mock device saw.
    #[derive(Default)]
    struct MockState {
        acked: Vec<u64>,
        /// Per activation, per queue.
        activations: Vec<Vec<SeenQueue>>,
        notifies: Vec<EventFd>,
        interrupt: Option<Arc<dyn VirtioInterrupt>>,
        resets: usize,
        config: [u8; 8],
        fail_activate: bool,
    }

    struct MockDevice {
        state: Arc<Mutex<MockState>>,
        features: u64,
        max_sizes: Vec<u16>,
        device_type: u32,
    }

    impl VirtioDevice for MockDevice {
        fn device_type(&self) -> u32 {
            self.device_type
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            self.max_sizes.clone()
        }
        fn device_features(&self) -> u64 {
            self.features
        }
        fn set_acked_features(&mut self, features: u64) {
            self.state.lock().unwrap().acked.push(features);
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let s = self.state.lock().unwrap();
            crate::virtio::device_config::read(&s.config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let mut s = self.state.lock().unwrap();
            for (i, &b) in data.iter().enumerate() {
                if let Some(c) = usize::try_from(offset)
                    .ok()
                    .and_then(|o| o.checked_add(i))
                    .and_then(|o| s.config.get_mut(o))
                {
                    *c = b;
                }
            }
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryAtomic,
            interrupt: Arc<dyn VirtioInterrupt>,
            queues: Vec<QueueActivation>,
        ) -> Result<(), ActivateError> {
            let mut s = self.state.lock().unwrap();
            if s.fail_activate {
                return Err(ActivateError::Worker(io::Error::other("mock failure")));
            }
            s.activations.push(
                queues
                    .iter()
                    .map(|q| {
                        (
                            q.index,
                            q.queue.size(),
                            q.queue.event_idx_enabled(),
                            q.queue.desc_table(),
                            q.queue.avail_ring(),
                            q.queue.used_ring(),
                        )
                    })
                    .collect(),
            );
            s.notifies = queues.into_iter().map(|q| q.notify).collect();
            s.interrupt = Some(interrupt);
            Ok(())
        }
        fn reset(&mut self) {
            let mut s = self.state.lock().unwrap();
            s.resets += 1;
            s.notifies.clear();
            s.interrupt = None;
        }
    }

    struct T {
        dev: VirtioPciDevice,
        state: Arc<Mutex<MockState>>,
        router: Arc<MockRouter>,
        intx: EventFd,
    }

    fn mock(max_sizes: &[u16], features: u64) -> (MockDevice, Arc<Mutex<MockState>>) {
        let state = Arc::new(Mutex::new(MockState {
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            ..Default::default()
        }));
        (
            MockDevice {
                state: state.clone(),
                features,
                max_sizes: max_sizes.to_vec(),
                device_type: 2,
            },
            state,
        )
    }

    fn mem() -> GuestMemoryAtomic {
        GuestMemoryAtomic::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        )
    }

    fn setup_with(max_sizes: &[u16], features: u64) -> T {
        let (m, state) = mock(max_sizes, features);
        let router = Arc::new(MockRouter::default());
        let intx = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = VirtioPciDevice::new(
            Box::new(m),
            mem(),
            router.clone(),
            intx.try_clone().unwrap(),
        )
        .unwrap();
        T {
            dev,
            state,
            router,
            intx,
        }
    }

    fn setup() -> T {
        setup_with(&[256, 128], VERSION_1 | EVENT_IDX | FLUSH)
    }

    impl T {
        fn w(&self, off: u64, data: &[u8]) {
            self.dev.bar_write(VIRTIO_BAR, off, data)
        }
        fn r<const N: usize>(&self, off: u64) -> [u8; N] {
            let mut d = [0u8; N];
            self.dev.bar_read(VIRTIO_BAR, off, &mut d);
            d
        }
        fn w8(&self, off: u64, v: u8) {
            self.w(off, &[v])
        }
        fn w16(&self, off: u64, v: u16) {
            self.w(off, &v.to_le_bytes())
        }
        fn w32(&self, off: u64, v: u32) {
            self.w(off, &v.to_le_bytes())
        }
        fn r8(&self, off: u64) -> u8 {
            self.r::<1>(off)[0]
        }
        fn r16(&self, off: u64) -> u16 {
            u16::from_le_bytes(self.r(off))
        }
        fn r32(&self, off: u64) -> u32 {
            u32::from_le_bytes(self.r(off))
        }
        fn r64(&self, off: u64) -> u64 {
            u64::from_le_bytes(self.r(off))
        }
        /// A 64-bit field as Linux writes it: low half, then high half.
        fn w64_halves(&self, off: u64, v: u64) {
            self.w32(off, v as u32);
            self.w32(off + 4, (v >> 32) as u32);
        }
        fn cfg_r32(&self, off: u64) -> u32 {
            let mut d = [0u8; 4];
            self.dev.config_read(off, &mut d);
            u32::from_le_bytes(d)
        }
        fn status(&self) -> u8 {
            self.r8(DEVICE_STATUS)
        }
        fn set_features(&self, f: u64) {
            self.w32(DRIVER_FEATURE_SELECT, 0);
            self.w32(DRIVER_FEATURE, f as u32);
            self.w32(DRIVER_FEATURE_SELECT, 1);
            self.w32(DRIVER_FEATURE, (f >> 32) as u32);
        }
        /// ACKNOWLEDGE | DRIVER, features, FEATURES_OK; returns the status read back.
        fn negotiate(&self, f: u64) -> u8 {
            self.w8(DEVICE_STATUS, 1);
            self.w8(DEVICE_STATUS, 3);
            self.set_features(f);
            self.w8(DEVICE_STATUS, 3 | STATUS_FEATURES_OK);
            self.status()
        }
        fn setup_queue(&self, q: u16, size: u16, base: u64) {
            self.w16(QUEUE_SELECT, q);
            self.w16(QUEUE_SIZE, size);
            self.w64_halves(QUEUE_DESC, base);
            self.w64_halves(QUEUE_DRIVER, base.wrapping_add(0x1000));
            self.w64_halves(QUEUE_DEVICE, base.wrapping_add(0x2000));
            self.w16(QUEUE_ENABLE, 1);
        }
        fn driver_ok(&self) {
            self.w8(DEVICE_STATUS, self.status() | STATUS_DRIVER_OK);
        }
        fn intx_count(&self) -> u64 {
            self.intx.read().unwrap_or(0)
        }
        /// Capability offsets by (id, cfg_type for vendor caps).
        fn caps(&self) -> Vec<(u64, u8, u8)> {
            let mut out = Vec::new();
            let mut p = u64::from(self.cfg_r32(CAPABILITIES_POINTER as u64) as u8);
            while p != 0 && out.len() < 48 {
                let d = self.cfg_r32(p);
                out.push((p, d as u8, (d >> 24) as u8));
                p = u64::from((d >> 8) as u8);
            }
            out
        }
        fn cap(&self, id: u8, cfg_type: u8) -> u64 {
            self.caps()
                .into_iter()
                .find(|&(_, i, t)| i == id && (id != PCI_CAP_ID_VNDR || t == cfg_type))
                .unwrap()
                .0
        }
        fn enable_msix(&self) {
            let cap = self.cap(0x11, 0);
            self.dev
                .config_write(cap + 2, &MSIX_CTRL_ENABLE.to_le_bytes());
        }
    }

    #[test]
    fn pci_identity_bar_and_capabilities() {
        let t = setup();
        assert_eq!(t.cfg_r32(0), 0x1042_1af4);
        assert_eq!(t.cfg_r32(0x08), 0x0180_0001);
        assert_eq!(t.cfg_r32(0x2c), 0x0040_1af4);
        assert_eq!(t.cfg_r32(0x3c) >> 8 & 0xff, 1); // INTA#
                                                    // BAR 0: 64-bit memory, 32 KiB.
        assert_eq!(t.cfg_r32(0x10) & 0xf, 0x4);
        t.dev.config_write(0x10, &[0xff; 4]);
        t.dev.config_write(0x14, &[0xff; 4]);
        assert_eq!(t.cfg_r32(0x10), 0xffff_8004);
        assert_eq!(t.cfg_r32(0x14), 0xffff_ffff);
        assert_eq!(t.dev.bars()[0].size, VIRTIO_BAR_SIZE);

        let caps = t.caps();
        assert_eq!(caps.len(), 6);
        for (cfg_type, offset, length) in [
            (1u8, COMMON_CFG_OFFSET, COMMON_CFG_LEN),
            (3, ISR_OFFSET, ISR_LEN),
            (4, DEVICE_CFG_OFFSET, DEVICE_CFG_LEN),
            (2, NOTIFY_OFFSET, 8),
        ] {
            let c = t.cap(PCI_CAP_ID_VNDR, cfg_type);
            assert_eq!(t.cfg_r32(c + 4) & 0xff, 0, "bar of cfg_type {cfg_type}");
            assert_eq!(u64::from(t.cfg_r32(c + 8)), offset);
            assert_eq!(u64::from(t.cfg_r32(c + 12)), length);
        }
        let n = t.cap(PCI_CAP_ID_VNDR, 2);
        assert_eq!(t.cfg_r32(n) >> 16 & 0xff, 20); // cap_len
        assert_eq!(t.cfg_r32(n + 16), NOTIFY_OFF_MULTIPLIER);
        let m = t.cap(0x11, 0);
        assert_eq!(t.cfg_r32(m) >> 16, 2); // 3 vectors
        assert_eq!(t.cfg_r32(m + 4), MSIX_TABLE_OFFSET as u32);
        assert_eq!(t.cfg_r32(m + 8), MSIX_PBA_OFFSET as u32);
        t.cap(PCI_CAP_ID_VNDR, 5);
        // The capability bodies are read-only (except the PCI cfg window fields).
        let c = t.cap(PCI_CAP_ID_VNDR, 1);
        t.dev.config_write(c + 8, &[0xff; 8]);
        assert_eq!(u64::from(t.cfg_r32(c + 8)), COMMON_CFG_OFFSET);
    }

    #[test]
    fn class_codes_and_construction_errors() {
        for (ty, class) in [(1u32, 0x0200_0001u32), (2, 0x0180_0001), (9, 0xff00_0001)] {
            let (mut m, _) = mock(&[64], VERSION_1);
            m.device_type = ty;
            let d = VirtioPciDevice::new(
                Box::new(m),
                mem(),
                Arc::new(MockRouter::default()),
                EventFd::new(0).unwrap(),
            )
            .unwrap();
            let mut b = [0u8; 4];
            d.config_read(8, &mut b);
            assert_eq!(u32::from_le_bytes(b), class);
            d.config_read(0, &mut b);
            assert_eq!(u32::from_le_bytes(b) >> 16, 0x1040 + ty);
        }
        let build = |m: MockDevice| {
            VirtioPciDevice::new(
                Box::new(m),
                mem(),
                Arc::new(MockRouter::default()),
                EventFd::new(0).unwrap(),
            )
            .err()
            .unwrap()
        };
        assert!(matches!(
            build(mock(&[], VERSION_1).0),
            VirtioPciError::QueueCount(0)
        ));
        assert!(matches!(
            build(mock(&[8; MAX_QUEUES + 1], VERSION_1).0),
            VirtioPciError::QueueCount(_)
        ));
        for bad in [0u16, 3, 65535] {
            assert!(matches!(
                build(mock(&[64, bad], VERSION_1).0),
                VirtioPciError::QueueMaxSize { index: 1, .. }
            ));
        }
        assert!(matches!(
            build(mock(&[64], FLUSH).0),
            VirtioPciError::NoVersion1
        ));
        let (mut m, _) = mock(&[64], VERSION_1);
        m.device_type = 0x10000;
        assert!(matches!(build(m), VirtioPciError::DeviceType(_)));
        // The largest sizes work.
        setup_with(&[32768; MAX_QUEUES], VERSION_1);
    }

    #[test]
    fn feature_select_halves() {
        let t = setup();
        assert_eq!(t.r32(DEVICE_FEATURE), (EVENT_IDX | FLUSH) as u32);
        t.w32(DEVICE_FEATURE_SELECT, 1);
        assert_eq!(t.r32(DEVICE_FEATURE_SELECT), 1);
        assert_eq!(t.r32(DEVICE_FEATURE), 1);
        t.w32(DEVICE_FEATURE_SELECT, 2);
        assert_eq!(t.r32(DEVICE_FEATURE), 0);
        // device_feature is read-only.
        t.w32(DEVICE_FEATURE_SELECT, 0);
        t.w32(DEVICE_FEATURE, 0);
        assert_eq!(t.r32(DEVICE_FEATURE), (EVENT_IDX | FLUSH) as u32);
        // Driver features: each half by itself; select 2+ is ignored.
        t.set_features(VERSION_1 | FLUSH);
        t.w32(DRIVER_FEATURE_SELECT, 2);
        t.w32(DRIVER_FEATURE, 0xffff_ffff);
        assert_eq!(t.r32(DRIVER_FEATURE), 0);
        t.w32(DRIVER_FEATURE_SELECT, 0);
        assert_eq!(t.r32(DRIVER_FEATURE), FLUSH as u32);
        t.w32(DRIVER_FEATURE_SELECT, 1);
        assert_eq!(t.r32(DRIVER_FEATURE), 1);
        // A byte write of the 32-bit field merges.
        t.w(DRIVER_FEATURE + 1, &[0x80]);
        assert_eq!(t.r32(DRIVER_FEATURE), 0x8001);
    }

    #[test]
    fn features_ok_only_for_offered_features_with_version_1() {
        let t = setup();
        // An unknown feature bit: FEATURES_OK does not stick.
        assert_eq!(t.negotiate(VERSION_1 | 1 << 40), 3);
        assert!(t.state.lock().unwrap().acked.is_empty());
        t.w8(DEVICE_STATUS, 0);
        // No VERSION_1 (a legacy driver).
        assert_eq!(t.negotiate(FLUSH), 3);
        t.w8(DEVICE_STATUS, 0);
        // A subset with VERSION_1.
        assert_eq!(t.negotiate(VERSION_1 | FLUSH), 3 | STATUS_FEATURES_OK);
        assert_eq!(t.state.lock().unwrap().acked, vec![VERSION_1 | FLUSH]);
        // Fixed from now on.
        t.set_features(VERSION_1 | FLUSH | EVENT_IDX);
        t.w32(DRIVER_FEATURE_SELECT, 0);
        assert_eq!(t.r32(DRIVER_FEATURE), FLUSH as u32);
        // Status bits are not cleared by a non-zero write.
        t.w8(DEVICE_STATUS, 1);
        assert_eq!(t.status(), 3 | STATUS_FEATURES_OK);
        // DRIVER_OK before FEATURES_OK is refused.
        t.w8(DEVICE_STATUS, 0);
        t.w8(DEVICE_STATUS, 3 | STATUS_DRIVER_OK);
        assert_eq!(t.status(), 3);
        assert!(t.state.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn queue_configuration_and_activation() {
        let t = setup();
        assert_eq!(t.r16(NUM_QUEUES), 2);
        t.w16(NUM_QUEUES, 7);
        assert_eq!(t.r16(NUM_QUEUES), 2);
        t.negotiate(VERSION_1 | EVENT_IDX);
        // Defaults per queue.
        for (q, max) in [(0u16, 256u16), (1, 128)] {
            t.w16(QUEUE_SELECT, q);
            assert_eq!(t.r16(QUEUE_SELECT), q);
            assert_eq!(t.r16(QUEUE_SIZE), max);
            assert_eq!(t.r16(QUEUE_NOTIFY_OFF), q);
            assert_eq!(t.r16(QUEUE_ENABLE), 0);
            assert_eq!(t.r16(QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
            assert_eq!(t.r64(QUEUE_DESC), 0);
        }
        // A queue that does not exist.
        t.w16(QUEUE_SELECT, 2);
        assert_eq!(t.r16(QUEUE_SIZE), 0);
        assert_eq!(t.r16(QUEUE_NOTIFY_OFF), 0);
        assert_eq!(t.r16(QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
        t.w16(QUEUE_SIZE, 8);
        t.w16(QUEUE_ENABLE, 1);
        assert_eq!(t.r16(QUEUE_SIZE), 0);

        // Only queue 1 is used.
        t.setup_queue(1, 64, 0x1_0000);
        t.w16(QUEUE_SELECT, 1);
        assert_eq!(t.r16(QUEUE_SIZE), 64);
        assert_eq!(t.r64(QUEUE_DESC), 0x1_0000);
        assert_eq!(t.r32(QUEUE_DRIVER), 0x1_1000);
        assert_eq!(t.r32(QUEUE_DEVICE + 4), 0);
        assert_eq!(t.r16(QUEUE_ENABLE), 1);
        // Enabled: further configuration is ignored.
        t.w16(QUEUE_SIZE, 32);
        t.w64_halves(QUEUE_DESC, 0x5_0000);
        assert_eq!(t.r16(QUEUE_SIZE), 64);
        assert_eq!(t.r64(QUEUE_DESC), 0x1_0000);

        t.driver_ok();
        assert_eq!(t.status(), 3 | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        let s = t.state.lock().unwrap();
        assert_eq!(
            s.activations,
            vec![vec![(1, 64, true, 0x1_0000, 0x1_1000, 0x1_2000)]]
        );
        assert_eq!(s.notifies.len(), 1);
        assert!(s.interrupt.is_some());
        drop(s);
        // After DRIVER_OK, queue 0 cannot be brought up any more.
        t.setup_queue(0, 16, 0x2_0000);
        t.w16(QUEUE_SELECT, 0);
        assert_eq!(t.r16(QUEUE_ENABLE), 0);
        assert_eq!(t.r16(QUEUE_SIZE), 256);
    }

    #[test]
    fn event_idx_only_when_negotiated() {
        let t = setup();
        t.negotiate(VERSION_1);
        t.setup_queue(0, 256, 0x1_0000);
        t.driver_ok();
        assert!(!t.state.lock().unwrap().activations[0][0].2);
    }

    #[test]
    fn invalid_queues_set_needs_reset() {
        // (size, base): not a power of two, larger than max, rings outside memory, misaligned.
        for (size, base) in [
            (100u16, 0x1_0000u64),
            (512, 0x1_0000),
            (0, 0x1_0000),
            (256, MEM_SIZE as u64 - 0x2000),
            (256, 0x1_0008),
            (256, u64::MAX - 0xfff),
        ] {
            let t = setup();
            t.negotiate(VERSION_1);
            t.setup_queue(0, size, base);
            t.driver_ok();
            assert_eq!(
                t.status(),
                3 | STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_NEEDS_RESET,
                "size {size} base {base:#x}"
            );
            assert!(t.state.lock().unwrap().activations.is_empty());
            // Config change interrupt through INTx (MSI-X is off).
            assert_eq!(t.r8(ISR_OFFSET), VIRTIO_ISR_CONFIG);
            assert_eq!(t.intx_count(), 1);
            // A reset recovers.
            t.w8(DEVICE_STATUS, 0);
            assert_eq!(t.status(), 0);
            t.negotiate(VERSION_1);
            t.setup_queue(0, 256, 0x1_0000);
            t.driver_ok();
            assert_eq!(t.state.lock().unwrap().activations.len(), 1);
        }
        // No queue enabled at all.
        let t = setup();
        t.negotiate(VERSION_1);
        t.driver_ok();
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0);
        // The device itself fails.
        let t = setup();
        t.state.lock().unwrap().fail_activate = true;
        t.negotiate(VERSION_1);
        t.setup_queue(0, 256, 0x1_0000);
        t.driver_ok();
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn reset_restores_defaults_and_reinitialises() {
        let t = setup();
        t.enable_msix();
        t.negotiate(VERSION_1 | EVENT_IDX);
        t.w16(CONFIG_MSIX_VECTOR, 0);
        t.setup_queue(0, 128, 0x1_0000);
        t.w16(QUEUE_MSIX_VECTOR, 1);
        t.setup_queue(1, 64, 0x4_0000);
        t.w32(DEVICE_FEATURE_SELECT, 1);
        t.driver_ok();
        assert_eq!(t.state.lock().unwrap().activations[0].len(), 2);
        t.w16(NOTIFY_OFFSET, 0); // leaves a count in queue 0's eventfd

        t.w8(DEVICE_STATUS, 0);
        {
            let s = t.state.lock().unwrap();
            assert_eq!(s.resets, 1);
            assert!(s.interrupt.is_none());
        }
        assert_eq!(t.status(), 0);
        assert_eq!(t.r32(DEVICE_FEATURE_SELECT), 0);
        assert_eq!(t.r16(CONFIG_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
        assert_eq!(t.r16(QUEUE_SELECT), 0);
        for (q, max) in [(0u16, 256u16), (1, 128)] {
            t.w16(QUEUE_SELECT, q);
            assert_eq!(t.r16(QUEUE_SIZE), max);
            assert_eq!(t.r16(QUEUE_ENABLE), 0);
            assert_eq!(t.r16(QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
            assert_eq!(t.r64(QUEUE_DESC), 0);
            assert_eq!(t.r64(QUEUE_DRIVER), 0);
            assert_eq!(t.r64(QUEUE_DEVICE), 0);
        }
        t.w32(DRIVER_FEATURE_SELECT, 0);
        assert_eq!(t.r32(DRIVER_FEATURE), 0);
        assert!(t.dev.ioeventfds()[0].1.read().is_err()); // drained
                                                          // MSI-X stays enabled (PCI state, not virtio state).
        assert!(t.dev.interrupt.msix_enabled());

        // Reset again while already reset: the device is not bothered.
        t.w8(DEVICE_STATUS, 0);
        assert_eq!(t.state.lock().unwrap().resets, 1);

        // Re-initialisation with other parameters.
        assert_eq!(t.negotiate(VERSION_1), 3 | STATUS_FEATURES_OK);
        t.setup_queue(0, 32, 0x8_0000);
        t.driver_ok();
        let s = t.state.lock().unwrap();
        assert_eq!(s.acked, vec![VERSION_1 | EVENT_IDX, VERSION_1]);
        assert_eq!(
            s.activations[1],
            vec![(0, 32, false, 0x8_0000, 0x8_1000, 0x8_2000)]
        );
    }

    #[test]
    fn notify_writes_signal_the_queue_eventfd() {
        let t = setup();
        let fds = t.dev.ioeventfds();
        assert_eq!(
            fds.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![0x3000, 0x3004]
        );
        t.w16(NOTIFY_OFFSET + 4, 1);
        assert!(fds[0].1.read().is_err());
        assert_eq!(fds[1].1.read().unwrap(), 1);
        // Any width and value at the right address.
        t.w32(NOTIFY_OFFSET, 0xdead);
        t.w8(NOTIFY_OFFSET, 0);
        assert_eq!(fds[0].1.read().unwrap(), 2);
        // Misaligned, past the last queue, reads: nothing.
        t.w16(NOTIFY_OFFSET + 2, 0);
        t.w16(NOTIFY_OFFSET + 8, 2);
        t.w16(NOTIFY_OFFSET + 0xffc, 2);
        assert_eq!(t.r32(NOTIFY_OFFSET), 0);
        assert!(fds[0].1.read().is_err() && fds[1].1.read().is_err());

        // The device's clone is the same eventfd.
        t.negotiate(VERSION_1);
        t.setup_queue(0, 256, 0x1_0000);
        t.driver_ok();
        t.w16(NOTIFY_OFFSET, 0);
        assert_eq!(t.state.lock().unwrap().notifies[0].read().unwrap(), 1);
    }

    #[test]
    fn intx_isr_read_to_clear_and_resample() {
        let t = setup();
        let irq = t.dev.interrupt();
        assert_eq!(t.r8(ISR_OFFSET), 0);
        irq.trigger(VirtioInterruptType::Queue(1)).unwrap();
        assert_eq!(t.intx_count(), 1);
        assert_ne!(
            t.cfg_r32(STATUS as u64 - 2) >> 16 & u32::from(STATUS_INTERRUPT),
            0
        );
        // The line stays up across a resample while the ISR is not read.
        t.dev.intx_resample();
        assert_eq!(t.intx_count(), 1);
        irq.trigger(VirtioInterruptType::Config).unwrap();
        assert_eq!(t.intx_count(), 1);
        // ISR register: ISR only at byte 0 of the region; read returns and clears both bits.
        assert_eq!(t.r8(ISR_OFFSET + 1), 0);
        t.w8(ISR_OFFSET, 0); // read-only
        assert_eq!(t.r32(ISR_OFFSET), 3);
        assert_eq!(t.r8(ISR_OFFSET), 0);
        assert_eq!(
            t.cfg_r32(STATUS as u64 - 2) >> 16 & u32::from(STATUS_INTERRUPT),
            0
        );
        t.dev.intx_resample();
        assert_eq!(t.intx_count(), 0);
        // Queue outside the device.
        assert!(irq.trigger(VirtioInterruptType::Queue(2)).is_err());
        // INTx disabled in the command register: the ISR is set, the line not raised.
        t.dev
            .config_write(COMMAND as u64, &COMMAND_INTX_DISABLE.to_le_bytes());
        irq.trigger(VirtioInterruptType::Queue(0)).unwrap();
        assert_eq!(t.intx_count(), 0);
        t.dev.intx_resample();
        assert_eq!(t.intx_count(), 0);
        assert_eq!(t.r8(ISR_OFFSET), 1);
    }

    #[test]
    fn msix_vectors_per_queue_and_config() {
        let t = setup();
        let irq = t.dev.interrupt();
        t.enable_msix();
        // Program the table through the BAR: vector v → data 0x40 + v.
        for v in 0..3u64 {
            let e = MSIX_TABLE_OFFSET + 16 * v;
            t.w32(e, 0xfee0_0000);
            t.w32(e + 4, 0);
            t.w32(e + 8, 0x40 + v as u32);
            t.w32(e + 12, 0);
        }
        assert_eq!(t.r32(MSIX_TABLE_OFFSET + 8), 0x40);
        let updates = t.router.take();
        // Entries start masked: one route each, when the last write unmasks it.
        assert_eq!(updates.len(), 3);
        assert_eq!(
            updates.last(),
            Some(&Call::Update(
                2,
                Some(MsiMessage {
                    addr: 0xfee0_0000,
                    data: 0x42
                })
            ))
        );
        t.w16(CONFIG_MSIX_VECTOR, 2);
        assert_eq!(t.r16(CONFIG_MSIX_VECTOR), 2);
        t.w16(QUEUE_SELECT, 1);
        t.w16(QUEUE_MSIX_VECTOR, 0);
        assert_eq!(t.r16(QUEUE_MSIX_VECTOR), 0);
        // A vector beyond the table reads back as NO_VECTOR.
        t.w16(QUEUE_SELECT, 0);
        t.w16(QUEUE_MSIX_VECTOR, 3);
        assert_eq!(t.r16(QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);

        irq.trigger(VirtioInterruptType::Queue(1)).unwrap();
        irq.trigger(VirtioInterruptType::Config).unwrap();
        // Queue 0 has no vector: no interrupt at all.
        irq.trigger(VirtioInterruptType::Queue(0)).unwrap();
        assert_eq!(t.router.take(), vec![Call::Trigger(0), Call::Trigger(2)]);
        assert_eq!(t.r8(ISR_OFFSET), 0);
        assert_eq!(t.intx_count(), 0);

        // Masked vector: pending in the PBA, delivered on unmask.
        t.w32(MSIX_TABLE_OFFSET + 12, 1);
        irq.trigger(VirtioInterruptType::Queue(1)).unwrap();
        assert_eq!(t.r64(MSIX_PBA_OFFSET), 1);
        t.w64_halves(MSIX_PBA_OFFSET, 0); // read-only
        assert_eq!(t.r64(MSIX_PBA_OFFSET), 1);
        t.router.take();
        t.w32(MSIX_TABLE_OFFSET + 12, 0);
        assert_eq!(t.router.take().last(), Some(&Call::Trigger(0)));
        assert_eq!(t.r64(MSIX_PBA_OFFSET), 0);

        // MSI-X disabled again: back to INTx.
        let cap = t.cap(0x11, 0);
        t.dev.config_write(cap + 3, &[0]);
        irq.trigger(VirtioInterruptType::Queue(1)).unwrap();
        assert_eq!(t.intx_count(), 1);
        t.dev.intx_resample();
        assert_eq!(t.intx_count(), 1);
    }

    #[test]
    fn device_config_passthrough() {
        let t = setup();
        assert_eq!(t.r32(DEVICE_CFG_OFFSET + 4), 0x0807_0605);
        t.w16(DEVICE_CFG_OFFSET + 2, 0xaabb);
        assert_eq!(t.state.lock().unwrap().config[2..4], [0xbb, 0xaa]);
        assert_eq!(t.r64(DEVICE_CFG_OFFSET + 0xff8), 0);
        assert_eq!(t.r8(CONFIG_GENERATION), 0);
        t.dev.config_changed();
        assert_eq!(t.r8(CONFIG_GENERATION), 1);
        assert_eq!(t.r8(ISR_OFFSET), VIRTIO_ISR_CONFIG);
    }

    #[test]
    fn pci_cfg_access_capability() {
        let t = setup();
        let c = t.cap(PCI_CAP_ID_VNDR, 5);
        let set = |bar: u8, off: u32, len: u32| {
            t.dev.config_write(c + 4, &[bar]);
            t.dev.config_write(c + 8, &off.to_le_bytes());
            t.dev.config_write(c + 12, &len.to_le_bytes());
        };
        // num_queues through the window.
        set(0, NUM_QUEUES as u32, 2);
        assert_eq!(t.cfg_r32(c + 16) & 0xffff, 2);
        // Write device_status through it.
        set(0, DEVICE_STATUS as u32, 1);
        t.dev.config_write(c + 16, &[1]);
        assert_eq!(t.status(), 1);
        // Device config, 4 bytes.
        set(0, DEVICE_CFG_OFFSET as u32, 4);
        assert_eq!(t.cfg_r32(c + 16), 0x0403_0201);
        // Invalid windows do nothing: other BAR, bad length, misaligned, past the BAR.
        for (bar, off, len) in [
            (1u8, 0x14u32, 1u32),
            (0, 0x14, 3),
            (0, 0x15, 2),
            (0, VIRTIO_BAR_SIZE as u32, 4),
            (0, u32::MAX - 3, 4),
        ] {
            set(bar, off, len);
            t.dev.config_write(c + 16, &[0xff; 4]);
            let mut d = [0u8; 4];
            t.dev.config_read(c + 16, &mut d);
        }
        assert_eq!(t.status(), 1);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        crate::pci::bus::tests::format_all_logs();
        let t = setup();
        // Straddling regions or the BAR end: reads 0, writes dropped.
        assert_eq!(t.r32(ISR_OFFSET - 2), 0);
        t.w32(NOTIFY_OFFSET - 2, 0xffff_ffff);
        assert_eq!(t.r32(VIRTIO_BAR_SIZE - 2), 0);
        assert_eq!(t.r32(u64::MAX - 1), 0);
        t.w32(u64::MAX - 1, 1);
        assert_eq!(t.r32(u64::MAX - 8), 0);
        t.w32(u64::MAX - 8, 1);
        assert_eq!(t.r32(VIRTIO_BAR_SIZE), 0);
        t.w(0, &[]);
        t.dev.bar_read(VIRTIO_BAR, 0, &mut []);
        // A write spanning two common fields is ignored; a read spanning them works.
        t.w32(DEVICE_STATUS, 0x0101_0101);
        assert_eq!(t.status(), 0);
        t.w16(QUEUE_SELECT, 1);
        assert_eq!(t.r32(QUEUE_SELECT), 0x0080_0001);
        // Past the common fields: zero.
        assert_eq!(t.r64(COMMON_CFG_LEN), 0);
        t.w64_halves(COMMON_CFG_LEN, u64::MAX);
        // Other BARs.
        let mut d = [0u8; 4];
        t.dev.bar_read(1, 0, &mut d);
        assert_eq!(d, [0xff; 4]);
        t.dev.bar_write(2, 0, &d);
        // Big reads within one region.
        let mut big = [0u8; 64];
        t.dev.bar_read(VIRTIO_BAR, 0, &mut big);
        assert_eq!(big[0x12], 2);
        t.dev.bar_write(VIRTIO_BAR, MSIX_TABLE_OFFSET, &[0u8; 64]);
        let mut big = [0u8; 0x3000];
        t.dev.bar_read(VIRTIO_BAR, MSIX_TABLE_OFFSET, &mut big);
    }

    #[test]
    fn enumerated_and_driven_through_pci_root() {
        use crate::bus::BusDevice;
        use crate::pci::PciRoot;
        let t = setup();
        let dev = Arc::new(t.dev);
        let mut root = PciRoot::new(0xc000_0000, 0x3ec0_0000, 0xc000, 0x4000).unwrap();
        let slot = root.add_device(dev.clone()).unwrap();
        let moves = Arc::new(Mutex::new(Vec::new()));
        let m2 = moves.clone();
        root.set_bar_observer(Arc::new(move |s: u8, e: &BarReprogram| {
            m2.lock().unwrap().push((s, *e))
        }));
        let cfg = |reg: u32| 0x8000_0000u32 | u32::from(slot) << 11 | reg;
        let rd = |reg: u32| {
            root.write(0, &cfg(reg).to_le_bytes());
            let mut d = [0u8; 4];
            root.read(4, &mut d);
            u32::from_le_bytes(d)
        };
        let wr = |reg: u32, v: u32| {
            root.write(0, &cfg(reg).to_le_bytes());
            root.write(4, &v.to_le_bytes());
        };
        assert_eq!(rd(0), 0x1042_1af4);
        let bar = u64::from(rd(0x10) & !0xf) | u64::from(rd(0x14)) << 32;
        assert_eq!(bar, dev.bars()[0].addr);
        assert_eq!(root.irq_routes(), vec![(slot, 0, 16 + (slot % 8))]);
        // Memory decoding off: the window does not reach the device.
        let win = root.mmio_window();
        let mut d = [0u8; 2];
        win.read(bar - 0xc000_0000 + NUM_QUEUES, &mut d);
        assert_eq!(d, [0xff; 2]);
        wr(0x04, 0x0006);
        win.read(bar - 0xc000_0000 + NUM_QUEUES, &mut d);
        assert_eq!(u16::from_le_bytes(d), 2);
        // Move the BAR; the observer learns where the notify ioeventfds go.
        let new = 0xd000_0000u64;
        wr(0x10, new as u32);
        let mv = moves.lock().unwrap().clone();
        assert_eq!(mv.len(), 1);
        assert_eq!((mv[0].0, mv[0].1.old, mv[0].1.new), (slot, bar, new));
        win.write(new - 0xc000_0000 + NOTIFY_OFFSET + 4, &[1, 0]);
        assert_eq!(dev.ioeventfds()[1].1.read().unwrap(), 1);
    }

    #[test]
    fn concurrent_access_and_interrupts_do_not_deadlock() {
        let t = setup();
        let msix_ctrl = t.cap(0x11, 0) + 2;
        let dev = Arc::new(t.dev);
        let irq = dev.interrupt();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = irq.trigger(VirtioInterruptType::Queue((n % 2) as u16));
                    let _ = irq.trigger(VirtioInterruptType::Config);
                    n += 1;
                }
            })
        };
        for i in 0..2000u32 {
            let mut d = [0u8; 4];
            dev.bar_read(VIRTIO_BAR, ISR_OFFSET, &mut d);
            dev.bar_write(VIRTIO_BAR, MSIX_TABLE_OFFSET + 12, &(i & 1).to_le_bytes());
            // Toggle MSI-X on and off through its Message Control.
            let ctrl = if i % 2 == 0 { MSIX_CTRL_ENABLE } else { 0 };
            dev.config_write(msix_ctrl, &ctrl.to_le_bytes());
            let mut c = [0u8; 2];
            dev.config_read(STATUS as u64, &mut c);
            dev.bar_write(VIRTIO_BAR, DEVICE_STATUS, &[if i % 3 == 0 { 0 } else { 1 }]);
            dev.intx_resample();
        }
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_bar_and_config_traffic(
            ops in proptest::collection::vec(
                (0u8..4, 0u64..0x8010, 0usize..10, any::<u64>()), 0..300)
        ) {
            crate::pci::bus::tests::format_all_logs();
            let t = setup();
            // Bias towards the interesting offsets.
            for (kind, off, len, val) in ops {
                let bytes: Vec<u8> = val.to_le_bytes().iter().cycle().take(len).copied().collect();
                let mut buf = vec![0u8; len];
                let boff = match off % 5 {
                    0 => off % 0x40,
                    1 => NOTIFY_OFFSET + off % 0x10,
                    2 => MSIX_TABLE_OFFSET + off % 0x40,
                    3 => u64::MAX - off % 0x20,
                    _ => off,
                };
                match kind {
                    0 => t.dev.bar_write(VIRTIO_BAR, boff, &bytes),
                    1 => t.dev.bar_read(VIRTIO_BAR, boff, &mut buf),
                    2 => { t.dev.config_write(off % 0x110, &bytes); }
                    _ => t.dev.config_read(off % 0x110, &mut buf),
                }
                if val % 7 == 0 {
                    let _ = t.dev.interrupt().trigger(VirtioInterruptType::Queue((val % 3) as u16));
                    t.dev.intx_resample();
                }
            }
            prop_assert_eq!(t.cfg_r32(0), 0x1042_1af4);
            prop_assert_eq!(t.r16(NUM_QUEUES), 2);
            // A reset always brings the device back.
            t.w8(DEVICE_STATUS, 0);
            prop_assert_eq!(t.status(), 0);
        }
    }
}
