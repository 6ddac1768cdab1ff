//! `--disk dir=HOSTDIR`: an ext4 image built from a host directory for one run (mkfs.ext4 -d:
//! no loop mounts, no root rights), deleted afterwards; for a writable one, what the guest left
//! in the file system is copied back into HOSTDIR (debugfs rdump, again without mounting).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::exec_args::DirDiskSpec;

/// Free room a writable image gets beyond its contents (sparse: costs nothing unless used).
const WRITABLE_ROOM: u64 = 256 << 20;
/// Room for ext4's own metadata in a read-only image.
const METADATA_ROOM: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DirDiskError {
    #[error("--disk dir={0}: not a directory")]
    NotADir(PathBuf),
    #[error("--disk dir={dir}: {what}: {source}")]
    Io {
        dir: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("--disk dir={dir}: {tool} failed: {message}")]
    Tool {
        dir: PathBuf,
        tool: &'static str,
        message: String,
    },
}

/// One directory's image, removed when dropped.
pub struct DirImage {
    pub spec: DirDiskSpec,
    image: tempfile::TempPath,
}

impl DirImage {
    /// Builds the image of `spec.dir` in the temp directory ($TMPDIR), under a unique name.
    pub fn build(spec: &DirDiskSpec) -> Result<DirImage, DirDiskError> {
        let dir = &spec.dir;
        let io = |what| {
            move |source| DirDiskError::Io {
                dir: dir.clone(),
                what,
                source,
            }
        };
        if !dir.is_dir() {
            return Err(DirDiskError::NotADir(dir.clone()));
        }
        let size = match spec.size {
            Some(s) => s.0,
            None => {
                let contents = tree_size(dir).map_err(io("reading it"))?;
                let room = if spec.readonly {
                    METADATA_ROOM
                } else {
                    WRITABLE_ROOM
                };
                // 4 KiB blocks round every file up; a quarter more covers that and the inodes.
                (contents + contents / 4 + room).next_multiple_of(1 << 20)
            }
        };
        let file = tempfile::Builder::new()
            .prefix("kvmrun-dir-")
            .suffix(".img")
            .tempfile()
            .map_err(io("creating the image file"))?;
        file.as_file()
            .set_len(size)
            .map_err(io("sizing the image"))?;
        let image = file.into_temp_path();
        // Fully initialised (no lazy init writes in the guest), no reserved blocks, the label
        // kvmrun, the root directory owned by root (the guest's user).
        let out = Command::new(tool("mkfs.ext4"))
            .args(["-q", "-F", "-t", "ext4", "-L", "kvmrun", "-m", "0", "-E"])
            .arg("lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0")
            .arg("-d")
            .arg(dir)
            .arg(&image)
            .stdin(Stdio::null())
            .output()
            .map_err(io("running mkfs.ext4 (install e2fsprogs)"))?;
        if !out.status.success() {
            return Err(DirDiskError::Tool {
                dir: dir.clone(),
                tool: "mkfs.ext4",
                message: format!(
                    "{} (is size={} big enough?)",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    size
                ),
            });
        }
        log::info!("{} -> {} ({size} bytes)", dir.display(), image.display());
        Ok(DirImage {
            spec: spec.clone(),
            image,
        })
    }

    pub fn path(&self) -> &Path {
        &self.image
    }

    /// Copies the image's files into the host directory: new and changed files and
    /// directories (a file deleted in the guest stays on the host; lost+found is skipped).
    pub fn copy_back(&self) -> Result<(), DirDiskError> {
        let dir = &self.spec.dir;
        let io = |what| {
            move |source| DirDiskError::Io {
                dir: dir.clone(),
                what,
                source,
            }
        };
        let staging = tempfile::Builder::new()
            .prefix("kvmrun-dir-out-")
            .tempdir()
            .map_err(io("creating a staging directory"))?;
        // rdump writes the directory's contents into the destination; it cannot fail a run
        // through its exit status (debugfs returns 0 on most errors), so check stderr too.
        let out = Command::new(tool("debugfs"))
            .arg("-R")
            .arg(format!("rdump / {}", staging.path().display()))
            .arg(self.path())
            .stdin(Stdio::null())
            .output()
            .map_err(io("running debugfs (install e2fsprogs)"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
            .collect();
        if !out.status.success() || !errors.is_empty() {
            return Err(DirDiskError::Tool {
                dir: dir.clone(),
                tool: "debugfs rdump",
                message: errors.join("; "),
            });
        }
        merge(staging.path(), dir, true).map_err(io("copying results back"))
    }
}

/// mkfs.ext4 and debugfs live in /sbin, which is not on every user's PATH.
fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            tree_size(&entry.path())? + 4096
        } else {
            meta.len() + 4096
        };
    }
    Ok(total)
}

/// Copies `from`'s tree over `to`'s (files replaced, directories merged).
fn merge(from: &Path, to: &Path, top: bool) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if top && entry.file_name() == "lost+found" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir_all(&dst)?;
            merge(&src, &dst, false)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src)?;
            let _ = std::fs::remove_file(&dst);
            std::os::unix::fs::symlink(target, &dst)?;
        } else if kind.is_file() {
            // Replace rather than write through: the host file may be a hard link elsewhere.
            let _ = std::fs::remove_file(&dst);
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an image, changes it the way a guest would (here with debugfs's write), and
    /// checks the change comes back and the image goes away.
    #[test]
    fn image_round_trip_brings_new_files_back() {
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir(host.path().join("sub")).unwrap();
        std::fs::write(host.path().join("sub/in.txt"), "input\n").unwrap();
        let spec = DirDiskSpec {
            dir: host.path().to_path_buf(),
            readonly: false,
            mount: None,
            size: None,
        };
        let img = DirImage::build(&spec).unwrap();
        let image_path = img.path().to_path_buf();
        let extra = host.path().join("../kvmrun-dir-test-result");
        std::fs::write(&extra, "result\n").unwrap();
        let out = Command::new(tool("debugfs"))
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} sub/out.txt", extra.display()))
            .arg(&image_path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::remove_file(&extra).unwrap();
        img.copy_back().unwrap();
        assert_eq!(
            std::fs::read_to_string(host.path().join("sub/out.txt")).unwrap(),
            "result\n"
        );
        assert_eq!(
            std::fs::read_to_string(host.path().join("sub/in.txt")).unwrap(),
            "input\n"
        );
        assert!(!host.path().join("lost+found").exists());
        drop(img);
        assert!(!image_path.exists(), "the image outlived its run");
    }

    #[test]
    fn a_missing_directory_is_named() {
        let spec = DirDiskSpec {
            dir: "/nonexistent/kvmrun".into(),
            readonly: true,
            mount: None,
            size: None,
        };
        let e = DirImage::build(&spec).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/kvmrun"), "{e}");
    }
}
