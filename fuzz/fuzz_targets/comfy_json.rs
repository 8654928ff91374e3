#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veetance_fuzzing::comfy_json(data));
