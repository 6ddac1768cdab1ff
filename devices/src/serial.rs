//! COM1: a 16550A UART at ports 0x3f8-0x3ff, IRQ 4 (the PC AT assignment).
//!
//! The register model is `vm_superio::Serial`, which follows the 16550 datasheet (PC16550D,
//! "Register Description"): RBR/THR at offset 0, IER at 1, IIR/FCR at 2, LCR at 3, MCR at 4,
//! LSR at 5, MSR at 6, SCR at 7, and the divisor latch DLL/DLM at offsets 0/1 while LCR bit 7
//! (DLAB) is set. This module only connects it to kvmrun:
//! - its interrupt line is an eventfd registered as a KVM irqfd (vm-superio's `Trigger` has no
//!   impl for `EventFd`, hence [`EventFdTrigger`]);
//! - transmitted bytes go to a host writer that may fail without the guest noticing, since a
//!   real UART's line never reports whether anyone listens;
//! - received bytes come from the console through [`Serial::enqueue_input`];
//! - the first transmitted byte runs a hook (the boot report's "first console byte");
//! - a lock, so the device can sit on the shared port bus.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vm_superio::serial::{Error as UartError, NoEvents};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::log_once::LogOnce;

/// Number of I/O ports the UART decodes (offsets 0..=7 from its base, e.g. 0x3f8..=0x3ff).
pub const SERIAL_PORT_LEN: u64 = 8;

/// Raises the UART's interrupt by writing the irqfd `EventFd`; KVM injects the (edge) IRQ.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    /// The underlying eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The console writer as the UART sees it: it never returns an error.
///
/// A 16550 cannot report that the wire behind it is gone, and a host-side problem (EPIPE
/// because stdout's reader exited, a full disk) must not stop the guest: the first error is
/// logged and output is then dropped for good. `WouldBlock` (a non-blocking stdout that is
/// full) drops only the bytes at hand.
struct ConsoleOut {
    inner: Box<dyn Write + Send>,
    /// A hard error was seen: all further output is dropped.
    broken: bool,
    would_block_logged: bool,
    /// The guest transmitted at least one byte (whether or not it reached the host).
    transmitted: bool,
}

impl ConsoleOut {
    fn failed(&mut self, e: io::Error) {
        if e.kind() == io::ErrorKind::WouldBlock {
            if !self.would_block_logged {
                self.would_block_logged = true;
                log::warn!("serial console output would block; dropping output while it does");
            }
        } else {
            self.broken = true;
            log::warn!("serial console output failed ({e}); dropping all further guest output");
        }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.transmitted = true;
        if !self.broken {
            if let Err(e) = self.inner.write_all(buf) {
                self.failed(e);
            }
        }
        // The bytes left the UART whether or not the host kept them.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // vm-superio flushes after every transmitted byte, so output (e.g. a shell prompt
        // without a newline) appears at once even through a line-buffered stdout.
        if !self.broken {
            if let Err(e) = self.inner.flush() {
                self.failed(e);
            }
        }
        Ok(())
    }
}

type Uart = vm_superio::Serial<EventFdTrigger, NoEvents, ConsoleOut>;

struct Inner {
    uart: Uart,
    first_output_hook: Option<Box<dyn FnOnce() + Send>>,
}

