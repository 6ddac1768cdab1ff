//! The default guest's cache under concurrent first use: 8 `kvmrun exec` runs that start at once
//! with an empty cache all ask the builders for the guest. The builders must build it once and
//! hand every caller the same, complete artifact (resources/guest/lib.sh `cached_build`). The
//! initramfs builder stands in for both (the kernel builder uses the same function but takes
//! minutes).

use std::path::Path;
use std::process::Command;

#[test]
fn concurrent_first_builds_share_one_artifact() {
    let cache = tempfile_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/guest/build-initramfs.sh");
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new("bash")
                .arg(&script)
                .env("KVMRUN_CACHE", &cache)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run build-initramfs.sh")
        })
        .collect();
    let mut paths = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        paths.push(stdout.lines().last().unwrap_or("").to_string());
    }
    assert!(paths.iter().all(|p| p == &paths[0]), "{paths:?}");
    assert!(Path::new(&paths[0]).is_file());
    let entries: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let builds = entries
        .iter()
        .filter(|n| n.starts_with("initramfs-"))
        .count();
    assert_eq!(builds, 1, "{entries:?}");
    assert!(
        !entries
            .iter()
            .any(|n| n.contains(".tmp.") || n.contains(".link.")),
        "leftovers: {entries:?}"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kvmrun-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
