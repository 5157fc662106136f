//! `cargo xtask autobahn`: the Autobahn|Testsuite fuzzing client against the server's
//! WebSocket code, through the `autobahn-echo` binary (feature `autobahn`: the real reader
//! and writer of a session, echoing every message).
//!
//! Sets up what it needs on a fresh machine: Python 2.7 (pyenv's 2.7.18, installed with
//! `pyenv install` if pyenv has none; or `RELAY_PYTHON2`) and the `autobahntestsuite` package,
//! installed with pip into `target/autobahn/site`. The reports go to `target/autobahn/reports`
//! (`index.html` for people); the summary is printed as a Markdown table. Fails if any case
//! FAILED.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The cases run unless `--cases` says otherwise: every group RFC 6455 behaviour covers
/// (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close handling, limits and
/// performance, auto-fragmentation) and permessage-deflate (12), which the server does not
/// negotiate, so those cases report UNIMPLEMENTED.
const DEFAULT_CASES: &str = "1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.*";
const PYTHON_VERSION: &str = "2.7.18";

pub(crate) fn run(flags: &[String]) -> Result<(), String> {
    let cases = crate::flag_value(flags, "--cases").unwrap_or_else(|| DEFAULT_CASES.into());
    let dir = PathBuf::from("target/autobahn");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let python = python2()?;
    let site = dir.join("site");
    if !site.join("autobahntestsuite").is_dir() {
        eprintln!(
            "xtask autobahn: installing autobahntestsuite into {}",
            site.display()
        );
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "--target",
            ])
            .arg(&site)
            .arg("autobahntestsuite")
            .status()
            .map_err(|e| format!("cannot run pip: {e}"))?;
        if !status.success() {
            return Err("pip could not install autobahntestsuite".into());
        }
    }
    crate::cargo(&[
        "build",
        "--release",
        "-p",
        "relay-server",
        "--features",
        "autobahn",
        "--bin",
        "autobahn-echo",
    ])?;
    let mut echo = Command::new("target/release/autobahn-echo")
        .arg("0")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start autobahn-echo: {e}"))?;
    let result = (|| {
        let stdout = echo.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("autobahn-echo: {e}"))?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("autobahn-echo said {line:?}"))?
            .to_owned();
        fuzz(&python, &dir, &addr, &cases)
    })();
    let _ = echo.kill();
    let _ = echo.wait();
    let outcomes = result?;
    summarize(&outcomes)
}

/// Python 2.7: `RELAY_PYTHON2`, else pyenv's 2.7.18 (installed if pyenv lacks it).
fn python2() -> Result<PathBuf, String> {
    if let Ok(python) = std::env::var("RELAY_PYTHON2") {
        return Ok(PathBuf::from(python));
    }
    let root = std::env::var("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".pyenv")))
        .map_err(|_| "neither PYENV_ROOT nor HOME is set; set RELAY_PYTHON2")?;
    let python = root
        .join("versions")
        .join(PYTHON_VERSION)
        .join("bin/python");
    if python.is_file() {
        return Ok(python);
    }
    eprintln!("xtask autobahn: installing Python {PYTHON_VERSION} with pyenv");
    let installed = Command::new("pyenv")
        .args(["install", "-s", PYTHON_VERSION])
        .status()
        .map_err(|e| {
            format!(
                "Python {PYTHON_VERSION} is missing and pyenv cannot run ({e}); set RELAY_PYTHON2"
            )
        })?;
    if installed.success() && python.is_file() {
        Ok(python)
    } else {
        Err(format!("`pyenv install {PYTHON_VERSION}` failed"))
    }
}

/// One case's outcome: its behaviour and the close behaviour.
struct Outcome {
    behavior: String,
    close: String,
}

/// Runs the fuzzing client against `ws://addr/echo` and reads its `index.json`.
fn fuzz(
    python: &Path,
    dir: &Path,
    addr: &str,
    cases: &str,
) -> Result<BTreeMap<String, Outcome>, String> {
    let reports = dir.join("reports");
    let _ = std::fs::remove_dir_all(&reports);
    let spec = serde_json::json!({
        "outdir": "./reports",
        "servers": [{"agent": "relay", "url": format!("ws://{addr}/echo")}],
        "cases": cases.split(',').map(str::trim).collect::<Vec<_>>(),
        "exclude-cases": [],
        "exclude-agent-cases": {},
    });
    std::fs::write(dir.join("fuzzingclient.json"), spec.to_string())
        .map_err(|e| format!("cannot write the spec: {e}"))?;
    eprintln!("xtask autobahn: running cases {cases} against ws://{addr}/echo");
    // `addsitedir`, not PYTHONPATH: it reads the .pth files of namespace packages (zope).
    let status = Command::new(python)
        .current_dir(dir)
        .args([
            "-c",
            "import site, sys; site.addsitedir('site'); \
             sys.argv = ['wstest', '-m', 'fuzzingclient', '-s', 'fuzzingclient.json']; \
             from autobahntestsuite.wstest import run; run()",
        ])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run wstest: {e}"))?;
    if !status.success() {
        return Err(format!("wstest failed ({status})"));
    }
    let index = std::fs::read_to_string(reports.join("index.json"))
        .map_err(|e| format!("no report: {e}"))?;
    let index: serde_json::Value =
        serde_json::from_str(&index).map_err(|e| format!("unreadable report: {e}"))?;
    let cases = index["relay"]
        .as_object()
        .ok_or("no results for the agent")?;
    Ok(cases
        .iter()
        .map(|(id, case)| {
            let text = |field: &str| case[field].as_str().unwrap_or("?").to_owned();
            (
                id.clone(),
                Outcome {
                    behavior: text("behavior"),
                    close: text("behaviorClose"),
                },
            )
        })
        .collect())
}

/// Case ids sort numerically ("2.10" after "2.9").
fn case_key(id: &str) -> Vec<u32> {
    id.split('.')
        .map(|n| n.parse().unwrap_or(u32::MAX))
        .collect()
}

const BEHAVIORS: [&str; 5] = [
    "OK",
    "NON-STRICT",
    "INFORMATIONAL",
    "UNIMPLEMENTED",
    "FAILED",
];

fn summarize(outcomes: &BTreeMap<String, Outcome>) -> Result<(), String> {
    let mut groups: BTreeMap<u32, BTreeMap<&str, usize>> = BTreeMap::new();
    let mut notable = Vec::new();
    for (id, outcome) in outcomes {
        let group = case_key(id).first().copied().unwrap_or(u32::MAX);
        *groups
            .entry(group)
            .or_default()
            .entry(outcome.behavior.as_str())
            .or_default() += 1;
        if !matches!(
            outcome.behavior.as_str(),
            "OK" | "INFORMATIONAL" | "UNIMPLEMENTED"
        ) {
            notable.push((case_key(id), id, outcome));
        }
    }
    println!("| Cases | {} |", BEHAVIORS.join(" | "));
    println!("|---|{}", "---:|".repeat(BEHAVIORS.len()));
    let mut failed = 0;
    for (group, counts) in &groups {
        let cells: Vec<String> = BEHAVIORS
            .iter()
            .map(|b| counts.get(b).copied().unwrap_or(0).to_string())
            .collect();
        failed += counts.get("FAILED").copied().unwrap_or(0);
        println!("| {group}.* | {} |", cells.join(" | "));
    }
    notable.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, id, outcome) in notable {
        println!("{id}: {} (close: {})", outcome.behavior, outcome.close);
    }
    println!("reports: target/autobahn/reports/index.html");
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} cases FAILED"))
    }
}
