//! `cargo xtask bench cluster [--backplane postgres|nats|both] [loadgen flags]`: the speed of
//! a cluster on this machine, per backplane, in one run.
//!
//! For each backplane (both by default), each run on a fresh database, with subscribers on
//! node A and the publishers on node B of a two-node cluster (cross-node publish-to-delivery):
//! - **persistent**: 100 subscribers, 64 publisher connections sharing the rate (one
//!   connection's persistent publishes are handled one after the other), 100-byte payloads,
//!   rates 1000,5000,8000,10000,15000,20000 publishes/s;
//! - **live**: the same with live-only (ephemeral) publishes and 4 publisher connections,
//!   rates 1000,5000,10000,20000,30000: the transport's own latency, no commit in the way;
//! - **fanout**: 1,000 subscribers, live-only publishes, rates 500,1000,2000,3000,4000
//!   (deliveries/s is 1,000 times the rate).
//!
//! Then, on NATS only, **three nodes** with channels spread so that each node serves a third:
//! 100 subscribers on node i to `bench:ni`, publishers on the next node, 1,000 persistent
//! publishes/s to each channel for 5 s; the cluster traffic each node received (its metrics)
//! shows interest routing at work. Postgres `NOTIFY` sends every commit to every node by design.
//!
//! Every node runs on a one-thread runtime pinned to core 0, the generator on core 1. Needs
//! `DATABASE_URL` (the server to create the bench databases on), `psql`, and for NATS a
//! `nats-server` binary (`$NATS_SERVER`, `PATH` or `/usr/sbin`), started on a port of its own.
//! Loadgen flags given after the scenario override the defaults of both two-node runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Server, Target, Tools};

/// A database created for one run and dropped afterwards.
struct BenchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl BenchDatabase {
    fn create(admin_url: &str, suffix: &str) -> Result<Self, String> {
        let name = format!("relay_bench_{}_{suffix}", std::process::id());
        psql(admin_url, &format!("CREATE DATABASE {name}"))?;
        let (base, query) = match admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin_url, String::new()),
        };
        let base = base
            .rsplit_once('/')
            .map_or(base, |(server, _)| server)
            .to_owned();
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: format!("{base}/{name}{query}"),
            name,
        })
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) -> Result<(), String> {
    let status = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("psql failed on: {sql}"))
    }
}

/// A `nats-server` of the benchmark's own, on a free loopback port.
struct NatsServer {
    child: Child,
    url: String,
}

impl NatsServer {
    fn start() -> Result<Self, String> {
        let binary = std::env::var_os("NATS_SERVER")
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from)
            .or_else(|| {
                let path = std::env::var_os("PATH").unwrap_or_default();
                std::env::split_paths(&path)
                    .chain(["/usr/sbin", "/usr/local/bin", "/usr/bin"].map(Into::into))
                    .map(|dir| dir.join("nats-server"))
                    .find(|candidate| candidate.is_file())
            })
            .ok_or("no nats-server binary (install Debian's nats-server, or set NATS_SERVER)")?;
        let mut child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", "-1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start nats-server: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "nats-server did not report its address")?;
        Ok(Self {
            child,
            url: format!("nats://{addr}"),
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backplane {
    Postgres,
    Nats,
}

impl Backplane {
    fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Nats => "nats",
        }
    }
}

fn node_flags(
    db: &BenchDatabase,
    backplane: Backplane,
    nats: Option<&NatsServer>,
    node_id: &str,
) -> Vec<String> {
    let mut flags = vec![
        "--database-url".to_owned(),
        db.url.clone(),
        "--cluster".into(),
        backplane.name().into(),
        "--node-id".into(),
        node_id.into(),
    ];
    if let Some(nats) = nats {
        flags.extend(["--nats-url".into(), nats.url.clone()]);
    }
    flags
}

/// The best rate of a loadgen run's output, in publishes/s and deliveries/s.
fn best(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find(|l| l.contains("highest passing step"))
        .map(str::to_owned)
}

