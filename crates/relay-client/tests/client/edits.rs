//! Edits and deletes through the SDK: `Client::edit`/`delete` over the WebSocket, the
//! events arriving with their `reference`, and the REST current view.

use relay_client::HistoryPage;
use relay_proto::{ErrorCode, Revision, Seq};

use crate::support::*;

#[tokio::test]
async fn a_sender_edits_and_deletes_and_readers_see_the_revisions() {
    let server = Server::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let mut room = bob.subscribe("chat:edits").await.unwrap();

    let first = alice.publish("chat:edits", &"helo").await.unwrap();
    let first_seq = first.seq.unwrap();
    let edit = alice.edit("chat:edits", first_seq, &"hello").await.unwrap();
    assert_eq!(
        edit.seq,
        Some(Seq(2)),
        "an edit is a seq'd event of its own"
    );
    let err = bob
        .edit("chat:edits", first_seq, &"mine now")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err:?}");
    let delete = alice.delete("chat:edits", first_seq).await.unwrap();
    assert_eq!(delete.seq, Some(Seq(3)));
    let err = alice.delete("chat:edits", first_seq).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err:?}");
    let err = alice.edit("chat:edits", Seq(42), &"x").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err:?}");

    let original = next_message(&mut room).await;
    assert_eq!((original.revision(), original.reference), (None, None));
    let edited = next_message(&mut room).await;
    assert_eq!(
        (edited.revision(), edited.reference),
        (Some(Revision::Edit), Some(first_seq))
    );
    assert_eq!(edited.payload::<String>().unwrap(), "hello");
    let deleted = next_message(&mut room).await;
    assert_eq!(
        (
            deleted.revision(),
            deleted.reference,
            deleted.payload.as_str()
        ),
        (Some(Revision::Delete), Some(first_seq), "null")
    );

    // Over REST: the log keeps the events (content gone), the current view applies them.
    let second = alice.publish("chat:edits", &"second").await.unwrap();
    let rest = alice.rest().unwrap();
    rest.edit_message("chat:edits", second.seq.unwrap(), &"second, edited")
        .await
        .unwrap();
    let log = rest
        .history("chat:edits", HistoryPage::default())
        .await
        .unwrap();
    assert_eq!(log.len(), 5);
    assert_eq!(log[0].payload.as_str(), "null");
    assert_eq!(log[1].payload.as_str(), "null");
    let current = rest
        .history_current("chat:edits", HistoryPage::default())
        .await
        .unwrap();
    assert_eq!(current.len(), 2);
    assert_eq!(current[0].deleted, Some(Seq(3)));
    assert_eq!(current[1].edited, Some(Seq(5)));
    assert_eq!(
        current[1].message.payload::<String>().unwrap(),
        "second, edited"
    );
    let removed = rest
        .delete_message("chat:edits", second.seq.unwrap())
        .await
        .unwrap();
    assert_eq!((removed.seq, removed.reference), (Some(Seq(6)), second.seq));
}
