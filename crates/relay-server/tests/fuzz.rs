//! Fuzzing on stable Rust, driven by proptest: the decoders (client frames, channel names,
//! user ids, tokens), the REST API in process (methods, paths, query strings, bodies), the
//! connection state machine (sequences of valid and invalid frames through the hub), and a
//! socket-level fuzzer that sends random bytes and frame sequences to a running server while a
//! well-behaved client must keep being served.
//!
//! `RELAY_FUZZ_CASES` sets the cases per target: a short run by default (CI), and
//! `cargo xtask fuzz` runs 1,000,000 per target in release mode.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng};
use relay_core::{FrameLimits, Hub, HubConfig, HubStats, Identity};
use relay_proto::{ChannelName, ClientFrame, UserId};
use relay_server::testing::{TEST_SECRET, TestServer};
use relay_server::{App, Authenticator, Claims, LimitConfig};
use relay_store::MemoryStore;

/// Cases per target: `RELAY_FUZZ_CASES`, else a short run.
fn cases() -> u32 {
    std::env::var("RELAY_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2_000)
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    RUNTIME.with(|runtime| runtime.block_on(future))
}

/// Channel names: mostly a few real ones (so that frames meet each other), sometimes
/// anything.
fn channel_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["room", "chat:1", "dm:#alice,bob", "typing:x", "list:9"])
            .prop_map(str::to_owned),
        1 => ".{0,40}",
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,24}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Client frames shaped like the protocol's, with random and missing fields.
fn frame_json() -> impl Strategy<Value = serde_json::Value> {
    let kind = prop::sample::select(vec![
        "subscribe",
        "unsubscribe",
        "publish",
        "signal",
        "presence",
        "ping",
        "nonsense",
    ]);
    (
        kind,
        channel_text(),
        prop::option::of(json_value()),
        prop::option::of(any::<i64>()),
        prop::option::of(prop::sample::select(vec!["alice", "bob", "", "x y"])),
        any::<bool>(),
        prop::option::of(json_value()),
    )
        .prop_map(|(kind, channel, payload, since, to, ephemeral, id)| {
            let mut frame = serde_json::json!({"type": kind, "channel": channel});
            let object = frame.as_object_mut().unwrap();
            if let Some(payload) = payload {
                object.insert("payload".into(), payload);
            }
            if let Some(since) = since {
                object.insert("since".into(), since.into());
            }
            if let Some(to) = to {
                object.insert("to".into(), to.into());
            }
            if ephemeral {
                object.insert("ephemeral".into(), true.into());
            }
            if let Some(id) = id {
                object.insert("id".into(), id);
            }
            frame
        })
}

/// The text of one client frame: protocol-shaped JSON, any JSON, or any bytes.
fn frame_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => frame_json().prop_map(|f| f.to_string().into_bytes()),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

fn authenticator() -> Authenticator {
    Authenticator::from_config(&relay_server::AuthConfig {
        secret: Some(TEST_SECRET.into()),
        ..Default::default()
    })
    .unwrap()
}

