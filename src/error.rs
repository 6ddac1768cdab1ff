//! The binary's one error type: every failure before or around a run, each rendered as one line
//! that names the thing and the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0} (is KVM enabled in the host kernel, and may this user open /dev/kvm, e.g. as a member of group kvm?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error(
        "/dev/kvm lacks {0}, which kvmrun needs (host kernel too old or KVM built without it)"
    )]
    KvmCapability(&'static str),
    #[error("/dev/kvm here is PVM (kvm_pvm loaded or no vmx/svm CPU flag): it emulates guest kernel code and cannot boot a Linux kernel; boot inside the test host instead with `kvmrun run --testhost ...` (or pass --allow-pvm for a tiny payload)")]
    PvmHost,
    #[error("{op} failed: {source}")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory: {0}")]
    GuestMemory(String),
    #[error("--memory {size} MiB is more than this host's {host} MiB of RAM; ask for less")]
    MemoryTooLarge { size: u64, host: u64 },
    #[error("--cpus {0} is more than /dev/kvm allows ({1})")]
    TooManyCpus(u8, usize),
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Boot(#[from] boot::Error),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("device set-up: {0}")]
    Device(String),
    #[error("{0}")]
    Disk(String),
    #[error("{0}")]
    Net(String),
    #[error("console: {0}")]
    Console(#[source] std::io::Error),
    #[error("vCPU {index}: {message}")]
    Vcpu { index: u8, message: String },
    #[error("default guest: {0}")]
    DefaultGuest(String),
    #[error("test host: {0}")]
    TestHost(String),
    #[error("API socket {0}")]
    Api(String),
    #[error("{0}")]
    Exec(String),
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error("seccomp: {0} (--seccomp=off runs without filters)")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("bench: {0}")]
    Bench(#[from] crate::bench::BenchError),
}

impl Error {
    /// A closure for `map_err` that names the KVM operation that failed.
    pub fn kvm(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }

    /// A closure for `map_err` that names the file and what it was for.
    pub fn file(what: &'static str, path: &std::path::Path) -> impl Fn(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::File {
            what,
            path: path.clone(),
            source,
        }
    }
}
