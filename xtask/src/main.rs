//! Repository automation, in Rust instead of shell scripts.
//!
//! - `cargo xtask test`: the whole test suite (`cargo test --workspace`), the command the
//!   README documents and CI runs. Postgres tests run when `DATABASE_URL` is set, and are
//!   listed as ignored otherwise.
//! - `cargo xtask lint`: `cargo fmt --check` and `cargo clippy --all-targets -D warnings`.
//! - `cargo xtask ci`: lint, then test.
//! - `cargo xtask bench <scenario> [flags]`: benchmarks (release builds); see
//!   `docs/performance.md`. Scenarios: `persist` (needs `DATABASE_URL`).

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let result = match task {
        "test" => test(&args[1..]),
        "lint" => lint(),
        "ci" => lint().and_then(|()| test(&[])),
        "bench" => bench(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test [cargo test args]|lint|ci|bench <scenario> [--json]>"
            );
            return if task == "help" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

fn test(extra: &[String]) -> Result<(), String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            eprintln!("xtask test: Postgres tests run against DATABASE_URL")
        }
        _ => eprintln!(
            "xtask test: DATABASE_URL is not set; Postgres tests are listed as ignored.\n\
             \x20          To run them: DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo xtask test"
        ),
    }
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

fn lint() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

fn bench(args: &[String]) -> Result<(), String> {
    let Some(scenario) = args.first() else {
        return Err("name a scenario: persist".into());
    };
    let flags: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    match scenario.as_str() {
        "persist" => {
            if std::env::var("DATABASE_URL").map_or(true, |u| u.is_empty()) {
                return Err("bench persist needs DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres)".into());
            }
            let mut cargo_args = vec!["bench", "-p", "relay-server", "--bench", "persist", "--"];
            cargo_args.extend(flags);
            cargo(&cargo_args)
        }
        other => Err(format!("unknown scenario {other:?}; known: persist")),
    }
}
