//! Moving frames between the queues and the back-end, without threads: [`NetProcessor`].
//!
//! TX (§5.1.6.2): each chain is the 12-byte header then the frame, in device-readable
//! descriptors laid out any way the driver likes (§2.6.4: no framing assumptions). The guest
//! buffers go to the back-end as an iovec (no copy); the chain is completed with used length 0.
//!
//! RX (§5.1.6.3/§5.1.6.4): a frame is read from the back-end into a bounce buffer and copied
//! into one chain, or with VIRTIO_NET_F_MRG_RXBUF into as many chains as it needs, each
//! completed with the bytes written and `num_buffers` set in the first header. Nothing is ever
//! written past a descriptor's length. A frame read while the guest has no buffers waits in the
//! bounce buffer (the back-end is not read again) until the guest adds some.

use std::io::{self, IoSlice};
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::{NetStats, ETH_HLEN, MAX_TX_LEN, RX_BUFFER_LEN};
use crate::log_once::LogOnce;
use crate::net::{NetBackend, VNET_HDR_LEN};
use crate::virtio::GuestMemoryMmap;

/// Outcome of one [`NetProcessor::process_tx`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxRun {
    /// Chains taken from the available ring.
    pub processed: usize,
    /// The driver wanted a used-buffer notification during the run (§2.7.10); the `_notify`
    /// variant has called its `notify` each time.
    pub needs_interrupt: bool,
    /// The budget ran out with chains possibly left in the available ring.
    pub more: bool,
}

/// Outcome of one [`NetProcessor::process_rx`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxRun {
    /// Frames delivered to the guest.
    pub delivered: usize,
    /// Entries added to the used ring (delivered buffers and returned malformed chains).
    pub used: usize,
    /// The driver wants a used-buffer notification now (§2.7.10).
    pub needs_interrupt: bool,
    /// A frame waits but the guest has no (or not enough) buffers: stop watching the back-end
    /// until the guest adds buffers (RX queue notification; notifications are enabled).
    pub out_of_buffers: bool,
    /// The budget ran out with frames possibly left in the back-end.
    pub more: bool,
    /// The back-end failed with an error other than `WouldBlock`.
    pub backend_error: bool,
}

/// An RX chain taken from the available ring and not yet used.
#[derive(Debug, Clone, Copy)]
struct RxBuf {
    head: u16,
    /// Range of its descriptors in `NetProcessor::rx_descs`.
    start: usize,
    end: usize,
    /// Total writable bytes (capped at `RX_BUFFER_LEN`, more is never needed).
    cap: usize,
}

fn errno_key(e: &io::Error) -> u64 {
    e.raw_os_error()
        .map_or(u64::from(u32::MAX), |n| n as u32 as u64)
}

/// Why a TX chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxFault {
    Empty,
    WriteOnly,
    Oversized,
    Broken,
    OutsideMemory,
    Runt,
    BadHeader,
    TooManySegments,
}

/// Most descriptors, and most guest-memory pieces, one TX chain may have: Linux's UIO_MAXIOV,
/// the most iovecs one `writev` to the tap takes (a longer chain would fail there with EINVAL
/// after all the work of walking it). Indirect tables let a chain be far longer than the queue
/// (up to 65536 descriptors); Linux's driver uses at most MAX_SKB_FRAGS + 2 per frame.
pub const MAX_TX_SEGMENTS: usize = 1024;

/// The queue logic of a virtio-net device. Owns the back-end while the device is active.
pub struct NetProcessor {
    backend: Box<dyn NetBackend>,
    acked_features: u64,
    mrg_rxbuf: bool,
    stats: Arc<NetStats>,
    bounce: Vec<u8>,
    /// Length of the frame waiting in `bounce` (header included).
    pending: Option<usize>,
    rx_held: Vec<RxBuf>,
    rx_descs: Vec<(GuestAddress, u32)>,
    backend_log: LogOnce,
    malformed_log: LogOnce,
}

