//! Fuzzing harness for kernel loading and the zero page (used by
//! `fuzz/fuzz_targets/kernel_loader.rs` and by the seed-corpus replay test).
//!
//! The input is the whole kernel file. It goes through what `kvmrun run --kernel FILE` does
//! before the first guest instruction: format detection and loading ([`load_kernel`]: ELF or
//! bzImage through linux-loader) into 64 MiB of guest RAM, a 4 KiB initrd placed against the
//! loaded kernel's limits ([`load_initrd`]: `initrd_addr_max`, `kernel_end`), and the command
//! line and zero page built from the kernel's setup header
//! ([`write_cmdline_and_boot_params`]: `cmdline_size` and the rest come from the file).
//!
//! Besides "no panic", it checks what the boot protocol (Documentation/arch/x86/boot.rst)
//! and the machine need from a kernel that loaded: its entry point is inside guest RAM at or
//! above 1 MiB, and the initrd lies above the kernel, below the MMIO hole and below the
//! kernel's `initrd_addr_max`.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::sync::{Mutex, OnceLock};

use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::initrd::{initrd_limit, load_initrd};
use crate::kernel::load_kernel;
use crate::layout::{ram_regions, CMDLINE_MAX_SIZE, HIMEM_START};
use crate::params::{write_cmdline_and_boot_params, BootParamsConfig};

/// Guest RAM of every run.
pub const MEM_SIZE: u64 = 64 << 20;
const INITRD_SIZE: usize = 4096;

/// How far one input got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `load_kernel` rejected the file.
    KernelRejected,
    /// The kernel loaded, the initrd did not fit.
    InitrdRejected,
    /// Kernel and initrd loaded, the zero page could not be written.
    ParamsRejected,
    /// Everything up to the first instruction succeeded.
    Booted,
}

/// One scratch file per process, rewritten by every run: cheaper than creating files in a
/// fuzz loop, and unlinked at once so nothing is left behind.
fn scratch(
    slot: &'static OnceLock<Mutex<File>>,
    name: &str,
) -> std::sync::MutexGuard<'static, File> {
    slot.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("kvmrun-boot-fuzz-{}-{name}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("scratch file");
        let _ = std::fs::remove_file(&path);
        Mutex::new(f)
    })
    .lock()
    .unwrap_or_else(|p| p.into_inner())
}

fn refill(f: &mut File, bytes: &[u8]) {
    f.set_len(0).expect("truncate scratch file");
    f.seek(SeekFrom::Start(0)).expect("seek scratch file");
    f.write_all(bytes).expect("write scratch file");
    f.seek(SeekFrom::Start(0)).expect("seek scratch file");
}

