//! Fuzz target `filter`: see `nomadlet::fuzzing::filter`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomadlet::fuzzing::filter(data));
