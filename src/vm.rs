//! One VM from creation to exit: KVM set-up in the order KVM requires, guest memory, the
//! boot-time machine, devices, vCPU threads, the main event loop and the stop.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::acpi_pm::AcpiSleepControl;
use devices::bus::Bus;
use devices::debug_port::{BootComplete, DebugExit};
use devices::i8042::I8042;
use devices::serial::Serial;
use devices::vm_exit::{ExitReason, ExitSignal};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot_report::BootTimeline;
use crate::cli::{ConsoleMode, PitMode};
use crate::console::{ConsoleInput, RawModeGuard};
use crate::error::Error;
use crate::events::{self, EventLog};
use crate::host_check::{host_memory_bytes, KvmFlavor};
use crate::memory::{create_guest_memory, register_with_kvm, GuestMemory};
use crate::pause::PauseGate;
use crate::run_control::RunControl;
use crate::vcpu::{self, BootEntry, ExitCounters, VcpuContext};

/// Everything that defines one VM, resolved from the command line.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u8,
    pub mem_size: u64,
    pub console: ConsoleMode,
    pub disks: Vec<crate::cli::DiskSpec>,
    pub nets: Vec<crate::cli::NetSpec>,
    pub allow_pvm: bool,
    pub pit: PitMode,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub status: i32,
    pub reason: String,
}

/// COM2 as on a PC: the guest's ttyS1.
const COM2_PORT: u64 = 0x2f8;

