//! COM1: a 16550A UART at ports 0x3f8-0x3ff, IRQ 4 (the PC AT assignment).
//!
//! The register model (RBR/THR, IER, IIR, LCR, MCR, LSR, MSR, SCR and the DLAB divisor latch,
//! per the 16550 datasheet) is `vm_superio::Serial`; this module only connects it to kvmrun:
//! - its interrupt line is an eventfd registered as a KVM irqfd (edge: one write per
//!   interrupt condition the datasheet says asserts INTR);
//! - transmitted bytes go to a host writer (stdout, a file, or a sink) that may fail without
//!   the guest noticing, since a real UART's line never reports whether anyone listens;
//! - received bytes come from the console through [`Serial::enqueue_input`];
//! - the first transmitted byte calls a hook (the boot report's "first console output").

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vm_superio::serial::{Error as SerialError, NoEvents};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::log_once::LogOnce;

/// Number of ports the UART decodes (8 registers, 16550 datasheet table 2).
pub const SERIAL_PORT_COUNT: u64 = 8;

/// The UART's interrupt line: an eventfd the VMM registers as a KVM irqfd.
///
/// `vm_superio::Trigger` has no impl for `EventFd` (and neither type is ours), hence the
/// newtype.
#[derive(Debug)]
pub struct IrqTrigger(EventFd);

impl IrqTrigger {
    /// Wraps `evt`; each trigger adds 1 to it, which KVM turns into an edge on the IRQ line.
    pub fn new(evt: EventFd) -> Self {
        IrqTrigger(evt)
    }

    /// The underlying eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The host side of the transmit line.
///
/// Always reports success to the UART model: the guest must not stall or die because the host
/// stopped reading (EPIPE on a closed stdout, a full disk, ...). Failures are logged once and
/// the bytes dropped; a broken pipe stops output for good since no later write can succeed.
struct Output {
    out: Box<dyn Write + Send>,
    first_byte_hook: Option<Box<dyn FnOnce() + Send>>,
    transmitted_any: bool,
    broken: bool,
    error_logged: bool,
}

impl Output {
    fn new(out: Box<dyn Write + Send>) -> Self {
        Output {
            out,
            first_byte_hook: None,
            transmitted_any: false,
            broken: false,
            error_logged: false,
        }
    }

    fn failed(&mut self, what: &str, e: &io::Error) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            self.broken = true;
        }
        if !self.error_logged {
            self.error_logged = true;
            log::warn!("serial output {what} failed: {e}; dropping guest console output");
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.transmitted_any {
            self.transmitted_any = true;
            if let Some(hook) = self.first_byte_hook.take() {
                hook();
            }
        }
        if !self.broken {
            if let Err(e) = self.out.write_all(buf) {
                self.failed("write", &e);
            }
        }
        // The bytes left the UART whether or not the host kept them.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.broken {
            if let Err(e) = self.out.flush() {
                self.failed("flush", &e);
            }
        }
        Ok(())
    }
}

type Uart = vm_superio::Serial<IrqTrigger, NoEvents, Output>;

/// The COM1 UART. Share it as `Arc<Serial>`: the vCPUs reach it through the port bus, the
/// console thread through [`Serial::enqueue_input`].
pub struct Serial {
    uart: Mutex<Uart>,
    irq_error_logged: AtomicBool,
    odd_access: LogOnce,
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART in its power-on state (16550 datasheet table 4 reset values, as modelled by
    /// vm-superio) raising `irq` and transmitting to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: Mutex::new(vm_superio::Serial::new(
                IrqTrigger::new(irq),
                Output::new(out),
            )),
            irq_error_logged: AtomicBool::new(false),
            odd_access: LogOnce::new("serial"),
        }
    }

    /// Puts bytes from the console into the receive FIFO.
    ///
    /// Takes at most the FIFO's free room and returns how many bytes it took (0 when the FIFO
    /// is full, or in loopback mode where the datasheet disconnects the serial input); the
    /// caller keeps the rest for later. Sets LSR data-ready and, if enabled in IER, raises the
    /// received-data-available interrupt. Fails only if the interrupt cannot be signalled.
    pub fn enqueue_input(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut uart = crate::lock(&self.uart);
        let room = uart.fifo_capacity();
        if bytes.is_empty() || room == 0 {
            return Ok(0);
        }
        let take = bytes.len().min(room);
        match uart.enqueue_raw_bytes(&bytes[..take]) {
            Ok(n) => Ok(n),
            Err(SerialError::FullFifo) => Ok(0),
            Err(SerialError::Trigger(e)) => Err(e),
            Err(SerialError::IOError(e)) => Err(e),
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_room(&self) -> usize {
        crate::lock(&self.uart).fifo_capacity()
    }

    /// Sets the function called once, when the guest transmits its first byte. It runs on the
    /// vCPU thread with the UART locked, so it must not call back into this device. Replaces a
    /// hook not yet called; does nothing after the first byte went out.
    pub fn set_first_output_hook(&self, f: Box<dyn FnOnce() + Send>) {
        let mut uart = crate::lock(&self.uart);
        let out = uart.writer_mut();
        if !out.transmitted_any {
            out.first_byte_hook = Some(f);
        }
    }

    /// Flushes the host writer (at exit, so nothing the guest printed is lost).
    pub fn flush_output(&self) {
        let mut uart = crate::lock(&self.uart);
        // Output::flush never fails; errors are logged inside.
        let _ = uart.writer_mut().flush();
    }

    fn irq_failed(&self, e: &io::Error) {
        if !self.irq_error_logged.swap(true, Ordering::Relaxed) {
            log::error!("serial: cannot signal IRQ: {e}");
        }
    }

    /// Logs (once per offset) an access the UART does not decode.
    fn log_odd(&self, what: &str, offset: u64, len: usize) {
        if self.odd_access.first(offset) {
            log::debug!("serial: {what} of {len} byte(s) at offset {offset:#x}: only the first byte of ports 0-7 is decoded");
        }
    }
}

impl BusDevice for Serial {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        let Some(reg) = u8::try_from(offset)
            .ok()
            .filter(|&o| u64::from(o) < SERIAL_PORT_COUNT)
        else {
            data.fill(0xff);
            self.log_odd("read", offset, data.len());
            return;
        };
        if data.len() > 1 {
            self.log_odd("read", offset, data.len());
        }
        let value = crate::lock(&self.uart).read(reg);
        crate::read_reg8(data, value);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        let Some(reg) = u8::try_from(offset)
            .ok()
            .filter(|&o| u64::from(o) < SERIAL_PORT_COUNT)
        else {
            self.log_odd("write", offset, data.len());
            return;
        };
        if data.len() > 1 {
            self.log_odd("write", offset, data.len());
        }
        let result = crate::lock(&self.uart).write(reg, value);
        match result {
            Ok(()) => {}
            Err(SerialError::Trigger(e)) => self.irq_failed(&e),
            // Output never reports errors (see `Output`), and FullFifo only comes from input.
            Err(e) => log::debug!("serial: write to offset {reg}: {e}"),
        }
    }
}
