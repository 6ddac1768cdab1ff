//! The PCI side of the machine: bus 0 behind configuration mechanism #1, its windows on the
//! port and MMIO buses, and the virtio-pci devices with their ioeventfds, MSI-X routes and INTx.

use std::sync::{Arc, Mutex};

use devices::bus::{Bus, BusDevice};
use devices::e1000::E1000;
use devices::net::tap::Tap;
use devices::pci::{BarReprogram, PciDevice, PciRoot};
use devices::virtio::block::{DiskConfig, DiskImage, VirtioBlk};
use devices::virtio::net::VirtioNet;
use devices::virtio::pci_transport::{VirtioPciDevice, VIRTIO_BAR};
use devices::virtio::{GuestMemoryAtomic, VirtioDevice};
use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::cli::{DiskSpec, NetSpec, NicModel};
use crate::error::Error;
use crate::msi_routing::{DeviceMsiRouter, GsiRouting};

/// The PCI I/O window for I/O BARs (virtio-pci modern uses none; the e1000 will).
const PCI_IO_BASE: u64 = 0xc000;
const PCI_IO_SIZE: u64 = 0x4000;

/// Everything PCI the VMM keeps: the root (on the buses), the INTx routes the firmware tables
/// describe, and per device what its interrupt and notification plumbing needs.
pub struct PciMachine {
    pub irq_routes: Vec<boot::PciIrqRoute>,
    /// The virtio-blk devices' images, in --disk order.
    pub disks: Vec<Arc<DiskImage>>,
    pub intx_resamplers: Vec<IntxResample>,
    /// One per NIC, in --net order: what it moved and dropped, for the log at exit.
    pub nics: Vec<NicSummary>,
}

/// A NIC's traffic and fault counters, read at exit (`kvmrun` logs them at info level, so a
/// benchmark or a bug report can tell lost frames from slow ones).
pub struct NicSummary {
    /// `net0 virtio-net (tap NAME)`.
    pub label: String,
    counters: Box<dyn Fn() -> String + Send + Sync>,
}

impl NicSummary {
    pub fn counters(&self) -> String {
        (self.counters)()
    }
}

/// One virtio-pci device on the bus.
struct PlacedDevice {
    slot: u8,
    dev: Arc<VirtioPciDevice>,
}

