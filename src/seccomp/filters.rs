//! The system calls each kind of kvmrun thread may make (x86_64), as seccompiler rules.
//!
//! Worked out by running the real paths under `strace -f` (payload guests on this machine;
//! Linux guests with virtio-blk, virtio-net and e1000 in the test host) and from the code that
//! makes them (e.g. `libc::fallocate` for discard, `ppoll` in the e1000 worker).
//!
//! Filters stack: a thread keeps the filter of the thread that created it and adds its own, and
//! a call must pass both. Device workers (and virtio-blk's I/O threads) are started from a vCPU
//! thread (the guest's DRIVER_OK write activates the device), so the vCPU list has to include
//! what workers need; each worker then adds the narrower worker filter, which is what confines
//! it. Workers cannot start threads: a device that needs more threads starts them when it is
//! activated, as virtio-blk does.
//!
//! A new code path on a filtered thread (an API socket, a new device back-end) needs its calls
//! added here; a miss ends kvmrun with the one-line report naming thread and call, which the
//! payload tests, `tests/seccomp.rs` and the guest tests in the test host would show.

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

// ioctl request numbers (linux/kvm.h, _IO/_IOW(KVMIO = 0xAE, nr, type)).
/// _IO(KVMIO, 0x80)
pub const KVM_RUN: u64 = 0xae80;
/// _IOW(KVMIO, 0x6a, struct kvm_irq_routing): MSI-X vector changes from a vCPU's MMIO write.
pub const KVM_SET_GSI_ROUTING: u64 = 0x4008_ae6a;
/// _IOW(KVMIO, 0x76, struct kvm_irqfd)
pub const KVM_IRQFD: u64 = 0x4020_ae76;
/// _IOW(KVMIO, 0x79, struct kvm_ioeventfd): moving notify ioeventfds with a BAR.
pub const KVM_IOEVENTFD: u64 = 0x4040_ae79;
/// _IOR(KVMIO, nr, T) for a T of `size` bytes (asm-generic/ioctl.h: dir 2 = read, bits 30-31).
const fn kvm_ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}
/// _IOR(KVMIO, 0x81, struct kvm_regs) and _IOR(KVMIO, 0x83, struct kvm_sregs): a vCPU reads
/// its registers to report where the guest was when it died or was stopped by a signal.
pub const KVM_GET_REGS: u64 = kvm_ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
pub const KVM_GET_SREGS: u64 = kvm_ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());
// linux/if_tun.h and sockios.h: the tap's offloads and its link state (virtio-net status).
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNGETIFF: u64 = 0x8004_54d2;
const SIOCGIFFLAGS: u64 = libc::SIOCGIFFLAGS;
// asm-generic/ioctls.h: the console (raw mode is restored by the main thread at exit).
const TCGETS: u64 = libc::TCGETS;
const TCSETS: u64 = libc::TCSETS;
const TIOCGWINSZ: u64 = libc::TIOCGWINSZ;
const FIONBIO: u64 = libc::FIONBIO;

/// A rule that matches when argument `arg` equals `value`.
fn arg_eq(arg: u8, len: SeccompCmpArgLen, value: u64) -> SeccompRule {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        len,
        SeccompCmpOp::Eq,
        value,
    )
    .expect("valid condition")])
    .expect("valid rule")
}

/// ioctl allowed only with these request numbers (argument 1; the kernel compares 32 bits).
fn ioctl_requests(requests: &[u64]) -> Vec<SeccompRule> {
    requests
        .iter()
        .map(|&r| arg_eq(1, SeccompCmpArgLen::Dword, r))
        .collect()
}

/// mmap/mprotect without PROT_EXEC: no thread of kvmrun maps new code after start-up.
fn no_exec_prot() -> Vec<SeccompRule> {
    vec![SeccompRule::new(vec![SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )
    .expect("valid condition")])
    .expect("valid rule")]
}

fn allow(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for &s in syscalls {
        rules.insert(s, vec![]);
    }
}

/// What any Rust thread of kvmrun needs: memory, locks, time, signals it handles, logging to
/// stderr, and leaving.
fn common(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_futex,
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_sigaltstack,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_restart_syscall,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_sched_yield,
            libc::SYS_gettid,
            libc::SYS_getpid,
            // A panic with panic=abort raises SIGABRT on itself.
            libc::SYS_tgkill,
            // The first HashMap of a thread seeds its hasher (device activation on a vCPU
            // thread builds the worker's event manager).
            libc::SYS_getrandom,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    rules.insert(libc::SYS_mmap, no_exec_prot());
    rules.insert(libc::SYS_mprotect, no_exec_prot());
}