impl NetProcessor {
    pub fn new(
        backend: Box<dyn NetBackend>,
        acked_features: u64,
        stats: Arc<NetStats>,
    ) -> NetProcessor {
        NetProcessor {
            backend,
            acked_features,
            mrg_rxbuf: acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            stats,
            bounce: vec![0; RX_BUFFER_LEN],
            pending: None,
            rx_held: Vec::new(),
            rx_descs: Vec::new(),
            backend_log: LogOnce::new("virtio-net back-end errors"),
            malformed_log: LogOnce::new("virtio-net malformed chains"),
        }
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// The counters, to update beside the processor (interrupts).
    pub fn shared_stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    pub fn backend(&self) -> &dyn NetBackend {
        &*self.backend
    }

    /// Gives the back-end back (the device keeps it across resets).
    pub fn into_backend(self) -> Box<dyn NetBackend> {
        self.backend
    }

    /// True when a frame read from the back-end waits for guest buffers.
    pub fn has_pending_frame(&self) -> bool {
        self.pending.is_some()
    }

    fn has(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }

    // -----------------------------------------------------------------------------------------
    // TX

    /// Sends up to `budget` TX chains from `queue` and completes them (used length 0);
    /// [`TxRun::needs_interrupt`] says whether the driver wanted an interrupt on the way.
    ///
    /// Errors mean the queue itself is broken (available index too far ahead, rings outside
    /// guest memory): the caller should stop serving it until the device is reset.
    pub fn process_tx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        budget: usize,
    ) -> Result<TxRun, virtio_queue::Error> {
        self.process_tx_notify(queue, mem, budget, &mut || {})
    }

    /// [`NetProcessor::process_tx`], calling `notify` whenever the driver wants a used-buffer
    /// interrupt. Each chain is completed as soon as its frame is sent, not after the batch: a
    /// guest whose TCP stack waits for its sent buffers to come back (Linux's TCP small queues
    /// with the TX interrupt of `napi_tx`) may have only a frame or two in flight, and holding
    /// their completions for a whole batch of back-end writes stalls it. EVENT_IDX (§2.7.10)
    /// keeps the interrupt rate the driver's choice.
    pub fn process_tx_notify(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        budget: usize,
        notify: &mut dyn FnMut(),
    ) -> Result<TxRun, virtio_queue::Error> {
        let mut run = TxRun::default();
        loop {
            queue.disable_notification(mem)?;
            while run.processed < budget {
                let chain = {
                    let mut iter = queue.iter(mem)?;
                    iter.next()
                };
                let Some(chain) = chain else {
                    break;
                };
                let head = chain.head_index();
                self.send_chain(chain, mem);
                run.processed += 1;
                // A head out of range names no descriptor: nothing to give back (counted as
                // malformed by `send_chain`).
                if head < queue.size() {
                    queue.add_used(mem, head, 0)?;
                    if queue.needs_notification(mem)? {
                        run.needs_interrupt = true;
                        notify();
                    }
                }
            }
            if run.processed >= budget {
                run.more = true;
                break;
            }
            if !queue.enable_notification(mem)? {
                break;
            }
        }
        Ok(run)
    }

    fn send_chain(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) {
        if let Err(fault) = self.try_send_chain(chain, mem) {
            NetStats::inc(&self.stats.malformed);
            if self.malformed_log.first(fault as u64) {
                log::warn!(
                    "virtio-net: dropped a malformed TX chain ({fault:?}); not logged again"
                );
            }
        }
    }

    fn try_send_chain(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), TxFault> {
        let mut slices = Vec::with_capacity(4);
        let mut total = 0usize;
        let mut count = 0usize;
        let mut last_has_next = false;
        for desc in chain {
            count += 1;
            if count > MAX_TX_SEGMENTS {
                return Err(TxFault::TooManySegments);
            }
            last_has_next = desc.has_next();
            if desc.is_write_only() {
                return Err(TxFault::WriteOnly);
            }
            let len = desc.len() as usize;
            total = total.saturating_add(len);
            if total > MAX_TX_LEN {
                return Err(TxFault::Oversized);
            }
            if len == 0 {
                continue;
            }
            if desc.addr().checked_add(len as u64 - 1).is_none() {
                return Err(TxFault::OutsideMemory);
            }
            let mut got = 0;
            for s in mem.get_slices(desc.addr(), len) {
                let s = s.map_err(|_| TxFault::OutsideMemory)?;
                got += s.len();
                slices.push(s);
            }
            if got != len {
                return Err(TxFault::OutsideMemory);
            }
            if slices.len() > MAX_TX_SEGMENTS {
                return Err(TxFault::TooManySegments);
            }
        }
        if count == 0 {
            return Err(TxFault::Empty);
        }
        // The iterator stops without an error on a loop (more descriptors than the table
        // holds), a `next` out of range, a bad indirect table or an unreadable descriptor: in
        // every case the last descriptor it gave still says NEXT.
        if last_has_next {
            return Err(TxFault::Broken);
        }
        if total < VNET_HDR_LEN + ETH_HLEN {
            return Err(TxFault::Runt);
        }
        let mut hdr = [0u8; VNET_HDR_LEN];
        let mut got = 0;
        for s in &slices {
            if got == VNET_HDR_LEN {
                break;
            }
            let n = s.len().min(VNET_HDR_LEN - got);
            got += s
                .subslice(0, n)
                .map(|sub| sub.copy_to(&mut hdr[got..got + n]))
                .unwrap_or(0);
        }
        if got != VNET_HDR_LEN || !self.tx_header_ok(&hdr, total - VNET_HDR_LEN) {
            return Err(TxFault::BadHeader);
        }

        // The guards keep the mappings alive while the back-end reads them.
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
        let iovs: Vec<IoSlice> = guards
            .iter()
            .map(|g| {
                // SAFETY: each guard describes `len` bytes of mapped guest memory that stay
                // mapped while `guards` lives (for the whole `send`). The guest may change them
                // concurrently, but the slices are only handed to the kernel (writev) or copied
                // by the back-end: no Rust code relies on their content being stable.
                IoSlice::new(unsafe { std::slice::from_raw_parts(g.as_ptr(), g.len()) })
            })
            .collect();
        match self.backend.send(&iovs) {
            Ok(_) => {
                NetStats::inc(&self.stats.tx_frames);
                NetStats::add(&self.stats.tx_bytes, (total - VNET_HDR_LEN) as u64);
            }
            Err(e) => {
                NetStats::inc(&self.stats.tx_dropped);
                if self.backend_log.first(errno_key(&e)) {
                    log::warn!("virtio-net: the back-end refused a frame: {e}");
                }
            }
        }
        Ok(())
    }