fn unlimited() -> HubConfig {
    HubConfig {
        user_limits: FrameLimits::UNLIMITED,
        ..HubConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_frame_decoding_never_panics(text in frame_text()) {
        if let Ok(frame) = ClientFrame::decode(&text) {
            // What decodes names a valid channel.
            if let Some(channel) = frame.channel() {
                prop_assert!(ChannelName::parse(channel.as_str()).is_ok());
            }
        }
    }

    #[test]
    fn names_are_validated_without_panicking(text in ".{0,300}", bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        for candidate in [text.as_str(), &String::from_utf8_lossy(&bytes)] {
            if let Ok(name) = ChannelName::parse(candidate) {
                prop_assert_eq!(name.as_str(), candidate);
            }
            let _ = UserId::parse(candidate);
        }
    }

    #[test]
    fn tokens_are_refused_unless_intact(flip in any::<prop::sample::Index>(), byte in any::<u8>(), junk in ".{0,200}") {
        let auth = authenticator();
        let token = auth.mint(&Claims::new("alice", Duration::from_secs(60))).unwrap();
        prop_assert!(auth.verify(&token).is_ok());
        let mut mutated = token.clone().into_bytes();
        let at = flip.index(mutated.len());
        mutated[at] = byte;
        if let Ok(mutated) = String::from_utf8(mutated)
            && mutated != token
            && auth.verify(&mutated).is_ok()
        {
            // Only a change that decodes to the same bytes can pass: the last character of a
            // base64url segment may carry unused bits.
            let last_of_segment = at + 1 == token.len() || token.as_bytes()[at + 1] == b'.';
            prop_assert!(last_of_segment, "{} verified after a change at {}", mutated, at);
        }
        prop_assert!(auth.verify(&junk).is_err());
    }

    #[test]
    fn rest_requests_get_a_status_and_json_errors(
        method in prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS]),
        segments in prop::collection::vec(prop_oneof![
            prop::sample::select(vec!["api", "channels", "publish", "members", "messages", "query", "room", "dm:%23alice,bob", "alice", "%ZZ", ""]).prop_map(str::to_owned),
            "[a-z:%#,.]{0,12}",
        ], 0..6),
        query in prop::option::of("[a-z=&%0-9]{0,40}"),
        body in prop_oneof![frame_json().prop_map(|f| f.to_string()), ".{0,64}"],
        authenticated in any::<bool>(),
    ) {
        let auth = authenticator();
        let mut config = TestServer::config(|c| {
            c.rate_limits.rest = Some(LimitConfig { per_second: 0, burst: 0 });
            c.auth_failure_limit = LimitConfig { per_second: 0, burst: 0 };
        });
        config.max_channels_per_user = 0;
        let hub = Hub::new(Arc::new(MemoryStore::new()), unlimited());
        let app = App::new(config, hub, auth.clone());
        let mut uri = format!("/{}", segments.join("/"));
        if let Some(query) = query {
            uri.push('?');
            uri.push_str(&query);
        }
        let Ok(request) = Request::builder().method(method).uri(&uri) .header(
            "authorization",
            if authenticated { format!("Bearer {}", auth.mint(&Claims::new("alice", Duration::from_secs(60))).unwrap()) } else { "Bearer nope".into() },
        ).body(http_body_util::Full::new(Bytes::from(body))) else {
            return Ok(());
        };
        let response = block_on(app.handle(request));
        let status = response.status();
        prop_assert!(status.as_u16() >= 200 && status.as_u16() < 600);
        if status.is_client_error() || status.is_server_error() {
            prop_assert_ne!(status.as_u16(), 500, "no internal errors from bad input: {}", uri);
            let body = block_on(http_body_util::BodyExt::collect(response.into_body())).unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            prop_assert!(json["error"]["code"].is_string());
        }
    }

    #[test]
    fn connections_survive_any_frame_sequence_and_leave_nothing_behind(
        alice_frames in prop::collection::vec(frame_text(), 0..24),
        bob_frames in prop::collection::vec(frame_text(), 0..24),
    ) {
        let hub = Hub::new(Arc::new(MemoryStore::new()), unlimited());
        block_on(async {
            let alice = hub.connect(Identity::user(UserId::parse("alice").unwrap()));
            let bob = hub.connect(Identity::user(UserId::parse("bob").unwrap()));
            let mut drained = Vec::new();
            for (a, b) in alice_frames.iter().zip(bob_frames.iter().chain(std::iter::repeat(&Vec::new()))) {
                alice.handle_text(a).await;
                bob.handle_text(b).await;
                alice.outbox().try_drain(&mut drained);
                bob.outbox().try_drain(&mut drained);
                drained.clear();
            }
        });
        let stats = hub.stats();
        prop_assert_eq!(stats, HubStats::default());
    }
}