/// What KVM must offer; checked up front so a missing feature is one clear line, not an EINVAL later.
const REQUIRED_CAPS: [(Cap, &str); 7] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// Builds the VM described by `cfg`, runs it to the end with the additions `ctl` asks for (time
/// limit, events, API socket, console writers, shutdown grace), and says how it ended.
///
/// The VM lives on its own thread ("vmm": set-up, then the event loop under the seccomp filter
/// of its kind); the calling thread only waits, then does what the filter forbids: removing
/// the API socket file here, copying results out and deleting temporary images in `exec`.
pub fn run_with(
    cfg: &VmConfig,
    timeline: Arc<BootTimeline>,
    ctl: RunControl,
) -> Result<RunOutcome, Error> {
    // The API socket this run bound, if any (never one it found in use).
    let bound_socket: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);
    let result = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("vmm".into())
            .spawn_scoped(s, || run_vm(cfg, timeline, ctl, &bound_socket))
            .map_err(|e| Error::Device(format!("VMM thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(Error::Device("the VMM thread panicked".into())))
    });
    if let Some(path) = bound_socket.into_inner().unwrap_or_else(|e| e.into_inner()) {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn run_vm(
    cfg: &VmConfig,
    timeline: Arc<BootTimeline>,
    mut ctl: RunControl,
    bound_socket: &Mutex<Option<std::path::PathBuf>>,
) -> Result<RunOutcome, Error> {
    check_host(cfg)?;

    let kvm = Kvm::new().map_err(Error::OpenKvm)?;
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(Error::KvmCapability(name));
        }
    }
    let max_vcpus = kvm.get_max_vcpus();
    if usize::from(cfg.cpus) > max_vcpus {
        return Err(Error::TooManyCpus(cfg.cpus, max_vcpus));
    }

    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    let with_pit = match cfg.pit {
        PitMode::On => true,
        PitMode::Off => false,
        PitMode::Auto => !tsc_deadline,
    };
    if with_pit && !kvm.check_extension(Cap::Pit2) {
        return Err(Error::KvmCapability("KVM_CAP_PIT2"));
    }

    let vm = Arc::new(kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?);
    events::emit(&ctl.events, "created", serde_json::Value::Null);
    // Order matters: TSS and identity map before the irqchip and the first vCPU, the PIT after
    // the irqchip (see shared/rust-vmm-notes.md).
    vm.set_tss_address(boot::layout::KVM_TSS_ADDR as usize)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(boot::layout::KVM_IDENTITY_MAP_ADDR)
        .map_err(Error::kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    // Declared before every user of the memory, so dropped after them: it unmaps guest RAM.
    let ram = create_guest_memory(cfg.mem_size)?;
    let mem = ram.memory();
    let exit =
        Arc::new(ExitSignal::new().map_err(|e| Error::Device(format!("exit eventfd: {e}")))?);

    // Creating the PIT (KVM starts a kernel thread for it) and registering guest RAM are the
    // slowest ioctls before boot and depend on nothing below but the irqchip, so they run on a
    // helper thread while this one loads the kernel and builds the devices.
    let (kvm_setup, machine) = std::thread::scope(|s| {
        let kvm_setup = s.spawn(|| -> Result<(), Error> {
            if with_pit {
                create_pit(&vm)?;
            }
            register_with_kvm(&vm, &mem)
        });
        let writers = ConsoleWriters {
            com1: ctl.console_out.take(),
            com2: ctl.com2_out.take(),
        };
        let machine = build_devices(cfg, writers, &vm, &mem, &exit, &timeline, &ctl.events)
            .and_then(|m| {
                let entry = load_guest(cfg, &mem, &m.irq_routes)?;
                Ok((m, entry))
            });
        let kvm_setup = kvm_setup
            .join()
            .unwrap_or_else(|_| Err(Error::Device("KVM set-up thread panicked".into())));
        (kvm_setup, machine)
    });
    kvm_setup?;
    let (mut machine, boot_entry) = machine?;
    events::emit(&ctl.events, "kernel-loaded", serde_json::Value::Null);

    let counters = Arc::new(ExitCounters::default());
    let mut vcpus = Vec::with_capacity(usize::from(cfg.cpus));
    for index in 0..cfg.cpus {
        let entry = (index == 0).then_some(&boot_entry);
        vcpus.push(vcpu::create_vcpu(
            &kvm,
            &vm,
            index,
            cfg.cpus,
            tsc_deadline,
            entry,
        )?);
    }

    let wake = exit
        .eventfd()
        .try_clone()
        .map_err(|e| Error::Device(format!("exit eventfd: {e}")))?;
    crate::termination::install(wake.as_raw_fd())
        .map_err(|e| Error::Device(format!("signal handlers: {e}")))?;
    vcpu::install_kick_handler()?;

    let _raw_mode = match cfg.console {
        ConsoleMode::Stdio => {
            RawModeGuard::new(std::io::stdin().as_raw_fd()).map_err(Error::Console)?
        }
        _ => None,
    };
    let mut event_loop = MainLoop::new(&exit, cfg.console == ConsoleMode::Stdio, &machine.serial)?;
    for s in crate::pci_devices::resample_subscribers(std::mem::take(&mut machine.intx_resamplers))
    {
        event_loop.manager.add_subscriber(s);
    }

    let pause = Arc::new(PauseGate::default());
    let api = match &ctl.api_socket {
        Some(path) => Some(
            crate::api::Server::start(
                path,
                crate::api::Context {
                    exit: exit.clone(),
                    pause: pause.clone(),
                    guest_input: Some(machine.com2.clone()),
                    events: ctl.events.clone(),
                    timeline: timeline.clone(),
                    vcpus: cfg.cpus,
                },
            )
            .map_err(|e| Error::Api(format!("{}: {e}", path.display())))
            .inspect(|_| {
                *bound_socket.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone())
            })?,
        ),
        None => None,
    };

    let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(vcpus.len());
    let vcpu_count = vcpus.len();
    let events = ctl.events.clone();
    let on_guest_entry: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        events::emit(
            &events,
            "vcpus-started",
            serde_json::json!({ "vcpus": vcpu_count }),
        )
    });
    for (index, fd) in vcpus.into_iter().enumerate() {
        let ctx = VcpuContext {
            pio: machine.pio.clone(),
            mmio: machine.mmio.clone(),
            exit: exit.clone(),
            timeline: timeline.clone(),
            counters: counters.clone(),
            pause: pause.clone(),
            on_guest_entry: (index == 0).then(|| on_guest_entry.clone()),
        };
        match vcpu::spawn(index as u8, fd, ctx) {
            Ok(t) => threads.push(t),
            Err(e) => {
                exit.request(ExitReason::Fatal);
                stop_vcpus(threads);
                return Err(e);
            }
        }
    }

    // Every thread that needs more than the main thread's syscalls runs by now.
    if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Main, "vmm") {
        exit.request(ExitReason::Fatal);
        stop_vcpus(threads);
        return Err(e.into());
    }
    pause.set_threads(threads.iter().map(|t| t.as_pthread_t()).collect());
    let deadline = ctl.timeout.map(|t| Instant::now() + t);
    let mut on_signal = crate::guest_shutdown::OnSignal::new(
        ctl.shutdown_grace
            .unwrap_or(crate::guest_shutdown::DEFAULT_GRACE),
        machine.com2.clone(),
        pause.clone(),
        ctl.events.clone(),
    );
    let loop_result = event_loop.run_until_exit(&exit, deadline, &mut on_signal);
    timeline.stop();
    // No pause may kick the vCPU threads once they are being joined.
    pause.close();
    drop(api);
    // The loop ends with a stop requested, or on an error: make the stop official so the
    // vCPU threads see it (the first recorded reason is kept).
    exit.request(if loop_result.is_err() {
        ExitReason::Fatal
    } else {
        ExitReason::Quit
    });
    stop_vcpus(threads);
    timeline.exit();
    timeline.memory_use(crate::boot_report::MemoryUse {
        peak_rss: crate::memory::peak_rss_bytes(),
        guest_resident: crate::memory::resident_bytes(&mem),
    });
    machine.serial.flush_output();
    machine.com2.flush_output();
    // What the guest wrote is durable when kvmrun exits, flushed by the guest or not (the
    // guest's own flushes already were: VIRTIO_BLK_F_FLUSH).
    for disk in &machine.disks {
        if let Err(e) = disk.flush() {
            log::error!("{}: flushing at exit failed: {e}", disk.path().display());
        }
    }
    loop_result?;
    drop(wake);

    log::info!(
        "exits: {} port I/O, {} MMIO, {} other",
        counters.io.load(std::sync::atomic::Ordering::Relaxed),
        counters.mmio.load(std::sync::atomic::Ordering::Relaxed),
        counters.other.load(std::sync::atomic::Ordering::Relaxed)
    );
    for nic in &machine.nics {
        log::info!("{}: {}", nic.label, nic.counters());
    }
    Ok(outcome(exit.reason()))
}

