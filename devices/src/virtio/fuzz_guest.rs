//! The guest a virtio fuzz input describes, the same for the virtio-blk and virtio-net
//! harnesses: byte 0 holds flags, byte 1 the queue size, and the rest is the content of guest
//! memory, which holds the descriptor table, both rings and whatever the chains point at.
//! [`FuzzGuest`] reads an input; [`InputBuilder`] writes one (the seed corpora).
//!
//! Guest memory is two regions with a hole between them, so buffers that straddle regions or
//! fall into the hole are exercised:
//!
//! | guest address | content |
//! |---|---|
//! | 0x0000 | descriptor table (up to 16 entries) |
//! | 0x0100 | available ring (`idx` at 0x102, ring at 0x104, `used_event` after it) |
//! | 0x0200 | used ring |
//! | 0x0300-0x3fff | free for headers, data, indirect tables |
//! | 0x4000-0x4fff | hole (no memory) |
//! | 0x5000-0x5fff | second region |

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::queue_layout::SplitQueueLayout;
use super::GuestMemoryMmap;

/// Guest address of the descriptor table.
pub const DESC_TABLE: u64 = 0x0;
/// Guest address of the available ring.
pub const AVAIL_RING: u64 = 0x100;
/// Guest address of the used ring.
pub const USED_RING: u64 = 0x200;
/// First region: [0, REGION0_LEN).
pub const REGION0_LEN: usize = 0x4000;
/// Second region: [REGION1_START, REGION1_START + REGION1_LEN).
pub const REGION1_START: u64 = 0x5000;
pub const REGION1_LEN: usize = 0x1000;
/// The queue's maximum size; byte 1 of an input picks 1, 2, 4, 8 or 16 entries.
pub const MAX_QUEUE_SIZE: u16 = 16;
/// Input flag (every virtio harness): the driver negotiated VIRTIO_RING_F_EVENT_IDX. The other
/// flag bits are the harness's own.
pub const FLAG_EVENT_IDX: u8 = 1;

/// The guest of one fuzz input.
pub struct FuzzGuest {
    /// Byte 0 of the input.
    pub flags: u8,
    /// Both regions, filled from the input (the rest zero).
    pub mem: GuestMemoryMmap,
    /// Where the queue is, and its size.
    pub layout: SplitQueueLayout,
}

impl FuzzGuest {
    /// The guest `data` describes; `None` when it is too short to give flags and queue size.
    pub fn from_input(data: &[u8]) -> Option<FuzzGuest> {
        if data.len() < 2 {
            return None;
        }
        let flags = data[0];
        let size = 1u16 << (data[1] % 5); // 1..=16
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), REGION0_LEN),
            (GuestAddress(REGION1_START), REGION1_LEN),
        ])
        .expect("guest memory");
        let content = &data[2..];
        let (a, b) = content.split_at(content.len().min(REGION0_LEN));
        mem.write_slice(a, GuestAddress(0)).expect("region 0");
        let b = &b[..b.len().min(REGION1_LEN)];
        mem.write_slice(b, GuestAddress(REGION1_START))
            .expect("region 1");
        Some(FuzzGuest {
            flags,
            mem,
            layout: SplitQueueLayout {
                size,
                desc_table: DESC_TABLE,
                avail_ring: AVAIL_RING,
                used_ring: USED_RING,
            },
        })
    }

    /// The device's queue as the driver set it up, with EVENT_IDX as the flags say.
    pub fn queue(&self) -> Queue {
        let mut queue = Queue::new(MAX_QUEUE_SIZE).expect("queue");
        self.layout.configure(&mut queue);
        queue.set_event_idx(self.flags & FLAG_EVENT_IDX != 0);
        assert!(queue.is_valid(&self.mem));
        queue
    }
}

/// Builds fuzz inputs by hand (for the seed corpora and tests).
#[derive(Debug, Clone)]
pub struct InputBuilder {
    flags: u8,
    size_sel: u8,
    mem: Vec<u8>,
    heads: Vec<u16>,
}

/// One descriptor: address, length, flags (VRING_DESC_F_*), next.
pub type RawDesc = (u64, u32, u16, u16);

impl InputBuilder {
    /// An input with these flags, a 16-entry queue and all of guest memory zero.
    pub fn new(flags: u8) -> Self {
        InputBuilder {
            flags,
            size_sel: 4,
            mem: vec![0; REGION0_LEN + REGION1_LEN],
            heads: Vec::new(),
        }
    }

    /// Writes `bytes` at guest address `addr` (in either region).
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        let off = if addr >= REGION1_START {
            (addr - REGION1_START) as usize + REGION0_LEN
        } else {
            addr as usize
        };
        self.mem[off..off + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// Writes descriptor `index` of the table at `table`.
    pub fn desc_at(&mut self, table: u64, index: u16, d: RawDesc) -> &mut Self {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&d.0.to_le_bytes());
        raw[8..12].copy_from_slice(&d.1.to_le_bytes());
        raw[12..14].copy_from_slice(&d.2.to_le_bytes());
        raw[14..16].copy_from_slice(&d.3.to_le_bytes());
        self.write(table + u64::from(index) * 16, &raw)
    }

    /// Writes descriptor `index` of the queue's descriptor table.
    pub fn desc(&mut self, index: u16, d: RawDesc) -> &mut Self {
        self.desc_at(DESC_TABLE, index, d)
    }

    /// Makes `head` available.
    pub fn avail(&mut self, head: u16) -> &mut Self {
        self.heads.push(head);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut me = self.clone();
        let n = me.heads.len() as u16;
        for (i, h) in self.heads.iter().enumerate() {
            me.write(AVAIL_RING + 4 + 2 * i as u64, &h.to_le_bytes());
        }
        me.write(AVAIL_RING + 2, &n.to_le_bytes());
        let mut out = vec![me.flags, me.size_sel];
        out.extend_from_slice(&me.mem);
        // Trailing zeroes add nothing: keep the seeds small.
        while out.len() > 2 && out.last() == Some(&0) {
            out.pop();
        }
        out
    }
}
