//! The JavaScript half of `cargo xtask test`: the browser client's unit tests
//! (`clients/js/test`, node's test runner) and the browser tests (`clients/js/e2e`: the demo
//! app in headless Chromium, driven by playwright-core, against the relay-server binary that
//! `cargo test` just built).
//!
//! In CI (`RELAY_CI` set, as `.ci/run` does) everything they need is set up here and a
//! missing piece is an error: Debian's `chromium` is installed with apt-get if absent, and
//! the client's development dependencies with `npm ci`. Elsewhere a missing node or Chromium
//! skips those tests, by name, with what to install.

use std::path::{Path, PathBuf};
use std::process::Command;

const CLIENT_DIR: &str = "clients/js";

pub(crate) fn test() -> Result<(), String> {
    let ci = std::env::var_os("RELAY_CI").is_some();
    if !runs("node", &["--version"]) {
        return skip(ci, "node is not installed (Node.js 20 or later)");
    }
    run(
        Command::new("node")
            .args(["--test", "test/"])
            .current_dir(CLIENT_DIR),
        "the browser client's unit tests",
    )?;
    let chromium = chromium(ci)?;
    let Some(chromium) = chromium else {
        return skip(
            ci,
            "Chromium is not installed (Debian: apt-get install chromium; or set CHROMIUM)",
        );
    };
    if !Path::new(CLIENT_DIR)
        .join("node_modules/playwright-core")
        .is_dir()
    {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(CLIENT_DIR),
            "npm ci (the browser tests' development dependencies)",
        )?;
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let server =
        std::fs::canonicalize(Path::new(&target).join("debug/relay-server")).map_err(|e| {
            format!("no relay-server binary in {target}/debug ({e}): run cargo test first")
        })?;
    let screenshot = std::env::current_dir()
        .map_err(|e| e.to_string())?
        .join(&target)
        .join("e2e/demo.png");
    run(
        Command::new("node")
            .args(["--test", "--test-concurrency=1", "e2e/"])
            .current_dir(CLIENT_DIR)
            .env("RELAY_SERVER_BIN", server)
            .env("CHROMIUM", chromium)
            .env("RELAY_E2E_SCREENSHOT", screenshot),
        "the browser tests",
    )
}

/// Whether `program args` runs and succeeds.
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    eprintln!("xtask test: {what}");
    let status = command
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// The Chromium to test with: `CHROMIUM`, else Debian's, installed in CI if missing.
fn chromium(ci: bool) -> Result<Option<PathBuf>, String> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Ok(Some(PathBuf::from(path)));
    }
    let debian = PathBuf::from("/usr/bin/chromium");
    if debian.is_file() {
        return Ok(Some(debian));
    }
    if !ci {
        return Ok(None);
    }
    let install = || {
        run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "installing Debian's chromium",
        )
    };
    // A fresh machine may have no package lists yet.
    if install().is_err() {
        run(
            Command::new("apt-get").args(["update", "-q"]),
            "apt-get update",
        )?;
        install()?;
    }
    Ok(debian.is_file().then_some(debian))
}

fn skip(ci: bool, why: &str) -> Result<(), String> {
    if ci {
        return Err(format!("the browser tests cannot run in CI: {why}"));
    }
    eprintln!(
        "xtask test: SKIPPED the browser client's tests (clients/js/test, clients/js/e2e): {why}"
    );
    Ok(())
}
