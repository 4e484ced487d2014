//! Fuzz target `jwt`: see `nomadlet::fuzzing::jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomadlet::fuzzing::jwt(data));
