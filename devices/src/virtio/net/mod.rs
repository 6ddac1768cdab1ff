//! virtio-net: a network device backed by a [`NetBackend`] such as a tap (virtio 1.2 §5.1).
//!
//! - [`VirtioNet`] is the device: feature bits (§5.1.3), configuration space (§5.1.4) and the
//!   [`VirtioDevice`] life cycle. `activate` hands the back-end to a worker thread named
//!   `virtio-net`; `reset` stops and joins it and takes the back-end back.
//! - `processor` moves frames ([`NetProcessor`]): TX chains to the back-end (§5.1.6.2) and
//!   back-end frames into RX buffers (§5.1.6.3, §5.1.6.4), independent of any thread.
//! - `worker` runs the event loop on the RX and TX notify eventfds, the back-end's descriptor,
//!   a link-status timer and a kill eventfd.
//!
//! Queues: 0 is receiveq1, 1 is transmitq1 (§5.1.2); no control queue (VIRTIO_NET_F_CTRL_VQ is
//! not offered) and one queue pair. Every frame on either queue starts with the 12-byte
//! `virtio_net_hdr_v1` (VIRTIO_F_VERSION_1 is always negotiated on the modern transport),
//! which is exactly what the tap reads and writes with IFF_VNET_HDR: headers pass through.

#[doc(hidden)]
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod mock;
mod processor;
#[cfg(test)]
mod tests;
mod worker;

use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

pub use processor::{NetProcessor, RxRun, TxRun, MAX_TX_SEGMENTS};

use super::device_config;
use super::features::FeatureSet;
use super::{ActivateError, GuestMemoryAtomic, QueueActivation, VirtioDevice, VirtioInterrupt};
use crate::net::{NetBackend, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, VNET_HDR_LEN};

/// Maximum (and default) size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Largest TX chain accepted, header included: a 64 KiB GSO frame (65535-byte IP packet +
/// Ethernet header with a VLAN tag, rounded) plus the 12-byte header.
pub const MAX_TX_LEN: usize = 65_562;
/// Size of the RX bounce buffer: the largest frame the tap can hand over (64 KiB GSO frame)
/// plus its header.
pub const RX_BUFFER_LEN: usize = VNET_HDR_LEN + 65_536 + 64;
/// Ethernet header length: shorter TX frames are malformed.
pub const ETH_HLEN: usize = 14;
/// Length of the configuration space exposed: mac (6), status (2), max_virtqueue_pairs (2),
/// mtu (2; zero, VIRTIO_NET_F_MTU is not offered).
pub const CONFIG_SPACE_LEN: usize = 12;

/// Counters of a network device, updated by its worker thread.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames handed to the back-end.
    pub tx_frames: AtomicU64,
    /// Their bytes (frame only, without the virtio-net header).
    pub tx_bytes: AtomicU64,
    /// Well-formed TX frames the back-end refused (error or full).
    pub tx_dropped: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Their bytes (frame only).
    pub rx_bytes: AtomicU64,
    /// Frames from the back-end that were dropped (too large for the guest's buffers, shorter
    /// than a header).
    pub rx_dropped: AtomicU64,
    /// Chains the guest got wrong on either queue (no header, wrong direction, oversized,
    /// loops, outside guest memory, bad header fields), completed with used length 0.
    pub malformed: AtomicU64,
    /// Times RX stopped because the guest had no receive buffers.
    pub rx_no_buffers: AtomicU64,
    /// Used-buffer interrupts sent (both queues).
    pub interrupts: AtomicU64,
    /// Configuration change interrupts sent (link status).
    pub config_interrupts: AtomicU64,
}

/// A point-in-time copy of [`NetStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStatsSnapshot {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub malformed: u64,
    pub rx_no_buffers: u64,
    pub interrupts: u64,
    pub config_interrupts: u64,
}

impl NetStats {
    pub fn snapshot(&self) -> NetStatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStatsSnapshot {
            tx_frames: l(&self.tx_frames),
            tx_bytes: l(&self.tx_bytes),
            tx_dropped: l(&self.tx_dropped),
            rx_frames: l(&self.rx_frames),
            rx_bytes: l(&self.rx_bytes),
            rx_dropped: l(&self.rx_dropped),
            malformed: l(&self.malformed),
            rx_no_buffers: l(&self.rx_no_buffers),
            interrupts: l(&self.interrupts),
            config_interrupts: l(&self.config_interrupts),
        }
    }

    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The feature bits the device offers.