/// `GET /metrics` of a node, over a plain socket.
fn scrape(addr: &str) -> Result<String, String> {
    let mut stream =
        std::net::TcpStream::connect(addr).map_err(|e| format!("cannot scrape {addr}: {e}"))?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// The value of metric `name` (no labels) in a scrape.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

pub(crate) fn bench(flags: &[String]) -> Result<(), String> {
    let admin_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .ok_or("bench cluster needs DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres)")?;
    let mut flags = flags.to_vec();
    let backplanes = match flags.iter().position(|f| f == "--backplane") {
        Some(at) => {
            let value = flags.get(at + 1).cloned().unwrap_or_default();
            flags.drain(at..(at + 2).min(flags.len()));
            match value.as_str() {
                "postgres" => vec![Backplane::Postgres],
                "nats" => vec![Backplane::Nats],
                "both" => vec![Backplane::Postgres, Backplane::Nats],
                other => return Err(format!("--backplane {other:?}: postgres, nats or both")),
            }
        }
        None => vec![Backplane::Postgres, Backplane::Nats],
    };
    let tools = Tools::build()?;
    let defaults = |list: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        args.extend(flags.iter().cloned());
        args
    };
    let persistent = defaults(&[
        "--subscribers",
        "100",
        "--publishers",
        "64",
        "--payload",
        "100",
        "--rates",
        "1000,5000,8000,10000,15000,20000",
    ]);
    let live = defaults(&[
        "--ephemeral",
        "--subscribers",
        "100",
        "--publishers",
        "4",
        "--payload",
        "100",
        "--rates",
        "1000,5000,10000,20000,30000",
    ]);
    let ephemeral = defaults(&[
        "--ephemeral",
        "--subscribers",
        "1000",
        "--publishers",
        "4",
        "--payload",
        "100",
        "--rates",
        "500,1000,2000,3000,4000",
    ]);
    let mut summary = Vec::new();
    for backplane in &backplanes {
        for (kind, load) in [
            ("persistent", &persistent),
            ("live", &live),
            ("fanout", &ephemeral),
        ] {
            let label = format!("{}-{kind}", backplane.name());
            let db = BenchDatabase::create(&admin_url, &label.replace('-', "_"))?;
            let nats = match backplane {
                Backplane::Nats => Some(NatsServer::start()?),
                Backplane::Postgres => None,
            };
            let a = tools.start(
                Target::Relay,
                &node_flags(&db, *backplane, nats.as_ref(), "bench-a"),
            )?;
            let b = tools.start(
                Target::Relay,
                &node_flags(&db, *backplane, nats.as_ref(), "bench-b"),
            )?;
            let mut run = vec!["fanout".to_owned()];
            run.extend(a.args());
            run.extend(["--publish-addr".into(), b.addr.clone()]);
            run.extend(["--label".into(), label.clone()]);
            run.extend(load.iter().cloned());
            let result = tools.generator(&run);
            stop_all([a, b]);
            summary.push((label, best(&result?)));
        }
    }
    println!();
    for (label, line) in &summary {
        println!(
            "{label:<22} {}",
            line.clone().unwrap_or_else(|| "no passing step".into())
        );
    }
    if backplanes.contains(&Backplane::Nats) {
        interest(&tools, &admin_url)?;
    }
    Ok(())
}

/// Three NATS nodes, each serving a third of the channels: what each receives.
fn interest(tools: &Tools, admin_url: &str) -> Result<(), String> {
    const RATE: &str = "1000";
    let db = BenchDatabase::create(admin_url, "interest")?;
    let nats = NatsServer::start()?;
    let nodes: Vec<Server> = (0..3)
        .map(|i| {
            tools.start(
                Target::Relay,
                &node_flags(&db, Backplane::Nats, Some(&nats), &format!("bench-n{i}")),
            )
        })
        .collect::<Result<_, _>>()?;
    let outputs: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..3)
            .map(|i| {
                let mut run = vec!["fanout".to_owned()];
                run.extend(nodes[i].args());
                run.extend([
                    "--publish-addr".into(),
                    nodes[(i + 1) % 3].addr.clone(),
                    "--channel".into(),
                    format!("bench:n{i}"),
                    "--label".into(),
                    format!("n{i}"),
                    "--subscribers".into(),
                    "100".into(),
                    "--publishers".into(),
                    "16".into(),
                    "--rates".into(),
                    RATE.into(),
                    "--step-secs".into(),
                    "5".into(),
                ]);
                scope.spawn(move || tools.generator(&run))
            })
            .collect();
        runs.into_iter()
            .map(|run| {
                run.join()
                    .unwrap_or_else(|_| Err("generator thread panicked".into()))
            })
            .collect()
    });
    let scrapes: Vec<String> = nodes
        .iter()
        .map(|n| scrape(&n.addr))
        .collect::<Result<_, _>>()?;
    let [n0, n1, n2] = <[Server; 3]>::try_from(nodes).map_err(|_| "three nodes")?;
    stop_all([n0, n1, n2]);
    for output in outputs {
        output?;
    }
    println!();
    println!(
        "three NATS nodes, each serving one of 3 channels, {RATE} persistent publishes/s to each for 5 s:"
    );
    println!(
        "{:<6} {:>20} {:>18} {:>14}",
        "node", "cluster events in", "NATS messages in", "NATS MB in"
    );
    for (i, text) in scrapes.iter().enumerate() {
        println!(
            "{:<6} {:>20} {:>18} {:>14.2}",
            format!("n{i}"),
            metric(text, "relay_cluster_events_total"),
            metric(text, "relay_cluster_transport_messages_total"),
            metric(text, "relay_cluster_transport_bytes_total") as f64 / 1e6,
        );
    }
    println!(
        "(all channels together: 15,000 publishes; a node serving one channel should see a third)"
    );
    Ok(())
}

fn stop_all<const N: usize>(servers: [Server; N]) {
    for server in servers {
        server.stop();
    }
}
