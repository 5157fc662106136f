//! `cargo xtask bench revisions`: what edits and deletes cost on Postgres with a large log.
//! Needs `DATABASE_URL`; runs in a fresh database.
//!
//! The database gets `--channels` channels (default 10) of `--messages` rows each (default
//! 100,000: a million in all), of which every tenth row edits the message five seqs before
//! it and one in a hundred deletes one. Then, on one channel, `--runs` times each (default
//! 200): the newest page of the raw log and of the current view, a page of the current view
//! from the middle, and appends of a plain message, an edit and a delete (whose scrub runs
//! in the commit), through the store and through the hub (checks included): p50, p99, max.
//!
//! Flags: `--channels N`, `--messages N`, `--runs N`, `--json`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use relay_core::{Hub, HubConfig, Publish};
use relay_proto::{ChannelName, Payload, Seq};
use relay_store::testing::TestDatabase;
use relay_store::{HistoryQuery, NewMessage, Store};

#[path = "support/timing.rs"]
mod timing;
use timing::{Timing, time};

struct Args {
    channels: usize,
    messages: usize,
    runs: usize,
    json: bool,
}

fn args() -> Args {
    let mut channels = 10;
    let mut messages = 100_000;
    let mut runs = 200;
    let json = timing::read_flags(&mut [
        ("channels", &mut channels),
        ("messages", &mut messages),
        ("runs", &mut runs),
    ]);
    Args {
        channels,
        messages,
        runs,
        json,
    }
}

/// Fills `messages` in bulk: originals, every tenth row an edit of the row five before it,
/// and at seq 100k + 3 a delete of seq 100k + 1 (whose payload is `null`, as a delete leaves
/// it).
async fn fill(db: &TestDatabase, args: &Args) {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db.url())
        .await
        .unwrap();
    let payload = r#"{"ciphertext":"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9w"}"#;
    for sql in [
        format!(
            "INSERT INTO messages (channel, seq, id, from_user, event, payload, ts, ref_seq)
             SELECT 'chat:' || c, s, gen_random_uuid(), 'u' || (s % 50),
                    CASE WHEN s % 10 = 0 THEN 'edit' WHEN s % 100 = 3 THEN 'delete' END,
                    CASE WHEN s % 100 = 1 AND s > 100 THEN 'null' ELSE '{payload}' END,
                    now(),
                    CASE WHEN s % 10 = 0 THEN s - 5 WHEN s % 100 = 3 AND s > 100 THEN s - 2 END
             FROM generate_series(1, {}) c, generate_series(1, {}) s",
            args.channels, args.messages
        ),
        // A `delete` needs its ref: the first hundred's seq 3 is an ordinary event.
        "UPDATE messages SET event = NULL WHERE event = 'delete' AND ref_seq IS NULL".to_owned(),
        format!(
            "INSERT INTO channel_seqs (channel, last_seq)
             SELECT 'chat:' || c, {} FROM generate_series(1, {}) c",
            args.messages, args.channels
        ),
        "ANALYZE".to_owned(),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
}

fn report(args: &Args, label: &str, timing: &Timing) {
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "revisions", "run": label, "rows": args.channels * args.messages,
                "p50_ms": timing.p50, "p99_ms": timing.p99, "max_ms": timing.max,
            })
        );
    } else {
        println!(
            "{label:<44} {:>9.2} {:>9.2} {:>9.2}",
            timing.p50, timing.p99, timing.max
        );
    }
}

