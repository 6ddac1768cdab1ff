//! Hardware-reduced ACPI sleep control and status registers (ACPI 6.x §4.8.3.7, §4.8.3.8).
//!
//! Registered at 0x600 with length 2: offset 0 is the Sleep Control Register (the FADT's
//! SLEEP_CONTROL_REG), offset 1 the Sleep Status Register (SLEEP_STATUS_REG).
//!
//! Sleep Control Register (8 bits, write-only): bits 1:0 reserved, bits 4:2 SLP_TYP, bit 5
//! SLP_EN, bits 7:6 reserved. OSPM writes SLP_TYP with the value from the \_Sx package of the
//! state it enters together with SLP_EN = 1 to enter it. kvmrun's DSDT gives \_S5 (soft off)
//! the value 5, so SLP_EN with SLP_TYP 5 powers the VM off; other sleep types would need the
//! guest's memory to survive and a wake source, which kvmrun does not provide, so they are
//! ignored (the guest sees the write "not take").
//!
//! Sleep Status Register (8 bits): bit 7 WAK_STS, set by hardware on a wake from a sleep state.
//! kvmrun never sleeps, so it reads 0; writes (write-1-to-clear of WAK_STS) are ignored.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::log_once::LogOnce;
use crate::vm_exit::{ExitReason, ExitSignal};

/// Length of the register block: control at offset 0, status at offset 1.
pub const ACPI_SLEEP_REGS_LEN: u64 = 2;
/// SLP_TYP value kvmrun's \_S5 package uses.
pub const SLP_TYP_S5: u8 = 5;

const CONTROL_OFFSET: u64 = 0;
const STATUS_OFFSET: u64 = 1;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
const SLP_EN: u8 = 1 << 5;

/// The sleep control/status register pair.
pub struct AcpiSleepControl {
    exit: Arc<ExitSignal>,
    /// Logs each ignored SLP_TYP value once.
    ignored_types: LogOnce,
    unknown: LogOnce,
}

impl AcpiSleepControl {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        AcpiSleepControl {
            exit,
            ignored_types: LogOnce::new("acpi sleep types"),
            unknown: LogOnce::new("acpi sleep"),
        }
    }

    fn write_control(&self, value: u8) {
        if value & SLP_EN == 0 {
            // Writing SLP_TYP alone arms nothing; only SLP_EN starts the transition.
            return;
        }
        let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if slp_typ == SLP_TYP_S5 {
            log::info!("acpi: guest entered S5 (soft off)");
            self.exit.request(ExitReason::PowerOff);
        } else if self.ignored_types.first(u64::from(slp_typ)) {
            log::warn!("acpi: guest asked for sleep type {slp_typ}, which kvmrun does not support; ignored");
        }
    }

    fn log_unknown(&self, what: &str, offset: u64, len: usize) {
        if self.unknown.first(offset) {
            log::debug!("acpi sleep: unhandled {what} of {len} byte(s) at offset {offset:#x}");
        }
    }
}

impl BusDevice for AcpiSleepControl {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match offset {
            // The control register is write-only: reading it returns 0 (§4.8.3.7). Status: no
            // wake ever happened, WAK_STS is 0. A 16-bit read at 0x600 reads both as 0.
            CONTROL_OFFSET | STATUS_OFFSET => {
                let n = data.len().min((ACPI_SLEEP_REGS_LEN - offset) as usize);
                data[..n].fill(0);
                data[n..].fill(0xff);
            }
            _ => {
                data.fill(0xff);
                self.log_unknown("read", offset, data.len());
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        match offset {
            // The registers are 8 bits wide; a wider write at 0x600 carries the control value
            // in its low byte (and the status byte, whose only bit is write-1-to-clear WAK_STS,
            // in the next: nothing to clear).
            CONTROL_OFFSET => {
                if let Some(&value) = data.first() {
                    self.write_control(value);
                }
            }
            STATUS_OFFSET => {}
            _ => self.log_unknown("write", offset, data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (AcpiSleepControl, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (AcpiSleepControl::new(exit.clone()), exit)
    }

    fn control(slp_typ: u8, slp_en: bool) -> u8 {
        (slp_typ << SLP_TYP_SHIFT) | if slp_en { SLP_EN } else { 0 }
    }

    #[test]
    fn s5_powers_off() {
        let (d, exit) = dev();
        d.write(CONTROL_OFFSET, &[control(5, true)]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
        assert_eq!(exit.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn s5_with_reserved_bits_set_powers_off() {
        let (d, exit) = dev();
        d.write(CONTROL_OFFSET, &[control(5, true) | 0xc3]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn other_sleep_types_ignored() {
        let (d, exit) = dev();
        for typ in [0u8, 1, 2, 3, 4, 6, 7] {
            d.write(CONTROL_OFFSET, &[control(typ, true)]);
            d.write(CONTROL_OFFSET, &[control(typ, true)]); // logged once only
        }
        assert!(!exit.is_requested());
    }

    #[test]
    fn slp_en_clear_does_nothing() {
        let (d, exit) = dev();
        for typ in 0..8u8 {
            d.write(CONTROL_OFFSET, &[control(typ, false)]);
        }
        assert!(!exit.is_requested());
    }

    #[test]
    fn reads_and_status() {
        let (d, exit) = dev();
        let mut b = [0xaau8];
        d.read(CONTROL_OFFSET, &mut b);
        assert_eq!(b, [0]);
        d.read(STATUS_OFFSET, &mut b);
        assert_eq!(b, [0]);
        let mut w = [0xaau8; 2];
        d.read(CONTROL_OFFSET, &mut w);
        assert_eq!(w, [0, 0]);
        let mut l = [0xaau8; 4];
        d.read(STATUS_OFFSET, &mut l);
        assert_eq!(l, [0, 0xff, 0xff, 0xff]);
        d.read(2, &mut b);
        assert_eq!(b, [0xff]);
        // Status writes (even S5-looking ones) and unknown offsets do nothing.
        d.write(STATUS_OFFSET, &[0xff]);
        d.write(STATUS_OFFSET, &[control(5, true)]);
        d.write(2, &[control(5, true)]);
        d.write(u64::MAX, &[control(5, true)]);
        d.write(CONTROL_OFFSET, &[]);
        d.read(CONTROL_OFFSET, &mut []);
        assert!(!exit.is_requested());
        // A 16-bit write carries the control value in its low byte.
        d.write(CONTROL_OFFSET, &[control(5, true), 0x80]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }
}
