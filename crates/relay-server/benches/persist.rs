//! `cargo xtask bench persist`: persisted publishes per second through the hub on Postgres
//! with 1, 8 and 64 concurrent publishers, group commit (`PgStore`) on a single node and in
//! cluster mode (each group commit also carries its `NOTIFY` of commit pointers), against an
//! in-repo baseline that commits one INSERT per message; then publish-to-delivery latency at
//! a paced 1,000 publishes/s. Group commit also runs with an idempotency key on every publish
//! (what relay-client sends). Needs `DATABASE_URL`; runs in a fresh database.
//!
//! Flags: `--seconds N` per run (default 3), `--json` for one JSON object per row.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use relay_core::{Hub, HubConfig, Identity, Publish};
use relay_proto::{ChannelName, ClientFrame, IdempotencyKey, Payload, Seq, ServerFrame, UserId};
use relay_store::conformance::AppendHook;
use relay_store::testing::TestDatabase;
use relay_store::{Appended, NewMessage, PgStore, PgStoreOptions, Store, StoreError, StoreResult};

/// The baseline: each append is its own transaction (bump the counter, insert, commit), the
/// way a hand-written relay would persist. Everything else delegates to `PgStore`.
struct OneInsertPerMessage {
    inner: PgStore,
}

#[async_trait]
impl AppendHook for OneInsertPerMessage {
    type Inner = PgStore;

    fn inner(&self) -> &PgStore {
        &self.inner
    }

    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        let err = |e: sqlx::Error| StoreError::Unavailable(Box::new(e));
        let mut tx = self.inner.pool().begin().await.map_err(err)?;
        let (seq,): (i64,) = sqlx::query_as(
            "INSERT INTO channel_seqs (channel, last_seq) VALUES ($1, 1)
             ON CONFLICT (channel) DO UPDATE SET last_seq = channel_seqs.last_seq + 1 RETURNING last_seq",
        )
        .bind(message.channel.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query(
            "INSERT INTO messages (channel, seq, id, from_user, event, payload, ts)
             VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7::float8 / 1000))",
        )
        .bind(message.channel.as_str())
        .bind(seq)
        .bind(message.id)
        .bind(message.from.as_ref().map(UserId::as_str))
        .bind(message.event.as_deref())
        .bind(message.payload.as_str())
        .bind(message.ts.unix_millis() as i64)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(Appended::New(message.with_seq(Seq(seq as u64))))
    }
}

struct Args {
    seconds: u64,
    json: bool,
}

fn args() -> Args {
    let mut args = Args {
        seconds: 3,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => args.seconds = it.next().and_then(|s| s.parse().ok()).unwrap_or(3),
            "--json" => args.json = true,
            _ => {} // `cargo bench` passes `--bench`.
        }
    }
    args
}

