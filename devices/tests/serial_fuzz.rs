//! The UART under random guest register traffic interleaved with console input, with a host
//! writer that works, fails for good (EPIPE) or fails now and then (WouldBlock): nothing may
//! panic, input is never over-accepted, and the first-output hook runs at most once.

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use devices::bus::BusDevice;
use devices::serial::Serial;
use proptest::prelude::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Fails according to `mode`: 0 never, 1 always with EPIPE, 2 every other call with
/// WouldBlock.
struct Flaky {
    mode: u8,
    calls: usize,
}

impl Flaky {
    fn result(&mut self) -> io::Result<()> {
        self.calls += 1;
        match self.mode {
            0 => Ok(()),
            1 => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
            _ if self.calls.is_multiple_of(2) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
            _ => Ok(()),
        }
    }
}

impl Write for Flaky {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.result().map(|()| buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.result()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Guest `out` to COM1 offset 0..8 (sometimes beyond, as a direct call could).
    Out(u64, u8),
    /// Guest `in` of 0..4 bytes.
    In(u64, usize),
    /// Console input arriving.
    Input(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![9 => 0u64..8, 1 => 8u64..32], any::<u8>()).prop_map(|(o, v)| Op::Out(o, v)),
        4 => (0u64..10, 0usize..4).prop_map(|(o, n)| Op::In(o, n)),
        1 => prop::collection::vec(any::<u8>(), 0..100).prop_map(Op::Input),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn uart_with_console_traffic(mode in 0u8..3, ops in prop::collection::vec(op(), 1..200)) {
        let serial = Serial::new(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            Box::new(Flaky { mode, calls: 0 }),
        );
        let hook_calls = Arc::new(AtomicUsize::new(0));
        let h = hook_calls.clone();
        serial.set_first_output_hook(Box::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        }));
        for op in ops {
            match op {
                Op::Out(offset, value) => serial.write(offset, &[value]),
                Op::In(offset, n) => {
                    let mut data = vec![0x5a; n];
                    serial.read(offset, &mut data);
                    if offset == 5 && n > 0 {
                        // LSR: a virtual transmitter is always ready (THRE and TEMT).
                        prop_assert_eq!(data[0] & 0x60, 0x60);
                    }
                }
                Op::Input(bytes) => {
                    let taken = serial.enqueue_input(&bytes).unwrap();
                    prop_assert!(taken <= bytes.len());
                }
            }
        }
        serial.flush_output();
        prop_assert!(hook_calls.load(Ordering::SeqCst) <= 1);
    }
}
