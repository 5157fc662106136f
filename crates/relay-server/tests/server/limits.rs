//! A server exposed to the internet: connection caps per process, user and IP (behind trusted
//! proxies), browser origins and CORS, and handshake and request timeouts. Every refusal
//! leaves the well-behaved clients on the same server untouched.

use std::time::Duration;

use relay_proto::ServerFrame;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, http};

use crate::support::{Clients, TestServer, WsClient};

/// Opens a WebSocket with extra request headers; `Err` carries the refusal's status and
/// JSON body.
async fn upgrade(url: &str, headers: &[(&str, &str)]) -> Result<WsClient, (u16, Value)> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(WsClient { ws }),
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(e) => panic!("unexpected upgrade failure: {e}"),
    }
}

/// Connects and consumes the `welcome`.
async fn welcomed(mut client: WsClient) -> WsClient {
    assert!(matches!(client.recv().await, ServerFrame::Welcome { .. }));
    client
}

/// Retries `attempt` until it succeeds: a closed session gives its slot back when its task
/// ends, shortly after the client sees the close.
async fn eventually<T, F: std::future::Future<Output = Result<T, (u16, Value)>>>(
    mut attempt: impl FnMut() -> F,
) -> T {
    for _ in 0..200 {
        if let Ok(value) = attempt().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("still refused after 2 s");
}

/// A well-behaved pair that must keep working whatever else the test does.
async fn bystanders(server: &TestServer, channel: &str) -> (WsClient, WsClient) {
    let mut reader = server.connect("reader").await;
    reader.subscribe(channel).await;
    let mut writer = server.connect("writer").await;
    let pong = writer.request(json!({"type": "ping", "id": "hello"})).await;
    assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");
    (reader, writer)
}

async fn still_served(reader: &mut WsClient, writer: &mut WsClient, channel: &str) {
    let ack = writer
        .request(json!({"type": "publish", "id": "p", "channel": channel, "payload": "still here"}))
        .await;
    assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    let message = reader.recv().await;
    assert!(
        matches!(&message, ServerFrame::Message { payload, .. } if payload.as_str() == "\"still here\""),
        "{message:?}"
    );
}

#[tokio::test]
async fn a_user_over_the_connection_cap_is_refused_with_429_before_the_upgrade() {
    let server = TestServer::start_with(|c| c.max_connections_per_user = 2).await;
    let (mut reader, mut writer) = bystanders(&server, "room").await;
    let url = server.ws_url(&server.token("alice"));
    let first = welcomed(upgrade(&url, &[]).await.unwrap()).await;
    let _second = welcomed(upgrade(&url, &[]).await.unwrap()).await;
    let (status, body) = upgrade(&url, &[]).await.err().expect("third refused");
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_connections_per_user")
    );
    // Service tokens are not capped per user.
    let service = server.ws_url(&server.service_token("alice"));
    let _services: Vec<WsClient> = futures_util::future::join_all(
        (0..3).map(|_| async { welcomed(upgrade(&service, &[]).await.unwrap()).await }),
    )
    .await;
    // A closed session gives its slot back.
    drop(first);
    let _again = eventually(|| upgrade(&url, &[])).await;
    still_served(&mut reader, &mut writer, "room").await;
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("relay_refusals_total{reason=\"max_connections_per_user\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_process_cap_answers_503() {
    let server = TestServer::start_with(|c| c.max_connections = 2).await;
    let (mut reader, mut writer) = bystanders(&server, "room").await;
    let (status, body) = upgrade(&server.ws_url(&server.token("carol")), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "unavailable");
    still_served(&mut reader, &mut writer, "room").await;
}

#[tokio::test]
async fn the_ip_cap_reads_forwarded_addresses_only_from_trusted_proxies() {
    let server = TestServer::start_with(|c| {
        c.max_connections_per_ip = 1;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let url = |user: &str| server.ws_url(&server.token(user));
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let _a = welcomed(upgrade(&url("a1"), &from("203.0.113.1")).await.unwrap()).await;
    let (status, _) = upgrade(&url("a2"), &from("203.0.113.1"))
        .await
        .err()
        .expect("same client IP refused");
    assert_eq!(status, 429);
    // The proxy writes `X-Forwarded-For`: a `Forwarded` header is the client's own and
    // ignored (the client is the proxy's peer here); a spoofed leftmost entry is not believed.
    let forged = [
        ("forwarded", "for=203.0.113.2"),
        ("x-forwarded-for", "203.0.113.1"),
    ];
    assert_eq!(upgrade(&url("b1"), &forged).await.err().unwrap().0, 429);
    let spoofed = [("x-forwarded-for", "198.51.100.9, 203.0.113.1")];
    assert_eq!(upgrade(&url("a3"), &spoofed).await.err().unwrap().0, 429);

    // Without trusted proxies the header is ignored: every client here is 127.0.0.1.
    let direct = TestServer::start_with(|c| c.max_connections_per_ip = 1).await;
    let durl = |user: &str| direct.ws_url(&direct.token(user));
    let _one = welcomed(upgrade(&durl("x"), &from("203.0.113.5")).await.unwrap()).await;
    assert_eq!(
        upgrade(&durl("y"), &from("203.0.113.6"))
            .await
            .err()
            .unwrap()
            .0,
        429
    );
}

#[tokio::test]
async fn browsers_from_other_origins_are_refused_and_allowed_ones_get_cors() {
    let server = TestServer::start_with(|c| {
        c.allowed_origins = Some(vec![
            "https://app.example.com".into(),
            "https://*.example.org".into(),
        ]);
    })
    .await;
    let url = server.ws_url(&server.token("alice"));
    let (status, body) = upgrade(&url, &[("origin", "https://evil.test")])
        .await
        .err()
        .expect("other origin refused");
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");
    welcomed(
        upgrade(&url, &[("origin", "https://app.example.com")])
            .await
            .unwrap(),
    )
    .await;
    welcomed(
        upgrade(&url, &[("origin", "https://chat.example.org")])
            .await
            .unwrap(),
    )
    .await;
    // No Origin header: not a browser, not checked.
    welcomed(upgrade(&url, &[]).await.unwrap()).await;

    let http = reqwest::Client::new();
    let token = server.token("alice");
    let refused = http
        .get(server.url("/api/channels/room/messages"))
        .bearer_auth(&token)
        .header("origin", "https://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let allowed = http
        .get(server.url("/api/channels/room/messages"))
        .bearer_auth(&token)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(allowed.headers()["vary"], "Origin");
    let preflight = http
        .request(reqwest::Method::OPTIONS, server.url("/api/publish"))
        .header("origin", "https://chat.example.org")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let headers = preflight.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://chat.example.org"
    );
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
}

#[tokio::test]
async fn without_allowed_origins_any_origin_gets_cors() {
    let server = TestServer::start().await;
    let response = reqwest::Client::new()
        .get(server.url("/api/channels/room/messages"))
        .bearer_auth(server.token("alice"))
        .header("origin", "https://anywhere.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
}

/// Sends `request` on a raw TCP connection and reads until the server closes it (bounded);
/// returns what it read.
async fn raw_exchange(server: &TestServer, request: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut read = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut read)).await;
    assert!(ended.is_ok(), "the server did not close the connection");
    read
}

/// The code of the close frame in the bytes a server sent after its 101 response.
fn close_code(read: &[u8]) -> Option<u16> {
    let head_end = read.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut frames = &read[head_end..];
    while frames.len() >= 2 {
        let opcode = frames[0] & 0x0f;
        let (len, header) = match frames[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([frames[2], frames[3]])), 4),
            127 => return None,
            n => (usize::from(n), 2),
        };
        let payload = frames.get(header..header + len)?;
        if opcode == 8 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
        frames = &frames[header + len..];
    }
    None
}

