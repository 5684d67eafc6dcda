//! The web UI in a real browser: `sluice serve` of `examples/serve` on a
//! loopback port, with an admin's and a viewer's token, driven by
//! `tests/ui/ui.cjs` (playwright-core and headless Chromium): signing in,
//! the flows, a flow's grid, the runs list (filters, a search by data, live
//! updates), a failed run's error, an incident patched and resumed, a
//! manual run through its form, a retry, the editor's diagnostics and a
//! save, a revoked token, what a viewer is not offered, a
//! phone's width and the keyboard.
//!
//! Needs Chromium (`SLUICE_CHROMIUM`, else `/usr/bin/chromium`) and
//! playwright-core (`SLUICE_PLAYWRIGHT_CORE`, else in
//! `~/.cache/sluice-test-tools`); `.ci/run` installs both. Without them the
//! test says so and passes, except under CI. `SLUICE_UI_SHOTS=DIR` keeps the
//! screenshots (docs/ui.md's come from `SLUICE_UI_SHOTS=docs/ui`).

mod common;

use common::serve::Serve;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sluice() -> Command {
    Command::new(assert_cmd::cargo::cargo_bin("sluice"))
}

fn tools() -> PathBuf {
    std::env::var_os("SLUICE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sluice-test-tools")
        })
}

/// What the browser test needs, or why it cannot run.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("SLUICE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let pw = std::env::var_os("SLUICE_PLAYWRIGHT_CORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools().join("node_modules/playwright-core"));
    if !chromium.is_file() {
        return Err(format!("no Chromium at {}", chromium.display()));
    }
    if !pw.join("package.json").is_file() {
        return Err(format!("no playwright-core at {}", pw.display()));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("no node".into());
    }
    Ok((chromium, pw))
}

fn token(dir: &Path, name: &str, role: &str) -> String {
    let out = sluice()
        .current_dir(dir)
        .args([
            "tokens", "create", name, "--role", role, "--store", "store.db",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_ui_shows_flows_and_runs_and_acts_on_them_in_a_browser() {
    let (chromium, pw) = match browser() {
        Ok(b) => b,
        Err(why) => {
            assert!(
                std::env::var("CI").is_err(),
                "the browser test cannot run under CI: {why}"
            );
            println!("ui: skipped ({why}; .ci/run installs what it needs)");
            return;
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!("sluice-ui-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let admin = token(&dir, "ada", "admin");
    let admin2 = token(&dir, "bob", "admin");
    let viewer = token(&dir, "vic", "viewer");
    // The flows are a copy: the editor writes into them.
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    for f in std::fs::read_dir(root.join("examples/serve")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, flows.join(f.file_name().unwrap())).unwrap();
    }
    let server = Serve::start(&dir);
    let url = format!("http://127.0.0.1:{}", server.port);
    let shots = match std::env::var_os("SLUICE_UI_SHOTS") {
        Some(d) => root.join(d),
        None => dir.join("shots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let revoke = format!(
        "cd '{}' && '{}' tokens revoke ada --store store.db",
        dir.display(),
        assert_cmd::cargo::cargo_bin("sluice").display()
    );
    let out = Command::new("node")
        .arg(root.join("crates/sluice/tests/ui/ui.cjs"))
        .env("SLUICE_URL", &url)
        .env("SLUICE_ADMIN_TOKEN", &admin)
        .env("SLUICE_ADMIN2_TOKEN", &admin2)
        .env("SLUICE_VIEWER_TOKEN", &viewer)
        .env("SLUICE_FLOWS", &flows)
        .env("SLUICE_REVOKE", revoke)
        .env("SLUICE_PLAYWRIGHT_CORE", &pw)
        .env("SLUICE_CHROMIUM", &chromium)
        .env("SLUICE_SHOTS", &shots)
        .output()
        .unwrap();
    drop(server);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the browser test failed (screenshot of the failure in {}):\n{said}",
        shots.display()
    );
    print!("{said}");
    let _ = std::fs::remove_dir_all(&dir);
}
