//! Repository automation, in Rust instead of shell scripts.
//!
//! - `cargo xtask test`: the whole test suite (`cargo test --workspace`, then the browser
//!   client's unit tests and the browser tests in headless Chromium; see `browser.rs`), the
//!   command the README documents and CI runs. Postgres tests run when `DATABASE_URL` is
//!   set, and are listed as ignored otherwise.
//! - `cargo xtask lint`: `cargo fmt --check` and `cargo clippy --all-targets -D warnings`.
//! - `cargo xtask ci`: lint, then test.
//! - `cargo xtask bench <scenario> [flags]`: benchmarks (release builds); see
//!   `docs/performance.md`. Scenarios: `fanout`, `baseline`, `compare` (both, and the
//!   ratio), `idle`, `persist` (needs `DATABASE_URL`), `cluster [--backplane postgres|nats|both]` (needs
//!   `DATABASE_URL`, `psql`, and `nats-server` for NATS), `unread` and `revisions` (need `DATABASE_URL`),
//!   `latest` (a reader ten times slower than the publisher, `latest` against `reliable`),
//!   `micro` (criterion, no sockets). The server runs pinned to core 0 on a one-thread
//!   runtime, the load generator on core 1.
//! - `cargo xtask fuzz [--cases N]`: the fuzz targets with N generated inputs each (1M).
//! - `cargo xtask autobahn [--cases 1.*,2.*]`: the Autobahn|Testsuite conformance run; see
//!   `autobahn.rs`.

#![allow(clippy::print_stdout)] // A command-line tool: its output is the point.

mod autobahn;
mod browser;
mod cluster;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let result = match task {
        "test" => test(&args[1..]),
        "lint" => lint(),
        "ci" => lint().and_then(|()| test(&[])),
        "bench" => bench(&args[1..]),
        "fuzz" => fuzz(&args[1..]),
        "autobahn" => autobahn::run(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test [cargo test args]|lint|ci|bench <scenario> [--json]|fuzz [--cases N]|autobahn [--cases LIST]>"
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
    cargo(&args)?;
    if extra.is_empty() {
        browser::test()?;
    }
    Ok(())
}

/// The fuzz targets of `crates/relay-server/tests/fuzz.rs` in release mode, 1,000,000 cases
/// each unless `--cases N` says otherwise (the test suite runs them briefly).
fn fuzz(args: &[String]) -> Result<(), String> {
    let cases = flag_value(args, "--cases").unwrap_or_else(|| "1000000".into());
    if cases.parse::<u64>().is_err() {
        return Err(format!("--cases {cases:?} is not a number"));
    }
    eprintln!("xtask fuzz: {cases} cases per target");
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo_bin)
        .args([
            "test",
            "--release",
            "-p",
            "relay-server",
            "--test",
            "fuzz",
            "--",
            "--test-threads",
            "2",
        ])
        .env("RELAY_FUZZ_CASES", &cases)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("a fuzz target failed".into())
    }
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

const BENCH_SECRET: &str = "xtask-bench-secret-0123456789-abcdef";

/// The configuration every benchmarked relay runs with: the defaults, except the caps a
/// load generator on one loopback address would trip by design (thousands of connections
/// from one IP and one process). Rate limits stay at their defaults.
const BENCH_CONFIG: &str = "\
# Written by `cargo xtask bench`: one load generator opens every connection from 127.0.0.1.
max_connections = 0
max_connections_per_ip = 0
max_connections_per_user = 0
connect_rate_limit = { per_second = 0, burst = 0 }
";

/// The abuse benchmark runs with every limit at its default: well-behaved clients and
/// abusers each come from their own loopback addresses, as they would from their own hosts.
const ABUSE_CONFIG: &str = "# Written by `cargo xtask bench abuse`: the defaults.\n";

