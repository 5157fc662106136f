//! The REST half: channels, members, history pages and counts.

use relay_client::HistoryPage;
use relay_proto::Seq;

use crate::support::*;

#[tokio::test]
async fn channels_members_history_and_count_over_rest() {
    let server = Server::start().await;
    let alice = server.client("alice").await;
    let rest = alice.rest().unwrap();

    let meta = serde_json::json!({"ciphertext": "AAEC"});
    let (info, created) = rest
        .create_channel("thread:9", Some(&meta), &["bob"])
        .await
        .unwrap();
    assert!(created);
    assert_eq!(
        info.meta.unwrap().to_value::<serde_json::Value>().unwrap(),
        meta
    );
    let (_, created) = rest
        .create_channel::<()>("thread:9", None, &[])
        .await
        .unwrap();
    assert!(!created, "idempotent");
    assert_eq!(
        rest.query_channels(&["thread:9", "thread:none"])
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(rest.channel("thread:none").await.unwrap().is_none());
    let members: Vec<String> = rest
        .members("thread:9")
        .await
        .unwrap()
        .iter()
        .map(|m| format!("{}:{}", m.user, m.role))
        .collect();
    assert_eq!(members, ["alice:owner", "bob:member"]);
    rest.add_member("thread:9", "carol").await.unwrap();
    rest.remove_member("thread:9", "carol").await.unwrap();
    assert_eq!(rest.my_channels(10, 0).await.unwrap().len(), 1);

    for n in 1..=5u64 {
        alice.publish("thread:9", &n).await.unwrap();
    }
    rest.post_message("thread:9", Some("ADDED"), &6u64)
        .await
        .unwrap();
    let page = rest
        .history(
            "thread:9",
            HistoryPage {
                after: Some(Seq(2)),
                limit: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let seqs: Vec<u64> = page.iter().map(|m| m.seq.unwrap().0).collect();
    assert_eq!(seqs, [3, 4, 5]);
    let newest = rest
        .history(
            "thread:9",
            HistoryPage {
                limit: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(newest.last().unwrap().event.as_deref(), Some("ADDED"));
    assert_eq!(rest.count("thread:9").await.unwrap(), 6);

    let dm = rest
        .history("dm:#alice,bob", HistoryPage::default())
        .await
        .unwrap();
    assert!(dm.is_empty(), "`#` is escaped in the path");
}
