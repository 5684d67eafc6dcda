// Shared by the fuzz targets (included with `include!`): the metered
// allocator the binary runs with (so jq's memory budget holds), the
// limits, and a split of the input into parts.

#[global_allocator]
static ALLOC: sluice_expr::meter::Metered<std::alloc::System> =
    sluice_expr::meter::Metered(std::alloc::System);

/// The expression limits of a server, with a shorter deadline so that a
/// slow input shows as a timeout of the fuzzer (`-timeout`) only when the
/// deadline does not hold.
#[allow(dead_code)]
fn limits() -> sluice_expr::Limits {
    sluice_expr::Limits {
        timeout: std::time::Duration::from_millis(500),
        memory: 64 << 20,
        ..sluice_expr::Limits::default()
    }
}

/// The input cut at its first NUL bytes into `N` parts (missing ones
/// empty), each as text when it is UTF-8.
#[allow(dead_code)]
fn parts<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&[][..]; N];
    let mut rest = data;
    for (i, slot) in out.iter_mut().enumerate() {
        if i + 1 == N {
            *slot = rest;
            break;
        }
        match rest.iter().position(|b| *b == 0) {
            Some(p) => {
                *slot = &rest[..p];
                rest = &rest[p + 1..];
            }
            None => {
                *slot = rest;
                rest = &[];
            }
        }
    }
    out
}