/// Writes a bench configuration to a file the server reads with `--config`.
fn bench_config(name: &str, text: &str) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!("relay-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// A `relay-server` benchmark of the same name that runs against Postgres.
fn database_bench(name: &str, flags: &[String]) -> Result<(), String> {
    if std::env::var("DATABASE_URL").map_or(true, |u| u.is_empty()) {
        return Err(format!(
            "bench {name} needs DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres)"
        ));
    }
    let mut cargo_args = vec!["bench", "-p", "relay-server", "--bench", name, "--"];
    cargo_args.extend(flags.iter().map(String::as_str));
    cargo(&cargo_args)
}

fn bench(args: &[String]) -> Result<(), String> {
    let Some(scenario) = args.first() else {
        return Err(
            "name a scenario: fanout | baseline | compare | idle | abuse | latest | persist | cluster | unread | revisions | micro"
                .into(),
        );
    };
    let flags: Vec<String> = args[1..].to_vec();
    match scenario.as_str() {
        name @ ("persist" | "unread" | "revisions") => database_bench(name, &flags),
        "micro" => {
            let mut cargo_args = vec!["bench", "-p", "relay-core", "--bench", "hub", "--"];
            cargo_args.extend(flags.iter().map(String::as_str));
            cargo(&cargo_args)
        }
        "cluster" => cluster::bench(&flags),
        "fanout" => {
            let tools = Tools::build()?;
            tools.fanout(Target::Relay, &flags).map(|_| ())
        }
        "baseline" => {
            let tools = Tools::build()?;
            tools.fanout(Target::Baseline, &flags).map(|_| ())
        }
        "compare" => {
            // The machine is shared: alternate the two relays `--repeat` times and compare
            // medians, so that one noisy run does not decide.
            let repeat: usize = flag_value(&flags, "--repeat")
                .and_then(|r| r.parse().ok())
                .unwrap_or(1)
                .max(1);
            let flags = without_flag(&flags, "--repeat");
            let tools = Tools::build()?;
            let (mut ours, mut reference) = (Vec::new(), Vec::new());
            for _ in 0..repeat {
                ours.push(tools.fanout(Target::Relay, &flags)?.unwrap_or(0.0));
                reference.push(tools.fanout(Target::Baseline, &flags)?.unwrap_or(0.0));
            }
            let (ours, reference) = (median(&mut ours), median(&mut reference));
            if reference > 0.0 {
                println!(
                    "relay reaches {:.0}% of the baseline relay (median of {repeat}: {ours:.0} vs {reference:.0} deliveries/s)",
                    ours / reference * 100.0
                );
            } else {
                println!("no ratio: the baseline had no passing step");
            }
            Ok(())
        }
        "abuse" => {
            let tools = Tools::build()?;
            let server = tools.start_configured(Target::Relay, ("abuse", ABUSE_CONFIG), &[])?;
            let mut run = vec!["abuse".to_owned()];
            run.extend(server.args());
            run.extend(flags.iter().cloned());
            let result = tools.generator(&run);
            server.stop();
            result.map(|_| ())
        }
        "latest" => {
            let tools = Tools::build()?;
            let server = tools.start(Target::Relay, &[])?;
            let mut run = vec!["latest".to_owned()];
            run.extend(server.args());
            run.extend(flags.iter().cloned());
            let result = tools.generator(&run);
            server.stop();
            result.map(|_| ())
        }
        "idle" => {
            let tools = Tools::build()?;
            let counts =
                flag_value(&flags, "--connections").unwrap_or_else(|| "10000,19000".into());
            let rest = without_flag(&flags, "--connections");
            for count in counts.split(',') {
                let server = tools.start(Target::Relay, &[])?;
                let mut run = vec!["idle".to_owned(), "--connections".into(), count.into()];
                run.extend(server.args());
                run.extend(rest.iter().cloned());
                let result = tools.generator(&run);
                server.stop();
                result?;
            }
            Ok(())
        }
        other => Err(format!(
            "unknown scenario {other:?}; known: fanout baseline compare idle abuse latest persist cluster unread revisions micro"
        )),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn flag_value(flags: &[String], name: &str) -> Option<String> {
    flags
        .iter()
        .position(|f| f == name)
        .and_then(|i| flags.get(i + 1))
        .cloned()
}

fn without_flag(flags: &[String], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for f in flags {
        if skip {
            skip = false;
        } else if f == name {
            skip = true;
        } else {
            out.push(f.clone());
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Relay,
    Baseline,
}

struct Tools {
    server: String,
    loadgen: String,
    pin: bool,
}

struct Server {
    child: Child,
    addr: String,
    target: Target,
}

impl Server {
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--addr".into(),
            self.addr.clone(),
            "--server-pid".into(),
            self.child.id().to_string(),
        ];
        if self.target == Target::Relay {
            args.extend(["--secret".into(), BENCH_SECRET.into()]);
        } else {
            args.extend(["--label".into(), "baseline".into()]);
        }
        args
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Tools {
    /// Builds the release server and the load generator; finds their executables.
    fn build() -> Result<Self, String> {
        cargo(&[
            "build",
            "--release",
            "-p",
            "relay-server",
            "--bin",
            "relay-server",
        ])?;
        let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = Command::new(cargo_bin)
            .args([
                "bench",
                "-p",
                "relay-server",
                "--bench",
                "loadgen",
                "--no-run",
                "--message-format=json",
            ])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot build the load generator: {e}"))?;
        if !output.status.success() {
            return Err("building the load generator failed".into());
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let loadgen = stdout
            .lines()
            .filter(|l| l.contains("\"name\":\"loadgen\""))
            .find_map(|l| {
                let at = l.find("\"executable\":\"")? + "\"executable\":\"".len();
                Some(l[at..].split('"').next()?.to_owned())
            })
            .ok_or("cannot find the load generator executable")?;
        let target_dir = std::path::Path::new(&loadgen)
            .ancestors()
            .nth(2)
            .ok_or("unexpected target layout")?
            .to_path_buf();
        let server = target_dir
            .join("relay-server")
            .to_string_lossy()
            .into_owned();
        let pin = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !pin {
            eprintln!("xtask bench: taskset not found; server and generator run unpinned");
        }
        Ok(Self {
            server,
            loadgen,
            pin,
        })
    }

    fn command(&self, core: &str, program: &str) -> Command {
        if self.pin {
            let mut command = Command::new("taskset");
            command.args(["-c", core, program]);
            command
        } else {
            Command::new(program)
        }
    }

    /// Starts the server under test on core 0 (with `extra` flags for the relay) and waits for
    /// its address.
    fn start(&self, target: Target, extra: &[String]) -> Result<Server, String> {
        self.start_configured(target, ("bench", BENCH_CONFIG), extra)
    }

    /// Like [`start`](Self::start), with a configuration file of `(name, text)`.
    fn start_configured(
        &self,
        target: Target,
        config: (&str, &str),
        extra: &[String],
    ) -> Result<Server, String> {
        let mut command = match target {
            Target::Relay => {
                let mut c = self.command("0", &self.server);
                c.args([
                    "--listen",
                    "127.0.0.1:0",
                    "--worker-threads",
                    "1",
                    "--log-format",
                    "json",
                    "--jwt-secret",
                    BENCH_SECRET,
                    "--config",
                    &bench_config(config.0, config.1)?,
                ])
                .args(extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
                c
            }
            Target::Baseline => {
                let mut c = self.command("0", &self.loadgen);
                c.args(["baseline-server", "--listen", "127.0.0.1:0"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit());
                c
            }
        };
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let lines: Box<dyn BufRead + Send> = match target {
            Target::Relay => Box::new(BufReader::new(child.stderr.take().ok_or("no stderr")?)),
            Target::Baseline => Box::new(BufReader::new(child.stdout.take().ok_or("no stdout")?)),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                let addr = if let Some(rest) = line.strip_prefix("listening ") {
                    Some(rest.trim().to_owned())
                } else if line.contains("\"message\":\"listening\"") {
                    line.split("\"addr\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .map(str::to_owned)
                } else {
                    None
                };
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "the server did not report its address")?;
        Ok(Server {
            child,
            addr,
            target,
        })
    }

    /// Runs the generator on core 1, echoing its output; returns its output.
    fn generator(&self, args: &[String]) -> Result<String, String> {
        let output = self
            .command("1", &self.loadgen)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run the load generator: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        print!("{stdout}");
        if output.status.success() {
            Ok(stdout)
        } else {
            Err("the load generator failed".into())
        }
    }

    /// One fan-out run against a fresh server; the highest passing deliveries/s.
    fn fanout(&self, target: Target, flags: &[String]) -> Result<Option<f64>, String> {
        let server = self.start(target, &[])?;
        let mut run = vec!["fanout".to_owned()];
        run.extend(server.args());
        run.extend(flags.iter().cloned());
        let result = self.generator(&run);
        server.stop();
        let stdout = result?;
        Ok(stdout.lines().find_map(|l| {
            if let Some(at) = l.find("\"best_deliveries_per_sec\":") {
                return l[at + 26..].trim_end_matches('}').trim().parse().ok();
            }
            let (_, rest) = l.split_once(" publishes/s = ")?;
            rest.split_whitespace().next()?.parse().ok()
        }))
    }
}
