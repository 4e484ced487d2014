//! Fuzz target `hcl_policy`: see `nomadlet::fuzzing::hcl_policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomadlet::fuzzing::hcl_policy(data));
