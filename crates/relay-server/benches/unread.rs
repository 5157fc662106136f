//! `cargo xtask bench unread`: how fast one user's unread counts come back from Postgres when
//! the user is in thousands of channels, among many other users. Needs `DATABASE_URL`; runs
//! in a fresh database.
//!
//! The database gets `--users` users (default 2,000) in `--per-user` channels each (default
//! 200), plus one user in `--channels` channels (default 5,000), every channel with messages
//! and a read marker behind its latest seq: about 400,000 memberships, markers and counters
//! besides the measured user's. Then `Store::unread` for that user, a page of 1,000 and the
//! whole list (up to 10,000 a call), `--runs` times each (default 200): p50, p99 and max.
//! Then the same through `Hub::unread` (authorization included) and `Hub::mark_read`.
//!
//! Flags: `--channels N`, `--users N`, `--per-user N`, `--runs N`, `--json`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use relay_core::{Hub, HubConfig, Identity};
use relay_proto::{ChannelName, Seq, UserId};
use relay_store::Store;
use relay_store::testing::TestDatabase;

#[path = "support/timing.rs"]
mod timing;
use timing::{Timing, time};

struct Args {
    channels: usize,
    users: usize,
    per_user: usize,
    runs: usize,
    json: bool,
}

fn args() -> Args {
    let mut channels = 5_000;
    let mut users = 2_000;
    let mut per_user = 200;
    let mut runs = 200;
    let json = timing::read_flags(&mut [
        ("channels", &mut channels),
        ("users", &mut users),
        ("per-user", &mut per_user),
        ("runs", &mut runs),
    ]);
    Args {
        channels,
        users,
        per_user,
        runs,
        json,
    }
}

/// Fills the tables in bulk: channel records, memberships, counters and markers.
async fn fill(db: &TestDatabase, args: &Args) {
    // Its own connection: the store's sessions have a statement timeout.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db.url())
        .await
        .unwrap();
    for sql in [
        // The measured user: `alice`, in channels `dm:alice-0000…`.
        format!(
            "INSERT INTO channels (name, created_by)
             SELECT 'dm:alice-' || lpad(i::text, 6, '0'), 'alice' FROM generate_series(1, {}) i",
            args.channels
        ),
        "INSERT INTO members (channel, user_id, role)
         SELECT name, 'alice', 'owner' FROM channels WHERE created_by = 'alice'"
            .to_owned(),
        // Everyone else: `u0…` in `room:u0-…`.
        format!(
            "INSERT INTO channels (name, created_by)
             SELECT 'room:u' || u || '-' || lpad(i::text, 4, '0'), 'u' || u
             FROM generate_series(1, {}) u, generate_series(1, {}) i",
            args.users, args.per_user
        ),
        "INSERT INTO members (channel, user_id, role)
         SELECT name, created_by, 'owner' FROM channels WHERE created_by <> 'alice'"
            .to_owned(),
        "INSERT INTO channel_seqs (channel, last_seq)
         SELECT name, 50 + (hashtext(name) & 511) FROM channels"
            .to_owned(),
        "INSERT INTO read_markers (user_id, channel, seq)
         SELECT m.user_id, m.channel, s.last_seq - (hashtext(m.channel) & 31)
         FROM members m JOIN channel_seqs s ON s.channel = m.channel"
            .to_owned(),
        "ANALYZE".to_owned(),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
}

fn report(args: &Args, label: &str, rows: usize, timing: &Timing) {
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "unread", "run": label, "channels": rows,
                "p50_ms": timing.p50, "p99_ms": timing.p99, "max_ms": timing.max,
            })
        );
    } else {
        println!(
            "{label:<34} {rows:>8} {:>9.2} {:>9.2} {:>9.2}",
            timing.p50, timing.p99, timing.max
        );
    }
}

#[tokio::main]
async fn main() {
    let args = args();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let started = Instant::now();
    fill(&db, &args).await;
    let others = args.users * args.per_user;
    eprintln!(
        "filled: alice in {} channels, {} users in {others} more, in {:.1}s",
        args.channels,
        args.users,
        started.elapsed().as_secs_f64()
    );
    let alice = UserId::parse("alice").unwrap();
    let all = store.unread(&alice, None, 10_000).await.unwrap();
    assert_eq!(all.len(), args.channels.min(10_000));
    let unread: u64 = all.iter().map(relay_store::ReadState::unread).sum();
    if !args.json {
        println!(
            "alice: {} channels, {unread} unread messages in all",
            all.len()
        );
        println!(
            "{:<34} {:>8} {:>9} {:>9} {:>9}",
            "run", "channels", "p50 ms", "p99 ms", "max ms"
        );
    }
    let page = 1_000.min(args.channels);
    let timing = time(args.runs, || async {
        assert_eq!(store.unread(&alice, None, page).await.unwrap().len(), page);
    })
    .await;
    report(&args, "Store::unread, first page", page, &timing);
    let middle = ChannelName::parse(&format!("dm:alice-{:06}", args.channels / 2)).unwrap();
    let timing = time(args.runs, || async {
        store.unread(&alice, Some(&middle), page).await.unwrap();
    })
    .await;
    report(&args, "Store::unread, page from the middle", page, &timing);
    let whole = args.channels.min(10_000);
    let timing = time(args.runs, || async {
        assert_eq!(
            store.unread(&alice, None, whole).await.unwrap().len(),
            whole
        );
    })
    .await;
    report(&args, "Store::unread, all in one call", whole, &timing);

    let hub = Hub::new(Arc::new(store.clone()), HubConfig::default());
    let who = Identity::user(alice.clone());
    let timing = time(args.runs, || async {
        assert_eq!(hub.unread(&who, None, whole).await.unwrap().len(), whole);
    })
    .await;
    report(&args, "Hub::unread, all in one call", whole, &timing);
    let mut n = 0u64;
    let channel = ChannelName::parse("dm:alice-000001").unwrap();
    let timing = time(args.runs, || {
        n += 1;
        let (hub, who, channel) = (&hub, &who, &channel);
        async move {
            hub.mark_read(who, channel, Seq(n)).await.unwrap();
        }
    })
    .await;
    report(&args, "Hub::mark_read", 1, &timing);
}
