//! The crate's single error type.

use thiserror::Error;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while building the guest's boot-time state.
///
/// The kernel and initrd are host input and may be garbage, so every problem with them is an
/// error that says what was wrong rather than a panic.
#[derive(Debug, Error)]
pub enum Error {
    #[error("guest memory size {size:#x} bytes ({mib} MiB) is {reason}")]
    InvalidMemSize { size: u64, mib: u64, reason: String },

    #[error("I/O error reading the {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("kernel image is not a bzImage or a 64-bit x86 ELF vmlinux: {0}")]
    UnknownKernelFormat(String),

    #[error("unsupported kernel: {0}")]
    UnsupportedKernel(String),

    #[error("failed to load the {format} kernel: {source}")]
    KernelLoad {
        format: &'static str,
        #[source]
        source: linux_loader::loader::Error,
    },

    #[error("initrd is empty")]
    EmptyInitrd,

    #[error(
        "initrd ({size_mib} MiB) does not fit in guest memory below {limit:#x} \
         (it must lie above the kernel, which ends at {kernel_end:#x})"
    )]
    InitrdDoesNotFit {
        size_mib: u64,
        limit: u64,
        kernel_end: u64,
    },

    #[error("kernel command line is {len} bytes, longer than the maximum of {max} bytes")]
    CmdlineTooLong { len: usize, max: usize },

    #[error("failed to write the kernel command line: {0}")]
    Cmdline(#[source] linux_loader::loader::Error),

    #[error("too many e820 entries ({0}) for the zero page")]
    TooManyE820Entries(usize),

    #[error("failed to write {what} to guest memory at {addr:#x}: {source}")]
    GuestMemory {
        what: &'static str,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },

    #[error("{0} vCPUs is not supported: {1}")]
    TooManyCpus(usize, String),

    #[error("need at least one vCPU")]
    NoCpus,

    #[error("MP table ({size} bytes) does not fit in the {avail} bytes of the EBDA")]
    MptableTooBig { size: usize, avail: usize },

    #[error("invalid PCI interrupt route: device {device}, pin {pin}, GSI {gsi}")]
    InvalidPciIrqRoute { device: u8, pin: u8, gsi: u8 },

    #[error("ACPI tables ({size} bytes) do not fit in {avail} bytes at {start:#x}")]
    AcpiTooBig {
        size: usize,
        avail: usize,
        start: u64,
    },
}

impl Error {
    pub(crate) fn mem(
        what: &'static str,
        addr: u64,
    ) -> impl FnOnce(vm_memory::GuestMemoryError) -> Error {
        move |source| Error::GuestMemory { what, addr, source }
    }
}