/// KVM's in-kernel 8254. Without it, closing the VM fd is quick: KVM's PIT teardown unhooks
/// its lost-tick reinjection from the IOAPIC's ack and mask notifiers, two SRCU grace periods
/// (about 15 ms) that the process would wait for at exit.
fn create_pit(vm: &VmFd) -> Result<(), Error> {
    let pit = kvm_pit_config {
        // Port 0x61's speaker gate is not emulated; KVM answers it with a dummy.
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))
}

fn outcome(reason: Option<ExitReason>) -> RunOutcome {
    match reason {
        Some(r) => RunOutcome {
            status: r.exit_status(),
            reason: r.to_string(),
        },
        None => RunOutcome {
            status: ExitReason::Fatal.exit_status(),
            reason: "unknown".into(),
        },
    }
}

fn check_host(cfg: &VmConfig) -> Result<(), Error> {
    if !cfg.allow_pvm && KvmFlavor::detect() == KvmFlavor::Pvm {
        return Err(Error::PvmHost);
    }
    if let Some(host) = host_memory_bytes() {
        if cfg.mem_size > host {
            return Err(Error::MemoryTooLarge {
                size: cfg.mem_size >> 20,
                host: host >> 20,
            });
        }
    }
    Ok(())
}

/// Loads kernel and initrd and writes the boot-time machine: command line, zero page, MP and
/// ACPI tables, GDT and page tables.
fn load_guest(
    cfg: &VmConfig,
    mem: &GuestMemory,
    pci_irqs: &[boot::PciIrqRoute],
) -> Result<BootEntry, Error> {
    let mut kernel_file = File::open(&cfg.kernel).map_err(Error::file("kernel", &cfg.kernel))?;
    let kernel = boot::kernel::load_kernel(mem, &mut kernel_file)?;
    let initrd = match &cfg.initrd {
        Some(path) => {
            let mut f = File::open(path).map_err(Error::file("initrd", path))?;
            Some(boot::initrd::load_initrd(
                mem,
                &mut f,
                &kernel,
                cfg.mem_size,
            )?)
        }
        None => None,
    };

    let mut cmdline =
        Cmdline::new(boot::layout::CMDLINE_MAX_SIZE).map_err(|e| Error::Cmdline(e.to_string()))?;
    cmdline.insert_str(&cfg.cmdline).map_err(|e| {
        Error::Cmdline(format!(
            "{e} (at most {} bytes)",
            boot::layout::CMDLINE_MAX_SIZE - 1
        ))
    })?;
    boot::params::write_cmdline_and_boot_params(
        mem,
        &boot::params::BootParamsConfig {
            cmdline: &cmdline,
            kernel: &kernel,
            initrd: initrd.as_ref(),
            mem_size: cfg.mem_size,
        },
    )?;
    boot::mptable::write_mptable(mem, cfg.cpus, pci_irqs)?;
    boot::acpi::write_acpi_tables(
        mem,
        cfg.cpus,
        &boot::acpi::AcpiPciConfig {
            irq_routes: pci_irqs.to_vec(),
            com2: true,
        },
    )?;
    let gdt = boot::gdt::write_gdt(mem)?;
    let cr3 = boot::paging::write_identity_page_tables(mem)?;
    log::info!(
        "kernel {:?} entry {:#x}, initrd {:?}",
        kernel.format,
        kernel.entry.0,
        initrd.as_ref().map(|i| (i.addr.0, i.size))
    );
    Ok(BootEntry {
        entry: kernel.entry,
        gdt,
        cr3,
    })
}

