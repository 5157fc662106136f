//! The cluster feed on Postgres: commits and events of other nodes arrive as notices, a node
//! never sees its own, and a lost listening connection is reported as `Resync`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use relay_proto::{ChannelName, Payload, Seq};
use relay_store::testing::TestDatabase;
use relay_store::{FeedItem, NewMessage, Notice, NoticeBody, PgStoreOptions, Store};
use tokio::sync::mpsc::Receiver;

async fn next(feed: &mut Receiver<FeedItem>) -> FeedItem {
    tokio::time::timeout(Duration::from_secs(10), feed.recv())
        .await
        .expect("a feed item within 10 s")
        .expect("the feed is open")
}

fn node_options(node: &str) -> PgStoreOptions {
    PgStoreOptions {
        cluster_node: Some(node.to_owned()),
        ..PgStoreOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn other_nodes_commits_and_events_arrive_and_own_ones_do_not() {
    let db = TestDatabase::create().await;
    let a = db.store_with(node_options("a")).await;
    let b = db.store_with(node_options("b")).await;
    let mut feed = a.cluster_feed("a");
    assert_eq!(
        next(&mut feed).await,
        FeedItem::Resync,
        "listening starts with a catch-up"
    );

    let channel = ChannelName::parse("chat:1").unwrap();
    a.append(NewMessage::new(
        channel.clone(),
        Payload::from_json("1").unwrap(),
    ))
    .await
    .unwrap();
    b.append(NewMessage::new(
        channel.clone(),
        Payload::from_json("2").unwrap(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next(&mut feed).await,
        FeedItem::Notice(Notice {
            node: "b".into(),
            body: NoticeBody::Commits(vec![(channel, Seq(2))]),
        }),
        "a's own commit is not reported back to it"
    );
    // The same event twice, most likely in one transaction: Postgres folds identical
    // payloads of a transaction into one, so each must still arrive.
    let notifier = b.notifier("b");
    assert!(notifier.send(r#"{"k":"x"}"#));
    assert!(notifier.send(r#"{"k":"x"}"#));
    for _ in 0..2 {
        assert_eq!(
            next(&mut feed).await,
            FeedItem::Notice(Notice {
                node: "b".into(),
                body: NoticeBody::Event(r#"{"k":"x"}"#.into()),
            })
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn a_listener_that_loses_its_connection_reports_resync_and_listens_again() {
    let db = TestDatabase::create().await;
    let a = db.store_with(node_options("a")).await;
    let b = db.store_with(node_options("b")).await;
    let mut feed = a.cluster_feed("a");
    assert_eq!(next(&mut feed).await, FeedItem::Resync);

    let mut admin = db.admin().await;
    let terminated: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(db.name())
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(terminated, [(true,)]);
    assert_eq!(
        next(&mut feed).await,
        FeedItem::Resync,
        "notifications may have been lost: the node must catch up"
    );

    let channel = ChannelName::parse("chat:2").unwrap();
    b.append(NewMessage::new(
        channel.clone(),
        Payload::from_json("1").unwrap(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next(&mut feed).await,
        FeedItem::Notice(Notice {
            node: "b".into(),
            body: NoticeBody::Commits(vec![(channel, Seq(1))]),
        }),
        "listening again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn committed_ranges_of_many_channels_come_in_one_read() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let (a, b) = (
        ChannelName::parse("chat:a").unwrap(),
        ChannelName::parse("chat:b").unwrap(),
    );
    for n in 0..5 {
        for channel in [&a, &b] {
            store
                .append(NewMessage::new(
                    channel.clone(),
                    Payload::from_json(&n.to_string()).unwrap(),
                ))
                .await
                .unwrap();
        }
    }
    let wanted = [
        relay_store::Wanted {
            channel: b.clone(),
            after: Seq(3),
            up_to: Seq(5),
        },
        relay_store::Wanted {
            channel: a.clone(),
            after: Seq(0),
            up_to: Seq(2),
        },
    ];
    let read: Vec<(String, u64)> = store
        .committed(&wanted)
        .await
        .unwrap()
        .iter()
        .map(|m| (m.channel.to_string(), m.seq.0))
        .collect();
    assert_eq!(
        read,
        [
            ("chat:a".to_owned(), 1),
            ("chat:a".to_owned(), 2),
            ("chat:b".to_owned(), 4),
            ("chat:b".to_owned(), 5)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn a_restarted_node_starts_with_nobody_online() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let ttl = Duration::from_secs(30);
    assert!(store.register_node("a", ttl).await.unwrap());
    let room = ChannelName::parse("room:1").unwrap();
    let bob = relay_proto::UserId::parse("bob").unwrap();
    store
        .replace_presence("a", &[(room.clone(), bob.clone())])
        .await
        .unwrap();
    assert!(store.register_node("b", ttl).await.unwrap());
    assert_eq!(
        store
            .online_elsewhere("b", std::slice::from_ref(&room))
            .await
            .unwrap(),
        [(room.clone(), bob, "a".to_owned())]
    );
    assert!(
        !store.register_node("a", ttl).await.unwrap(),
        "a live node's id is refused"
    );
    // Node a was killed: its row expires; a new process with its id starts clean.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db.url())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE cluster_nodes SET expires_at = now() - interval '1 second' WHERE node_id = 'a'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(
        store
            .online_elsewhere("b", std::slice::from_ref(&room))
            .await
            .unwrap()
            .is_empty(),
        "an expired node's users are not online"
    );
    assert!(store.register_node("a", ttl).await.unwrap());
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM cluster_presence")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 0, "no zombie presence after the restart");
}
