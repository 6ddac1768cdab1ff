//! Command-line interface: what a user can ask of kvmrun, and the parsing of its values.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The kernel command line every guest gets unless `--cmdline` replaces it: the console on the
/// first UART, reboot through the keyboard controller (the reset kvmrun emulates), and a panic
/// that reboots at once so a crashed guest ends the run instead of hanging it.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

#[derive(Debug, Parser)]
#[command(
    name = "kvmrun",
    version,
    about = "A KVM-based virtual machine monitor"
)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub log_level: log::LevelFilter,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest: the given kernel, or the default guest (built on first use).
    Run(RunArgs),
    /// Benchmark the host, kvmrun guests and (optionally) QEMU guests; report in --out.
    Bench(crate::bench::BenchArgs),
    /// Boot a guest, run COMMAND in it (stdout and stderr streamed here), and exit with its
    /// status: 124 on --timeout, 123 on a guest panic, 122 if the guest stopped without the
    /// command's status, 125 on a kvmrun error.
    Exec(crate::exec_args::ExecArgs),
    /// Configuration files (`--config`) of exec.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (the --config file with the command line's options
    /// applied) as JSON, in the form --config reads.
    Print(crate::exec_args::ExecArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Guest kernel: a bzImage or an ELF vmlinux (detected from the file). Without it, the default
    /// guest kernel and initramfs are built (cached in $KVMRUN_CACHE) and booted.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk (initramfs) loaded per the Linux boot protocol.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line; replaces the default.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE, allow_hyphen_values = true)]
    pub cmdline: String,

    /// Appended to the kernel command line (e.g. `-- sh -c 'cmd'` runs cmd as the default guest's init command).
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub append: Option<String>,

    /// A virtio-blk disk: path=FILE[,readonly=on][,direct=on][,serial=ID][,iothreads=N] (raw
    /// image). Repeatable; the first is /dev/vda in the guest.
    #[arg(
        long = "disk",
        value_name = "path=FILE[,readonly=on][,direct=on][,serial=ID][,iothreads=N]"
    )]
    pub disks: Vec<DiskSpec>,

    /// A NIC on a tap device: tap=NAME[,model=virtio|e1000][,mac=MAC]. Repeatable. kvmrun opens
    /// the tap (creating it if it may); run it in the network namespace that holds the tap.
    #[arg(long = "net", value_name = "tap=NAME[,model=virtio|e1000][,mac=MAC]")]
    pub nets: Vec<NetSpec>,

    /// Number of vCPUs, each run by its own host thread.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,

    /// Guest memory: a number with an optional K, M, G or T suffix (binary units); no suffix means MiB.
    #[arg(long, default_value = "256M", value_name = "SIZE")]
    pub memory: MemSize,

    /// Where the serial console goes: stdio (stdin is the guest's input; Ctrl-A x quits), none, or file=PATH.
    #[arg(long, default_value = "stdio", value_name = "stdio|none|file=PATH")]
    pub console: ConsoleMode,

    /// Print boot timings (process start to kernel entry, first console byte, boot complete, exit) to stderr.
    #[arg(long, value_name = "FORMAT")]
    pub boot_report: Option<BootReportFormat>,

    /// Boot even though /dev/kvm is PVM, which cannot run a Linux kernel: for tiny test payloads.
    #[arg(long)]
    pub allow_pvm: bool,

    /// Boot inside the project's test host (Linux under QEMU TCG with nested SVM) instead of on
    /// this machine's /dev/kvm: the way to boot a Linux guest where /dev/kvm is PVM.
    #[arg(long)]
    pub testhost: bool,

    /// Serve the control API (query, pause, resume, shutdown; docs/api.md) on this Unix socket
    /// while the guest runs.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,

    /// After SIGTERM, SIGINT or SIGHUP: how long the guest gets to shut down (it is asked on
    /// COM2, see docs/api.md) before it is stopped; a second signal stops it at once. 0 stops
    /// it at once. E.g. 500ms, 10s, 2m; a bare number is seconds.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub shutdown_grace: crate::exec_args::GraceArg,

    /// seccomp filters on every VM thread (vCPUs, device workers, main): `off` only to debug,
    /// e.g. to strace a new code path.
    #[arg(long, default_value = "on", value_name = "on|off")]
    pub seccomp: SeccompMode,

    /// The legacy 8254 timer (PIT; KVM's in-kernel model). auto leaves it out when KVM offers
    /// the TSC-deadline timer, with which Linux (kvm-clock, ARAT) needs no PIT, and a VM
    /// without one exits ~15 ms sooner; on for guests that program the PIT themselves.
    #[arg(long, default_value = "auto", value_name = "auto|on|off")]
    pub pit: PitMode,
}

/// `--pit`: whether the machine has an 8254 PIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PitMode {
    /// Only when KVM cannot offer the guest the TSC-deadline timer.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootReportFormat {
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleMode {
    Stdio,
    None,
    File(PathBuf),
}

