//! Build script: lays the idle agent's code out together in release builds.
//!
//! An idle agent runs a few hundred functions (its main loop, heartbeats, stats, the HTTP
//! acceptor) spread over the whole binary. The kernel maps 64 KiB of cached neighbours with
//! every code page it faults in, so after the agent drops its resident code
//! (`sys::mem::trim_code_pages`), those few hundred functions brought ~4 MiB back. Listed first
//! in `.text` (`src/idle-path.order`, made by `bench/idle_order.py`), they fill ~400 KiB.
//!
//! Only for release builds on x86_64 Linux, where rustc links with its bundled LLD, which
//! takes `--symbol-ordering-file`. Symbols the file names that a build does not have (code
//! changed since the file was made) are skipped without a warning: the layout degrades, the
//! build does not fail. `NOMADLET_NO_ORDER=1` leaves the layout to the linker.
//! `NOMADLET_LINK_MAP=<path>` also writes the linker's map there (to check the file still
//! names this build's symbols).

use std::env;
use std::path::Path;

fn main() {
    let order =
        Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("src/idle-path.order");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-changed=src/build.rs");
    println!("cargo:rerun-if-env-changed=NOMADLET_NO_ORDER");
    println!("cargo:rerun-if-env-changed=NOMADLET_LINK_MAP");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    // rustc links this target with its bundled LLD from 1.90 on.
    let lld_target = env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu")
        && rustc_minor().is_some_and(|minor| minor >= 90);
    let own_linker = env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("linker"))
        || env::vars().any(|(k, _)| k.starts_with("CARGO_TARGET_") && k.ends_with("_LINKER"));
    if !release
        || !lld_target
        || own_linker
        || env::var_os("NOMADLET_NO_ORDER").is_some()
        || !order.is_file()
    {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    if let Some(map) = env::var_os("NOMADLET_LINK_MAP") {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,-Map={}",
            Path::new(&map).display()
        );
    }
}

/// The minor version of the rustc cargo builds with (`1.<minor>.<patch>`).
fn rustc_minor() -> Option<u32> {
    let rustc = env::var_os("RUSTC")?;
    let out = std::process::Command::new(rustc).arg("-V").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    version.split('.').nth(1)?.parse().ok()
}
