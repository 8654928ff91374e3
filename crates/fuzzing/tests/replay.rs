//! Replays every committed fuzz input on stable Rust: each file of `fuzz/corpus/<target>/` (the
//! seeds, and what campaigns kept) and `fuzz/regressions/<target>/` (inputs that once crashed a
//! parser, kept after the fix) goes through its target. A panic names the file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_fuzz_target_file_and_seeds() {
    for (name, _) in veetance_fuzzing::TARGETS {
        let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.is_file(), "{} is missing", target.display());
        let seeds = files_in(&fuzz_dir().join("corpus").join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ holds no seed");
    }
}

#[test]
fn corpora_and_regressions_replay_without_a_panic() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, target) in veetance_fuzzing::TARGETS {
        for folder in ["corpus", "regressions"] {
            for file in files_in(&fuzz_dir().join(folder).join(name)) {
                let data = std::fs::read(&file).unwrap();
                replayed += 1;
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("{name}: {}: {message}", file.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(replayed >= veetance_fuzzing::TARGETS.len());
}

/// A small deterministic random source (xorshift64*), so a smoke run is repeatable by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random edit of the kinds libFuzzer makes: a bit flip, a byte set, an inserted or deleted
/// run, a copied run, a boundary integer written over the bytes, a cut, or a splice of another
/// input.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(8) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next() as u8;
        }
        2 => {
            let at = rng.below(len + 1);
            let run: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
            data.splice(at..at, run);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(16)).min(len);
            data.drain(at..end);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(32)).min(len);
            let run = data[at..end].to_vec();
            let to = rng.below(len + 1);
            data.splice(to..to, run);
        }
        5 if len > 0 => {
            let values: [u64; 8] = [
                0,
                1,
                0x7f,
                0xff,
                0x7fff_ffff,
                0xffff_ffff,
                1 << 40,
                u64::MAX,
            ];
            let bytes = values[rng.below(values.len())].to_le_bytes();
            let width = [1, 2, 4, 8][rng.below(4)];
            let at = rng.below(len);
            for (k, b) in bytes.iter().take(width).enumerate() {
                if let Some(slot) = data.get_mut(at + k) {
                    *slot = *b;
                }
            }
        }
        6 if len > 0 => data.truncate(rng.below(len)),
        _ if !others.is_empty() => {
            let other = &others[rng.below(others.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ => {}
    }
}

/// Random mutations of every seed through every target (not coverage-guided: a quick stable
/// smoke test between libFuzzer campaigns). `VEETANCE_FUZZ_SMOKE=<inputs per target>` runs it:
/// `VEETANCE_FUZZ_SMOKE=20000 cargo test -p veetance-fuzzing --test replay -- --ignored`.
#[test]
#[ignore = "long: set VEETANCE_FUZZ_SMOKE and run with --ignored"]
fn mutated_seeds_never_panic() {
    let per_target: usize = std::env::var("VEETANCE_FUZZ_SMOKE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let only = std::env::var("VEETANCE_FUZZ_TARGET").ok();
    let mut rng = Rng(0x5eed_f00d_dead_beef);
    for (name, target) in veetance_fuzzing::TARGETS {
        if only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        let seeds: Vec<Vec<u8>> = ["corpus", "regressions"]
            .iter()
            .flat_map(|f| files_in(&fuzz_dir().join(f).join(name)))
            .map(|p| std::fs::read(p).unwrap())
            .filter(|d| d.len() <= 64 << 10)
            .collect();
        let start = std::time::Instant::now();
        for i in 0..per_target {
            let mut data = seeds[i % seeds.len()].clone();
            for _ in 0..1 + rng.below(4) {
                mutate(&mut rng, &mut data, &seeds);
            }
            let result = catch_unwind(AssertUnwindSafe(|| target(&data)));
            if result.is_err() {
                let out = std::env::temp_dir().join(format!("veetance-fuzz-{name}-{i}"));
                std::fs::write(&out, &data).unwrap();
                panic!("{name}: input {i} panicked; saved to {}", out.display());
            }
        }
        eprintln!(
            "{name}: {per_target} mutated inputs in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
}