fn upgrade_head(server: &TestServer, key: &str) -> String {
    format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
        server.token("alice"),
        server.addr
    )
}

#[tokio::test]
async fn an_invalid_websocket_key_is_refused() {
    let server = TestServer::start().await;
    for key in [
        "short",
        "dGhlIHNhbXBsZSBub25jZQ=",
        "dGhlIHNhbXBsZSBub25jZR==",
    ] {
        let head = upgrade_head(&server, key).replace("Upgrade\r\n", "Upgrade, close\r\n");
        let response = raw_exchange(&server, head.as_bytes()).await;
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 400"), "{key}: {text}");
        assert!(text.contains("Sec-WebSocket-Key"), "{text}");
    }
    // The RFC's own example key is fine.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(upgrade_head(&server, "dGhlIHNhbXBsZSBub25jZQ==").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
}

#[tokio::test]
async fn a_peer_close_with_an_invalid_code_is_answered_with_1002() {
    // Each refused close would bar the user for the abuse cooldown; not what is tested here.
    let server = TestServer::start_with(|c| c.abuse_cooldown_secs = 0).await;
    for (code, answer) in [
        (999u16, 1002),
        (1005, 1002),
        (2999, 1002),
        (1000, 1000),
        (4000, 1000),
    ] {
        let mut request = upgrade_head(&server, "dGhlIHNhbXBsZSBub25jZQ==").into_bytes();
        relay_server::frame::masked(&mut request, 8, &code.to_be_bytes(), [7, 7, 7, 7]);
        let read = raw_exchange(&server, &request).await;
        assert_eq!(close_code(&read), Some(answer), "peer close {code}");
    }
}

