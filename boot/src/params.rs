//! The kernel command line and the zero page (`struct boot_params`).

use linux_loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE,
    LOADED_HIGH,
};
use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::initrd::InitrdRegion;
use crate::kernel::LoadedKernel;
use crate::layout::{
    ACPI_END, ACPI_START, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_END, EBDA_START, HIMEM_START,
    MMIO_HOLE_END, MMIO_HOLE_START, ZERO_PAGE_START,
};
use crate::{Error, Result};

/// e820 type of usable RAM (ACPI 6.x section 15, "Address Range Types": AddressRangeMemory).
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory (AddressRangeReserved).
pub const E820_RESERVED: u32 = 2;

/// "HdrS" (boot.rst: header magic at 0x202).
const HDRS: u32 = 0x5372_6448;
/// Boot sector signature at 0x1fe.
const BOOT_FLAG: u16 = 0xaa55;
/// boot.rst: "type_of_loader ... 0xFF = undefined" — we have no assigned loader ID.
const TYPE_OF_LOADER_UNDEFINED: u8 = 0xff;
/// 16 MiB, the usual CONFIG_PHYSICAL_ALIGN; used in the synthesised header for ELF kernels.
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// boot.rst's example layout puts the real-mode heap end at 0xe000 and sets
/// `heap_end_ptr = heap_end - 0x200`. Only the 16-bit setup code uses the heap, which the
/// 64-bit entry skips, but the protocol asks for a consistent value when CAN_USE_HEAP is set.
const HEAP_END_PTR: u16 = 0xe000 - 0x200;

/// What goes into the zero page.
pub struct BootParamsConfig<'a> {
    pub cmdline: &'a Cmdline,
    pub kernel: &'a LoadedKernel,
    pub initrd: Option<&'a InitrdRegion>,
    pub mem_size: u64,
}

fn e820(addr: u64, size: u64, r#type: u32) -> boot_e820_entry {
    boot_e820_entry { addr, size, r#type }
}

/// The guest's memory map as reported in the zero page (boot.rst, "e820_table").
///
/// The EBDA (MP table) and the 0xe0000-0xfffff BIOS area (ACPI tables) are reserved so the
/// kernel neither uses them as RAM nor ignores the tables in them; 0xa0000-0xdffff is absent
/// (legacy VGA/option ROM hole). RAM beyond 3 GiB continues above the MMIO hole at 4 GiB.
pub fn e820_entries(mem_size: u64) -> Vec<boot_e820_entry> {
    let mut v = vec![
        e820(0, EBDA_START, E820_RAM),
        e820(EBDA_START, EBDA_END - EBDA_START, E820_RESERVED),
        e820(ACPI_START, ACPI_END - ACPI_START, E820_RESERVED),
    ];
    let low_end = mem_size.min(MMIO_HOLE_START);
    if low_end > HIMEM_START {
        v.push(e820(HIMEM_START, low_end - HIMEM_START, E820_RAM));
    }
    if mem_size > MMIO_HOLE_START {
        v.push(e820(MMIO_HOLE_END, mem_size - MMIO_HOLE_START, E820_RAM));
    }
    v
}

/// The setup header synthesised for an ELF vmlinux, which has none: just enough for the kernel
/// to recognise a modern boot protocol.
fn default_setup_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS,
        // 2.10 is the first version with every field we fill in (kernel_alignment since 2.05,
        // cmdline_size since 2.06, pref_address/init_size since 2.10).
        version: 0x020a,
        kernel_alignment: DEFAULT_KERNEL_ALIGNMENT,
        ..Default::default()
    }
}

