//! Loading the guest kernel: a bzImage (booted through its 64-bit entry point) or an
//! uncompressed ELF64 `vmlinux`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::KernelLoader;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::layout::HIMEM_START;
use crate::{Error, Result};

/// The format of a loaded kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage: real-mode setup code followed by the compressed protected-mode kernel.
    BzImage,
    /// An ELF64 x86-64 vmlinux.
    Elf,
}

impl KernelFormat {
    fn name(self) -> &'static str {
        match self {
            KernelFormat::BzImage => "bzImage",
            KernelFormat::Elf => "ELF",
        }
    }
}

impl std::fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where and how the kernel was loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// The 64-bit entry point: for a bzImage the protected-mode load address + 0x200
    /// (boot.rst, "64-bit Boot Protocol"), for an ELF its `e_entry`.
    pub entry: GuestAddress,
    /// First guest physical address above everything the kernel occupies early in boot. For a
    /// bzImage this also covers `init_size` bytes from the load address and from
    /// `pref_address` (boot.rst: "init_size ... the amount of linear contiguous memory starting
    /// at the kernel runtime start address that the kernel needs before it is capable of
    /// examining its memory map"), so an initrd placed above it is never overwritten by the
    /// decompressor.
    pub kernel_end: u64,
    /// The bzImage's setup header (as read from offset 0x1f1), `None` for ELF.
    pub setup_header: Option<setup_header>,
}

/// Offset of the setup header in a bzImage (boot.rst, "The Real-Mode Kernel Header").
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// Offset of the "HdrS" magic.
const HDRS_OFFSET: usize = 0x202;
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
/// ELF identification (System V ABI, "ELF Header").
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
/// Offset of the 64-bit entry point from the protected-mode load address (boot.rst:
/// "the kernel ... 64-bit entry point is at offset 0x200 of the protected-mode code").
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Boot protocol 2.06 is the oldest whose fields (cmdline_size etc.) we depend on; the 64-bit
/// entry itself is advertised by XLF_KERNEL_64 (protocol 2.12, but we check the flag).
const MIN_BOOT_PROTOCOL: u16 = 0x0206;

