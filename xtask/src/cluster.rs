//! `cargo xtask bench cluster`: the cost and speed of a cluster on Postgres, on this machine.
//!
//! Three fan-out runs with the same load generator, each on a fresh database: subscribers on
//! node A and the publisher on node B of a two-node cluster (cross-node publish-to-delivery);
//! the same on one node in cluster mode; and one node without a cluster. Every node runs
//! pinned to core 0 on a one-thread runtime, the generator on core 1. Needs `DATABASE_URL`
//! (the server to create the bench databases on) and `psql`. Defaults: 100 subscribers, 16
//! publisher connections sharing the rate (one connection's persistent publishes are handled
//! one after the other), 100-byte payloads, rates 1000,2000,5000,10000 publishes/s; any loadgen
//! flag overrides them.

use std::process::{Command, Stdio};

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

fn node_flags(db: &BenchDatabase, node_id: Option<&str>) -> Vec<String> {
    let mut flags = vec!["--database-url".to_owned(), db.url.clone()];
    if let Some(id) = node_id {
        flags.extend([
            "--cluster".into(),
            "postgres".into(),
            "--node-id".into(),
            id.into(),
        ]);
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

pub(crate) fn bench(flags: &[String]) -> Result<(), String> {
    let admin_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .ok_or("bench cluster needs DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres)")?;
    let tools = Tools::build()?;
    let mut load: Vec<String> = [
        "--subscribers",
        "100",
        "--publishers",
        "16",
        "--payload",
        "100",
        "--rates",
        "1000,2000,5000,10000",
    ]
    .map(str::to_owned)
    .to_vec();
    load.extend(flags.iter().cloned());
    let mut summary = Vec::new();

    // 1. Two nodes: subscribers on A, the publisher on B.
    {
        let db = BenchDatabase::create(&admin_url, "cross")?;
        let a = tools.start(Target::Relay, &node_flags(&db, Some("bench-a")))?;
        let b = tools.start(Target::Relay, &node_flags(&db, Some("bench-b")))?;
        let mut run = vec!["fanout".to_owned()];
        run.extend(a.args());
        run.extend(["--publish-addr".into(), b.addr.clone()]);
        run.extend(["--label".into(), "cross-node".into()]);
        run.extend(load.iter().cloned());
        let result = tools.generator(&run);
        stop_all([a, b]);
        summary.push(("two nodes, cross-node", best(&result?)));
    }
    // 2. One node in cluster mode, 3. one node alone: the cost of cluster mode.
    for (label, node_id, suffix) in [
        ("one node, cluster mode", Some("bench-solo"), "solo"),
        ("one node, single", None, "single"),
    ] {
        let db = BenchDatabase::create(&admin_url, suffix)?;
        let node = tools.start(Target::Relay, &node_flags(&db, node_id))?;
        let mut run = vec!["fanout".to_owned()];
        run.extend(node.args());
        run.extend(["--label".into(), suffix.into()]);
        run.extend(load.iter().cloned());
        let result = tools.generator(&run);
        node.stop();
        summary.push((label, best(&result?)));
    }
    println!();
    for (label, line) in summary {
        println!(
            "{label:<24} {}",
            line.unwrap_or_else(|| "no passing step".into())
        );
    }
    Ok(())
}

fn stop_all<const N: usize>(servers: [Server; N]) {
    for server in servers {
        server.stop();
    }
}
