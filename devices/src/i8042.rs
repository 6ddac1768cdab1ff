//! A minimal i8042 keyboard controller: only what a guest needs to reset the machine.
//!
//! Registered at 0x60 with length 5, so offset 0 is the data port (0x60), offset 4 the
//! status/command port (0x64), and offset 1 is the PC AT "system control port B" (0x61),
//! which shares the range on real hardware decoding too.
//!
//! Ports 0x60/0x64 are `vm_superio::I8042Device`: every read returns 0 and command 0xFE
//! ("pulse output port bit 0", wired to the CPU reset line on the PC AT) triggers a reset.
//! A status of 0 means "output buffer empty (bit 0), input buffer empty (bit 1)", which is what
//! Linux's `reboot=k` path (`kb_wait()` in arch/x86/kernel/reboot.c) polls for before writing
//! 0xFE. A keyboard driver probing the controller gets no answer to its commands and gives up.

use std::sync::{Arc, Mutex};

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::log_once::LogOnce;
use crate::vm_exit::{ExitReason, ExitSignal};

/// Base port of the range the device decodes.
pub const I8042_BASE: u64 = 0x60;
/// Length of that range: 0x60..=0x64.
pub const I8042_LEN: u64 = 5;

const DATA_OFFSET: u64 = 0; // 0x60
const PORT_B_OFFSET: u64 = 1; // 0x61
const STATUS_COMMAND_OFFSET: u64 = 4; // 0x64

/// Port B bits the software can write and read back: timer 2 gate (bit 0), speaker data
/// (bit 1), parity check disable (bit 2), channel check disable (bit 3).
const PORT_B_RW_BITS: u8 = 0x0f;
/// Port B read-only bits that a real board toggles: refresh detect (bit 4, flips every
/// ~15 us) and timer 2 output (bit 5).
const PORT_B_TOGGLE_BITS: u8 = 0x30;

/// Asks the VM to stop with [`ExitReason::Reset`].
struct ResetTrigger(Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        log::info!("i8042: guest pulsed the CPU reset line (command 0xFE)");
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

struct State {
    kbc: I8042Device<ResetTrigger>,
    port_b: u8,
}

/// The i8042 controller at 0x60/0x64 plus port 0x61.
pub struct I8042 {
    state: Mutex<State>,
    unknown: LogOnce,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 {
            state: Mutex::new(State {
                kbc: I8042Device::new(ResetTrigger(exit)),
                port_b: 0,
            }),
            unknown: LogOnce::new("i8042"),
        }
    }

    fn log_unknown(&self, what: &str, offset: u64, len: usize) {
        if self.unknown.first(offset) {
            log::debug!(
                "i8042: unhandled {what} of {len} byte(s) at port {:#x}",
                I8042_BASE.wrapping_add(offset)
            );
        }
    }
}

impl BusDevice for I8042 {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        let mut st = crate::lock(&self.state);
        let value = match offset {
            DATA_OFFSET | STATUS_COMMAND_OFFSET => st.kbc.read(offset as u8),
            PORT_B_OFFSET => {
                // Port 0x61 is KVM's in-kernel PIT's when the machine has one (KVM_CREATE_PIT2,
                // `--pit on`); without a PIT (the default) it is answered here. Loops such as Linux's PIT calibration poll bit 5 (timer 2
                // output) for a change, so both toggling bits flip on every read: a poll
                // always ends, and code waiting for the refresh bit to flip sees it flip.
                st.port_b ^= PORT_B_TOGGLE_BITS;
                st.port_b
            }
            _ => {
                drop(st);
                data.fill(0xff);
                self.log_unknown("read", offset, data.len());
                return;
            }
        };
        drop(st);
        crate::read_reg8(data, value);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            DATA_OFFSET | STATUS_COMMAND_OFFSET => {
                // Infallible: the trigger only records the exit request.
                let _ = crate::lock(&self.state).kbc.write(offset as u8, value);
            }
            PORT_B_OFFSET => {
                let mut st = crate::lock(&self.state);
                st.port_b = (st.port_b & !PORT_B_RW_BITS) | (value & PORT_B_RW_BITS);
            }
            _ => self.log_unknown("write", offset, data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (I8042::new(exit.clone()), exit)
    }

    fn rd(d: &I8042, offset: u64) -> u8 {
        let mut b = [0xaau8];
        d.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn status_reports_buffers_empty() {
        let (d, _) = dev();
        let status = rd(&d, STATUS_COMMAND_OFFSET);
        assert_eq!(status & 0x01, 0, "output buffer full");
        assert_eq!(status & 0x02, 0, "input buffer full");
        assert_eq!(rd(&d, DATA_OFFSET), 0);
    }

    #[test]
    fn reset_command() {
        let (d, exit) = dev();
        // Other commands and data writes do nothing.
        for v in [0x00u8, 0x20, 0x60, 0xaa, 0xfd, 0xff] {
            d.write(STATUS_COMMAND_OFFSET, &[v]);
        }
        d.write(DATA_OFFSET, &[0xfe]);
        assert!(!exit.is_requested());
        d.write(STATUS_COMMAND_OFFSET, &[0xfe]);
        assert!(exit.is_requested());
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
        assert_eq!(exit.reason().unwrap().exit_status(), 0);
        assert_eq!(exit.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn wide_reset_write_uses_low_byte() {
        let (d, exit) = dev();
        d.write(STATUS_COMMAND_OFFSET, &[0xfe, 0x00]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn port_b_toggles_and_keeps_writable_bits() {
        let (d, _) = dev();
        let a = rd(&d, PORT_B_OFFSET);
        let b = rd(&d, PORT_B_OFFSET);
        assert_ne!(a & 0x20, b & 0x20, "timer 2 output must toggle");
        assert_ne!(a & 0x10, b & 0x10, "refresh bit must toggle");
        d.write(PORT_B_OFFSET, &[0xff]);
        assert_eq!(rd(&d, PORT_B_OFFSET) & 0xcf, 0x0f);
        d.write(PORT_B_OFFSET, &[0x01]);
        assert_eq!(rd(&d, PORT_B_OFFSET) & 0xcf, 0x01);
    }

    #[test]
    fn unknown_offsets() {
        let (d, exit) = dev();
        for offset in [2u64, 3, 5, u64::MAX] {
            let mut b = [0u8; 3];
            d.read(offset, &mut b);
            assert_eq!(b, [0xff; 3]);
            d.write(offset, &[0xfe]);
        }
        d.read(0, &mut []);
        d.write(STATUS_COMMAND_OFFSET, &[]);
        assert!(!exit.is_requested());
        let mut b = [0u8; 2];
        d.read(STATUS_COMMAND_OFFSET, &mut b);
        assert_eq!(b, [0, 0xff]);
    }
}
