//! The nomadlet agent as a library: everything the `nomadlet` binary (`src/main.rs`) runs, and
//! a small hidden `fuzzing` facade that the cargo-fuzz targets in `fuzz/` drive.

// Raw system calls live in `sys`: safe functions, each unchecked block beside its `// SAFETY:`
// comment. The rest of the crate cannot write one; tests/tidy.rs checks the same in the text.
#![deny(unsafe_code)]

mod acl;
pub mod agent;
mod api;
pub mod cli;
mod client;
pub mod config;
mod encoding;
mod fs;
mod gossip;
mod hcl_doc;
mod http;
mod jobspec;
pub mod logtap;
mod meta_batcher;
pub mod parse_bounds;
mod raft;
pub mod reload;
pub mod sd_notify;
mod server;
mod signals;
mod state;
mod store;
#[allow(unsafe_code)]
mod sys;
mod time;
pub mod tls;

#[doc(hidden)]
pub mod fuzzing;

/// The hidden `nomadlet task-shim DIR` subcommand (one per running task, started by the
/// agent; see `client::shim`). Returns the process exit code.
#[doc(hidden)]
pub fn task_shim(args: &[String]) -> i32 {
    client::shim::main(args)
}

/// The hidden `nomadlet bench-scheduler [NODES] [ALLOCS]` subcommand: placements per second
/// of the server's scheduler over simulated nodes, in process. Returns the exit code.
#[doc(hidden)]
pub fn bench_scheduler(args: &[String]) -> i32 {
    server::scheduler::bench::main(args)
}
