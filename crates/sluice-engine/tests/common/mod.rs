//! The databases tests write to: SQLite always; PostgreSQL and MariaDB when
//! `SLUICE_TEST_POSTGRES_URL` / `SLUICE_TEST_MYSQL_URL` are set (as `.ci/run`
//! sets them). A URL that is set must be reachable: the test fails rather than
//! skips. Under CI both must be set. Also the flows runs reach, for the
//! tests that set them.
#![allow(dead_code)] // each test binary uses some of these

use sluice_engine::FlowLookup;
use sluice_model::Flow;
use std::collections::HashMap;
use std::sync::Arc;

/// The flows a test's runs reach, by id.
pub struct Flows(pub HashMap<String, Arc<Flow>>);

impl FlowLookup for Flows {
    fn flow(&self, id: &str) -> Option<Arc<Flow>> {
        self.0.get(id).cloned()
    }

    fn all(&self) -> Vec<Arc<Flow>> {
        self.0.values().cloned().collect()
    }
}

/// `(name, url)` of each database to test; the SQLite file is new, under a
/// directory named after `tag` and the process.
pub fn databases(tag: &str) -> Vec<(&'static str, String)> {
    let dir = std::env::temp_dir().join(format!("sluice-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut v = vec![(
        "sqlite",
        format!("sqlite://{}?mode=rwc", dir.join("app.db").display()),
    )];
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    for (name, var) in [
        ("postgres", "SLUICE_TEST_POSTGRES_URL"),
        ("mariadb", "SLUICE_TEST_MYSQL_URL"),
    ] {
        match std::env::var(var) {
            Ok(url) => v.push((name, url)),
            Err(_) if ci => panic!("{var} must be set under CI"),
            Err(_) => eprintln!("skipped {name}: {var} is not set"),
        }
    }
    v
}