#[tokio::test]
async fn silent_and_trickling_clients_are_cut_off_and_others_stay() {
    let server = TestServer::start_with(|c| {
        c.handshake_timeout_ms = 300;
        c.request_timeout_ms = 300;
    })
    .await;
    let (mut reader, mut writer) = bystanders(&server, "room").await;

    // Upgraded, then never a frame (not even the pong to the early ping): closed with 4002.
    let read = raw_exchange(
        &server,
        upgrade_head(&server, "dGhlIHNhbXBsZSBub25jZQ==").as_bytes(),
    )
    .await;
    assert_eq!(close_code(&read), Some(4002));

    // A request head that never ends: dropped.
    let read = raw_exchange(&server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    let text = String::from_utf8_lossy(&read);
    assert!(
        read.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    // A body that trickles: 408.
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"chan",
        server.service_token("svc")
    );
    let read = raw_exchange(&server, head.as_bytes()).await;
    let text = String::from_utf8_lossy(&read);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // The well-behaved clients answered the early pings and are still here.
    still_served(&mut reader, &mut writer, "room").await;
}

fn limit(per_second: u32, burst: u32) -> Option<relay_server::LimitConfig> {
    Some(relay_server::LimitConfig { per_second, burst })
}

#[tokio::test]
async fn a_publisher_over_its_rate_gets_rate_limited_then_4029_and_others_are_unaffected() {
    let server = TestServer::start_with(|c| {
        c.rate_limits.publish = limit(1, 3);
        c.rate_limit_close_multiple = 2;
    })
    .await;
    let (mut reader, mut writer) = bystanders(&server, "room").await;
    let mut flooder = server.connect("flooder").await;
    let publish = |i: usize| json!({"type": "publish", "id": format!("f{i}"), "channel": "room", "payload": i});
    for i in 0..3 {
        let ack = flooder.request(publish(i)).await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
        assert!(matches!(reader.recv().await, ServerFrame::Message { .. }));
    }
    let refused = flooder.request(publish(3)).await;
    assert!(
        matches!(&refused, ServerFrame::Error { id: Some(id), code: relay_proto::ErrorCode::RateLimited, .. } if *id == relay_proto::FrameId::Text("f3".into())),
        "{refused:?}"
    );
    // Refused means nothing happened: the next message the reader gets is the bystander's.
    still_served(&mut reader, &mut writer, "room").await;
    // Keeping on past twice the rate closes the connection.
    for i in 4..20 {
        if flooder.ws_send(publish(i)).await.is_err() {
            break;
        }
    }
    let close = flooder.recv_close().await;
    assert_eq!(u16::from(close.code), 4029, "{close:?}");
    // Reconnecting does not refill the buckets: the user waits out the abuse cooldown.
    let again = server.ws_url(&server.token("flooder"));
    let (status, body) = eventually_refused(&again).await;
    assert_eq!(status, 429);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("closed for abuse"),
        "{body}"
    );
    still_served(&mut reader, &mut writer, "room").await;
}