fn payload(n: u64) -> Payload {
    Payload::from_json(&format!(r#"{{"n":{n},"body":"0123456789012345678901234567890123456789012345678901234567890123456789"}}"#)).unwrap()
}

/// Publishes through the hub from `publishers` tasks for `duration`, each publish with a
/// fresh idempotency key when `keyed`; returns publishes/s.
async fn throughput(hub: &Hub, publishers: usize, duration: Duration, keyed: bool) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (hub, stop, done) = (hub.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let channel = ChannelName::parse(&format!("bench:{p}")).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut publish = Publish::new(channel.clone(), payload(n));
                if keyed {
                    publish = publish.idempotency_key(IdempotencyKey::random());
                }
                hub.publish(publish).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        task.await.unwrap();
    }
    count as f64 / elapsed.as_secs_f64()
}

/// Publishes at `rate`/s for `duration` to one channel with one in-process subscriber;
/// returns (p50, p99, max) publish-to-delivery latency in milliseconds.
async fn latency(hub: &Hub, rate: u64, duration: Duration) -> (f64, f64, f64) {
    let channel = ChannelName::parse("latency:1").unwrap();
    let subscriber = hub.connect(Identity::user(UserId::parse("reader").unwrap()));
    subscriber
        .handle(ClientFrame::Subscribe {
            id: None,
            channel: channel.clone(),
            since: None,
            mode: relay_proto::SubscribeMode::Reliable,
        })
        .await;
    let origin = Instant::now();
    let total = rate * duration.as_secs();
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total as usize);
        let mut batch = Vec::new();
        while (latencies.len() as u64) < total {
            batch.clear();
            subscriber.outbox().next_batch(&mut batch).await;
            let now = origin.elapsed().as_micros() as u64;
            for frame in &batch {
                if let Ok(ServerFrame::Message { payload, .. }) =
                    ServerFrame::decode(frame.as_bytes())
                {
                    let sent: u64 = payload.to_value::<serde_json::Value>().unwrap()["t"]
                        .as_u64()
                        .unwrap();
                    latencies.push(now.saturating_sub(sent));
                }
            }
        }
        latencies
    });
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    for _ in 0..total {
        ticker.tick().await;
        let (hub, channel) = (hub.clone(), channel.clone());
        let t = origin.elapsed().as_micros() as u64;
        inflight.spawn(async move {
            let payload = Payload::from_json(&format!(r#"{{"t":{t}}}"#)).unwrap();
            hub.publish(Publish::new(channel, payload)).await.unwrap();
        });
    }
    while inflight.join_next().await.is_some() {}
    let mut latencies = reader.await.unwrap();
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    (pick(0.5), pick(0.99), pick(1.0))
}

#[tokio::main]
async fn main() {
    let args = args();
    if std::env::var("DATABASE_URL").is_err() {
        eprintln!(
            "bench persist: set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
        );
        std::process::exit(2);
    }
    let duration = Duration::from_secs(args.seconds);
    let db = TestDatabase::create().await;
    let group: Arc<dyn Store> = Arc::new(db.store().await);
    let clustered: Arc<dyn Store> = Arc::new(
        db.store_with(PgStoreOptions {
            cluster_node: Some("bench".into()),
            ..PgStoreOptions::default()
        })
        .await,
    );
    let baseline: Arc<dyn Store> = Arc::new(OneInsertPerMessage {
        inner: db.store().await,
    });
    if !args.json {
        println!("{:<34} {:>10} {:>14}", "store", "publishers", "publishes/s");
    }
    let mut at_64 = (0.0, 0.0);
    for publishers in [1, 8, 64] {
        for (name, store, keyed) in [
            ("group commit (PgStore)", &group, false),
            ("group commit, idempotency keys", &group, true),
            ("group commit, cluster (NOTIFY)", &clustered, false),
            ("baseline: 1 INSERT/message", &baseline, false),
        ] {
            let hub = Hub::new(store.clone(), HubConfig::default());
            let rate = throughput(&hub, publishers, duration, keyed).await;
            if publishers == 64 && name.starts_with("group commit (") {
                at_64.0 = rate;
            } else if publishers == 64 && name.starts_with("group commit, cluster") {
                at_64.1 = rate;
            }
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"scenario": "persist", "store": name, "publishers": publishers, "publishes_per_sec": rate.round()})
                );
            } else {
                println!("{name:<34} {publishers:>10} {rate:>14.0}");
            }
        }
    }
    if at_64.0 > 0.0 {
        let ratio = at_64.1 / at_64.0 * 100.0;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"scenario": "persist-cluster-ratio", "publishers": 64, "percent": ratio.round()})
            );
        } else {
            println!(
                "cluster mode reaches {ratio:.0}% of single-node group commit at 64 publishers"
            );
        }
    }
    let hub = Hub::new(group.clone(), HubConfig::default());
    let (p50, p99, max) = latency(&hub, 1000, duration).await;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"scenario": "persist-latency", "rate": 1000, "p50_ms": p50, "p99_ms": p99, "max_ms": max})
        );
    } else {
        println!(
            "publish-to-delivery at 1000/s (group commit): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
        );
    }
}
