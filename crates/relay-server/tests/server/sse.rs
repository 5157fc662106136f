//! The Server-Sent Events transport: a browser whose network blocks WebSockets gets the same
//! frames, the same rights and the same recovery over `GET /sse` and `POST /sse/{id}`.

use std::time::Duration;

use relay_proto::{Seq, ServerFrame};
use serde_json::{Value, json};

use crate::support::*;

/// An SSE session as a browser's EventSource plus fetch would drive it.
struct SseClient {
    response: reqwest::Response,
    buffer: String,
    http: reqwest::Client,
    base: String,
    token: String,
    connection_id: String,
}

/// One event: its name (`None` for a frame) and its data.
type Event = (Option<String>, String);

impl SseClient {
    async fn open(server: &TestServer, token: &str) -> (Self, Event) {
        let http = reqwest::Client::new();
        let response = http
            .get(server.url(&format!("/sse?token={token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "an event stream"
        );
        let mut client = Self {
            response,
            buffer: String::new(),
            http,
            base: server.url("/sse"),
            token: token.to_owned(),
            connection_id: String::new(),
        };
        let first = client.next_event().await;
        if let (None, data) = &first
            && let ServerFrame::Welcome { connection_id, .. } =
                ServerFrame::decode(data.as_bytes()).unwrap()
        {
            client.connection_id = connection_id;
        }
        (client, first)
    }

    async fn connect(server: &TestServer, user: &str) -> Self {
        let (client, welcome) = Self::open(server, &server.token(user)).await;
        assert!(welcome.1.contains(r#""type":"welcome""#), "{welcome:?}");
        client
    }

    /// The next event within 5 s, or `None` once the stream ended.
    async fn try_next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                return Some((name, data));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.response.chunk())
                .await
                .expect("an event within 5 s")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn next_event(&mut self) -> Event {
        self.try_next_event().await.expect("the stream is open")
    }

    /// The next frame, skipping heartbeats.
    async fn recv(&mut self) -> ServerFrame {
        loop {
            match self.next_event().await {
                (None, data) => return ServerFrame::decode(data.as_bytes()).unwrap(),
                (Some(name), _) if name == "heartbeat" => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    async fn post_as(&self, token: &str, id: &str, body: &str) -> u16 {
        self.http
            .post(format!("{}/{id}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn send(&self, frames: Value) {
        let status = self
            .post_as(&self.token, &self.connection_id, &frames.to_string())
            .await;
        assert_eq!(status, 204);
    }
}

#[tokio::test]
async fn a_browser_without_websockets_chats_over_sse() {
    let server = TestServer::start().await;
    let mut alice = SseClient::connect(&server, "alice").await;
    let mut bob = server.connect("bob").await;
    bob.subscribe("room:sse").await;

    alice
        .send(json!([
            {"type": "subscribe", "id": 1, "channel": "room:sse"},
            {"type": "publish", "id": 2, "channel": "room:sse", "payload": {"text": "hi"},
             "idempotency_key": "a-1"}
        ]))
        .await;
    assert!(matches!(alice.recv().await, ServerFrame::Subscribed { .. }));
    let mut acked = false;
    while !acked {
        match alice.recv().await {
            ServerFrame::Message { seq, .. } => assert_eq!(seq, Some(Seq(1))),
            ServerFrame::Ack { seq, .. } => {
                assert_eq!(seq, Some(Seq(1)));
                acked = true;
            }
            ServerFrame::Join { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let frame = bob.recv().await;
    let frame = match frame {
        ServerFrame::Join { .. } => bob.recv().await,
        other => other,
    };
    assert!(
        matches!(&frame, ServerFrame::Message { from: Some(u), .. } if u.as_str() == "alice"),
        "{frame:?}"
    );

    // And back: bob's message reaches alice's event stream.
    bob.request(json!({"type": "publish", "channel": "room:sse", "payload": {"text": "yo"}}))
        .await;
    let frame = alice.recv().await;
    assert!(
        matches!(
            &frame,
            ServerFrame::Message {
                seq: Some(Seq(2)),
                ..
            }
        ),
        "{frame:?}"
    );

    // A malformed frame gets its error on the stream; the session goes on.
    alice
        .send(json!([{"type": "publish", "id": 9, "channel": "bad channel", "payload": 1}]))
        .await;
    assert_eq!(error_code(&alice.recv().await), Some("bad_request"));
    alice.send(json!([{"type": "ping", "id": "p"}])).await;
    assert!(matches!(alice.recv().await, ServerFrame::Pong { .. }));
}

#[tokio::test]
async fn a_new_sse_session_recovers_with_since() {
    let server = TestServer::start().await;
    let mut publisher = server.connect("carol").await;
    for n in 1..=3 {
        publisher
            .request(json!({"type": "publish", "channel": "feed:sse", "payload": n}))
            .await;
    }
    let mut alice = SseClient::connect(&server, "alice").await;
    alice
        .send(json!([{"type": "subscribe", "id": 1, "channel": "feed:sse", "since": 1}]))
        .await;
    assert!(matches!(
        alice.recv().await,
        ServerFrame::Subscribed {
            recovered: Some(true),
            ..
        }
    ));
    for expected in [2, 3] {
        let frame = alice.recv().await;
        assert!(
            matches!(frame, ServerFrame::Message { seq: Some(Seq(s)), .. } if s == expected),
            "{frame:?}"
        );
    }
}

#[tokio::test]
async fn sse_sessions_end_with_a_close_event_and_posts_are_checked() {
    let server = TestServer::start_with(|c| c.heartbeat_ms = 100).await;
    // A bad token: the stream says 4001 and ends, as a WebSocket would close.
    let (mut refused, event) = SseClient::open(&server, "not-a-token").await;
    assert_eq!(event.0.as_deref(), Some("close"));
    let close: Value = serde_json::from_str(&event.1).unwrap();
    assert_eq!(close["code"], 4001);
    assert!(refused.try_next_event().await.is_none(), "the stream ends");

    let mut alice = SseClient::connect(&server, "alice").await;
    assert_eq!(alice.next_event().await.0.as_deref(), Some("heartbeat"));
    let id = alice.connection_id.clone();
    assert_eq!(
        alice.post_as(&server.token("bob"), &id, "[]").await,
        404,
        "not bob's"
    );
    assert_eq!(alice.post_as(&alice.token, "999999", "[]").await, 404);
    assert_eq!(
        alice.post_as(&alice.token, &id, r#"{"type":"ping"}"#).await,
        400
    );
    assert_eq!(alice.post_as("bad", &id, "[]").await, 401);
    let many = serde_json::to_string(&vec![json!({"type": "ping"}); 33]).unwrap();
    assert_eq!(alice.post_as(&alice.token, &id, &many).await, 400);

    // Shutdown ends the stream with 1001.
    let mut server = server;
    server.stop().await;
    let event = loop {
        match alice.next_event().await {
            (Some(name), _) if name == "heartbeat" => continue,
            event => break event,
        }
    };
    assert_eq!(event.0.as_deref(), Some("close"));
    assert_eq!(
        serde_json::from_str::<Value>(&event.1).unwrap()["code"],
        1001
    );
    assert!(alice.try_next_event().await.is_none());
    server.serve().await;
    assert_eq!(
        alice.post_as(&alice.token, &id, "[]").await,
        404,
        "the session is gone"
    );
}

#[tokio::test]
async fn garbage_posts_count_against_the_frame_limit_and_end_the_session_with_4029() {
    let server = TestServer::start_with(|c| {
        c.rate_limits.frames = Some(relay_server::LimitConfig {
            per_second: 1,
            burst: 5,
        });
    })
    .await;
    let mut alice = SseClient::connect(&server, "alice").await;
    let id = alice.connection_id.clone();
    let mut closed = None;
    for _ in 0..200 {
        let status = alice.post_as(&alice.token, &id, "not json").await;
        if status == 404 {
            break;
        }
        assert_eq!(status, 400);
    }
    while let Some(event) = alice.try_next_event().await {
        if event.0.as_deref() == Some("close") {
            closed = Some(serde_json::from_str::<Value>(&event.1).unwrap());
            break;
        }
    }
    let closed = closed.expect("a close event");
    assert_eq!(closed["code"], 4029, "{closed}");
    // The abuse cooldown applies to SSE as to WebSockets.
    let response = reqwest::get(server.url(&format!("/sse?token={}", server.token("alice"))))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
}

#[tokio::test]
async fn a_client_that_stops_reading_its_stream_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| c.heartbeat_ms = 100).await;
    let token = server.token("sleepy");
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /sse?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    // Read up to the welcome, for the session's id.
    let mut head = Vec::new();
    let id = loop {
        let mut buf = [0u8; 4096];
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream opens");
        head.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&head);
        if let Some(start) = text.find(r#""connection_id":""#) {
            let rest = &text[start + 17..];
            if let Some(end) = rest.find('"') {
                break rest[..end].to_owned();
            }
        }
    };
    let http = reqwest::Client::new();
    let status = http
        .post(server.url(&format!("/sse/{id}")))
        .bearer_auth(&token)
        .body(json!([{"type": "subscribe", "channel": "feed:big"}]).to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    // The client reads nothing more while the channel carries far more than the socket
    // buffers hold.
    let big = relay_proto::Payload::from_value(&"x".repeat(60 * 1024)).unwrap();
    for _ in 0..120 {
        let publish = relay_core::Publish::new(
            relay_proto::ChannelName::parse("feed:big").unwrap(),
            big.clone(),
        );
        server.hub.publish(publish).await.unwrap();
    }
    // Within a few heartbeats the server gives up on the session...
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let status = http
                .post(server.url(&format!("/sse/{id}")))
                .bearer_auth(&token)
                .body("[]")
                .send()
                .await
                .unwrap()
                .status();
            if status == 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the stalled session ends");
    // ...and closes its connection: reading on drains what was buffered, then meets the end.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the server closed the stalled stream");
}
