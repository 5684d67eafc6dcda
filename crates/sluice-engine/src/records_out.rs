//! Records out: an import's record outputs written as JSON lines, one per
//! record that succeeded, in record order (`sluice run FLOW --records FILE
//! --output OUT`). A flow that writes nothing is then a transformation of a
//! file of records; failures go to the failure report as always.
//!
//! The lines of a chunk are on disk before the chunk commits, so that an
//! import that stopped and resumes keeps the lines of the records it had
//! landed (as many as landed and did not fail) and writes the others again:
//! every record's line is there once.

use sluice_expr::Val;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Where an import's record outputs go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordsOut {
    /// A file (made, or cut back to the lines of landed records when the
    /// import resumes).
    File(PathBuf),
    /// Standard output.
    Stdout,
}

/// The open output.
pub(crate) struct OutLines {
    w: BufWriter<Box<dyn Write + Send>>,
    /// The file, to sync before a chunk commits (none for standard output).
    file: Option<(File, PathBuf)>,
}

/// A record's output as its line: JSON, scrubbed of secrets (as every
/// output Sluice prints), and a newline. Made where the record ran, so
/// that the lines of a chunk's records are made side by side.
pub(crate) fn line_of(v: &Val) -> Vec<u8> {
    let mut text = serde_json::to_vec(&sluice_expr::data::Json(v)).unwrap_or_default();
    if let std::borrow::Cow::Owned(clean) =
        sluice_action::secrets::scrub(&String::from_utf8_lossy(&text))
    {
        text = clean.into_bytes();
    }
    text.push(b'\n');
    text
}

fn failed(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

impl OutLines {
    /// Open `to`, keeping its first `keep` lines (those of the records an
    /// earlier run of the import landed).
    pub(crate) fn open(to: &RecordsOut, keep: u64) -> Result<Self, String> {
        let path = match to {
            RecordsOut::Stdout => {
                return Ok(Self {
                    w: BufWriter::with_capacity(1 << 16, Box::new(std::io::stdout())),
                    file: None,
                });
            }
            RecordsOut::File(p) => p,
        };
        let kept = if keep == 0 {
            0
        } else {
            line_ends(path, keep).1
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| failed(path, e))?;
        file.set_len(kept).map_err(|e| failed(path, e))?;
        let mut writer = file.try_clone().map_err(|e| failed(path, e))?;
        std::io::Seek::seek(&mut writer, std::io::SeekFrom::Start(kept))
            .map_err(|e| failed(path, e))?;
        Ok(Self {
            w: BufWriter::with_capacity(1 << 16, Box::new(writer)),
            file: Some((file, path.clone())),
        })
    }

    /// Write one record's line (see [`line_of`]).
    pub(crate) fn write(&mut self, line: &[u8]) -> Result<(), String> {
        self.w.write_all(line).map_err(|e| self.error(e))
    }

    /// Hand what is written to the file (`durable`: and to the disk, before
    /// a commit that a resume relies on).
    pub(crate) fn flush(&mut self, durable: bool) -> Result<(), String> {
        self.w.flush().map_err(|e| self.error(e))?;
        if durable && let Some((f, path)) = &self.file {
            f.sync_data().map_err(|e| failed(path, e))?;
        }
        Ok(())
    }

    fn error(&self, e: std::io::Error) -> String {
        match &self.file {
            Some((_, p)) => failed(p, e),
            None => format!("standard output: {e}"),
        }
    }
}

/// The lines of a file (0 when it is not there).
pub(crate) fn lines_in(path: &Path) -> u64 {
    line_ends(path, u64::MAX).0
}

/// The first `most` lines of a file (fewer when it has fewer): how many,
/// and the offset just after the last of them (0 when it is not there).
fn line_ends(path: &Path, most: u64) -> (u64, u64) {
    let Ok(mut file) = File::open(path) else {
        return (0, 0);
    };
    let mut buf = vec![0u8; 1 << 16];
    let (mut lines, mut end, mut offset) = (0, 0, 0);
    while lines < most {
        let n = match std::io::Read::read(&mut file, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for (i, b) in buf[..n].iter().enumerate() {
            if *b == b'\n' {
                lines += 1;
                end = offset + i as u64 + 1;
                if lines == most {
                    break;
                }
            }
        }
        offset += n as u64;
    }
    (lines, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_resumed_output_keeps_the_lines_of_landed_records() {
        let dir = std::env::temp_dir().join(format!("sluice-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("out.jsonl");
        let to = RecordsOut::File(path.clone());
        let mut o = OutLines::open(&to, 0).expect("open");
        for i in 0..5 {
            o.write(&line_of(&sluice_expr::to_val(&json!({"i": i}))))
                .expect("line");
        }
        o.flush(true).expect("flush");
        drop(o);
        assert_eq!(lines_in(&path), 5);
        let mut o = OutLines::open(&to, 3).expect("open");
        o.write(&line_of(&sluice_expr::to_val(&json!({"i": "again"}))))
            .expect("line");
        o.flush(false).expect("flush");
        drop(o);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "{\"i\":0}\n{\"i\":1}\n{\"i\":2}\n{\"i\":\"again\"}\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
