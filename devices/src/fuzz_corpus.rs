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

/// The two corpus tests of a harness's test module: `corpus_replay` runs `run` on every file of
/// `fuzz/corpus/<target>` (at least as many as `seeds` has), and the ignored `write_seeds` test
/// writes `seeds` there. Each harness names its writer (`write_pci_seed_corpus`, ...) so the
/// command in its doc regenerates that corpus alone.
macro_rules! corpus_tests {
    (
        target: $target:literal,
        seeds: $seeds:expr,
        run: $run:expr,
        write_seeds: $write:ident $(,)?
    ) => {
        /// Replays every file of the cargo-fuzz corpus (the handcrafted seeds and anything the
        /// fuzzer added there), so CI exercises the fuzz target without a nightly toolchain.
        #[test]
        fn corpus_replay() {
            let dir = $crate::fuzz_corpus::dir($target);
            $crate::fuzz_corpus::replay(&dir, $seeds.len(), |input| {
                $run(input);
            });
        }

        /// Regenerates the seed corpus:
        #[doc = concat!("`cargo test -p devices ", stringify!($write), " -- --ignored`.")]
        #[test]
        #[ignore]
        fn $write() {
            $crate::fuzz_corpus::write_seeds(&$crate::fuzz_corpus::dir($target), &$seeds);
        }
    };
}
pub(crate) use corpus_tests;