    /// Checks a TX header against the negotiated features (§5.1.6.2.1 driver requirements): the
    /// device may not rely on the back-end to reject what the driver was not allowed to send.
    pub(crate) fn tx_header_ok(&self, hdr: &[u8; VNET_HDR_LEN], frame_len: usize) -> bool {
        let flags = u32::from(hdr[0]);
        let gso_type = u32::from(hdr[1]);
        let hdr_len = usize::from(u16::from_le_bytes([hdr[2], hdr[3]]));
        let gso_size = u16::from_le_bytes([hdr[4], hdr[5]]);
        let csum_start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        let csum_offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
            && (!self.has(VIRTIO_NET_F_CSUM) || csum_start + csum_offset + 2 > frame_len)
        {
            return false;
        }
        let ecn = gso_type & VIRTIO_NET_HDR_GSO_ECN != 0;
        let gso = gso_type & !VIRTIO_NET_HDR_GSO_ECN;
        match gso {
            VIRTIO_NET_HDR_GSO_NONE => return !ecn,
            VIRTIO_NET_HDR_GSO_TCPV4 if self.has(VIRTIO_NET_F_HOST_TSO4) => {}
            VIRTIO_NET_HDR_GSO_TCPV6 if self.has(VIRTIO_NET_F_HOST_TSO6) => {}
            _ => return false,
        }
        if ecn && !self.has(VIRTIO_NET_F_HOST_ECN) {
            return false;
        }
        gso_size != 0 && hdr_len <= frame_len
    }

    // -----------------------------------------------------------------------------------------
    // RX

