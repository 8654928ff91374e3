//! Every target in one binary, chosen by `VEETANCE_FUZZ_TARGET` (a name of
//! `veetance_fuzzing::TARGETS`): one instrumented build to copy to a many-core machine and run
//! all targets side by side (`.verify/fuzz-parallel.sh`). The per-target binaries beside it run
//! the same functions.
#![no_main]

use std::sync::OnceLock;

fn target() -> veetance_fuzzing::Target {
    static CHOSEN: OnceLock<veetance_fuzzing::Target> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let name = std::env::var("VEETANCE_FUZZ_TARGET").unwrap_or_default();
        match veetance_fuzzing::TARGETS.iter().find(|(n, _)| *n == name) {
            Some((_, t)) => *t,
            None => {
                let names: Vec<&str> = veetance_fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
                eprintln!(
                    "set VEETANCE_FUZZ_TARGET to one of: {} (it is {name:?})",
                    names.join(", ")
                );
                std::process::exit(2);
            }
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| target()(data));
