//! Fuzz target `chunked_body`: see `nomadlet::fuzzing::chunked_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomadlet::fuzzing::chunked_body(data));
