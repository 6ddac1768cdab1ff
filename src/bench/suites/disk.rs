//! disk: fio on one raw image, as resources/bench/disk.sh does, O_DIRECT everywhere so that no
//! page cache serves a number: on the host fio --direct=1 on the image file; in the guests fio
//! --direct=1 on /dev/vda, with kvmrun `--disk path=IMG,direct=on` and QEMU
//! `cache=none,aio=threads` on virtio-blk-pci. The image lives on a real file system (never tmpfs,
//! which has no O_DIRECT): `$KVMRUN_BENCH_DISK_DIR`, else /var/tmp; in the test host the scratch
//! ext4 disk attached with cache=none, so O_DIRECT there reaches this machine's disk too.

use std::path::{Path, PathBuf};

use super::super::results::Target;
use super::super::runner::{self, RunOutput};
use super::super::Bench;
use super::{bench_guest, run_guest};

const SUITE: &str = "disk";
const IMAGE_MIB: u64 = 256;

struct Workload {
    name: &'static str,
    unit: &'static str,
    fio: &'static str,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "seqread-1MiB",
        unit: "MB/s",
        fio: "--rw=read --bs=1M --ioengine=psync --iodepth=1",
    },
    Workload {
        name: "seqwrite-1MiB",
        unit: "MB/s",
        fio: "--rw=write --bs=1M --ioengine=psync --iodepth=1",
    },
    Workload {
        name: "randread-4KiB-qd1",
        unit: "IOPS",
        fio: "--rw=randread --bs=4k --ioengine=psync --iodepth=1",
    },
    Workload {
        name: "randread-4KiB-qd16",
        unit: "IOPS",
        fio: "--rw=randread --bs=4k --ioengine=libaio --iodepth=16",
    },
];

fn workloads(b: &Bench) -> &'static [Workload] {
    if b.args.quick {
        &WORKLOADS[..3]
    } else {
        &WORKLOADS
    }
}

fn seconds(b: &Bench) -> u32 {
    if b.args.quick {
        2
    } else {
        5
    }
}

/// The fio jobs on `$BENCH_DEV`, each run `--runs` times, one `@@FIO NAME RUN TERSE` line each.
/// A shell loop, not unrolled: the guest gets the script on its kernel command line (2 KiB).
pub(super) fn script(b: &Bench) -> String {
    let mut s = format!(
        "c='--direct=1 --time_based --runtime={} --ramp_time=1 --norandommap --randrepeat=0 \
         --output-format=terse --terse-version=3'\nfor r in $(seq {}); do\n",
        seconds(b),
        b.args.runs
    );
    for w in workloads(b) {
        s.push_str(&format!(
            "echo \"@@FIO {} $r $(fio --name={} --filename=$BENCH_DEV {} $c)\" || exit 1\n",
            w.name, w.name, w.fio
        ));
    }
    s + "done"
}

fn expected_s(b: &Bench) -> f64 {
    f64::from(b.args.runs) * workloads(b).len() as f64 * f64::from(seconds(b) + 2)
}

pub fn steps(b: &Bench) -> usize {
    2 + b.guest_targets().len()
}