/// The platform devices and the buses the vCPUs dispatch to.
struct Machine {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Serial>,
    /// The second UART (the guest's ttyS1): exec's command output, and where a graceful
    /// shutdown asks the guest (crate::guest_shutdown).
    com2: Arc<Serial>,
    /// The disk images, flushed when the run ends.
    disks: Vec<Arc<devices::virtio::block::DiskImage>>,
    irq_routes: Vec<boot::PciIrqRoute>,
    intx_resamplers: Vec<crate::pci_devices::IntxResample>,
    /// The NICs' counters, logged when the run ends.
    nics: Vec<crate::pci_devices::NicSummary>,
}

/// Host writers that replace the console's (COM1) and receive COM2's output (discarded
/// without one).
struct ConsoleWriters {
    com1: Option<Box<dyn Write + Send>>,
    com2: Option<Box<dyn Write + Send>>,
}

fn build_devices(
    cfg: &VmConfig,
    writers: ConsoleWriters,
    vm: &Arc<VmFd>,
    mem: &GuestMemory,
    exit: &Arc<ExitSignal>,
    timeline: &Arc<BootTimeline>,
    events: &Option<Arc<EventLog>>,
) -> Result<Machine, Error> {
    let dev_err = |what: &str, e: &dyn std::fmt::Display| Error::Device(format!("{what}: {e}"));

    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(|e| dev_err("serial irq eventfd", &e))?;
    vm.register_irqfd(&serial_irq, boot::layout::SERIAL_IRQ as u32)
        .map_err(|e| dev_err("serial irqfd", &e))?;
    let out: Box<dyn Write + Send> = match (writers.com1, &cfg.console) {
        (Some(w), _) => w,
        (None, ConsoleMode::Stdio) => Box::new(std::io::stdout()),
        (None, ConsoleMode::None) => Box::new(std::io::sink()),
        (None, ConsoleMode::File(path)) => {
            Box::new(File::create(path).map_err(Error::file("console file", path))?)
        }
    };
    let serial = Arc::new(Serial::new(serial_irq, out));
    let t = timeline.clone();
    serial.set_first_output_hook(Box::new(move || t.first_console_byte()));

    let t = timeline.clone();
    let ev = events.clone();
    let boot_complete = BootComplete::new(Some(Box::new(move |at| {
        t.boot_complete(at);
        events::emit(&ev, "boot-complete", serde_json::Value::Null);
    })));

    let mut pio = Bus::new();
    let insert = |bus: &mut Bus, base: u64, len: u64, dev: Arc<dyn devices::bus::BusDevice>| {
        bus.insert(base, len, dev)
            .map_err(|e| dev_err(&format!("port {base:#x}"), &e))
    };
    insert(&mut pio, 0x3f8, 8, serial.clone())?;
    let com2_irq = EventFd::new(EFD_NONBLOCK).map_err(|e| dev_err("COM2 irq eventfd", &e))?;
    vm.register_irqfd(&com2_irq, boot::layout::COM2_IRQ as u32)
        .map_err(|e| dev_err("COM2 irqfd", &e))?;
    let com2_out = writers.com2.unwrap_or_else(|| Box::new(std::io::sink()));
    let com2 = Arc::new(Serial::new(com2_irq, com2_out));
    insert(&mut pio, COM2_PORT, 8, com2.clone())?;
    insert(&mut pio, 0x60, 5, Arc::new(I8042::new(exit.clone())))?;
    insert(&mut pio, 0x501, 1, Arc::new(DebugExit::new(exit.clone())))?;
    insert(&mut pio, 0x502, 1, Arc::new(boot_complete))?;
    insert(
        &mut pio,
        boot::layout::ACPI_SLEEP_CONTROL_PORT,
        2,
        Arc::new(AcpiSleepControl::new(exit.clone())),
    )?;

    if let Some(probe) = crate::seccomp_probe::from_env() {
        insert(&mut pio, crate::seccomp_probe::PORT, 1, probe)?;
    }

    let mut mmio = Bus::new();
    let guest_mem = devices::virtio::GuestMemoryAtomic::new(mem.clone());
    let pci =
        crate::pci_devices::build(vm, &guest_mem, &cfg.disks, &cfg.nets, &mut pio, &mut mmio)?;

    Ok(Machine {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        serial,
        com2,
        disks: pci.disks,
        nics: pci.nics,
        irq_routes: pci.irq_routes,
        intx_resamplers: pci.intx_resamplers,
    })
}

