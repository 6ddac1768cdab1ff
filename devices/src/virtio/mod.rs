//! virtio devices and the virtio-pci transport (virtio 1.2).
pub mod block;
pub(crate) mod device_config;
#[cfg(test)]
mod driver_queue;
mod features;
#[doc(hidden)]
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz_guest;
pub mod net;
pub mod pci_transport;
#[doc(hidden)]
#[cfg(any(test, feature = "fuzz"))]
pub mod queue_layout;
use std::sync::Arc;

pub use pci_transport::{VirtioPciDevice, VirtioPciError};
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
pub type GuestMemoryAtomic = vm_memory::GuestMemoryAtomic<GuestMemoryMmap>;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioInterruptType {
    Config,
    Queue(u16),
}
/// How a device signals the driver: the transport maps this to an MSI-X vector (irqfd) or INTx.
pub trait VirtioInterrupt: Send + Sync {
    fn trigger(&self, int_type: VirtioInterruptType) -> std::io::Result<()>;
}
/// One queue handed to the device when the driver sets DRIVER_OK.
pub struct QueueActivation {
    pub index: u16,
    pub queue: virtio_queue::Queue,
    pub notify: vmm_sys_util::eventfd::EventFd,
}
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("bad queue configuration: {0}")]
    BadQueue(String),
    #[error("cannot start the device worker: {0}")]
    Worker(#[source] std::io::Error),
}
/// A virtio device model, transport-independent. Queue processing runs off the vCPU threads:
/// `activate` starts the device's own worker thread (an event-manager loop on the queues'
/// notify eventfds and the back-end's fds); `reset` stops and joins it.
pub trait VirtioDevice: Send {
    /// virtio 1.2 §5: 1 net, 2 block.
    fn device_type(&self) -> u32;
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// All offered feature bits, including VIRTIO_F_VERSION_1.
    fn device_features(&self) -> u64;
    fn set_acked_features(&mut self, features: u64);
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    fn activate(
        &mut self,
        mem: GuestMemoryAtomic,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<QueueActivation>,
    ) -> Result<(), ActivateError>;
    fn reset(&mut self);
}
