//! The import's own tests: how records are counted and read.

use super::*;

#[test]
fn records_are_counted_as_they_are_read() {
    let path = std::env::temp_dir().join(format!("sluice-count-{}.jsonl", std::process::id()));
    let text =
        "{\"a\": 1}\n\n   \n{\"b\": \"é\"}\n\u{a0}\n\u{e9}\n\t{}\n\u{b}\u{c}\n\0\n{\"last\": true}";
    std::fs::write(&path, text).expect("write");
    let mut records = Records::open(&path).expect("open");
    let mut read = 0;
    while records.next_raw().expect("read").is_some() {
        read += 1;
    }
    assert_eq!(read, 6);
    assert_eq!(scan(&path, false).expect("scan").1, read);
    // Read a few bytes at a time: lines cut across reads count the same.
    for size in [1, 2, 3, 5, 8, 64] {
        assert_eq!(count_lines(text.as_bytes(), size).expect("count"), read);
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn csv_rows_are_objects_of_the_header_names() {
    use serde_json::json;
    let path = std::env::temp_dir().join(format!("sluice-rows-{}.csv", std::process::id()));
    std::fs::write(&path, "id,name,note\n1,Ann,\n2,Bo,x\n3,Cy\n").expect("write");
    let (count, rows) = read_records(&path).expect("read");
    assert_eq!(count, 3);
    assert_eq!(rows[0], Ok(json!({"id": "1", "name": "Ann", "note": null})));
    assert_eq!(rows[1], Ok(json!({"id": "2", "name": "Bo", "note": "x"})));
    assert!(rows[2].as_ref().is_err_and(|e| e.contains("2 fields")));
    // A name given twice: its last field, at its first place.
    std::fs::write(&path, "a,b,a\n1,2,3\n").expect("write");
    let (_, rows) = read_records(&path).expect("read");
    assert_eq!(rows[0], Ok(json!({"a": "3", "b": "2"})));
    let _ = std::fs::remove_file(&path);
}