/// The COM1 UART. Share it as `Arc<Serial>`: the vCPUs reach it through the port bus, the
/// console thread through [`Serial::enqueue_input`].
pub struct Serial {
    inner: Mutex<Inner>,
    irq_error_logged: AtomicBool,
    odd_access: LogOnce,
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART in its power-on state (datasheet reset values, as modelled by vm-superio)
    /// raising its interrupt on `irq` and transmitting to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        let out = ConsoleOut {
            inner: out,
            broken: false,
            would_block_logged: false,
            transmitted: false,
        };
        Serial {
            inner: Mutex::new(Inner {
                uart: vm_superio::Serial::new(EventFdTrigger::new(irq), out),
                first_output_hook: None,
            }),
            irq_error_logged: AtomicBool::new(false),
            odd_access: LogOnce::new("serial"),
        }
    }

    /// Queues console input for the guest to read from RBR.
    ///
    /// Takes at most what the 64-byte receive FIFO has room for and returns how many bytes it
    /// took (0 when the FIFO is full, or in loopback mode where the datasheet disconnects the
    /// serial input); the caller keeps the rest for later. Like the 16550, it sets LSR.DR and,
    /// if IER.ERBFI is set, raises the received-data interrupt. Fails only if the interrupt
    /// cannot be signalled.
    pub fn enqueue_input(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut inner = crate::lock(&self.inner);
        match inner.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => Ok(n),
            Err(UartError::FullFifo) => Ok(0),
            Err(UartError::Trigger(e)) | Err(UartError::IOError(e)) => Err(e),
        }
    }

    /// Free room in the receive FIFO, in bytes.
    pub fn fifo_capacity(&self) -> usize {
        crate::lock(&self.inner).uart.fifo_capacity()
    }

    /// Sets a hook run once, when the guest transmits its first byte (for the boot report).
    /// It runs on the vCPU thread, without the UART lock held. If the guest already
    /// transmitted, the hook runs now. Replaces a hook not yet run.
    pub fn set_first_output_hook(&self, f: Box<dyn FnOnce() + Send>) {
        let mut inner = crate::lock(&self.inner);
        if inner.uart.writer().transmitted {
            drop(inner);
            f();
        } else {
            inner.first_output_hook = Some(f);
        }
    }

    /// Flushes the host writer (at exit, so nothing the guest printed is lost).
    pub fn flush_output(&self) {
        // ConsoleOut::flush never fails; errors are logged inside.
        let _ = crate::lock(&self.inner).uart.writer_mut().flush();
    }

    /// Logs (once per offset) an access the UART does not decode.
    fn log_odd(&self, what: &str, offset: u64, len: usize) {
        if self.odd_access.first(offset) {
            log::debug!(
                "serial: {what} of {len} byte(s) at offset {offset:#x}: only the first byte of ports 0-7 is decoded"
            );
        }
    }

    /// The register a byte access at `offset` reaches, if any.
    fn register(offset: u64) -> Option<u8> {
        if offset < SERIAL_PORT_LEN {
            Some(offset as u8)
        } else {
            None
        }
    }
}

