//! Build script of the `sluice` binary: its relative relocations are packed
//! (`-z pack-relative-relocs`, the DT_RELR format) when it is built for the
//! machine that builds it and that machine's C library reads the format
//! (glibc 2.36 or later). The loader then reads about 14 KB of relocations
//! at every start instead of 1.1 MB, which shortens each command's start
//! (docs/benchmarks.md §1, the start). Elsewhere (another target, an older
//! glibc, no `getconf`) the binary is linked as before.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
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