impl FromStr for ConsoleMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(ConsoleMode::Stdio),
            "none" => Ok(ConsoleMode::None),
            _ => match s.strip_prefix("file=") {
                Some(path) if !path.is_empty() => Ok(ConsoleMode::File(PathBuf::from(path))),
                _ => Err(format!(
                    "'{s}' is not a console mode: use stdio, none or file=PATH"
                )),
            },
        }
    }
}

/// One `--disk` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub readonly: bool,
    pub direct: bool,
    pub serial: Option<String>,
    /// Host threads doing the disk's I/O (requests in flight at once).
    pub io_threads: usize,
}

impl FromStr for DiskSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let flag = |key: &str, v: &str| match v {
            "on" | "true" | "yes" => Ok(true),
            "off" | "false" | "no" => Ok(false),
            _ => Err(format!("--disk {key}={v}: use on or off")),
        };
        let mut spec = DiskSpec {
            path: PathBuf::new(),
            readonly: false,
            direct: false,
            serial: None,
            io_threads: devices::virtio::block::DEFAULT_IO_THREADS,
        };
        let max_threads = devices::virtio::block::MAX_IO_THREADS;
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("--disk '{part}': expected key=value (path=FILE,readonly=on,direct=on,serial=ID,iothreads=N)"))?;
            match key {
                "path" if !value.is_empty() => spec.path = PathBuf::from(value),
                "readonly" => spec.readonly = flag(key, value)?,
                "direct" => spec.direct = flag(key, value)?,
                // GET_ID answers with at most 20 bytes (virtio 1.2 §5.2.6).
                "serial" if value.len() <= 20 => spec.serial = Some(value.to_string()),
                "serial" => return Err(format!("--disk serial={value}: at most 20 bytes")),
                "iothreads" => {
                    spec.io_threads = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=max_threads).contains(n))
                        .ok_or_else(|| {
                            format!("--disk iothreads={value}: give a number from 1 to {max_threads}")
                        })?
                }
                _ => {
                    return Err(format!(
                    "--disk: unknown or empty key '{key}' (keys: path, readonly, direct, serial, iothreads)"
                ))
                }
            }
        }
        if spec.path.as_os_str().is_empty() {
            return Err("--disk needs path=FILE".into());
        }
        Ok(spec)
    }
}

/// The NIC model of a `--net` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    /// virtio-net on virtio-pci (virtio 1.2 §5.1).
    Virtio,
    /// An emulated Intel 82540EM (PCI 8086:100E).
    E1000,
}

/// One `--net` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub tap: String,
    pub model: NicModel,
    pub mac: Option<[u8; 6]>,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    // Unicast only: a multicast bit in a station address breaks every receiver.
    (parts.next().is_none() && mac[0] & 1 == 0).then_some(mac)
}

impl FromStr for NetSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spec = NetSpec {
            tap: String::new(),
            model: NicModel::Virtio,
            mac: None,
        };
        for part in s.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                format!("--net '{part}': expected key=value (tap=NAME,model=virtio|e1000,mac=MAC)")
            })?;
            match key {
                // IFNAMSIZ is 16 including the terminating NUL.
                "tap" if !value.is_empty() && value.len() < 16 && !value.contains('/') => {
                    spec.tap = value.to_string()
                }
                "tap" => {
                    return Err(format!(
                        "--net tap={value}: not an interface name (1-15 bytes, no '/')"
                    ))
                }
                "model" => {
                    spec.model = match value {
                        "virtio" | "virtio-net" => NicModel::Virtio,
                        "e1000" => NicModel::E1000,
                        _ => return Err(format!("--net model={value}: use virtio or e1000")),
                    }
                }
                "mac" => {
                    spec.mac = Some(parse_mac(value).ok_or_else(|| {
                        format!(
                            "--net mac={value}: use six hex bytes like 52:54:00:12:34:56 (unicast)"
                        )
                    })?)
                }
                _ => {
                    return Err(format!(
                        "--net: unknown key '{key}' (keys: tap, model, mac)"
                    ))
                }
            }
        }
        if spec.tap.is_empty() {
            return Err("--net needs tap=NAME".into());
        }
        Ok(spec)
    }
}

/// A memory size in bytes, parsed from `512M`, `2G`, `1024` (MiB) and the like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSize(pub u64);

