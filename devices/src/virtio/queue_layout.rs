//! Where a driver put one split virtqueue in guest memory (virtio 1.2 §2.7), for the unit tests
//! and the fuzz harnesses, which play the driver: the same layout gives the [`Queue`] the
//! device is handed and the addresses the driver side writes the rings at.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

/// The guest addresses of a split queue's three parts and the queue size the driver set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitQueueLayout {
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl SplitQueueLayout {
    /// The descriptor table at `base`, the available ring one 4 KiB page above it and the used
    /// ring two pages above it: room for the rings of any queue of up to 256 entries.
    pub const fn page_apart(base: u64, size: u16) -> Self {
        SplitQueueLayout {
            size,
            desc_table: base,
            avail_ring: base + 0x1000,
            used_ring: base + 0x2000,
        }
    }

    /// Sets `queue` up as the driver does before DRIVER_OK: size, ring addresses, ready.
    pub fn configure(&self, queue: &mut Queue) {
        queue.set_size(self.size);
        queue
            .try_set_desc_table_address(GuestAddress(self.desc_table))
            .expect("descriptor table alignment");
        queue
            .try_set_avail_ring_address(GuestAddress(self.avail_ring))
            .expect("available ring alignment");
        queue
            .try_set_used_ring_address(GuestAddress(self.used_ring))
            .expect("used ring alignment");
        queue.set_ready(true);
    }

    /// A queue of maximum size `size` set up here and ready: what the transport hands to
    /// `activate`.
    pub fn ready_queue(&self) -> Queue {
        let mut queue = Queue::new(self.size).expect("queue size");
        self.configure(&mut queue);
        queue
    }
}