/// Builds bus 0 with one virtio-blk device per `--disk` and one NIC per `--net`, and puts it
/// on the buses.
pub fn build(
    vm: &Arc<VmFd>,
    mem: &GuestMemoryAtomic,
    disks: &[DiskSpec],
    nets: &[NetSpec],
    pio: &mut Bus,
    mmio: &mut Bus,
) -> Result<PciMachine, Error> {
    let dev_err = |what: String| Error::Device(what);
    let mmio_base = boot::layout::PCI_MMIO32_START;
    let mmio_size = boot::layout::PCI_MMIO32_END - mmio_base;
    let mut root = PciRoot::new(mmio_base, mmio_size, PCI_IO_BASE, PCI_IO_SIZE)
        .map_err(|e| dev_err(format!("PCI root: {e}")))?;
    let routing = Arc::new(GsiRouting::new(vm.clone()));

    let mut placed = Vec::new();
    let mut intx_resamplers = Vec::new();
    let mut disk_images = Vec::new();
    let mut nic_summaries = Vec::new();
    let mut next_slot = 1u8;
    let mut take_slot = || -> Result<u8, Error> {
        let slot = next_slot;
        if slot >= 32 {
            return Err(dev_err("at most 31 PCI devices".into()));
        }
        next_slot += 1;
        Ok(slot)
    };
    for disk in disks {
        let blk = VirtioBlk::new(DiskConfig {
            path: disk.path.clone(),
            readonly: disk.readonly,
            direct: disk.direct,
            serial: disk.serial.clone(),
            io_threads: disk.io_threads,
        })
        .map_err(|e| Error::Disk(e.to_string()))?;
        disk_images.push(blk.disk_image());
        let slot = take_slot()?;
        let (dev, resampler) = add_virtio(vm, mem, &routing, &mut root, slot, Box::new(blk))?;
        intx_resamplers.push(resampler);
        placed.push(PlacedDevice { slot, dev });
    }
    for (i, net) in nets.iter().enumerate() {
        let tap = Tap::open(&net.tap).map_err(|e| Error::Net(e.to_string()))?;
        let mac = net.mac.unwrap_or_else(|| default_mac(i));
        let slot = take_slot()?;
        let label = |model: &str| format!("net{i} {model} (tap {})", net.tap);
        match net.model {
            NicModel::Virtio => {
                let nic = VirtioNet::new(Box::new(tap), mac);
                let stats = nic.stats();
                nic_summaries.push(NicSummary {
                    label: label("virtio-net"),
                    counters: Box::new(move || {
                        let s = stats.snapshot();
                        format!(
                            "tx {} frames ({} dropped by the back-end), rx {} frames ({} \
                             dropped, {} times out of guest buffers), {} malformed chains, \
                             {} interrupts",
                            s.tx_frames,
                            s.tx_dropped,
                            s.rx_frames,
                            s.rx_dropped,
                            s.rx_no_buffers,
                            s.malformed,
                            s.interrupts
                        )
                    }),
                });
                let (dev, resampler) =
                    add_virtio(vm, mem, &routing, &mut root, slot, Box::new(nic))?;
                intx_resamplers.push(resampler);
                placed.push(PlacedDevice { slot, dev });
            }
            NicModel::E1000 => {
                let (intx, resample) = intx_irqfd(vm, slot)?;
                let nic = Arc::new(
                    E1000::new(mac, mem.clone(), intx, Box::new(tap))
                        .map_err(|e| dev_err(format!("e1000: {e}")))?,
                );
                root.add_device_at(slot, nic.clone())
                    .map_err(|e| dev_err(format!("PCI slot {slot}: {e}")))?;
                nic.start_worker()
                    .map_err(|e| dev_err(format!("e1000 worker: {e}")))?;
                let n = nic.clone();
                nic_summaries.push(NicSummary {
                    label: label("e1000"),
                    counters: Box::new(move || {
                        let c = n.counters();
                        format!(
                            "tx {} dropped, rx {} dropped ({} filtered), {} ring and {} DMA \
                             errors",
                            c.tx_dropped, c.rx_dropped, c.rx_filtered, c.bad_ring, c.dma_errors
                        )
                    }),
                });
                let n = nic.clone();
                intx_resamplers.push(IntxResample {
                    fd: resample,
                    resample: Box::new(move || n.intx_resample()),
                });
            }
        }
    }

    for p in &placed {
        for (offset, fd) in p.dev.ioeventfds() {
            let addr = bar_address(&*p.dev)? + offset;
            vm.register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
                .map_err(|e| dev_err(format!("KVM_IOEVENTFD at {addr:#x}: {e}")))?;
        }
    }
    let irq_routes = root
        .irq_routes()
        .into_iter()
        .map(|(device, pin, gsi)| boot::PciIrqRoute { device, pin, gsi })
        .collect();
    root.set_bar_observer(Arc::new(IoeventfdMover {
        vm: vm.clone(),
        devices: placed,
    }));

    let root = Arc::new(root);
    let insert = |bus: &mut Bus, base: u64, len: u64, dev: Arc<dyn BusDevice>| {
        bus.insert(base, len, dev)
            .map_err(|e| dev_err(format!("PCI range {base:#x}: {e}")))
    };
    insert(
        pio,
        PciRoot::CONFIG_PORT,
        PciRoot::CONFIG_PORT_LEN,
        root.clone(),
    )?;
    let w = root.mmio_window();
    insert(mmio, w.base(), w.size(), w)?;
    let w = root.io_window();
    insert(pio, w.base(), w.size(), w)?;
    Ok(PciMachine {
        irq_routes,
        disks: disk_images,
        intx_resamplers,
        nics: nic_summaries,
    })
}

