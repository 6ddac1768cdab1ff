//! Network back-ends shared by the NIC models (virtio-net, e1000).
//!
//! A back-end moves whole Ethernet frames, each preceded by a `virtio_net_hdr_v1` (12 bytes,
//! virtio 1.2 §5.1.6): the tap device is opened with IFF_VNET_HDR, so checksum and segmentation
//! offload metadata travel with every frame in both directions. A NIC without offloads (or the
//! e1000 when it segments by itself) sends an all-zero header.

pub mod tap;

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

/// Size of the header that precedes every frame on a back-end (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;

/// Offloads the guest side can take (TUNSETOFFLOAD flags, `linux/if_tun.h`).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
pub const TUN_F_UFO: u32 = 0x10;

/// Where a NIC's frames go and come from.
pub trait NetBackend: Send {
    /// Sends one frame: `iovs` together are the 12-byte vnet header then the frame.
    fn send(&mut self, iovs: &[IoSlice]) -> io::Result<usize>;
    /// Receives one frame (vnet header then frame) into `buf`; `WouldBlock` when none waits.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// A descriptor that polls readable when a frame waits (for the device's event loop).
    fn raw_fd(&self) -> RawFd;
    /// Which offloads frames *to the guest* may carry (TUN_F_* flags): what the guest driver
    /// negotiated (virtio-net GUEST_CSUM/GUEST_TSO*) or 0 for a NIC that takes none.
    fn set_offload(&self, flags: u32) -> io::Result<()>;
    /// Whether the link is up (the tap exists and is usable).
    fn link_up(&self) -> bool {
        true
    }
}
