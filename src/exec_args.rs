//! The options of `kvmrun exec` (and of `kvmrun config print`, which shows them): the VM, the
//! command's limits, and what to report. Their long names are also the keys of `--config` files.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use crate::cli::{BootReportFormat, DiskSpec, MemSize, NetSpec};
use crate::events::EventsSpec;

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Options from FILE (JSON, or TOML for *.toml), keyed by the long option names below;
    /// options on the command line override the file's.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Guest kernel (bzImage or ELF vmlinux); default: the default guest.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initramfs; default: the default guest's (with the default kernel).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Appended to the kernel command line.
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub append: Option<String>,

    /// A disk: path=FILE[,readonly=on][,direct=on][,serial=ID][,iothreads=N], or
    /// dir=HOSTDIR[,readonly=on][,mount=GUESTPATH][,size=SIZE]: an ext4 image made from HOSTDIR
    /// for this run, mounted at GUESTPATH (default /mnt/vdX); unless read-only, what the guest
    /// wrote there is copied back into HOSTDIR. Repeatable; the first is /dev/vda.
    #[arg(long = "disk", value_name = "path=FILE|dir=HOSTDIR[,...]")]
    pub disk: Vec<ExecDisk>,

    /// A NIC on a tap device: tap=NAME[,model=virtio|e1000][,mac=MAC]. Repeatable.
    #[arg(long = "net", value_name = "tap=NAME[,model=virtio|e1000][,mac=MAC]")]
    pub net: Vec<NetSpec>,

    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,

    /// Guest memory (K, M, G suffixes; no suffix: MiB).
    #[arg(long, default_value = "256M", value_name = "SIZE")]
    pub memory: MemSize,

    /// Where the guest's console (kernel messages; the command's stderr) goes: stderr, none or file=PATH.
    #[arg(long, default_value = "stderr", value_name = "stderr|none|file=PATH")]
    pub console: ExecConsole,

    /// Stop the guest if the command has not finished after DURATION (e.g. 500ms, 30s, 2m, 1h;
    /// a bare number is seconds); kvmrun then exits with 124.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<DurationArg>,

    /// After SIGTERM, SIGINT or SIGHUP: how long the command gets to end (the guest sends it
    /// SIGTERM) before the guest is stopped; a second signal stops it at once; 0: at once.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub shutdown_grace: GraceArg,

    /// Lifecycle events as JSON lines: json (to stderr) or file=PATH.
    #[arg(long, value_name = "json|file=PATH")]
    pub events: Option<EventsSpec>,

    /// Serve the control API (docs/api.md) on this Unix socket while the guest runs.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,

    /// Print boot timings as one JSON object to stderr at exit.
    #[arg(long, value_name = "FORMAT")]
    pub boot_report: Option<BootReportFormat>,

    /// Boot even though /dev/kvm is PVM (for tiny payloads only).
    #[arg(long)]
    pub allow_pvm: bool,

    /// seccomp filters on every VM thread (as for run): `off` only to debug.
    #[arg(long, default_value = "on", value_name = "on|off")]
    pub seccomp: crate::cli::SeccompMode,

    /// The legacy 8254 timer (as for run): auto leaves it out when the guest has TSC-deadline.
    #[arg(long, default_value = "auto", value_name = "auto|on|off")]
    pub pit: crate::cli::PitMode,

    /// Run inside the project's test host (where /dev/kvm is PVM).
    #[arg(long)]
    pub testhost: bool,

    /// The command to run in the guest, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `--console` of exec: the console is never the terminal, which carries the command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecConsole {
    Stderr,
    None,
    File(PathBuf),
}

impl FromStr for ExecConsole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stderr" => Ok(ExecConsole::Stderr),
            "none" => Ok(ExecConsole::None),
            _ => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => Ok(ExecConsole::File(PathBuf::from(p))),
                _ => Err(format!("'{s}': use stderr, none or file=PATH")),
            },
        }
    }
}

/// A duration as people write it: 500ms, 30s, 2m, 1h, or a bare number of seconds; zero allowed.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not a duration: use e.g. 500ms, 30s, 2m or 1h");
    let t = s.trim();
    let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    let n: u64 = num.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?)),
        "h" => Ok(Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?)),
        _ => Err(bad()),
    }
}

