//! The guest is untrusted: random port accesses (any offset, any length 0..16, any value) must
//! never panic, neither through the bus nor straight at a device.

use std::io;
use std::sync::Arc;

use devices::acpi_pm::AcpiSleepControl;
use devices::bus::{Bus, BusDevice};
use devices::debug_port::{BootComplete, DebugExit};
use devices::i8042::I8042;
use devices::serial::Serial;
use devices::vm_exit::ExitSignal;
use proptest::prelude::*;
use vmm_sys_util::eventfd::EventFd;

/// Base ports from docs/architecture.md and the length each range is registered with.
const RANGES: &[(u64, u64)] = &[(0x3f8, 8), (0x60, 5), (0x501, 1), (0x502, 1), (0x600, 2)];

struct Machine {
    bus: Bus,
    devices: Vec<Arc<dyn BusDevice>>,
    _exit: Arc<ExitSignal>,
}

fn machine() -> Machine {
    let exit = Arc::new(ExitSignal::new().unwrap());
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let devices: Vec<Arc<dyn BusDevice>> = vec![
        Arc::new(Serial::new(irq, Box::new(io::sink()))),
        Arc::new(I8042::new(exit.clone())),
        Arc::new(DebugExit::new(exit.clone())),
        Arc::new(BootComplete::new(Some(Box::new(|_| {})))),
        Arc::new(AcpiSleepControl::new(exit.clone())),
    ];
    let mut bus = Bus::with_name("fuzz");
    for (&(base, len), dev) in RANGES.iter().zip(&devices) {
        bus.insert(base, len, dev.clone()).unwrap();
    }
    Machine {
        bus,
        devices,
        _exit: exit,
    }
}

#[derive(Debug, Clone)]
struct Access {
    /// Index into RANGES, or None for a fully random port.
    range: Option<usize>,
    /// Offset from the range base (may fall before or after it), or the random port.
    offset: i64,
    write: bool,
    data: Vec<u8>,
}

fn access() -> impl Strategy<Value = Access> {
    (
        prop_oneof![
            4 => (0..RANGES.len()).prop_map(Some),
            1 => Just(None),
        ],
        prop_oneof![4 => -3i64..12, 1 => 0i64..0x1_0000],
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(range, offset, write, data)| Access {
            range,
            offset,
            write,
            data,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bus_accesses_never_panic(accesses in prop::collection::vec(access(), 1..64)) {
        let m = machine();
        for a in accesses {
            let addr = match a.range {
                Some(i) => RANGES[i].0.wrapping_add_signed(a.offset),
                None => a.offset as u64,
            };
            if a.write {
                m.bus.write(addr, &a.data);
            } else {
                let mut data = a.data.clone();
                let len = data.len();
                let hit = m.bus.read(addr, &mut data);
                prop_assert_eq!(data.len(), len);
                if !hit {
                    prop_assert!(data.iter().all(|&b| b == 0xff));
                }
            }
        }
    }

    #[test]
    fn direct_accesses_never_panic(
        accesses in prop::collection::vec(
            (0..RANGES.len(), any::<u64>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..16)),
            1..64,
        )
    ) {
        // Straight at the device, bypassing the bus's range check: any u64 offset.
        let m = machine();
        for (dev, offset, write, mut data) in accesses {
            let dev = &m.devices[dev];
            if write {
                dev.write(offset, &data);
            } else {
                dev.read(offset, &mut data);
            }
        }
    }
}