/// Runs one input (the kernel file).
pub fn run(data: &[u8]) -> Outcome {
    static KERNEL: OnceLock<Mutex<File>> = OnceLock::new();
    static INITRD: OnceLock<Mutex<File>> = OnceLock::new();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(MEM_SIZE)).expect("guest memory");

    let mut kernel_file = scratch(&KERNEL, "kernel");
    refill(&mut kernel_file, data);
    let Ok(kernel) = load_kernel(&mem, &mut kernel_file) else {
        return Outcome::KernelRejected;
    };
    drop(kernel_file);
    assert!(
        kernel.entry.0 >= HIMEM_START && mem.address_in_range(kernel.entry),
        "entry point {:#x} outside guest RAM above 1 MiB",
        kernel.entry.0
    );

    let mut initrd_file = scratch(&INITRD, "initrd");
    refill(&mut initrd_file, &[0x5a; INITRD_SIZE]);
    let initrd = load_initrd(&mem, &mut initrd_file, &kernel, MEM_SIZE);
    drop(initrd_file);
    let Ok(initrd) = initrd else {
        return Outcome::InitrdRejected;
    };
    let end = initrd.addr.0 + initrd.size;
    assert!(
        initrd.addr.0 >= kernel.kernel_end
            && end <= initrd_limit(&kernel, MEM_SIZE)
            && mem.address_in_range(GuestAddress(end - 1)),
        "initrd {:#x}+{:#x} overlaps the kernel (end {:#x}) or leaves RAM",
        initrd.addr.0,
        initrd.size,
        kernel.kernel_end
    );

    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).expect("command line");
    cmdline
        .insert_str("console=ttyS0 reboot=k panic=-1")
        .expect("command line");
    match write_cmdline_and_boot_params(
        &mem,
        &BootParamsConfig {
            cmdline: &cmdline,
            kernel: &kernel,
            initrd: Some(&initrd),
            mem_size: MEM_SIZE,
        },
    ) {
        Ok(()) => Outcome::Booted,
        Err(_) => Outcome::ParamsRejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::{fake_bzimage, tiny_elf};
    use linux_loader::bootparam::XLF_KERNEL_64;
    use std::path::PathBuf;

    fn corpus_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/kernel_loader")
    }

    /// Hand-written seeds and the outcome each must have.
    fn seed_inputs() -> Vec<(&'static str, Vec<u8>, Outcome)> {
        let code = b"\xf4\xeb\xfd";
        let mut short_cmdline = fake_bzimage(0x020f, XLF_KERNEL_64, code);
        short_cmdline[0x238..0x23c].copy_from_slice(&8u32.to_le_bytes()); // cmdline_size
        let mut huge_init = fake_bzimage(0x020f, XLF_KERNEL_64, code);
        huge_init[0x260..0x264].copy_from_slice(&0x3f00_0000u32.to_le_bytes()); // init_size
        let mut low_addr_max = fake_bzimage(0x020f, XLF_KERNEL_64, code);
        low_addr_max[0x22c..0x230].copy_from_slice(&0x17f_ffffu32.to_le_bytes());
        let mut elf_many = tiny_elf(0x20_0000, code, 0x1000);
        elf_many[56..58].copy_from_slice(&0xffffu16.to_le_bytes()); // e_phnum
        vec![
            ("elf", tiny_elf(0x20_0000, code, 0x1000), Outcome::Booted),
            (
                "elf_outside_ram",
                tiny_elf(0x1_0000_0000, code, 0x1000),
                Outcome::KernelRejected,
            ),
            ("elf_phnum", elf_many, Outcome::KernelRejected),
            (
                "bzimage",
                fake_bzimage(0x020f, XLF_KERNEL_64, code),
                Outcome::Booted,
            ),
            (
                "bzimage_32bit",
                fake_bzimage(0x020f, 0, code),
                Outcome::KernelRejected,
            ),
            (
                "bzimage_cmdline_size",
                short_cmdline,
                Outcome::ParamsRejected,
            ),
            ("bzimage_init_size", huge_init, Outcome::InitrdRejected),
            (
                "bzimage_initrd_addr_max",
                low_addr_max,
                Outcome::InitrdRejected,
            ),
            (
                "truncated_bzimage",
                fake_bzimage(0x020f, XLF_KERNEL_64, b"")[..0x210].to_vec(),
                Outcome::KernelRejected,
            ),
            (
                "garbage",
                b"\x1f\x8b\x08\x00 not a kernel".to_vec(),
                Outcome::KernelRejected,
            ),
        ]
    }

    #[test]
    fn seeds_reach_their_outcome() {
        for (name, input, want) in seed_inputs() {
            assert_eq!(run(&input), want, "{name}");
        }
    }

    /// Replays every file of the cargo-fuzz corpus, so CI exercises the fuzz target without a
    /// nightly toolchain.
    #[test]
    fn corpus_replay() {
        let dir = corpus_dir();
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read the seed corpus {}: {e}", dir.display()));
        let mut n = 0;
        for entry in entries {
            run(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(
            n >= seed_inputs().len(),
            "seed corpus missing in {}",
            dir.display()
        );
    }

    /// Regenerates the seed corpus: `cargo test -p boot write_boot_seed_corpus -- --ignored`.
    #[test]
    #[ignore]
    fn write_boot_seed_corpus() {
        let dir = corpus_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for (name, input, _) in seed_inputs() {
            std::fs::write(dir.join(format!("seed_{name}")), input).unwrap();
        }
    }

    #[test]
    fn empty_and_tiny_inputs_are_rejected() {
        assert_eq!(run(&[]), Outcome::KernelRejected);
        assert_eq!(run(b"\x7fELF"), Outcome::KernelRejected);
    }
}
