//! The records reader of an import (CSV with a header, JSON lines): any
//! file gives records or says why a row is not one, and the count an
//! import skips by on resume is the number of records read.
#![no_main]
include!("common.rs");

use libfuzzer_sys::fuzz_target;

fn dir() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("sluice-fuzz-records-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let dir = dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(if kind % 2 == 0 { "r.csv" } else { "r.jsonl" });
    if std::fs::write(&path, body).is_err() {
        return;
    }
    if let Ok((count, records)) = sluice_engine::read_records(&path) {
        assert_eq!(
            count,
            records.len() as u64,
            "the scan and the reader disagree"
        );
    }
});