/// Sends random bytes, random frames (masked and not, valid and truncated) and random
/// protocol sequences to a running server, while a well-behaved pair keeps publishing and
/// receiving: the server never falls over and always serves them.
#[test]
fn socket_fuzz_never_stops_a_well_behaved_client() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Message;

    let rounds = (cases() / 100).clamp(20, 10_000);
    block_on(async {
        let server = TestServer::start_with(|c| {
            c.handshake_timeout_ms = 1_000;
            c.abuse_cooldown_secs = 0;
            c.connect_rate_limit = LimitConfig {
                per_second: 0,
                burst: 0,
            };
            c.auth_failure_limit = LimitConfig {
                per_second: 0,
                burst: 0,
            };
        })
        .await;
        let (mut reader, _) =
            tokio_tungstenite::connect_async(server.ws_url(&server.token("reader")))
                .await
                .unwrap();
        // A backend (service token): it publishes on every tenth round, faster than a user
        // may at a million cases.
        let (mut writer, _) =
            tokio_tungstenite::connect_async(server.ws_url(&server.service_token("writer")))
                .await
                .unwrap();
        reader
            .send(Message::Text(
                r#"{"type":"subscribe","channel":"room"}"#.into(),
            ))
            .await
            .unwrap();
        let mut rng = TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha);
        let mut frames =
            proptest::test_runner::TestRunner::new_with_rng(Config::default(), rng.clone());
        let texts = frame_text();
        let mut next_text = || texts.new_tree(&mut frames).unwrap().current();
        for round in 0..rounds {
            let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
            let upgrade = format!(
                "GET /ws?token={} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                server.token(&format!("fuzz{round}"))
            );
            let mut bytes = Vec::new();
            match rng.random_range(0..4u8) {
                // Raw garbage instead of HTTP.
                0 => bytes.extend((0..rng.random_range(1..512)).map(|_| rng.random::<u8>())),
                // An upgrade, then garbage.
                1 => {
                    bytes.extend(upgrade.as_bytes());
                    bytes.extend((0..rng.random_range(1..512)).map(|_| rng.random::<u8>()));
                }
                // An upgrade, then frames with random opcodes, masks and lengths.
                2 => {
                    bytes.extend(upgrade.as_bytes());
                    for _ in 0..rng.random_range(1..8) {
                        let payload = next_text();
                        let opcode = rng.random_range(0..16u8);
                        let fin = if rng.random::<bool>() { 0x80 } else { 0 };
                        bytes.push(fin | opcode);
                        let masked = rng.random::<bool>();
                        let len = payload.len().min(125) as u8;
                        bytes.push(if masked { 0x80 | len } else { len });
                        if masked {
                            bytes.extend([0, 0, 0, 0]);
                        }
                        bytes.extend(&payload[..usize::from(len)]);
                    }
                }
                // An upgrade, then well-formed text frames of random content.
                _ => {
                    bytes.extend(upgrade.as_bytes());
                    for _ in 0..rng.random_range(1..16) {
                        let payload = next_text();
                        relay_server::frame::masked(&mut bytes, 1, &payload, [1, 2, 3, 4]);
                    }
                }
            }
            if rng.random_range(0..4u8) == 0 {
                // Cut the connection mid-way.
                let cut = rng.random_range(0..bytes.len());
                bytes.truncate(cut);
            }
            let _ = tcp.write_all(&bytes).await;
            drop(tcp);

            if round % 10 == 0 {
                let body = format!(r#"{{"type":"publish","channel":"room","payload":{round}}}"#);
                writer.send(Message::Text(body.into())).await.unwrap();
                loop {
                    let message = tokio::time::timeout(Duration::from_secs(10), reader.next())
                        .await
                        .expect("the reader is still served")
                        .expect("the reader is still connected")
                        .unwrap();
                    // Fuzzers publish to the channel too: wait for the writer's message.
                    if let Message::Text(text) = message
                        && text.contains("\"message\"")
                        && text.contains("\"from\":\"writer\"")
                    {
                        assert!(text.contains(&format!("\"payload\":{round}")), "{text}");
                        break;
                    }
                }
            }
        }
        let health = reqwest::get(server.url("/healthz")).await.unwrap();
        assert_eq!(health.status(), 200);
    });
}