/// Detects the format of `kernel` from its magic numbers and loads it into `mem`.
///
/// Anything that is neither a bzImage ("HdrS" at 0x202) nor an ELF file ("\x7fELF" at 0) is
/// rejected with an error naming what the file looks like.
pub fn load_kernel<M: GuestMemoryBackend>(mem: &M, kernel: &mut File) -> Result<LoadedKernel> {
    let io = |source| Error::Io {
        what: "kernel image",
        source,
    };
    let mut head = [0u8; 0x400];
    kernel.seek(SeekFrom::Start(0)).map_err(io)?;
    let n = read_up_to(kernel, &mut head).map_err(io)?;
    let head = &head[..n];

    if head.starts_with(ELF_MAGIC) {
        load_elf(mem, kernel, head)
    } else if head.len() >= HDRS_OFFSET + 4 && &head[HDRS_OFFSET..HDRS_OFFSET + 4] == HDRS_MAGIC {
        load_bzimage(mem, kernel)
    } else {
        Err(Error::UnknownKernelFormat(describe_unknown(head)))
    }
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A short human description of a file that is not a kernel we can boot.
fn describe_unknown(head: &[u8]) -> String {
    if head.is_empty() {
        "the file is empty".to_string()
    } else if head.starts_with(&[0x1f, 0x8b]) {
        "it is gzip-compressed data (decompress it, or pass the bzImage)".to_string()
    } else if head.starts_with(b"070701") || head.starts_with(b"070702") {
        "it is a cpio archive (an initramfs?)".to_string()
    } else if head.starts_with(b"MZ") {
        "it is a PE/COFF (EFI) image without a Linux boot header".to_string()
    } else if head.starts_with(b"\xfd7zXZ") {
        "it is xz-compressed data".to_string()
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "it is zstd-compressed data".to_string()
    } else {
        let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!(
            "no ELF magic at offset 0 and no \"HdrS\" at offset 0x202 (first bytes: {}{})",
            shown.join(" "),
            if head.len() < HDRS_OFFSET + 4 {
                format!("; file is only {} bytes", head.len())
            } else {
                String::new()
            }
        )
    }
}

fn load_elf<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
    head: &[u8],
) -> Result<LoadedKernel> {
    // Check the ELF identification ourselves so that the error says which property is wrong
    // (ELF spec: e_ident[EI_CLASS] at 4, e_ident[EI_DATA] at 5, e_machine at 18).
    if head.len() < 64 {
        return Err(Error::UnsupportedKernel(format!(
            "ELF file truncated: {} bytes, shorter than an ELF64 header",
            head.len()
        )));
    }
    if head[4] != ELFCLASS64 {
        return Err(Error::UnsupportedKernel(format!(
            "ELF class {} is not ELFCLASS64: only 64-bit vmlinux images are supported",
            head[4]
        )));
    }
    if head[5] != ELFDATA2LSB {
        return Err(Error::UnsupportedKernel(
            "big-endian ELF: an x86-64 kernel must be little-endian".into(),
        ));
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    if machine != EM_X86_64 {
        return Err(Error::UnsupportedKernel(format!(
            "ELF machine {machine} is not x86-64 ({EM_X86_64})"
        )));
    }
    // linux-loader places each PT_LOAD at its p_paddr and rejects an entry below HIMEM_START.
    let r = Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(|source| {
        Error::KernelLoad {
            format: "ELF",
            source,
        }
    })?;
    // linux-loader only checks the entry against HIMEM_START. An entry outside the loaded
    // segments (e.g. past the end of RAM) would start the vCPU on no code at all: the guest
    // would triple-fault with nothing to say why. (Found by the kernel_loader fuzz target.)
    let entry = r.kernel_load.0;
    if entry >= r.kernel_end || !mem.address_in_range(r.kernel_load) {
        return Err(Error::UnsupportedKernel(format!(
            "ELF entry point {entry:#x} is not inside the loaded segments (which end at {:#x}) or not in guest RAM",
            r.kernel_end
        )));
    }
    Ok(LoadedKernel {
        format: KernelFormat::Elf,
        entry: r.kernel_load,
        kernel_end: r.kernel_end,
        setup_header: None,
    })
}

fn load_bzimage<M: GuestMemoryBackend>(mem: &M, kernel: &mut File) -> Result<LoadedKernel> {
    let hdr = read_setup_header(kernel)?;
    let version = hdr.version;
    let xloadflags = hdr.xloadflags;
    if version < MIN_BOOT_PROTOCOL {
        return Err(Error::UnsupportedKernel(format!(
            "bzImage boot protocol {}.{:02} is older than 2.06; kvmrun needs the 64-bit entry point",
            version >> 8,
            version & 0xff
        )));
    }
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::UnsupportedKernel(
            "bzImage does not have a 64-bit entry point (XLF_KERNEL_64 not set in xloadflags); \
             is it a 32-bit kernel?"
                .into(),
        ));
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(Error::UnsupportedKernel(
            "zImage (LOADED_HIGH not set): only bzImages loaded at 1 MiB are supported".into(),
        ));
    }
    // Load the protected-mode part at HIMEM_START rather than trusting code32_start: boot.rst
    // says the 64-bit entry works at any (suitably aligned) load address for a relocatable
    // kernel, and 0x100000 is the traditional address for a non-relocatable one.
    let r = BzImage::load(
        mem,
        Some(GuestAddress(HIMEM_START)),
        kernel,
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|source| Error::KernelLoad {
        format: "bzImage",
        source,
    })?;
    let header = r.setup_header.unwrap_or(hdr);
    let load = r.kernel_load.0;
    let init_size = u64::from(header.init_size);
    let pref = header.pref_address;
    let kernel_end = r
        .kernel_end
        .max(load.saturating_add(init_size))
        .max(pref.saturating_add(init_size));
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        entry: GuestAddress(load + BZIMAGE_64BIT_ENTRY_OFFSET),
        kernel_end,
        setup_header: Some(header),
    })
}

