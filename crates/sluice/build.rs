//! Build script of the `sluice` binary: its relative relocations are packed
//! (`-z pack-relative-relocs`, the DT_RELR format) when it is built for the
//! machine that builds it and that machine's C library reads the format
//! (glibc 2.36 or later). The loader then reads about 14 KB of relocations
//! at every start instead of 1.1 MB, which shortens each command's start
//! (docs/benchmarks.md §1, the start). Elsewhere (another target, an older
//! glibc, no `getconf`) the binary is linked as before.
//!
//! And the functions that a one-shot command runs (`start-order.txt`,
//! written by `bench/start/order.sh`) are placed side by side when the
//! binary is linked by Rust's own LLD (the default linker for
//! `x86_64-unknown-linux-gnu`): `sluice run` then maps about 35 pages of
//! code instead of about 190 scattered over 25 MB, each a page fault. A
//! name the binary no longer has (the list is older than a dependency) is
//! passed over. With another linker the list is not used.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=start-order.txt");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if linked_by_rust_lld(
        &var("TARGET"),
        std::env::var_os("RUSTC_LINKER").is_some(),
        &var("CARGO_ENCODED_RUSTFLAGS"),
    ) {
        let list = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("start-order.txt");
        // A comma would split the argument (`-Wl,` takes a list).
        if list.is_file() && !list.to_string_lossy().contains(',') {
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                list.display()
            );
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        }
    }
    let native = var("TARGET") == var("HOST");
    if !native || var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return;
    };
    if glibc_reads_relr(&String::from_utf8_lossy(&out.stdout)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the binary is linked by the LLD that comes with Rust: the
/// default for `x86_64-unknown-linux-gnu` (since Rust 1.90; the workspace
/// needs 1.95), unless a linker is configured (`RUSTC_LINKER`) or the flags
/// choose one (`-C linker=…`, `-C linker-features=…`, `-fuse-ld=…`).
fn linked_by_rust_lld(target: &str, linker_set: bool, rustflags: &str) -> bool {
    target == "x86_64-unknown-linux-gnu"
        && !linker_set
        && !rustflags.contains("linker")
        && !rustflags.contains("fuse-ld")
}

/// Whether `getconf GNU_LIBC_VERSION`'s answer (`glibc 2.36`) names a glibc
/// that loads packed relative relocations.
fn glibc_reads_relr(answer: &str) -> bool {
    let Some(version) = answer.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 36),
        _ => false,
    }
}