/// Builds the zero page for `cfg` (without writing it).
pub fn build_boot_params(cfg: &BootParamsConfig) -> Result<boot_params> {
    let cmdline = cfg
        .cmdline
        .as_cstring()
        .map_err(|_| Error::Cmdline(linux_loader::loader::Error::InvalidCommandLine))?;
    let cmdline_len = cmdline.as_bytes().len();
    // cmdline_size is the maximum length *excluding* the NUL (boot.rst, protocol 2.06+).
    let mut max = CMDLINE_MAX_SIZE - 1;
    if let Some(h) = cfg.kernel.setup_header {
        let kmax = h.cmdline_size as usize;
        if kmax != 0 {
            max = max.min(kmax);
        }
    }
    if cmdline_len > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline_len,
            max,
        });
    }

    let mut params = boot_params::default();
    let mut hdr = cfg.kernel.setup_header.unwrap_or_else(default_setup_header);
    hdr.type_of_loader = TYPE_OF_LOADER_UNDEFINED;
    hdr.boot_flag = BOOT_FLAG;
    hdr.header = HDRS;
    // LOADED_HIGH: the protected-mode code is at 0x100000. CAN_USE_HEAP: heap_end_ptr is valid.
    hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    hdr.heap_end_ptr = HEAP_END_PTR;
    // boot.rst: vid_mode is "modify (obligatory)"; 0xFFFF = "normal" (only the 16-bit setup
    // code, skipped by the 64-bit entry, reads it).
    hdr.vid_mode = 0xffff;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    // cmdline_size is a read-only field of the kernel's header (the maximum length); only the
    // header synthesised for an ELF kernel gets the actual length.
    if cfg.kernel.setup_header.is_none() {
        hdr.cmdline_size = cmdline_len as u32;
    }
    if let Some(initrd) = cfg.initrd {
        // load_initrd keeps the initrd below the MMIO hole, so both values fit in 32 bits.
        hdr.ramdisk_image = initrd.addr.0 as u32;
        hdr.ramdisk_size = initrd.size as u32;
    } else {
        hdr.ramdisk_image = 0;
        hdr.ramdisk_size = 0;
    }
    params.hdr = hdr;

    let entries = e820_entries(cfg.mem_size);
    if entries.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(Error::TooManyE820Entries(entries.len()));
    }
    for (i, e) in entries.iter().enumerate() {
        params.e820_table[i] = *e;
    }
    params.e820_entries = entries.len() as u8;
    // boot.rst (protocol 2.14+ field, read by all recent kernels): physical address of the RSDP.
    params.acpi_rsdp_addr = ACPI_START;
    Ok(params)
}