fn add_virtio(
    vm: &Arc<VmFd>,
    mem: &GuestMemoryAtomic,
    routing: &Arc<GsiRouting>,
    root: &mut PciRoot,
    slot: u8,
    device: Box<dyn VirtioDevice>,
) -> Result<(Arc<VirtioPciDevice>, IntxResample), Error> {
    let dev_err = |what: String| Error::Device(what);
    // One vector per queue plus the configuration vector (virtio 1.2 §4.1.4.3).
    let vectors = u16::try_from(device.queue_max_sizes().len() + 1)
        .map_err(|_| dev_err("too many virtio queues".into()))?;
    let router = Arc::new(DeviceMsiRouter::new(routing.clone(), vectors)?);
    let (intx, resample) = intx_irqfd(vm, slot)?;
    let dev = Arc::new(
        VirtioPciDevice::new(device, mem.clone(), router, intx)
            .map_err(|e| dev_err(format!("virtio-pci: {e}")))?,
    );
    root.add_device_at(slot, dev.clone())
        .map_err(|e| dev_err(format!("PCI slot {slot}: {e}")))?;
    let d = dev.clone();
    Ok((
        dev,
        IntxResample {
            fd: resample,
            resample: Box::new(move || d.intx_resample()),
        },
    ))
}

/// The level-triggered irqfd (and its resample eventfd) for INTA# of `slot`; PciRoot programs
/// the same GSI into the device's Interrupt Line register.
fn intx_irqfd(vm: &VmFd, slot: u8) -> Result<(EventFd, EventFd), Error> {
    let dev_err = |what: String| Error::Device(what);
    let intx = EventFd::new(EFD_NONBLOCK).map_err(|e| dev_err(format!("INTx eventfd: {e}")))?;
    let resample =
        EventFd::new(EFD_NONBLOCK).map_err(|e| dev_err(format!("resample eventfd: {e}")))?;
    let gsi = devices::pci::bus::intx_gsi(slot, 0);
    vm.register_irqfd_with_resample(&intx, &resample, u32::from(gsi))
        .map_err(|e| dev_err(format!("INTx irqfd for GSI {gsi}: {e}")))?;
    Ok((intx, resample))
}

/// A locally administered unicast MAC for NIC `index` when `--net` gives none.
fn default_mac(index: usize) -> [u8; 6] {
    [
        0x52,
        0x54,
        0x00,
        0x12,
        0x34,
        0x56u8.wrapping_add(index as u8),
    ]
}

fn bar_address(dev: &dyn PciDevice) -> Result<u64, Error> {
    dev.bars()
        .into_iter()
        .find(|b| b.index == VIRTIO_BAR)
        .map(|b| b.addr)
        .ok_or_else(|| Error::Device("virtio-pci device without its BAR".into()))
}

/// Moves a device's KVM ioeventfds along with its BAR when the guest relocates it.
struct IoeventfdMover {
    vm: Arc<VmFd>,
    devices: Vec<PlacedDevice>,
}

impl devices::pci::bus::PciBarObserver for IoeventfdMover {
    fn bar_moved(&self, slot: u8, event: &BarReprogram) {
        if event.index != VIRTIO_BAR {
            return;
        }
        let Some(p) = self.devices.iter().find(|p| p.slot == slot) else {
            return;
        };
        for (offset, fd) in p.dev.ioeventfds() {
            let old = IoEventAddress::Mmio(event.old + offset);
            let new = IoEventAddress::Mmio(event.new + offset);
            if let Err(e) = self.vm.unregister_ioevent(fd, &old, NoDatamatch) {
                log::debug!(
                    "slot {slot}: no ioeventfd at {:#x} to remove: {e}",
                    event.old + offset
                );
            }
            if let Err(e) = self.vm.register_ioevent(fd, &new, NoDatamatch) {
                // The transport still signals the queue on a plain MMIO write, just slower.
                log::warn!("slot {slot}: ioeventfd at {:#x}: {e}", event.new + offset);
            }
        }
    }
}

/// Re-raises a device's level-triggered INTx when the guest's EOI resamples it while the
/// device still has an interrupt pending (ISR not zero).
pub struct IntxResample {
    fd: EventFd,
    resample: Box<dyn Fn() + Send>,
}

impl MutEventSubscriber for IntxResample {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.fd.read();
        (self.resample)();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch an INTx resample eventfd: {e}");
        }
    }
}

/// Wraps the resamplers for the main loop's event manager.
pub fn resample_subscribers(
    r: Vec<IntxResample>,
) -> Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>> {
    r.into_iter()
        .map(|x| Arc::new(Mutex::new(x)) as Arc<Mutex<dyn MutEventSubscriber + Send>>)
        .collect()
}