/// A time limit (`--timeout`): a duration above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl FromStr for DurationArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match parse_duration(s)? {
            d if d.is_zero() => Err(format!("'{s}' is not a time limit: it must be above zero")),
            d => Ok(DurationArg(d)),
        }
    }
}

/// `--shutdown-grace`: a duration, where zero means "stop at once".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraceArg(pub Duration);

impl FromStr for GraceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(GraceArg)
    }
}

/// One `--disk` of exec: an existing image, or a host directory turned into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecDisk {
    Image(DiskSpec),
    Dir(DirDiskSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirDiskSpec {
    pub dir: PathBuf,
    pub readonly: bool,
    /// Where the guest mounts it; default /mnt/vdX.
    pub mount: Option<String>,
    /// Image size; default: the contents plus 25% and some free room.
    pub size: Option<MemSize>,
}

impl FromStr for ExecDisk {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.split(',').any(|p| p.starts_with("dir=")) {
            return s.parse().map(ExecDisk::Image);
        }
        let mut spec = DirDiskSpec {
            dir: PathBuf::new(),
            readonly: false,
            mount: None,
            size: None,
        };
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("--disk '{part}': expected key=value"))?;
            match key {
                "dir" if !value.is_empty() => spec.dir = PathBuf::from(value),
                "readonly" => {
                    spec.readonly = match value {
                        "on" | "true" | "yes" => true,
                        "off" | "false" | "no" => false,
                        _ => return Err(format!("--disk readonly={value}: use on or off")),
                    }
                }
                // The guest's init gets the path through the kernel command line, where a space
                // or a comma would end it.
                "mount"
                    if value.starts_with('/')
                        && !value.contains(|c: char| c.is_whitespace() || c == ',') =>
                {
                    spec.mount = Some(value.to_string())
                }
                "mount" => {
                    return Err(format!(
                        "--disk mount={value}: an absolute guest path without spaces or commas"
                    ))
                }
                "size" => spec.size = Some(value.parse()?),
                _ => {
                    return Err(format!(
                        "--disk: unknown or empty key '{key}' for a dir= disk (keys: dir, readonly, mount, size)"
                    ))
                }
            }
        }
        Ok(ExecDisk::Dir(spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!("30s".parse(), Ok(DurationArg(Duration::from_secs(30))));
        assert_eq!("2m".parse(), Ok(DurationArg(Duration::from_secs(120))));
        assert_eq!("1h".parse(), Ok(DurationArg(Duration::from_secs(3600))));
        assert_eq!("500ms".parse(), Ok(DurationArg(Duration::from_millis(500))));
        assert_eq!("7".parse(), Ok(DurationArg(Duration::from_secs(7))));
        for bad in ["", "0", "s", "1.5s", "3d", "-1s", "99999999999999999999h"] {
            assert!(bad.parse::<DurationArg>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn shutdown_grace_may_be_zero() {
        assert_eq!("0".parse(), Ok(GraceArg(Duration::ZERO)));
        assert_eq!("0ms".parse(), Ok(GraceArg(Duration::ZERO)));
        assert_eq!("1500ms".parse(), Ok(GraceArg(Duration::from_millis(1500))));
        for bad in ["", "s", "-1", "1.5s", "10x"] {
            assert!(bad.parse::<GraceArg>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn dir_disks_parse() {
        let d: ExecDisk = "dir=/src,readonly=on,mount=/work".parse().unwrap();
        assert_eq!(
            d,
            ExecDisk::Dir(DirDiskSpec {
                dir: "/src".into(),
                readonly: true,
                mount: Some("/work".into()),
                size: None
            })
        );
        assert!(matches!(
            "path=/img".parse::<ExecDisk>(),
            Ok(ExecDisk::Image(_))
        ));
        for bad in [
            "dir=",
            "dir=/x,mount=rel",
            "dir=/x,mount=/a b",
            "dir=/x,direct=on",
            "dir=/x,size=big",
        ] {
            assert!(bad.parse::<ExecDisk>().is_err(), "{bad} parsed");
        }
    }
}