/// The main thread's loop: console input and the exit eventfd.
struct MainLoop {
    manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    console: Option<Arc<Mutex<ConsoleInput>>>,
}

/// Wakes the loop when a stop is requested (by a device, a vCPU or a signal).
struct ExitWatcher {
    fd: EventFd,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.fd.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch the exit eventfd: {e}");
        }
    }
}

impl MainLoop {
    fn new(
        exit: &Arc<ExitSignal>,
        console_input: bool,
        serial: &Arc<Serial>,
    ) -> Result<Self, Error> {
        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .map_err(|e| Error::EventLoop(e.to_string()))?;
        let fd = exit
            .eventfd()
            .try_clone()
            .map_err(|e| Error::EventLoop(e.to_string()))?;
        manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher { fd })));
        let console = console_input.then(|| {
            let input = Arc::new(Mutex::new(ConsoleInput::new(serial.clone(), exit.clone())));
            manager.add_subscriber(input.clone());
            input
        });
        Ok(MainLoop { manager, console })
    }

    /// Runs until a stop is requested; past `deadline`, requests one itself (reason timeout);
    /// on host signals, does what `on_signal` says (reason signal N when it stops the VM).
    fn run_until_exit(
        &mut self,
        exit: &ExitSignal,
        deadline: Option<Instant>,
        on_signal: &mut crate::guest_shutdown::OnSignal,
    ) -> Result<(), Error> {
        while !exit.is_requested() {
            let now = Instant::now();
            let grace_left = match on_signal.step(
                crate::termination::count(),
                crate::termination::received().unwrap_or(libc::SIGTERM),
                now,
            ) {
                crate::guest_shutdown::SignalStep::Stop(sig) => {
                    exit.request(ExitReason::Signal(sig));
                    break;
                }
                crate::guest_shutdown::SignalStep::Wait(left) => left,
            };
            let left = match (
                deadline.map(|d| d.saturating_duration_since(now)),
                grace_left,
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if deadline.is_some_and(|d| d <= now) {
                exit.request(ExitReason::Timeout);
                break;
            }
            // Poll briefly only while console bytes wait for room in the UART FIFO; otherwise
            // sleep until something happens (no busy polling when idle).
            let pending = self
                .console
                .as_ref()
                .is_some_and(|c| c.lock().map(|c| c.has_pending()).unwrap_or(false));
            let mut timeout = if pending { 5 } else { -1 };
            if let Some(left) = left {
                let ms = i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX);
                timeout = if timeout < 0 { ms } else { timeout.min(ms) };
            }
            self.manager
                .run_with_timeout(timeout)
                .map_err(|e| Error::EventLoop(e.to_string()))?;
            if let Some(c) = &self.console {
                if let Ok(mut c) = c.lock() {
                    c.flush_pending();
                }
            }
        }
        Ok(())
    }
}

/// Stops every vCPU thread and waits for it: kicks each with the kick signal until it has left
/// KVM_RUN and seen the stop (a kick can land just before KVM_RUN, so it is repeated).
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    for t in threads {
        while !t.is_finished() && Instant::now() < deadline {
            // SAFETY: the thread has not been joined, so its pthread_t is valid.
            unsafe { libc::pthread_kill(t.as_pthread_t(), vcpu::kick_signal()) };
            std::thread::sleep(Duration::from_micros(500));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            log::error!("a vCPU thread did not stop within 2 s; exiting without it");
        }
    }
}
