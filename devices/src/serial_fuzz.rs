//! Fuzzing harness for the 16550A UART at 0x3f8 (used by `fuzz/fuzz_targets/serial.rs` and by
//! the seed-corpus replay test).
//!
//! Input: a list of 2-byte operations `[op, value]`; a trailing odd byte is ignored.
//! - op % 4 == 0: byte write of `value` to register `op / 4 % 8` (a vCPU's `outb`);
//! - 1: byte read of register `op / 4 % 8`;
//! - 2: console input: `value % 80` bytes (more than the 64-byte FIFO holds) offered to
//!   [`Serial::enqueue_input`], as the main thread's console reader does;
//! - 3: an odd access: `op / 4 % 16` is the offset (past the 8 decoded ports too) and
//!   `value % 5` the length (0..=4), a write if `value` ≥ 128.
//!
//! Checks, besides "no panic": the UART never sends the host more bytes than the guest wrote to
//! THR, input never takes more than the free room of the receive FIFO, and the FIFO never
//! holds more than 64 bytes.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;
use crate::serial::Serial;

/// Size of the 16550A receive FIFO (datasheet: 16 bytes; vm-superio models 64).
const FIFO_MAX: usize = 64;

/// Collects what the UART transmits.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub thr_writes: usize,
    pub transmitted: usize,
    pub input_taken: usize,
}

/// Runs one input.
pub fn run(data: &[u8]) -> Summary {
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let sink = Sink::default();
    let serial = Serial::new(irq, Box::new(sink.clone()));
    let mut s = Summary::default();
    // THR is register 0 while LCR.DLAB (bit 7) is clear; with DLAB set it is the divisor latch.
    let mut lcr = 0u8;
    for op in data.chunks_exact(2) {
        let (kind, value) = (op[0] % 4, op[1]);
        let reg = u64::from(op[0] / 4 % 8);
        match kind {
            0 => {
                serial.write(reg, &[value]);
                if reg == 3 {
                    lcr = value;
                } else if reg == 0 && lcr & 0x80 == 0 {
                    s.thr_writes += 1;
                }
            }
            1 => {
                let mut b = [0u8];
                serial.read(reg, &mut b);
            }
            2 => {
                let room = serial.fifo_capacity();
                assert!(room <= FIFO_MAX, "FIFO room {room} > {FIFO_MAX}");
                let bytes = vec![b'k'; usize::from(value % 80)];
                let taken = serial.enqueue_input(&bytes).unwrap_or(0);
                assert!(
                    taken <= room && taken <= bytes.len(),
                    "took {taken} bytes with room for {room}"
                );
                s.input_taken += taken;
            }
            _ => {
                let offset = u64::from(op[0] / 4 % 16);
                let len = usize::from(value % 5);
                let mut buf = [value; 4];
                if value >= 128 {
                    serial.write(offset, &buf[..len]);
                    if offset == 3 && len > 0 {
                        lcr = value;
                    } else if offset == 0 && len > 0 && lcr & 0x80 == 0 {
                        s.thr_writes += 1;
                    }
                } else {
                    serial.read(offset, &mut buf[..len]);
                }
            }
        }
        s.transmitted = crate::lock(&sink.0).len();
        assert!(
            s.transmitted <= s.thr_writes,
            "{} bytes sent to the host for {} THR writes",
            s.transmitted,
            s.thr_writes
        );
    }
    s
}

/// Hand-written seeds: what a driver does, and what a hostile guest tries.
pub fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let w = |reg: u8, v: u8| [reg * 4, v];
    let r = |reg: u8| [reg * 4 + 1, 0];
    let input = |n: u8| [2, n];
    let mut seeds = Vec::new();

    // Linux's 8250 probe and set-up: scratch register, LCR/DLAB divisor, FIFO enable, IER.
    let mut probe = Vec::new();
    for op in [
        w(7, 0x55),
        r(7),
        w(3, 0x80),
        w(0, 0x01),
        w(1, 0x00),
        w(3, 0x03),
        w(2, 0xc7),
        w(4, 0x0b),
        w(1, 0x0f),
        r(2),
        r(5),
    ] {
        probe.extend_from_slice(&op);
    }
    for b in b"hello\n" {
        probe.extend_from_slice(&w(0, *b));
    }
    seeds.push(("probe_and_print", probe));

    // Input overflow: offer more than the FIFO holds, read some, offer again.
    let mut rx = Vec::new();
    rx.extend_from_slice(&w(1, 0x01));
    rx.extend_from_slice(&input(79));
    rx.extend_from_slice(&input(79));
    for _ in 0..20 {
        rx.extend_from_slice(&r(0));
        rx.extend_from_slice(&r(5));
    }
    rx.extend_from_slice(&input(30));
    rx.extend_from_slice(&r(2));
    seeds.push(("input_overflow", rx));

    // Loopback mode (MCR bit 4): output goes back to the receiver, not to the host.
    let mut lb = Vec::new();
    for op in [
        w(4, 0x10),
        w(0, b'x'),
        r(0),
        r(6),
        input(5),
        w(4, 0x00),
        w(0, b'y'),
    ] {
        lb.extend_from_slice(&op);
    }
    seeds.push(("loopback", lb));

    // Odd offsets and lengths.
    let mut odd = Vec::new();
    for offset in 0..16u8 {
        for len in [0u8, 2, 4] {
            odd.extend_from_slice(&[offset * 4 + 3, 128 + len]);
            odd.extend_from_slice(&[offset * 4 + 3, len]);
        }
    }
    seeds.push(("odd_accesses", odd));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_do_what_they_say() {
        let seeds: std::collections::HashMap<_, _> = seed_inputs().into_iter().collect();
        let probe = run(&seeds["probe_and_print"]);
        assert_eq!((probe.thr_writes, probe.transmitted), (6, 6));
        let rx = run(&seeds["input_overflow"]);
        assert!(rx.input_taken >= FIFO_MAX, "{rx:?}");
        // In loopback the 'x' is not transmitted; the 'y' after leaving loopback is.
        let lb = run(&seeds["loopback"]);
        assert_eq!((lb.thr_writes, lb.transmitted), (2, 1));
    }

    crate::fuzz_corpus::corpus_tests!(
        target: "serial",
        seeds: seed_inputs(),
        run: run,
        write_seeds: write_serial_seed_corpus,
    );
}