    /// Reads up to `budget` frames from the back-end into the guest's RX buffers;
    /// [`RxRun::needs_interrupt`] says whether to raise the used-buffer interrupt now.
    ///
    /// Unlike TX, the interrupt is decided once for the batch: signalling after each frame
    /// (as QEMU does) was slower for host -> guest TCP in the test host (net.sh, two clean
    /// interleaved runs each: 23 and 19 MB/s against 32 and 30), as the guest's interrupt
    /// handling then competes with the copying of the rest of the burst.
    ///
    /// Errors mean the queue itself is broken, as for [`NetProcessor::process_tx`].
    pub fn process_rx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        budget: usize,
    ) -> Result<RxRun, virtio_queue::Error> {
        let mut run = RxRun::default();
        queue.disable_notification(mem)?;
        let mut iterations = 0;
        loop {
            if iterations >= budget {
                run.more = true;
                break;
            }
            iterations += 1;
            let len = match self.pending {
                Some(len) => len,
                None => match self.backend.recv(&mut self.bounce) {
                    Ok(n) if n < VNET_HDR_LEN => {
                        NetStats::inc(&self.stats.rx_dropped);
                        continue;
                    }
                    Ok(n) => {
                        self.pending = Some(n);
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if self.backend_log.first(errno_key(&e) | 1 << 32) {
                            log::warn!("virtio-net: cannot read from the back-end: {e}");
                        }
                        run.backend_error = true;
                        break;
                    }
                },
            };
            if !self.deliver(queue, mem, len, &mut run)? {
                // Not enough buffers. Ask for a notification when the driver adds some, and
                // look again in case it did just now (§2.7.10 / EVENT_IDX `avail_event`).
                if queue.enable_notification(mem)? {
                    queue.disable_notification(mem)?;
                    continue;
                }
                NetStats::inc(&self.stats.rx_no_buffers);
                run.out_of_buffers = true;
                break;
            }
        }
        run.needs_interrupt = run.used > 0 && queue.needs_notification(mem)?;
        Ok(run)
    }

    /// Delivers the pending frame of `len` bytes (or drops it). Returns false when more guest
    /// buffers are needed; the frame then stays pending.
    fn deliver(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        len: usize,
        run: &mut RxRun,
    ) -> Result<bool, virtio_queue::Error> {
        // Take buffers until they hold the frame.
        let count = loop {
            let mut have = 0usize;
            let mut enough = None;
            for (i, b) in self.rx_held.iter().enumerate() {
                have += b.cap;
                if have >= len {
                    enough = Some(i + 1);
                    break;
                }
            }
            if let Some(n) = enough {
                break n;
            }
            if !self.rx_held.is_empty() && !self.mrg_rxbuf {
                // Without MRG_RXBUF a frame must fit one chain (§5.1.6.3.1): the buffer goes
                // back unused and the frame is dropped.
                let b = self.rx_held.remove(0);
                queue.add_used(mem, b.head, 0)?;
                run.used += 1;
                self.rx_descs.clear();
                self.drop_pending();
                return Ok(true);
            }
            if self.rx_held.len() >= usize::from(queue.size()) {
                // Every buffer of the ring is not enough: drop the frame, keep the buffers for
                // the next ones.
                self.drop_pending();
                return Ok(true);
            }
            let chain = {
                let mut iter = queue.iter(mem)?;
                iter.next()
            };
            let Some(chain) = chain else {
                return Ok(false);
            };
            let head = chain.head_index();
            if !self.take_rx_chain(chain, mem) {
                NetStats::inc(&self.stats.malformed);
                if self.malformed_log.first(u64::MAX) {
                    log::warn!(
                        "virtio-net: returned a malformed RX chain unused; not logged again"
                    );
                }
                if head < queue.size() {
                    queue.add_used(mem, head, 0)?;
                    run.used += 1;
                }
            }
        };

        // Scatter the frame into the first `count` buffers.
        if self.mrg_rxbuf {
            self.bounce[10..12].copy_from_slice(&(count as u16).to_le_bytes());
        } else {
            self.bounce[10..12].copy_from_slice(&1u16.to_le_bytes());
        }
        let mut off = 0usize;
        let mut write_failed = false;
        for b in &self.rx_held[..count] {
            let start = off;
            for &(addr, dlen) in &self.rx_descs[b.start..b.end] {
                if off == len {
                    break;
                }
                let n = (dlen as usize).min(len - off);
                if mem.write_slice(&self.bounce[off..off + n], addr).is_err() {
                    // Checked when the chain was taken; only a memory hot-unplug could do this.
                    write_failed = true;
                }
                off += n;
            }
            queue.add_used(mem, b.head, (off - start) as u32)?;
            run.used += 1;
        }
        // Forget the used buffers and their descriptors (buffers are held in ring order, so
        // theirs are the first descriptors).
        self.rx_held.drain(..count);
        let cut = self
            .rx_held
            .first()
            .map_or(self.rx_descs.len(), |b| b.start);
        self.rx_descs.drain(..cut);
        for b in &mut self.rx_held {
            b.start -= cut;
            b.end -= cut;
        }
        if write_failed {
            NetStats::inc(&self.stats.rx_dropped);
        } else {
            NetStats::inc(&self.stats.rx_frames);
            NetStats::add(&self.stats.rx_bytes, (len - VNET_HDR_LEN) as u64);
            run.delivered += 1;
        }
        self.pending = None;
        Ok(true)
    }

    fn drop_pending(&mut self) {
        NetStats::inc(&self.stats.rx_dropped);
        self.pending = None;
    }

    /// Records an RX chain as held. False (nothing recorded) when malformed: a device-readable
    /// descriptor, a broken chain, memory outside the guest, or fewer bytes than a header.
    fn take_rx_chain(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> bool {
        let start = self.rx_descs.len();
        let head = chain.head_index();
        let mut cap = 0usize;
        let mut last_has_next = false;
        let mut ok = true;
        let mut count = 0;
        for desc in chain {
            count += 1;
            last_has_next = desc.has_next();
            if !desc.is_write_only() || !mem.check_range(desc.addr(), desc.len() as usize) {
                ok = false;
                break;
            }
            if desc.len() == 0 || cap >= RX_BUFFER_LEN {
                continue;
            }
            cap = cap.saturating_add(desc.len() as usize);
            self.rx_descs.push((desc.addr(), desc.len()));
        }
        if !ok || count == 0 || last_has_next || cap < VNET_HDR_LEN {
            self.rx_descs.truncate(start);
            return false;
        }
        self.rx_held.push(RxBuf {
            head,
            start,
            end: self.rx_descs.len(),
            cap: cap.min(RX_BUFFER_LEN),
        });
        true
    }
}