#[tokio::main]
async fn main() {
    let args = args();
    assert!(
        args.messages >= 20 * args.runs,
        "--messages must be at least 20 × --runs (each run deletes its own message)"
    );
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let started = Instant::now();
    fill(&db, &args).await;
    eprintln!(
        "filled: {} channels of {} rows in {:.1}s",
        args.channels,
        args.messages,
        started.elapsed().as_secs_f64()
    );
    let channel = ChannelName::parse("chat:1").unwrap();
    let view = store
        .history_current(&channel, HistoryQuery::latest(50))
        .await
        .unwrap();
    assert_eq!(view.len(), 50);
    assert!(view.iter().any(|m| m.edited.is_some()));
    if !args.json {
        println!(
            "{} rows; {:<38} {:>9} {:>9} {:>9}",
            args.channels * args.messages,
            "run",
            "p50 ms",
            "p99 ms",
            "max ms"
        );
    }
    let timing = time(args.runs, || async {
        store
            .history(&channel, HistoryQuery::latest(50))
            .await
            .unwrap();
    })
    .await;
    report(&args, "history (log), newest 50", &timing);
    let timing = time(args.runs, || async {
        store
            .history_current(&channel, HistoryQuery::latest(50))
            .await
            .unwrap();
    })
    .await;
    report(&args, "history_current, newest 50", &timing);
    let middle = Seq(args.messages as u64 / 2);
    let timing = time(args.runs, || async {
        let page = store
            .history_current(&channel, HistoryQuery::after(middle, 200))
            .await
            .unwrap();
        assert_eq!(page.len(), 200);
    })
    .await;
    report(&args, "history_current, 200 from the middle", &timing);

    let payload = Payload::from_json(r#"{"ciphertext":"AAAA"}"#).unwrap();
    let timing = time(args.runs, || async {
        store
            .append(NewMessage::new(channel.clone(), payload.clone()))
            .await
            .unwrap();
    })
    .await;
    report(&args, "append, plain message", &timing);
    // Originals that have an edit: seq 10k + 5 (edited by 10k + 10), none of them deleted.
    let originals = (0..)
        .map(|k: u64| Seq(k * 10 + 5))
        .filter(|s| s.0 % 100 != 1);
    let mut targets = originals
        .take(args.runs * 2)
        .collect::<Vec<_>>()
        .into_iter();
    let timing = time(args.runs, || {
        let target = targets.next().unwrap();
        let (store, channel, payload) = (&store, &channel, &payload);
        async move {
            let edit = NewMessage {
                event: Some("edit".into()),
                reference: Some(target),
                ..NewMessage::new(channel.clone(), payload.clone())
            };
            store.append(edit).await.unwrap();
        }
    })
    .await;
    report(&args, "append, edit", &timing);
    let mut deletes = (0..)
        .map(|k: u64| Seq(k * 10 + 5))
        .filter(|s| s.0 % 100 != 1);
    let timing = time(args.runs, || {
        let target = deletes.next().unwrap();
        let (store, channel) = (&store, &channel);
        async move {
            let delete = NewMessage {
                event: Some("delete".into()),
                reference: Some(target),
                ..NewMessage::new(channel.clone(), Payload::null())
            };
            let stored = store.append(delete).await.unwrap().into_new().unwrap();
            assert_eq!(stored.reference, Some(target));
        }
    })
    .await;
    report(
        &args,
        "append, delete (scrub of message and edits)",
        &timing,
    );

    let hub = Hub::new(Arc::new(store.clone()), HubConfig::default());
    let other = ChannelName::parse("chat:2").unwrap();
    let mut hub_deletes = (0..)
        .map(|k: u64| Seq(k * 10 + 5))
        .filter(|s| s.0 % 100 != 1);
    let timing = time(args.runs, || {
        let target = hub_deletes.next().unwrap();
        let (hub, other) = (&hub, &other);
        async move {
            hub.publish(Publish::delete(other.clone(), target))
                .await
                .unwrap();
        }
    })
    .await;
    report(&args, "Hub::publish, delete (checks included)", &timing);
    let log = store
        .history(&channel, HistoryQuery::after(Seq(0), 20))
        .await
        .unwrap();
    assert!(
        log.iter().all(|m| m.seq != Seq(5) || m.payload.is_null()),
        "deleted content is gone"
    );
}