impl BusDevice for Serial {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        let Some(reg) = Self::register(offset) else {
            data.fill(0xff);
            self.log_odd("read", offset, data.len());
            return;
        };
        if data.len() > 1 {
            self.log_odd("read", offset, data.len());
        }
        // Byte registers only: a wider access reads the register in its low byte.
        let value = crate::lock(&self.inner).uart.read(reg);
        crate::read_reg8(data, value);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        let Some(reg) = Self::register(offset) else {
            self.log_odd("write", offset, data.len());
            return;
        };
        if data.len() > 1 {
            self.log_odd("write", offset, data.len());
        }
        let mut inner = crate::lock(&self.inner);
        match inner.uart.write(reg, value) {
            Ok(()) => {}
            Err(UartError::Trigger(e)) => {
                if !self.irq_error_logged.swap(true, Ordering::Relaxed) {
                    log::error!("serial: cannot signal the IRQ: {e}");
                }
            }
            // ConsoleOut never reports errors, and FullFifo only comes from input.
            Err(e) => log::debug!("serial: write to offset {reg}: {e}"),
        }
        let hook = if inner.uart.writer().transmitted {
            inner.first_output_hook.take()
        } else {
            None
        };
        // Run the hook without the UART lock held, so it may do anything.
        drop(inner);
        if let Some(hook) = hook {
            hook();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    // Register offsets and bits (PC16550D datasheet, Table II).
    const RBR_THR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const MSR: u64 = 6;
    const SCR: u64 = 7;
    const IER_ERBFI: u8 = 0x01;
    const IER_ETBEI: u8 = 0x02;
    const LCR_DLAB: u8 = 0x80;
    const LSR_DR: u8 = 0x01;
    const LSR_THRE: u8 = 0x20;
    const LSR_TEMT: u8 = 0x40;
    const IIR_NO_INT: u8 = 0x01;
    const IIR_THRE: u8 = 0x02;
    const IIR_RDA: u8 = 0x04;
    const IIR_FIFO: u8 = 0xc0;
    const MCR_LOOP: u8 = 0x10;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SharedBuf {
        fn contents(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    /// Fails every write and flush with `kind`, counting the attempts.
    struct FailingWriter(io::ErrorKind, Arc<AtomicUsize>);

    impl Write for FailingWriter {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.1.fetch_add(1, Ordering::SeqCst);
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(self.0))
        }
    }

    fn irq() -> (EventFd, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let clone = evt.try_clone().unwrap();
        (evt, clone)
    }

    fn serial() -> (Serial, EventFd, SharedBuf) {
        let (evt, irq) = irq();
        let buf = SharedBuf::default();
        (Serial::new(evt, Box::new(buf.clone())), irq, buf)
    }

    fn rd(s: &Serial, offset: u64) -> u8 {
        let mut d = [0u8];
        s.read(offset, &mut d);
        d[0]
    }

    fn wr(s: &Serial, offset: u64, v: u8) {
        s.write(offset, &[v]);
    }

    fn irq_count(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    #[test]
    fn thr_write_appears_in_output() {
        let (s, _irq, buf) = serial();
        for b in b"hello\r\n$ " {
            wr(&s, RBR_THR, *b);
        }
        assert_eq!(buf.contents(), b"hello\r\n$ ");
        s.flush_output();
    }

    #[test]
    fn lsr_bits() {
        let (s, _irq, _buf) = serial();
        // Transmitter always empty; no data yet.
        assert_eq!(rd(&s, LSR), LSR_THRE | LSR_TEMT);
        wr(&s, RBR_THR, b'x');
        assert_eq!(rd(&s, LSR), LSR_THRE | LSR_TEMT);
        assert_eq!(s.enqueue_input(b"ab").unwrap(), 2);
        assert_eq!(rd(&s, LSR), LSR_THRE | LSR_TEMT | LSR_DR);
        assert_eq!(rd(&s, RBR_THR), b'a');
        assert_eq!(rd(&s, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&s, RBR_THR), b'b');
        assert_eq!(rd(&s, LSR) & LSR_DR, 0);
        // Reading an empty RBR returns 0 and leaves DR clear.
        assert_eq!(rd(&s, RBR_THR), 0);
        assert_eq!(rd(&s, LSR) & LSR_DR, 0);
    }

    #[test]
    fn thr_empty_interrupt() {
        let (s, irq, _buf) = serial();
        assert_eq!(irq_count(&irq), 0);
        // No interrupt while IER is 0.
        wr(&s, RBR_THR, b'a');
        assert_eq!(irq_count(&irq), 0);
        assert_eq!(rd(&s, IIR), IIR_FIFO | IIR_NO_INT);
        // Enabling ETBEI with THR empty raises THRE at once (16550: the interrupt is pending
        // whenever THR is empty and ETBEI is set).
        wr(&s, IER, IER_ETBEI);
        assert_eq!(rd(&s, IER), IER_ETBEI);
        assert_eq!(irq_count(&irq), 1);
        // Reading IIR acknowledges THRE.
        assert_eq!(rd(&s, IIR), IIR_FIFO | IIR_THRE);
        assert_eq!(rd(&s, IIR), IIR_FIFO | IIR_NO_INT);
        // Each transmitted byte empties THR again and raises THRE.
        wr(&s, RBR_THR, b'b');
        assert_eq!(irq_count(&irq), 1);
        assert_eq!(rd(&s, IIR), IIR_FIFO | IIR_THRE);
    }

    #[test]
    fn rx_data_interrupt() {
        let (s, irq, _buf) = serial();
        // Without ERBFI: data is queued but no interrupt.
        assert_eq!(s.enqueue_input(b"x").unwrap(), 1);
        assert_eq!(irq_count(&irq), 0);
        assert_eq!(rd(&s, RBR_THR), b'x');

        wr(&s, IER, IER_ERBFI);
        assert_eq!(irq_count(&irq), 0); // nothing pending yet
        assert_eq!(s.enqueue_input(b"yz").unwrap(), 2);
        assert_eq!(irq_count(&irq), 1);
        assert_eq!(rd(&s, IIR), IIR_FIFO | IIR_RDA);
        assert_eq!(rd(&s, RBR_THR), b'y');
        assert_eq!(rd(&s, RBR_THR), b'z');

        // Data that arrived while ERBFI was off raises the interrupt once it is re-enabled.
        wr(&s, IER, 0);
        assert_eq!(s.enqueue_input(b"q").unwrap(), 1);
        assert_eq!(irq_count(&irq), 0);
        wr(&s, IER, IER_ERBFI);
        assert_eq!(irq_count(&irq), 1);
    }

    #[test]
    fn enqueue_respects_fifo_capacity() {
        let (s, _irq, _buf) = serial();
        let cap = s.fifo_capacity();
        assert_eq!(cap, 64);
        let input: Vec<u8> = (0..100u8).collect();
        assert_eq!(s.enqueue_input(&input).unwrap(), cap);
        assert_eq!(s.fifo_capacity(), 0);
        assert_eq!(s.enqueue_input(&input[cap..]).unwrap(), 0);
        assert_eq!(s.enqueue_input(&[]).unwrap(), 0);
        for expected in 0..cap as u8 {
            assert_eq!(rd(&s, RBR_THR), expected);
        }
        assert_eq!(rd(&s, LSR) & LSR_DR, 0);
        assert_eq!(s.enqueue_input(&input[cap..]).unwrap(), 100 - cap);
    }

    #[test]
    fn first_output_hook_called_once() {
        let (s, _irq, _buf) = serial();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        s.set_first_output_hook(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        // Register writes that transmit nothing do not count.
        wr(&s, IER, 0);
        wr(&s, LCR, LCR_DLAB);
        wr(&s, RBR_THR, 1); // divisor latch, not THR
        wr(&s, LCR, 0x03);
        wr(&s, MCR, MCR_LOOP);
        wr(&s, RBR_THR, b'l'); // loopback: not transmitted
        wr(&s, MCR, 0);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        wr(&s, RBR_THR, b'a');
        wr(&s, RBR_THR, b'b');
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // A hook set after the first byte runs at once, once.
        let c = calls.clone();
        s.set_first_output_hook(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        wr(&s, RBR_THR, b'c');
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn hook_may_use_the_device() {
        // The hook runs without the UART lock held: calling back into the device must not
        // deadlock.
        let (s, _irq, _buf) = serial();
        let s = Arc::new(s);
        let weak = Arc::downgrade(&s);
        s.set_first_output_hook(Box::new(move || {
            if let Some(s) = weak.upgrade() {
                let _ = s.fifo_capacity();
            }
        }));
        wr(&s, RBR_THR, b'a');
    }

    #[test]
    fn dlab_divisor_latch() {
        let (s, irq, buf) = serial();
        wr(&s, IER, IER_ERBFI);
        wr(&s, LCR, LCR_DLAB | 0x03);
        // DLL/DLM replace RBR/THR and IER while DLAB is set; default divisor 12 (9600 baud).
        assert_eq!(rd(&s, RBR_THR), 0x0c);
        assert_eq!(rd(&s, IER), 0x00);
        wr(&s, RBR_THR, 0x01); // DLL: 115200 baud
        wr(&s, IER, 0x00); // DLM
        assert_eq!(rd(&s, RBR_THR), 0x01);
        assert_eq!(rd(&s, IER), 0x00);
        wr(&s, IER, 0x12);
        assert_eq!(rd(&s, IER), 0x12);
        assert!(buf.contents().is_empty());
        assert_eq!(irq_count(&irq), 0);
        // Clearing DLAB brings back IER unchanged, and THR.
        wr(&s, LCR, 0x03);
        assert_eq!(rd(&s, LCR), 0x03);
        assert_eq!(rd(&s, IER), IER_ERBFI);
        wr(&s, RBR_THR, b'z');
        assert_eq!(buf.contents(), b"z");
        // The latch kept its value.
        wr(&s, LCR, LCR_DLAB);
        assert_eq!(rd(&s, RBR_THR), 0x01);
        assert_eq!(rd(&s, IER), 0x12);
    }

    #[test]
    fn other_registers() {
        let (s, _irq, buf) = serial();
        wr(&s, SCR, 0x5a);
        assert_eq!(rd(&s, SCR), 0x5a);
        // MSR: CTS, DSR and DCD asserted.
        assert_eq!(rd(&s, MSR), 0xb0);
        // Loopback: THR goes to RBR, not to the output.
        wr(&s, MCR, MCR_LOOP);
        wr(&s, RBR_THR, b'L');
        assert_eq!(rd(&s, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&s, RBR_THR), b'L');
        assert!(buf.contents().is_empty());
        // Console input is cut off in loopback.
        assert_eq!(s.enqueue_input(b"x").unwrap(), 0);
        // FCR writes are accepted and ignored.
        wr(&s, IIR, 0xc7);
    }

    #[test]
    fn failing_writer_does_not_panic() {
        for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::WouldBlock] {
            let (evt, irq) = irq();
            let attempts = Arc::new(AtomicUsize::new(0));
            let s = Serial::new(evt, Box::new(FailingWriter(kind, attempts.clone())));
            let calls = Arc::new(AtomicUsize::new(0));
            let c = calls.clone();
            s.set_first_output_hook(Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }));
            wr(&s, IER, IER_ETBEI);
            assert_eq!(rd(&s, IIR), IIR_FIFO | IIR_THRE);
            for b in b"abc" {
                wr(&s, RBR_THR, *b);
            }
            s.flush_output();
            // The guest saw THR drain as usual, and the hook ran.
            assert_eq!(rd(&s, IIR), IIR_FIFO | IIR_THRE);
            assert_eq!(rd(&s, LSR), LSR_THRE | LSR_TEMT);
            assert!(irq_count(&irq) >= 2);
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            let n = attempts.load(Ordering::SeqCst);
            match kind {
                // A hard error stops output for good.
                io::ErrorKind::BrokenPipe => assert_eq!(n, 1),
                // WouldBlock drops only the bytes at hand.
                _ => assert_eq!(n, 3),
            }
        }
    }

    #[test]
    fn odd_accesses() {
        let (s, _irq, buf) = serial();
        // Zero-length accesses do nothing.
        s.write(RBR_THR, &[]);
        s.read(RBR_THR, &mut []);
        // Wide accesses use the low byte only.
        s.write(RBR_THR, b"wxyz");
        assert_eq!(buf.contents(), b"w");
        let mut d = [0u8; 4];
        s.read(LSR, &mut d);
        assert_eq!(d, [LSR_THRE | LSR_TEMT, 0xff, 0xff, 0xff]);
        // Offsets past the UART read as all ones; writes there are dropped.
        let mut d = [0u8; 2];
        s.read(8, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        s.read(u64::MAX, &mut d);
        s.write(8, &[1]);
        s.write(u64::MAX, &[1]);
        assert_eq!(buf.contents(), b"w");
    }
}
