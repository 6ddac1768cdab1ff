//! Interrupt routing for MSI-X: one KVM GSI per device vector, an irqfd on each, and the VM's
//! whole GSI routing table kept here because KVM_SET_GSI_ROUTING replaces it at every change.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use devices::pci::msix::{MsiMessage, MsiVectorRouter};
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::Error;

/// GSIs 0..24 are the IOAPIC's pins; MSI vectors get the ones above.
const FIRST_MSI_GSI: u32 = boot::layout::IOAPIC_NUM_PINS as u32;
/// KVM's default limit on routing entries (KVM_MAX_IRQ_ROUTES is 4096).
const MAX_GSI: u32 = 4096;

/// The VM's GSI routing table.
pub struct GsiRouting {
    vm: Arc<VmFd>,
    state: Mutex<RoutingState>,
}

struct RoutingState {
    msi: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
}

impl GsiRouting {
    pub fn new(vm: Arc<VmFd>) -> Self {
        GsiRouting {
            vm,
            state: Mutex::new(RoutingState {
                msi: BTreeMap::new(),
                next_gsi: FIRST_MSI_GSI,
            }),
        }
    }

    fn allocate(&self, count: u32) -> Result<u32, Error> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let first = s.next_gsi;
        let end = first
            .checked_add(count)
            .filter(|&e| e <= MAX_GSI)
            .ok_or_else(|| Error::Device("out of interrupt routes (GSIs) for MSI-X".into()))?;
        s.next_gsi = end;
        Ok(first)
    }

    fn set_msi(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match msg {
            Some(m) => s.msi.insert(gsi, m),
            None => s.msi.remove(&gsi),
        };
        let entries = routing_entries(&s.msi);
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("GSI routing table: {e:?}")))?;
        self.vm.set_gsi_routing(&table).map_err(io::Error::from)
    }
}

/// The default routes KVM starts with (ISA IRQs to both PICs and the IOAPIC, pins 16..23 to
/// the IOAPIC), which a KVM_SET_GSI_ROUTING must repeat, plus the MSI routes.
fn routing_entries(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut v = Vec::with_capacity(40 + msi.len());
    for gsi in 0..FIRST_MSI_GSI {
        v.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 8 {
            v.push(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            v.push(irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
    }
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.addr as u32;
        e.u.msi.address_hi = (m.addr >> 32) as u32;
        e.u.msi.data = m.data;
        v.push(e);
    }
    v
}

/// The MSI-X vectors of one device: a GSI and an irqfd each.
pub struct DeviceMsiRouter {
    routing: Arc<GsiRouting>,
    first_gsi: u32,
    irqfds: Vec<EventFd>,
}

impl DeviceMsiRouter {
    pub fn new(routing: Arc<GsiRouting>, vectors: u16) -> Result<Self, Error> {
        let first_gsi = routing.allocate(u32::from(vectors))?;
        let mut irqfds = Vec::with_capacity(usize::from(vectors));
        for i in 0..u32::from(vectors) {
            let fd =
                EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Device(format!("irqfd: {e}")))?;
            routing
                .vm
                .register_irqfd(&fd, first_gsi + i)
                .map_err(|e| Error::Device(format!("KVM_IRQFD for GSI {}: {e}", first_gsi + i)))?;
            irqfds.push(fd);
        }
        Ok(DeviceMsiRouter {
            routing,
            first_gsi,
            irqfds,
        })
    }
}

impl MsiVectorRouter for DeviceMsiRouter {
    fn update(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()> {
        if usize::from(vector) >= self.irqfds.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no such MSI-X vector",
            ));
        }
        self.routing
            .set_msi(self.first_gsi + u32::from(vector), msg)
    }

    fn trigger(&self, vector: u16) -> io::Result<()> {
        match self.irqfds.get(usize::from(vector)) {
            Some(fd) => fd.write(1),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no such MSI-X vector",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_are_kept_and_msi_routes_added() {
        let mut msi = BTreeMap::new();
        msi.insert(
            30,
            MsiMessage {
                addr: 0x1_fee0_1000,
                data: 0x4041,
            },
        );
        let v = routing_entries(&msi);
        // 24 IOAPIC pins + 16 PIC inputs + 1 MSI route.
        assert_eq!(v.len(), 41);
        let m = v.iter().find(|e| e.gsi == 30).unwrap();
        assert_eq!(m.type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: the entry was written as an MSI route.
        let (lo, hi, data) = unsafe { (m.u.msi.address_lo, m.u.msi.address_hi, m.u.msi.data) };
        assert_eq!((lo, hi, data), (0xfee0_1000, 1, 0x4041));
        let pic: Vec<_> = v
            .iter()
            .filter(|e| e.gsi == 9 && e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: these entries were written as irqchip routes.
            .map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert_eq!(
            pic,
            vec![(KVM_IRQCHIP_IOAPIC, 9), (KVM_IRQCHIP_PIC_SLAVE, 1)]
        );
    }
}