impl FromStr for MemSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("'{s}' is not a memory size: use a number with K, M, G or T, e.g. 512M or 2G")
        };
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let num: u64 = num.parse().map_err(|_| bad())?;
        let unit = unit.trim();
        let unit = unit
            .strip_suffix("iB")
            .or_else(|| unit.strip_suffix('B'))
            .unwrap_or(unit);
        let shift = match unit {
            "" | "M" | "m" => 20,
            "K" | "k" => 10,
            "G" | "g" => 30,
            "T" | "t" => 40,
            _ => return Err(bad()),
        };
        let bytes = num
            .checked_mul(1u64 << shift)
            .filter(|&b| b > 0)
            .ok_or_else(bad)?;
        Ok(MemSize(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_with_binary_units() {
        assert_eq!("512M".parse::<MemSize>(), Ok(MemSize(512 << 20)));
        assert_eq!("2G".parse::<MemSize>(), Ok(MemSize(2 << 30)));
        assert_eq!("2GiB".parse::<MemSize>(), Ok(MemSize(2 << 30)));
        assert_eq!("65536K".parse::<MemSize>(), Ok(MemSize(64 << 20)));
        assert_eq!("1024".parse::<MemSize>(), Ok(MemSize(1 << 30)));
        assert_eq!("1T".parse::<MemSize>(), Ok(MemSize(1 << 40)));
    }

    #[test]
    fn malformed_memory_sizes_are_rejected() {
        for bad in [
            "",
            "M",
            "12X",
            "-1G",
            "0",
            "1.5G",
            "99999999999999999999G",
            "18446744073709551615T",
        ] {
            assert!(bad.parse::<MemSize>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn disk_specs_parse() {
        let d: DiskSpec = "path=/img,readonly=on,direct=on,serial=abc"
            .parse()
            .unwrap();
        assert_eq!(d.path, PathBuf::from("/img"));
        assert!(d.readonly && d.direct);
        assert_eq!(d.serial.as_deref(), Some("abc"));
        let d: DiskSpec = "path=/x".parse().unwrap();
        assert!(!d.readonly && !d.direct && d.serial.is_none());
        assert_eq!(d.io_threads, devices::virtio::block::DEFAULT_IO_THREADS);
        let d: DiskSpec = "path=/x,iothreads=1".parse().unwrap();
        assert_eq!(d.io_threads, 1);
        for bad in [
            "",
            "/img",
            "path=",
            "readonly=on",
            "path=/x,readonly=maybe",
            "path=/x,cache=none",
            "path=/x,serial=123456789012345678901",
            "path=/x,iothreads=0",
            "path=/x,iothreads=65",
            "path=/x,iothreads=four",
        ] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn net_specs_parse() {
        let n: NetSpec = "tap=tap0,model=e1000,mac=52:54:00:ab:cd:ef"
            .parse()
            .unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.model, NicModel::E1000);
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef]));
        let n: NetSpec = "tap=t1".parse().unwrap();
        assert_eq!((n.model, n.mac), (NicModel::Virtio, None));
        for bad in [
            "",
            "tap=",
            "model=e1000",
            "tap=a/b",
            "tap=0123456789abcdef",
            "tap=t,model=rtl8139",
            "tap=t,mac=52:54:00:ab:cd",
            "tap=t,mac=01:00:5e:00:00:01",
            "tap=t,mac=zz:54:00:ab:cd:ef",
            "tap=t,speed=10",
        ] {
            assert!(bad.parse::<NetSpec>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn console_modes_parse() {
        assert_eq!("stdio".parse(), Ok(ConsoleMode::Stdio));
        assert_eq!("none".parse(), Ok(ConsoleMode::None));
        assert_eq!(
            "file=/tmp/x".parse(),
            Ok(ConsoleMode::File("/tmp/x".into()))
        );
        assert!("file=".parse::<ConsoleMode>().is_err());
        assert!("tty".parse::<ConsoleMode>().is_err());
    }

    #[test]
    fn append_takes_a_value_that_starts_with_dashes() {
        let cli = Cli::try_parse_from([
            "kvmrun",
            "run",
            "--append",
            "-- sh -c 'exit 3'",
            "--cpus",
            "2",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not parsed as run");
        };
        assert_eq!(args.append.as_deref(), Some("-- sh -c 'exit 3'"));
        assert_eq!(args.cpus, 2);
    }

    #[test]
    fn bench_takes_a_suite_list() {
        let cli = Cli::try_parse_from([
            "kvmrun",
            "bench",
            "--suite",
            "cpu,disk",
            "--quick",
            "--compare",
            "qemu",
        ])
        .unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("not parsed as bench");
        };
        use crate::bench::SuiteName;
        assert_eq!(args.suites, [SuiteName::Cpu, SuiteName::Disk]);
        assert!(args.quick && args.compare.is_some());
        assert_eq!(args.runs, 3);
        assert!(Cli::try_parse_from(["kvmrun", "bench", "--suite", "gpu"]).is_err());
        // Without --suite: every suite; --quick leaves out net and vm2vm (they run when named).
        use crate::bench::default_suites;
        assert!(default_suites(false).contains(&SuiteName::Vm2vm));
        let quick = default_suites(true);
        assert!(quick.contains(&SuiteName::Disk) && !quick.contains(&SuiteName::Net));
        let cli = Cli::try_parse_from(["kvmrun", "bench", "--suite", "net,vm2vm", "--quick"]);
        let Command::Bench(args) = cli.unwrap().command else {
            panic!("not parsed as bench");
        };
        assert_eq!(args.suites, [SuiteName::Net, SuiteName::Vm2vm]);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