/// Starting a thread (std::thread on glibc): a vCPU starts device workers.
fn thread_creation(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sched_getaffinity,
        ],
    );
    // The new thread names itself (PR_SET_NAME); a new worker then installs its own filter
    // (PR_SET_NO_NEW_PRIVS, then seccomp SECCOMP_SET_MODE_FILTER), which can only take
    // permissions away.
    rules.insert(
        libc::SYS_prctl,
        vec![
            arg_eq(0, SeccompCmpArgLen::Dword, libc::PR_SET_NAME as u64),
            arg_eq(0, SeccompCmpArgLen::Dword, libc::PR_SET_NO_NEW_PRIVS as u64),
        ],
    );
    rules.insert(
        libc::SYS_seccomp,
        vec![arg_eq(
            0,
            SeccompCmpArgLen::Dword,
            u64::from(libc::SECCOMP_SET_MODE_FILTER),
        )],
    );
}

/// What a device worker does with its back-end: disk image I/O (O_DIRECT or not, flush,
/// discard/write-zeroes through fallocate; on virtio-blk's I/O threads, which also write the
/// completion eventfd and wait on a futex, and on its worker, which reads cached data itself),
/// tap I/O, eventfds, its event loop.
fn worker_io(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            // virtio-blk's worker reads data the page cache holds itself, with
            // preadv2(RWF_NOWAIT), before handing a read to an I/O thread (buffered images;
            // run under this filter by blk_test).
            libc::SYS_preadv2,
            libc::SYS_pwritev2,
            libc::SYS_readv,
            libc::SYS_lseek,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
            libc::SYS_fallocate,
            libc::SYS_ppoll,
            libc::SYS_poll,
            libc::SYS_epoll_create1,
            libc::SYS_eventfd2,
            // virtio-net's retry timer (created at activation, armed by the worker).
            libc::SYS_timerfd_create,
            libc::SYS_timerfd_settime,
            libc::SYS_timerfd_gettime,
            // EventFd::try_clone (F_DUPFD_CLOEXEC) and O_NONBLOCK on the tap.
            libc::SYS_fcntl,
        ],
    );
}

/// The rules for `kind`.
pub fn rules(kind: ThreadKind) -> Rules {
    let mut r = Rules::new();
    common(&mut r);
    match kind {
        ThreadKind::Main => {
            allow(
                &mut r,
                &[
                    // The event loop: console input, exit and resample eventfds.
                    libc::SYS_poll,
                    libc::SYS_ppoll,
                    // Boot report: peak RSS and the resident guest pages.
                    libc::SYS_getrusage,
                    libc::SYS_mincore,
                    // Dropping devices joins their workers, whose thread-local data is freed.
                    libc::SYS_fcntl,
                    // The disk images are flushed when the run ends.
                    libc::SYS_fdatasync,
                    libc::SYS_fsync,
                    // Ending the API's accept loop (shutdown of its listening socket).
                    libc::SYS_shutdown,
                ],
            );
            // TCSETS restores the terminal's mode at exit; KVM ioctls: none after start-up.
            r.insert(
                libc::SYS_ioctl,
                ioctl_requests(&[TCGETS, TCSETS, TIOCGWINSZ, FIONBIO]),
            );
        }
        ThreadKind::Vcpu => {
            thread_creation(&mut r);
            worker_io(&mut r);
            r.insert(
                libc::SYS_ioctl,
                ioctl_requests(&[
                    KVM_RUN,
                    KVM_GET_REGS,
                    KVM_GET_SREGS,
                    KVM_SET_GSI_ROUTING,
                    KVM_IRQFD,
                    KVM_IOEVENTFD,
                    TUNSETOFFLOAD,
                    TUNGETIFF,
                    SIOCGIFFLAGS,
                    FIONBIO,
                ]),
            );
        }
        ThreadKind::Worker => {
            worker_io(&mut r);
            r.insert(
                libc::SYS_ioctl,
                ioctl_requests(&[TUNSETOFFLOAD, TUNGETIFF, SIOCGIFFLAGS, FIONBIO]),
            );
        }
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn kvm_get_regs_numbers_match_linux() {
        // linux/kvm.h on x86_64: KVM_GET_REGS 0x8090ae81, KVM_GET_SREGS 0x8138ae83.
        assert_eq!(super::KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(super::KVM_GET_SREGS, 0x8138_ae83);
    }
}
