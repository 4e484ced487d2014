//! Unit tests of the TLS configurations: certificates made here with rcgen.