/// The refusal of an upgrade to `url`, once the session before it has ended (its end is what
/// starts a cooldown, shortly after the client saw the close).
async fn eventually_refused(url: &str) -> (u16, Value) {
    for _ in 0..200 {
        if let Err(refusal) = upgrade(url, &[]).await {
            return refusal;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never refused");
}

#[tokio::test]
async fn namespaces_and_service_tokens_have_their_own_frame_limits() {
    let server = TestServer::start_with(|c| {
        c.rate_limits.publish = limit(1, 1);
        c.namespaces.insert(
            "typing".into(),
            relay_server::PolicyConfig {
                rate_limits: Some(relay_server::FrameLimitsConfig {
                    publish: limit(100, 50),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    })
    .await;
    let mut alice = server.connect("alice").await;
    let publish = |channel: &str, i: usize| json!({"type": "publish", "id": format!("p{i}"), "channel": channel, "payload": i, "ephemeral": true});
    // Keystroke-rate typing indicators pass in their own namespace...
    for i in 0..30 {
        let ack = alice.request(publish("typing:room", i)).await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    }
    // ...and do not use up the default bucket.
    assert!(matches!(
        alice.request(publish("room", 0)).await,
        ServerFrame::Ack { .. }
    ));
    let refused = alice.request(publish("room", 1)).await;
    assert!(
        matches!(
            refused,
            ServerFrame::Error {
                code: relay_proto::ErrorCode::RateLimited,
                ..
            }
        ),
        "{refused:?}"
    );
    // A backend with a service token is not held to user limits.
    let mut backend = WsClient::connect(&server.ws_url(&server.service_token("feed"))).await;
    assert!(matches!(backend.recv().await, ServerFrame::Welcome { .. }));
    for i in 0..50 {
        let ack = backend.request(publish("room", i)).await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    }
}

#[tokio::test]
async fn rest_is_rate_limited_per_user_with_retry_after() {
    let server = TestServer::start_with(|c| c.rate_limits.rest = limit(1, 2)).await;
    let http = reqwest::Client::new();
    let get = |token: String| {
        let request = http
            .get(server.url("/api/channels/room/messages"))
            .bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    for _ in 0..2 {
        assert_eq!(get(server.token("alice")).await.status(), 200);
    }
    let refused = get(server.token("alice")).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Other users and services have their own buckets.
    assert_eq!(get(server.token("bob")).await.status(), 200);
    for _ in 0..5 {
        assert_eq!(get(server.service_token("backend")).await.status(), 200);
    }
}

#[tokio::test]
async fn an_address_sending_bad_tokens_is_refused_before_its_tokens_are_read() {
    let server = TestServer::start_with(|c| {
        c.auth_failure_limit = relay_server::LimitConfig {
            per_second: 1,
            burst: 3,
        };
    })
    .await;
    let (mut reader, mut writer) = bystanders(&server, "room").await;
    let http = reqwest::Client::new();
    let get = |token: &str| {
        let request = http
            .get(server.url("/api/channels/room/messages"))
            .bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for _ in 0..3 {
        assert_eq!(get("not-a-token").await, 401);
    }
    assert_eq!(get("not-a-token").await, 429);
    // While the address is refused, upgrades from it are too (before any token check).
    let (status, _) = upgrade(&server.ws_url("bad"), &[]).await.err().unwrap();
    assert_eq!(status, 429);
    // Connections already open are not affected.
    still_served(&mut reader, &mut writer, "room").await;
}

#[tokio::test]
async fn an_address_reconnecting_in_a_loop_is_refused_before_the_upgrade() {
    let server = TestServer::start_with(|c| {
        c.connect_rate_limit = relay_server::LimitConfig {
            per_second: 1,
            burst: 3,
        };
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let url = server.ws_url(&server.token("looper"));
    let from = [("x-forwarded-for", "203.0.113.9")];
    for _ in 0..3 {
        welcomed(upgrade(&url, &from).await.unwrap()).await;
    }
    let (status, body) = upgrade(&url, &from).await.err().expect("refused");
    assert_eq!(status, 429);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("new connections")
    );
    // Another address, and services, are not held back.
    welcomed(
        upgrade(&url, &[("x-forwarded-for", "203.0.113.10")])
            .await
            .unwrap(),
    )
    .await;
    let service = server.ws_url(&server.service_token("backend"));
    welcomed(upgrade(&service, &from).await.unwrap()).await;
}

#[tokio::test]
async fn garbage_counts_against_the_frame_limit_and_a_flood_of_it_is_closed_with_4029() {
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start_with(|c| c.rate_limits.frames = limit(1, 5)).await;
    let (mut reader, mut writer) = bystanders(&server, "room").await;
    let mut garbage = server.connect("garbage").await;
    for _ in 0..5 {
        garbage.send_raw(Message::Text("not json".into())).await;
        let reply = garbage.recv().await;
        assert!(
            matches!(
                reply,
                ServerFrame::Error {
                    code: relay_proto::ErrorCode::BadRequest,
                    ..
                }
            ),
            "{reply:?}"
        );
    }
    garbage
        .send_raw(Message::Binary(vec![1, 2, 3].into()))
        .await;
    let reply = garbage.recv().await;
    assert!(
        matches!(
            reply,
            ServerFrame::Error {
                code: relay_proto::ErrorCode::RateLimited,
                ..
            }
        ),
        "{reply:?}"
    );
    for _ in 0..10 {
        if garbage.ws_send(json!("more")).await.is_err() {
            break;
        }
    }
    assert_eq!(u16::from(garbage.recv_close().await.code), 4029);
    still_served(&mut reader, &mut writer, "room").await;
}

#[tokio::test]
async fn replays_are_bounded_in_bytes_channel_records_are_counted_and_the_memory_store_trims() {
    let mut config = TestServer::config(|c| {
        c.max_replay_bytes = 4_000;
        c.max_channels_per_user = 1;
        c.memory_max_history = 5;
    });
    let store = std::sync::Arc::new(relay_store::MemoryStore::with_retention(
        config.memory_retention(),
    ));
    config.listen = "127.0.0.1:0".parse().unwrap();
    let hub = relay_core::Hub::new(store, config.hub_config());
    let server = TestServer::start_with_hub(hub, config).await;
    let mut writer = server.connect("writer").await;
    for i in 0..5 {
        let payload = format!("{i:0>1000}");
        let ack = writer
            .request(json!({"type": "publish", "id": i, "channel": "room", "payload": payload}))
            .await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    }
    // Five ~1.2 KB messages: over a 4,000-byte replay allowance, so not recovered.
    let mut late = server.connect("late").await;
    let reply = late
        .request(json!({"type": "subscribe", "channel": "room", "since": 0}))
        .await;
    assert!(
        matches!(
            reply,
            ServerFrame::Subscribed {
                recovered: Some(false),
                ..
            }
        ),
        "{reply:?}"
    );
    // Two fit.
    let mut recent = server.connect("recent").await;
    let reply = recent
        .request(json!({"type": "subscribe", "channel": "room", "since": 3}))
        .await;
    assert!(
        matches!(
            reply,
            ServerFrame::Subscribed {
                recovered: Some(true),
                ..
            }
        ),
        "{reply:?}"
    );
    for expected in [4, 5] {
        let message = recent.recv().await;
        assert!(
            matches!(message, ServerFrame::Message { seq: Some(seq), .. } if seq.0 == expected),
            "{message:?}"
        );
    }

    // The memory store keeps the newest `memory_max_history` per channel.
    for i in 5..8 {
        writer
            .request(json!({"type": "publish", "id": i, "channel": "room", "payload": i}))
            .await;
    }
    let http = server.http(&server.token("writer"));
    let (status, body) = http.get("/api/channels/room/messages?limit=100").await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 5, 6, 7, 8]);

    // One channel record per user here.
    let (status, _) = http
        .post("/api/channels", json!({"name": "thread:a"}))
        .await;
    assert_eq!(status, 201);
    let (status, body) = http
        .post("/api/channels", json!({"name": "thread:b"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("quota"));
    let (status, _) = http
        .post("/api/channels", json!({"name": "thread:a"}))
        .await;
    assert_eq!(status, 200, "recreating an existing record is not counted");
}
