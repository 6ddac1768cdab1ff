//! One vCPU: its boot-time register state, and the thread that runs it and dispatches its exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::bus::Bus;
use devices::vm_exit::{ExitReason, ExitSignal};
use kvm_bindings::{
    CpuId, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestAddress;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::boot_report::BootTimeline;
use crate::error::Error;

/// The signal that kicks a vCPU thread out of KVM_RUN (its handler does nothing; the EINTR is
/// what matters).
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Installs the no-op handler for the kick signal; once per process, before vCPU threads start.
pub fn install_kick_handler() -> Result<(), Error> {
    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| Error::Device(format!("cannot install the vCPU kick signal handler: {e}")))
}

/// Where the bootstrap processor starts: the kernel's 64-bit entry with the boot-time page
/// tables and GDT already in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    pub entry: GuestAddress,
    pub gdt: boot::gdt::GdtLayout,
    pub cr3: u64,
}

/// VM exits counted by kind, for the record (and for `bench`'s exits-per-packet later).
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    pub other: AtomicU64,
}

/// Creates vCPU `index` and gives it the state it needs at the first instruction. `tsc_deadline`:
/// whether the in-kernel LAPIC offers the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER), shown
/// in CPUID leaf 1.
pub fn create_vcpu(
    kvm: &Kvm,
    vm: &VmFd,
    index: u8,
    num_cpus: u8,
    tsc_deadline: bool,
    boot_entry: Option<&BootEntry>,
) -> Result<VcpuFd, Error> {
    let err = |message: String| Error::Vcpu { index, message };
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(|e| err(format!("KVM_CREATE_VCPU: {e}")))?;

    let mut cpuid: CpuId = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| err(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
    boot::cpu::filter_cpuid(cpuid.as_mut_slice(), index, num_cpus);
    boot::cpu::set_tsc_deadline(cpuid.as_mut_slice(), tsc_deadline);
    boot::xsave::make_xsave_leaf_consistent(cpuid.as_mut_slice());
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| err(format!("KVM_SET_CPUID2: {e}")))?;
    // After KVM_SET_CPUID2: KVM checks XCR0 against the XSAVE leaf it was given.
    if let Some(xcrs) = boot::xsave::boot_xcrs(cpuid.as_slice()) {
        vcpu.set_xcrs(&xcrs).map_err(|e| {
            err(format!(
                "KVM_SET_XCRS (XCR0 {:#x}): {e}",
                xcrs.xcrs[0].value
            ))
        })?;
    }

    let entries = boot::cpu::boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|e| err(format!("MSR list: {e:?}")))?;
    let written = vcpu
        .set_msrs(&msrs)
        .map_err(|e| err(format!("KVM_SET_MSRS: {e}")))?;
    if written != entries.len() {
        let failed = entries.get(written).map(|e| e.index).unwrap_or_default();
        return Err(err(format!("KVM_SET_MSRS stopped at MSR {failed:#x}")));
    }

    vcpu.set_fpu(&boot::cpu::boot_fpu())
        .map_err(|e| err(format!("KVM_SET_FPU: {e}")))?;

    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| err(format!("KVM_GET_LAPIC: {e}")))?;
    boot::cpu::configure_lapic(&mut lapic);
    vcpu.set_lapic(&lapic)
        .map_err(|e| err(format!("KVM_SET_LAPIC: {e}")))?;

    // Only the bootstrap processor starts at the kernel entry; with the in-kernel irqchip the
    // others wait for INIT/SIPI from the guest, which sets their state itself.
    if let Some(b) = boot_entry {
        let mut sregs = vcpu
            .get_sregs()
            .map_err(|e| err(format!("KVM_GET_SREGS: {e}")))?;
        boot::cpu::configure_sregs(&mut sregs, &b.gdt, b.cr3);
        vcpu.set_sregs(&sregs)
            .map_err(|e| err(format!("KVM_SET_SREGS: {e}")))?;
        vcpu.set_regs(&boot::cpu::boot_regs(b.entry))
            .map_err(|e| err(format!("KVM_SET_REGS: {e}")))?;
    }
    Ok(vcpu)
}

/// What a vCPU thread needs to run: the buses it dispatches to and where it reports the end.
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    pub timeline: Arc<BootTimeline>,
    pub counters: Arc<ExitCounters>,
    /// Parks this vCPU between runs while the VM is paused.
    pub pause: Arc<crate::pause::PauseGate>,
    /// Called by the boot vCPU just before it first enters the guest (the `vcpus-started`
    /// event): from that thread, so nothing the guest does can be reported before it.
    pub on_guest_entry: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Starts the thread that runs `vcpu` until the VM stops.
