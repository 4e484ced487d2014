//! Fuzz target `gossip_datagram`: see `nomadlet::fuzzing::gossip_datagram`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomadlet::fuzzing::gossip_datagram(data));
