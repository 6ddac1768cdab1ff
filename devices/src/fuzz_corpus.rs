//! The fuzz targets' corpora (`fuzz/corpus/<target>`) as the harnesses' unit tests use them:
//! `cargo test` replays every file, so CI exercises each target without a nightly toolchain.

use std::path::{Path, PathBuf};

/// `fuzz/corpus/<target>` of the workspace.
pub fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Runs `run` on every file of `dir` (the handcrafted seeds and whatever the fuzzer kept);
/// fails when fewer than `seeds` files are there: a missing corpus must not pass silently.
pub fn replay(dir: &Path, seeds: usize, mut run: impl FnMut(&[u8])) {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read the seed corpus {}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        run(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n >= seeds, "seed corpus missing in {}", dir.display());
}

/// Writes each seed to `dir` as `seed_<name>`.
pub fn write_seeds(dir: &Path, seeds: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, input) in seeds {
        std::fs::write(dir.join(format!("seed_{name}")), input).unwrap();
    }
}
