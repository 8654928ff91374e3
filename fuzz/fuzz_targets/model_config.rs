#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veetance_fuzzing::model_config(data));
