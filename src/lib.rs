//! The nomadlet agent as a library: everything the `nomadlet` binary (`src/main.rs`) runs, and
//! a small hidden `fuzzing` facade that the cargo-fuzz targets in `fuzz/` drive.

mod acl;
pub mod agent;
mod api;
mod client;
pub mod config;
mod encoding;
mod fs;
mod hcl_doc;
mod http;
pub mod logtap;
mod meta_batcher;
pub mod parse_bounds;
pub mod reload;
pub mod sd_notify;
mod state;
mod sys;
mod time;

#[doc(hidden)]
pub mod fuzzing;
