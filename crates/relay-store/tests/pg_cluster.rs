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
