//! Fuzz target `http_head`: see `nomadlet::fuzzing::http_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomadlet::fuzzing::http_head(data));
