//! The driver side of one split virtqueue, for the device models' unit tests: it writes
//! descriptor chains and available-ring entries into guest memory and reads back what the
//! device put in the used ring, where a [`SplitQueueLayout`] says the rings are.
//!
//! Built from virtio-queue's mock pieces at chosen addresses rather than with
//! `MockSplitQueue::new/create`: in virtio-queue 0.18 that places the used ring right after
//! `avail.ring + len` bytes instead of `2 * len + 2`, so for any queue of more than a few
//! entries the used ring overlaps the available ring's upper entries.

use std::borrow::Borrow;

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::queue_layout::SplitQueueLayout;
use super::GuestMemoryMmap;

/// One split queue as the driver sees it, over guest memory held as `M` (the plain memory, or
/// the `Arc` of it that a device's processor takes).
pub struct DriverQueue<'a, M: Borrow<GuestMemoryMmap> = GuestMemoryMmap> {
    pub mem: &'a M,
    layout: SplitQueueLayout,
    desc: DescriptorTable<'a, GuestMemoryMmap>,
    avail: AvailRing<'a, GuestMemoryMmap>,
    used_ring: UsedRing<'a, GuestMemoryMmap>,
    /// The device's side, set up at the same layout: what a test serves or hands to
    /// `activate`.
    pub queue: Queue,
    /// Where `add` writes the next chain (it wraps to 0 when a chain would not fit).
    pub next_desc: u16,
}

impl<'a, M: Borrow<GuestMemoryMmap>> DriverQueue<'a, M> {
    pub fn new(mem: &'a M, layout: SplitQueueLayout) -> Self {
        let m: &'a GuestMemoryMmap = mem.borrow();
        DriverQueue {
            mem,
            layout,
            desc: DescriptorTable::new(m, GuestAddress(layout.desc_table), layout.size),
            avail: AvailRing::new(m, GuestAddress(layout.avail_ring), layout.size),
            used_ring: UsedRing::new(m, GuestAddress(layout.used_ring), layout.size),
            queue: layout.ready_queue(),
            next_desc: 0,
        }
    }

    /// Writes descriptor `index` as given (no chaining added).
    pub fn store(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc
            .store(
                index,
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next)),
            )
            .unwrap();
    }

    /// Writes a chain of (addr, len, flags) descriptors (NEXT added) and makes it available;
    /// returns its head.
    pub fn add(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc + n > self.layout.size {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == descs.len();
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            self.store(idx, addr, len, flags, idx + 1);
        }
        self.next_desc += n;
        self.make_available(head);
        head
    }

    /// Puts `head` in the next available-ring entry and publishes it.
    pub fn make_available(&self, head: u16) {
        let idx = self.avail.idx().load();
        self.avail
            .ring()
            .ref_at(usize::from(idx % self.layout.size))
            .unwrap()
            .store(head);
        self.avail.idx().store(idx.wrapping_add(1));
    }

    /// The available ring's `idx`.
    pub fn avail_idx(&self) -> u16 {
        self.avail.idx().load()
    }

    /// Overwrites the available ring's `idx`, as a buggy or hostile driver might.
    pub fn set_avail_idx(&self, idx: u16) {
        self.avail.idx().store(idx);
    }

    /// The used ring's `idx`.
    pub fn used_idx(&self) -> u16 {
        self.used_ring.idx().load()
    }

    /// (id, len) of used entry `i`.
    pub fn used(&self, i: u16) -> (u32, u32) {
        let e = self
            .used_ring
            .ring()
            .ref_at(usize::from(i % self.layout.size))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    /// The used ring's `flags` (VRING_USED_F_NO_NOTIFY).
    pub fn used_flags(&self) -> u16 {
        self.mem
            .borrow()
            .read_obj(GuestAddress(self.layout.used_ring))
            .unwrap()
    }

    /// Sets `used_event` (EVENT_IDX): the driver wants an interrupt after that used index.
    pub fn set_used_event(&self, v: u16) {
        let at = self.layout.avail_ring + 4 + 2 * u64::from(self.layout.size);
        self.mem.borrow().write_obj(v, GuestAddress(at)).unwrap();
    }
}