pub const DEVICE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_ECN)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_ECN);

/// The TUN_F_* offloads that frames *to the guest* may use, from the negotiated GUEST_*
/// features (§5.1.3.1: GUEST_TSO4/6 and GUEST_ECN require GUEST_CSUM; the tun driver likewise
/// rejects TSO without CSUM, so they are dropped when GUEST_CSUM is missing).
pub fn offload_flags(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut f = TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        f |= TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        f |= TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && f & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
        f |= TUN_F_TSO_ECN;
    }
    f
}

/// Builds struct virtio_net_config (§5.1.4), little-endian.
fn build_config(mac: [u8; 6], status: u16) -> [u8; CONFIG_SPACE_LEN] {
    let mut c = [0u8; CONFIG_SPACE_LEN];
    c[0..6].copy_from_slice(&mac);
    c[6..8].copy_from_slice(&status.to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
    c
}

fn link_status(up: bool) -> u16 {
    if up {
        VIRTIO_NET_S_LINK_UP as u16
    } else {
        0
    }
}

/// The virtio-net device.
pub struct VirtioNet {
    /// The back-end while the device is inactive (the worker owns it while active).
    backend: Option<Box<dyn NetBackend>>,
    mac: [u8; 6],
    features: FeatureSet,
    /// `status` as last seen by the worker (used while active).
    status: Arc<AtomicU16>,
    stats: Arc<NetStats>,
    worker: Option<worker::WorkerHandle>,
}

impl fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioNet")
            .field("mac", &format_args!("{}", format_mac(&self.mac)))
            .field(
                "acked_features",
                &format_args!("{:#x}", self.features.acked()),
            )
            .field("active", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

/// `52:54:00:12:34:56`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl VirtioNet {
    /// A device sending and receiving through `backend`, with MAC address `mac`.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> VirtioNet {
        let status = link_status(backend.link_up());
        VirtioNet {
            backend: Some(backend),
            mac,
            features: FeatureSet::new(DEVICE_FEATURES),
            status: Arc::new(AtomicU16::new(status)),
            stats: Arc::new(NetStats::default()),
            worker: None,
        }
    }

    /// The counters (shared with the worker; live values).
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Features the driver acknowledged (only offered ones are kept).
    pub fn acked_features(&self) -> u64 {
        self.features.acked()
    }

    /// True while the worker thread runs.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    fn status(&self) -> u16 {
        match &self.backend {
            Some(b) => link_status(b.link_up()),
            None => self.status.load(Ordering::Acquire),
        }
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            match w.stop() {
                Some(backend) => self.backend = Some(backend),
                None => log::error!(
                    "virtio-net: the worker thread panicked; the back-end is gone and the device \
                     cannot be activated again"
                ),
            }
        }
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        self.features.avail()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.features.ack(features, "virtio-net");
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = build_config(self.mac, self.status());
        device_config::read(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Every field is read-only for a VERSION_1 driver (§5.1.4: the mac is set through the
        // control queue, not offered here).
        log::debug!(
            "virtio-net: ignored config write of {} bytes at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryAtomic,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<QueueActivation>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            log::warn!("virtio-net: activated while active; restarting the worker");
            self.stop_worker();
        }
        let Some(backend) = self.backend.take() else {
            return Err(ActivateError::Worker(std::io::Error::other(
                "virtio-net: the back-end was lost",
            )));
        };
        let offload = offload_flags(self.features.acked());
        if let Err(e) = backend.set_offload(offload) {
            log::warn!("virtio-net: cannot set back-end offloads {offload:#x}: {e}");
        }
        self.status
            .store(link_status(backend.link_up()), Ordering::Release);
        let processor = NetProcessor::new(backend, self.features.acked(), self.stats.clone());
        match worker::WorkerHandle::start(processor, mem, interrupt, queues, self.status.clone()) {
            Ok(h) => {
                self.worker = Some(h);
                Ok(())
            }
            Err((e, backend)) => {
                self.backend = backend;
                Err(e)
            }
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.features.reset();
        if let Some(b) = &self.backend {
            if let Err(e) = b.set_offload(0) {
                log::debug!("virtio-net: cannot clear back-end offloads: {e}");
            }
        }
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