/// Writes the command line at CMDLINE_START and the zero page at ZERO_PAGE_START.
pub fn write_cmdline_and_boot_params<M: GuestMemoryBackend>(
    mem: &M,
    cfg: &BootParamsConfig,
) -> Result<()> {
    let params = build_boot_params(cfg)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cfg.cmdline)
        .map_err(Error::Cmdline)?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(Error::mem("zero page", ZERO_PAGE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::mem;
    use crate::kernel::KernelFormat;

    fn entries(mem_size: u64) -> Vec<(u64, u64, u32)> {
        e820_entries(mem_size)
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect()
    }

    #[test]
    fn e820_below_hole() {
        assert_eq!(
            entries(512 << 20),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x400, E820_RESERVED),
                (0xe0000, 0x20000, E820_RESERVED),
                (0x10_0000, (512 << 20) - 0x10_0000, E820_RAM),
            ]
        );
        // Exactly 3 GiB: no high entry.
        let e = entries(3 << 30);
        assert_eq!(e.len(), 4);
        assert_eq!(e[3], (0x10_0000, (3 << 30) - 0x10_0000, E820_RAM));
    }

    #[test]
    fn e820_above_hole() {
        let e = entries(6 << 30);
        assert_eq!(e.len(), 5);
        assert_eq!(e[3], (0x10_0000, 0xc000_0000 - 0x10_0000, E820_RAM));
        assert_eq!(e[4], (1 << 32, 3 << 30, E820_RAM));
        // Total RAM reported = mem_size minus the legacy holes.
        let ram: u64 = e.iter().filter(|x| x.2 == E820_RAM).map(|x| x.1).sum();
        assert_eq!(ram, (6 << 30) - (0x10_0000 - 0x9fc00));
    }

    fn kernel(hdr: Option<setup_header>) -> LoadedKernel {
        LoadedKernel {
            format: if hdr.is_some() {
                KernelFormat::BzImage
            } else {
                KernelFormat::Elf
            },
            entry: GuestAddress(0x100_0000),
            kernel_end: 0x200_0000,
            setup_header: hdr,
        }
    }

    #[test]
    fn boot_params_written_elf() {
        let m = mem(128 << 20);
        let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).unwrap();
        cl.insert_str("console=ttyS0 reboot=k panic=1").unwrap();
        let k = kernel(None);
        let initrd = InitrdRegion {
            addr: GuestAddress(0x700_0000),
            size: 12345,
        };
        let cfg = BootParamsConfig {
            cmdline: &cl,
            kernel: &k,
            initrd: Some(&initrd),
            mem_size: 128 << 20,
        };
        write_cmdline_and_boot_params(&m, &cfg).unwrap();

        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let h = p.hdr;
        assert_eq!({ h.boot_flag }, 0xaa55);
        assert_eq!({ h.header }, 0x5372_6448);
        assert_eq!({ h.kernel_alignment }, 0x100_0000);
        assert_eq!(h.type_of_loader, 0xff);
        assert_eq!(
            h.loadflags & (LOADED_HIGH | CAN_USE_HEAP),
            LOADED_HIGH | CAN_USE_HEAP
        );
        assert_eq!({ h.heap_end_ptr }, 0xde00);
        assert_eq!({ h.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ h.cmdline_size }, 30);
        assert_eq!({ h.ramdisk_image }, 0x700_0000);
        assert_eq!({ h.ramdisk_size }, 12345);
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_START);
        assert_eq!(p.e820_entries, 4);
        let e3 = p.e820_table[3];
        assert_eq!(
            ({ e3.addr }, { e3.size }, { e3.r#type }),
            (0x10_0000, (127 << 20), 1)
        );

        // Raw offsets from boot.rst / zero-page.rst, independent of the Rust struct.
        let rd32 = |off: u64| {
            m.read_obj::<u32>(GuestAddress(ZERO_PAGE_START + off))
                .unwrap()
        };
        let rd8 = |off: u64| {
            m.read_obj::<u8>(GuestAddress(ZERO_PAGE_START + off))
                .unwrap()
        };
        assert_eq!(rd32(0x202), 0x5372_6448);
        assert_eq!(rd8(0x210), 0xff);
        assert_eq!(rd32(0x218), 0x700_0000);
        assert_eq!(rd32(0x228), CMDLINE_START as u32);
        assert_eq!(rd8(0x1e8), 4);
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(ZERO_PAGE_START + 0x70))
                .unwrap(),
            ACPI_START
        );

        let mut buf = vec![0u8; 31];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0 reboot=k panic=1\0");
    }

    #[test]
    fn boot_params_keep_bzimage_header() {
        let m = mem(64 << 20);
        let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).unwrap();
        cl.insert_str("quiet").unwrap();
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x020f,
            header: HDRS,
            boot_flag: BOOT_FLAG,
            kernel_alignment: 0x20_0000,
            xloadflags: 0x7f,
            cmdline_size: 2047,
            init_size: 0x1234000,
            ..Default::default()
        };
        let k = kernel(Some(hdr));
        let cfg = BootParamsConfig {
            cmdline: &cl,
            kernel: &k,
            initrd: None,
            mem_size: 64 << 20,
        };
        write_cmdline_and_boot_params(&m, &cfg).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let h = p.hdr;
        assert_eq!(h.setup_sects, 27);
        assert_eq!({ h.version }, 0x020f);
        assert_eq!({ h.kernel_alignment }, 0x20_0000);
        assert_eq!({ h.init_size }, 0x1234000);
        assert_eq!({ h.ramdisk_image }, 0);
        assert_eq!({ h.cmdline_size }, 2047, "the kernel's maximum is kept");
        assert_eq!({ h.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ h.vid_mode }, 0xffff);
    }

    #[test]
    fn cmdline_longer_than_kernel_allows() {
        let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).unwrap();
        cl.insert_str("x".repeat(300)).unwrap();
        let hdr = setup_header {
            cmdline_size: 255,
            ..Default::default()
        };
        let k = kernel(Some(hdr));
        let cfg = BootParamsConfig {
            cmdline: &cl,
            kernel: &k,
            initrd: None,
            mem_size: 64 << 20,
        };
        let e = build_boot_params(&cfg).unwrap_err();
        assert!(
            matches!(e, Error::CmdlineTooLong { len: 300, max: 255 }),
            "{e}"
        );
    }
}