fn read_setup_header(kernel: &mut File) -> Result<setup_header> {
    use vm_memory::ByteValued;
    let io = |source| Error::Io {
        what: "bzImage setup header",
        source,
    };
    let mut hdr = setup_header::default();
    kernel
        .seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .map_err(io)?;
    kernel.read_exact(hdr.as_mut_slice()).map_err(io)?;
    Ok(hdr)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestMemoryMmap};
    use vmm_sys_util::tempfile::TempFile;

    pub(crate) fn mem(size: u64) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::<()>::from_ranges(&crate::layout::ram_regions(size)).unwrap()
    }

    pub(crate) fn file_with(bytes: &[u8]) -> File {
        let t = TempFile::new().unwrap();
        let mut f = t.into_file();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    /// A minimal ELF64 x86-64 executable: one PT_LOAD of `payload` at `paddr`, entry `paddr`.
    pub(crate) fn tiny_elf(paddr: u64, payload: &[u8], memsz: u64) -> Vec<u8> {
        let mut v = vec![0u8; 64 + 56];
        v[0..4].copy_from_slice(ELF_MAGIC);
        v[4] = ELFCLASS64;
        v[5] = ELFDATA2LSB;
        v[6] = 1; // EV_CURRENT
        v[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        v[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        v[20..24].copy_from_slice(&1u32.to_le_bytes());
        v[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        v[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        v[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        v[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        v[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 64;
        v[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        v[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
        v[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        v[ph + 16..ph + 24].copy_from_slice(&(paddr | 0xffff_ffff_8000_0000).to_le_bytes());
        v[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes()); // p_paddr
        v[ph + 32..ph + 40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        v[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        v[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// A fake bzImage: 4 setup sectors + boot sector, then `payload` as the protected-mode
    /// part. Only the header fields the loader reads are filled in.
    pub(crate) fn fake_bzimage(version: u16, xloadflags: u16, payload: &[u8]) -> Vec<u8> {
        let setup_sects = 4u8;
        let mut v = vec![0u8; (setup_sects as usize + 1) * 512];
        v[0x1f1] = setup_sects;
        v[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        v[0x202..0x206].copy_from_slice(HDRS_MAGIC);
        v[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        v[0x211] = LOADED_HIGH;
        v[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        v[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        v[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
        v[0x234] = 1; // relocatable_kernel
        v[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        v[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        v[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
        v[0x260..0x264].copy_from_slice(&0x80_0000u32.to_le_bytes()); // init_size
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn loads_elf() {
        let m = mem(64 << 20);
        let payload = b"\xf4\xeb\xfd hello kernel";
        let mut f = file_with(&tiny_elf(0x20_0000, payload, 0x1_0000));
        let k = load_kernel(&m, &mut f).unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
        assert_eq!(k.entry, GuestAddress(0x20_0000));
        assert_eq!(k.kernel_end, 0x21_0000);
        assert!(k.setup_header.is_none());
        let mut back = vec![0u8; payload.len()];
        m.read_slice(&mut back, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&back, payload);
    }

    #[test]
    fn rejects_elf_below_himem_and_wrong_machine_and_class() {
        let m = mem(64 << 20);
        let mut f = file_with(&tiny_elf(0x1000, b"x", 1));
        assert!(matches!(
            load_kernel(&m, &mut f),
            Err(Error::KernelLoad { format: "ELF", .. })
        ));

        let mut img = tiny_elf(0x20_0000, b"x", 1);
        img[18] = 3; // EM_386
        let e = load_kernel(&m, &mut file_with(&img))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not x86-64"), "{e}");

        let mut img = tiny_elf(0x20_0000, b"x", 1);
        img[4] = 1; // ELFCLASS32
        let e = load_kernel(&m, &mut file_with(&img))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ELFCLASS64"), "{e}");

        let e = load_kernel(&m, &mut file_with(b"\x7fELF\x02\x01"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn rejects_elf_entry_outside_its_segments_or_ram() {
        let m = mem(64 << 20);
        for entry in [0x1_0000_0000u64, 0x20_1000] {
            let mut elf = tiny_elf(0x20_0000, b"\xf4\xeb\xfd", 0x1000);
            elf[24..32].copy_from_slice(&entry.to_le_bytes()); // e_entry
            let err = load_kernel(&m, &mut file_with(&elf))
                .unwrap_err()
                .to_string();
            assert!(err.contains("entry point"), "{err}");
        }
    }

    #[test]
    fn rejects_elf_segment_outside_memory() {
        let m = mem(64 << 20);
        let mut f = file_with(&tiny_elf(0x1000_0000, b"abc", 3));
        assert!(matches!(
            load_kernel(&m, &mut f),
            Err(Error::KernelLoad { .. })
        ));
    }

    #[test]
    fn loads_bzimage() {
        let m = mem(64 << 20);
        let payload = vec![0x90u8; 0x3000];
        let mut f = file_with(&fake_bzimage(0x020f, XLF_KERNEL_64, &payload));
        let k = load_kernel(&m, &mut f).unwrap();
        assert_eq!(k.format, KernelFormat::BzImage);
        assert_eq!(k.entry, GuestAddress(HIMEM_START + 0x200));
        // pref_address + init_size dominates the end of the loaded image.
        assert_eq!(k.kernel_end, 0x100_0000 + 0x80_0000);
        let h = k.setup_header.unwrap();
        assert_eq!({ h.version }, 0x020f);
        assert_eq!({ h.cmdline_size }, 2047);
        let mut back = vec![0u8; payload.len()];
        m.read_slice(&mut back, GuestAddress(HIMEM_START)).unwrap();
        assert_eq!(back, payload);
    }

    #[test]
    fn rejects_old_or_32bit_bzimage() {
        let m = mem(64 << 20);
        let e = load_kernel(
            &m,
            &mut file_with(&fake_bzimage(0x0205, XLF_KERNEL_64, &[0; 16])),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("2.05") && e.contains("older than 2.06"), "{e}");
        let e = load_kernel(&m, &mut file_with(&fake_bzimage(0x020f, 0, &[0; 16])))
            .unwrap_err()
            .to_string();
        assert!(e.contains("XLF_KERNEL_64"), "{e}");
    }

    #[test]
    fn rejects_bzimage_too_big_for_memory() {
        let m = mem(32 << 20);
        let payload = vec![0u8; 40 << 20];
        let mut f = file_with(&fake_bzimage(0x020f, XLF_KERNEL_64, &payload));
        assert!(matches!(
            load_kernel(&m, &mut f),
            Err(Error::KernelLoad {
                format: "bzImage",
                ..
            })
        ));
    }

    #[test]
    fn rejects_garbage() {
        let m = mem(64 << 20);
        let e = load_kernel(&m, &mut file_with(&[0xabu8; 4096]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no ELF magic") && e.contains("ab ab"), "{e}");
        let e = load_kernel(&m, &mut file_with(b""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = load_kernel(&m, &mut file_with(&[0x1f, 0x8b, 8, 0]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gzip"), "{e}");
        let e = load_kernel(&m, &mut file_with(b"0707010000"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cpio"), "{e}");
    }

    /// Loads the host's own kernel when there is one (e.g. Debian's /boot/vmlinuz-*); skipped
    /// otherwise. A real bzImage exercises the header checks beyond the synthetic one.
    #[test]
    fn loads_host_bzimage_if_present() {
        let Some(path) = std::fs::read_dir("/boot").ok().and_then(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
        }) else {
            eprintln!("no /boot/vmlinuz-*: skipping the real bzImage test");
            return;
        };
        let Ok(mut f) = File::open(&path) else {
            eprintln!("{} not readable: skipping", path.display());
            return;
        };
        let m = mem(256 << 20);
        let k = load_kernel(&m, &mut f).unwrap();
        assert_eq!(k.format, KernelFormat::BzImage);
        assert_eq!(k.entry, GuestAddress(0x10_0200));
        let h = k.setup_header.unwrap();
        assert!({ h.version } >= 0x020c);
        assert_ne!({ h.xloadflags } & XLF_KERNEL_64, 0);
        assert!(k.kernel_end > HIMEM_START + (1 << 20));
    }
}
