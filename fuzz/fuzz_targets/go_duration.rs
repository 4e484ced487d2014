//! Fuzz target `go_duration`: see `nomadlet::fuzzing::go_duration`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomadlet::fuzzing::go_duration(data));