pub fn run(b: &mut Bench) {
    b.note_qemu_skip(SUITE);
    b.progress.step(&format!(
        "disk: writing a {IMAGE_MIB} MiB image with O_DIRECT"
    ));
    let image = match prepare_image(b) {
        Ok(i) => i,
        Err(why) => {
            for target in [Target::Host].into_iter().chain(b.guest_targets()) {
                b.rec.failed(SUITE, "all", Some(target), &why);
            }
            return;
        }
    };
    b.env.insert(
        "disk_backend".into(),
        format!(
            "virtio-blk on PCI, raw {IMAGE_MIB} MiB image on {}",
            fs_name(image.parent().unwrap_or(Path::new("/")))
        ),
    );
    b.env.insert(
        "disk_cache".into(),
        "host page cache bypassed: fio --direct=1 on the host and in the guests, kvmrun \
         direct=on (O_DIRECT), QEMU cache=none,aio=threads"
            .into(),
    );
    b.progress.step("disk: host, fio on the image file");
    let out = runner::run_host(
        &b.artifacts,
        &script(b),
        Some(&image),
        b.limit(expected_s(b)),
    );
    collect(b, Target::Host, &out);
    for target in b.guest_targets() {
        b.progress.step(&format!(
            "disk: {} guest, 1 vCPU, fio on /dev/vda",
            target.label()
        ));
        let mut spec = bench_guest(b, target, 1, script(b), expected_s(b));
        spec.disk = Some(image.clone());
        let out = run_guest(b, &spec);
        collect(b, target, &out);
    }
    if let Some(dir) = image.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A fresh directory with the image, every block written (with O_DIRECT, so it is real).
fn prepare_image(b: &Bench) -> Result<PathBuf, String> {
    let base = std::env::var_os("KVMRUN_BENCH_DISK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/tmp".into());
    if fs_name(&base) == "tmpfs" {
        return Err(format!(
            "{} is on tmpfs, which has no O_DIRECT: set KVMRUN_BENCH_DISK_DIR to a directory on a disk",
            base.display()
        ));
    }
    let dir = base.join(format!("kvmrun-bench-disk-run.{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let image = dir.join("disk.img");
    let fill = format!(
        "fio --name=fill --filename=\"$BENCH_DEV\" --rw=write --bs=1M --size={IMAGE_MIB}M \
         --direct=1 --ioengine=psync --output-format=terse >/dev/null"
    );
    let out = runner::run_host(&b.artifacts, &fill, Some(&image), b.limit(60.0));
    if !out.success {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!(
            "cannot write the image with fio and O_DIRECT (is fio installed?)\n{}",
            out.diagnostic()
        ));
    }
    Ok(image)
}

/// The file system type of `path`, as /proc/self/mounts names it (longest matching mount).
fn fs_name(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && path.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}

/// (workload, run, value) from the `@@FIO` lines: MB/s for the sequential ones (bandwidth in
/// KiB/s, terse v3 field 7 for reads, 48 for writes), IOPS for the random ones (8, 49).
fn parse_fio(text: &str) -> Vec<(String, u32, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.split("@@FIO ").nth(1) else {
            continue;
        };
        let mut words = rest.splitn(3, ' ');
        let (Some(name), Some(run), Some(terse)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let f: Vec<&str> = terse.trim().split(';').collect();
        if f.len() < 49 || f[0] != "3" || f[4] != "0" {
            continue; // not terse v3, or fio reported an error
        }
        let write = name.contains("write");
        let (bw, iops) = if write { (f[47], f[48]) } else { (f[6], f[7]) };
        let value = if name.starts_with("seq") {
            bw.parse::<f64>().map(|kib| kib * 1024.0 / 1e6)
        } else {
            iops.parse::<f64>()
        };
        if let (Ok(v), Ok(r)) = (value, run.parse()) {
            out.push((name.to_string(), r, v));
        }
    }
    out
}

fn collect(b: &mut Bench, target: Target, out: &RunOutput) {
    let parsed = parse_fio(&out.stdout);
    for w in workloads(b) {
        let vals: Vec<f64> = parsed
            .iter()
            .filter(|(n, _, v)| n == w.name && *v > 0.0)
            .map(|(_, _, v)| *v)
            .collect();
        let params = [
            ("fio", w.fio.to_string()),
            ("seconds", seconds(b).to_string()),
            ("image_mib", IMAGE_MIB.to_string()),
            ("direct", "1".to_string()),
        ];
        super::record(
            b,
            SUITE,
            &format!("fio/{}", w.name),
            target,
            w.unit,
            true,
            out,
            vals,
            &params,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terse(read_bw: &str, read_iops: &str, write_bw: &str, write_iops: &str) -> String {
        let mut f = vec!["0"; 130];
        f[0] = "3";
        f[6] = read_bw;
        f[7] = read_iops;
        f[47] = write_bw;
        f[48] = write_iops;
        f.join(";")
    }

    #[test]
    fn fio_terse_lines_give_mb_per_s_and_iops() {
        let text = format!(
            "noise\n@@FIO seqread-1MiB 1 {}\n@@FIO seqwrite-1MiB 1 {}\n@@FIO randread-4KiB-qd1 2 {}\n",
            terse("1000", "1", "0", "0"),
            terse("0", "0", "2000", "2"),
            terse("40", "10000", "0", "0")
        );
        let p = parse_fio(&text);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0], ("seqread-1MiB".to_string(), 1, 1.024));
        assert_eq!(p[1], ("seqwrite-1MiB".to_string(), 1, 2.048));
        assert_eq!(p[2], ("randread-4KiB-qd1".to_string(), 2, 10000.0));
    }

    #[test]
    fn fio_errors_are_not_figures() {
        let t = terse("1000", "1", "0", "0");
        let mut f: Vec<&str> = t.split(';').collect();
        f[4] = "5"; // fio's error field
        assert!(parse_fio(&format!("@@FIO seqread-1MiB 1 {}", f.join(";"))).is_empty());
    }
}