pub fn spawn(index: u8, vcpu: VcpuFd, ctx: VcpuContext) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || run(index, vcpu, ctx))
        .map_err(|e| Error::Vcpu {
            index,
            message: format!("cannot start its thread: {e}"),
        })
}

fn run(index: u8, mut vcpu: VcpuFd, ctx: VcpuContext) {
    if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu, &format!("vcpu{index}"))
    {
        log::error!("vCPU {index}: {e}");
        ctx.exit.request(ExitReason::Fatal);
        return;
    }
    if index == 0 {
        ctx.timeline.kernel_entry();
        if let Some(hook) = &ctx.on_guest_entry {
            hook();
        }
    }
    while !ctx.exit.is_requested() {
        ctx.pause.park_if_paused(&ctx.exit);
        if ctx.exit.is_requested() {
            break;
        }
        match vcpu.run() {
            Ok(exit) => {
                if let Some(reason) = handle_exit(index, exit, &ctx) {
                    if reason == ExitReason::Fatal {
                        log::error!("vCPU {index}: {}", describe_state(&vcpu));
                    }
                    ctx.exit.request(reason);
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked by the main thread; the loop condition decides whether to go on.
            }
            Err(e) => {
                log::error!("vCPU {index}: KVM_RUN failed: {e}");
                ctx.exit.request(ExitReason::Fatal);
            }
        }
    }
    // Stopped from outside (SIGTERM, SIGINT, a test's time limit): where the guest was says
    // why it had not finished (a hang, a busy loop, waiting for an interrupt).
    if let Some(ExitReason::Signal(sig)) = ctx.exit.reason() {
        log::warn!(
            "vCPU {index} stopped by signal {sig}: {}",
            describe_state(&vcpu)
        );
    }
    // Leave a clean kvm_run for whoever might run this vCPU again.
    vcpu.set_kvm_immediate_exit(0);
}

/// The registers that say where a guest died (triple fault, entry failure): one line for the
/// error report, so that a crash seen once (e.g. only under load) can be diagnosed afterwards.
fn describe_state(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "state at the stop: rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cr0={:#x} cr2={:#x} \
             cr3={:#x} cr4={:#x} efer={:#x} idt={:#x}/{:#x} gdt={:#x}/{:#x} tr={:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            s.cs.selector,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.idt.base,
            s.idt.limit,
            s.gdt.base,
            s.gdt.limit,
            s.tr.base
        ),
        (Err(e), _) | (_, Err(e)) => format!("state at the stop unavailable: {e}"),
    }
}

/// Dispatches one exit; returns why the VM must stop, if it must.
fn handle_exit(index: u8, exit: VcpuExit, ctx: &VcpuContext) -> Option<ExitReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            ctx.counters.io.fetch_add(1, Ordering::Relaxed);
            ctx.pio.read(u64::from(port), data);
            None
        }
        VcpuExit::IoOut(port, data) => {
            ctx.counters.io.fetch_add(1, Ordering::Relaxed);
            ctx.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            ctx.counters.mmio.fetch_add(1, Ordering::Relaxed);
            ctx.mmio.read(addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.counters.mmio.fetch_add(1, Ordering::Relaxed);
            ctx.mmio.write(addr, data);
            None
        }
        VcpuExit::Shutdown => {
            log::error!("vCPU {index}: the guest triple-faulted (KVM_EXIT_SHUTDOWN)");
            Some(ExitReason::Fatal)
        }
        VcpuExit::FailEntry(reason, cpu) => {
            log::error!(
                "vCPU {index}: KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {cpu})"
            );
            Some(ExitReason::Fatal)
        }
        VcpuExit::InternalError => {
            log::error!(
                "vCPU {index}: KVM internal error (emulation failure or unhandled guest state)"
            );
            Some(ExitReason::Fatal)
        }
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Some(ExitReason::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Some(ExitReason::Reset),
            KVM_SYSTEM_EVENT_CRASH => {
                log::error!("vCPU {index}: the guest reported a crash");
                Some(ExitReason::Fatal)
            }
            other => {
                log::warn!("vCPU {index}: ignored system event {other}");
                None
            }
        },
        VcpuExit::Hlt => {
            // Only without an in-kernel LAPIC; kvmrun always has one, so a halt here means the
            // guest stopped for good.
            log::error!("vCPU {index}: halted with no interrupt controller to wake it");
            Some(ExitReason::Fatal)
        }
        VcpuExit::IrqWindowOpen | VcpuExit::Intr => None,
        other => {
            ctx.counters.other.fetch_add(1, Ordering::Relaxed);
            log::error!("vCPU {index}: unexpected exit {other:?}");
            Some(ExitReason::Fatal)
        }
    }
}
