//! Tokens on `/ws` (4001) and REST (401).

use std::time::Duration;

use relay_proto::ServerFrame;
use relay_server::Claims;

use crate::support::*;

async fn close_code(server: &TestServer, url: &str) -> u16 {
    let _ = server;
    let mut client = WsClient::connect(url).await;
    u16::from(client.recv_close().await.code)
}

#[tokio::test]
async fn a_valid_token_gets_welcome() {
    let server = TestServer::start().await;
    let mut client = WsClient::connect(&server.ws_url(&server.token("alice"))).await;
    let frame = client.recv().await;
    assert!(
        matches!(frame, ServerFrame::Welcome { ref user, heartbeat_ms, .. } if user.as_str() == "alice" && heartbeat_ms > 0)
    );
}

#[tokio::test]
async fn bearer_header_works_for_non_browser_clients() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::start().await;
    let mut request = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    let bearer = format!("Bearer {}", server.token("alice"));
    request
        .headers_mut()
        .insert("authorization", bearer.parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    let mut client = WsClient { ws };
    assert!(matches!(client.recv().await, ServerFrame::Welcome { .. }));
}

#[tokio::test]
async fn missing_bad_expired_and_alg_none_tokens_are_closed_with_4001() {
    let server = TestServer::start().await;
    assert_eq!(
        close_code(&server, &format!("ws://{}/ws", server.addr)).await,
        4001
    );

    let forged = relay_server::Authenticator::from_config(&relay_server::AuthConfig {
        secret: Some("a-different-secret-entirely-0123456789".into()),
        ..Default::default()
    })
    .unwrap()
    .mint(&Claims::new("alice", Duration::from_secs(60)))
    .unwrap();
    assert_eq!(close_code(&server, &server.ws_url(&forged)).await, 4001);

    let expired = Claims {
        exp: 1_000_000,
        ..Claims::new("alice", Duration::ZERO)
    };
    assert_eq!(
        close_code(&server, &server.ws_url(&server.mint(expired))).await,
        4001
    );

    // {"alg":"none"} . {"sub":"alice","exp":9999999999} . (empty signature)
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    assert_eq!(close_code(&server, &server.ws_url(none)).await, 4001);
}

#[tokio::test]
async fn rest_answers_401_with_a_json_error() {
    let server = TestServer::start().await;
    let (status, body) = server.http("not-a-token").get("/api/channels").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let response = reqwest::get(server.url("/api/channels")).await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn probes_and_metrics_need_no_token() {
    let server = TestServer::start().await;
    assert_eq!(
        reqwest::get(server.url("/healthz")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(server.url("/readyz")).await.unwrap().status(),
        200
    );
    let _alice = server.connect("alice").await;
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("relay_connections 1"), "{metrics}");
    assert!(
        metrics.contains("relay_publish_latency_seconds_bucket"),
        "{metrics}"
    );
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn sign(algorithm: jsonwebtoken::Algorithm, private_pem: &str, user: &str) -> String {
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    let key = match algorithm {
        jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let claims = Claims::new(user, Duration::from_secs(60));
    jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims, &key).unwrap()
}

#[tokio::test]
async fn public_key_algorithms_accept_their_tokens_and_refuse_hs256() {
    for (algorithm, jwt_algorithm, public, private) in [
        (
            jsonwebtoken::Algorithm::ES256,
            relay_server::JwtAlgorithm::Es256,
            "es256-public.pem",
            "es256-private.pk8.pem",
        ),
        (
            jsonwebtoken::Algorithm::RS256,
            relay_server::JwtAlgorithm::Rs256,
            "rs256-public.pem",
            "rs256-private.pem",
        ),
    ] {
        let mut server = TestServer::start_with(|config| {
            config.auth.algorithm = jwt_algorithm;
            config.auth.public_key_file = Some(fixture(public));
        })
        .await;
        let mut client =
            WsClient::connect(&server.ws_url(&sign(algorithm, private, "alice"))).await;
        assert!(
            matches!(client.recv().await, ServerFrame::Welcome { .. }),
            "{algorithm:?}"
        );

        // An HS256 token signed with the public key as the secret: the classic confusion attack.
        let public_pem = std::fs::read(fixture(public)).unwrap();
        let confused = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &Claims::new("mallory", Duration::from_secs(60)),
            &jsonwebtoken::EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        assert_eq!(
            close_code(&server, &server.ws_url(&confused)).await,
            4001,
            "{algorithm:?}"
        );
        server.stop().await;
    }
}

fn sign_with_kid(algorithm: jsonwebtoken::Algorithm, private_pem: &str, kid: &str) -> String {
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    let key = match algorithm {
        jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = Some(kid.into());
    let claims = Claims::new("alice", Duration::from_secs(60));
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

async fn welcomed(url: &str) -> bool {
    let mut client = WsClient::connect(url).await;
    matches!(client.try_recv().await, Some(ServerFrame::Welcome { .. }))
}

#[tokio::test]
async fn a_jwks_file_selects_keys_by_kid() {
    let server = TestServer::start_with(|config| {
        config.auth.secret = None;
        config.auth.jwks_file = Some(fixture("jwks-es256-rs256.json"));
    })
    .await;
    let es = sign_with_kid(
        jsonwebtoken::Algorithm::ES256,
        "es256-private.pk8.pem",
        "test-es256",
    );
    let rs = sign_with_kid(
        jsonwebtoken::Algorithm::RS256,
        "rs256-private.pem",
        "test-rs256",
    );
    assert!(welcomed(&server.ws_url(&es)).await);
    assert!(welcomed(&server.ws_url(&rs)).await);
    // The RSA key's token under the EC key's kid: the key decides the algorithm.
    let swapped = sign_with_kid(
        jsonwebtoken::Algorithm::RS256,
        "rs256-private.pem",
        "test-es256",
    );
    assert_eq!(close_code(&server, &server.ws_url(&swapped)).await, 4001);
    let unknown = sign_with_kid(
        jsonwebtoken::Algorithm::ES256,
        "es256-private.pk8.pem",
        "other",
    );
    assert_eq!(close_code(&server, &server.ws_url(&unknown)).await, 4001);
    // An HS256 token "signed" with a public key's JSON: no symmetric key comes from a JWKS.
    let jwks = std::fs::read(fixture("jwks-es256-rs256.json")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("test-es256".into());
    let confused = jsonwebtoken::encode(
        &header,
        &Claims::new("mallory", Duration::from_secs(60)),
        &jsonwebtoken::EncodingKey::from_secret(&jwks),
    )
    .unwrap();
    assert_eq!(close_code(&server, &server.ws_url(&confused)).await, 4001);
}

/// A JWKS endpoint on loopback serving `doc`, counting fetches.
struct JwksServer {
    url: String,
    doc: std::sync::Arc<parking_lot::Mutex<Vec<u8>>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    async fn start(fixture_name: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let doc = std::sync::Arc::new(parking_lot::Mutex::new(
            std::fs::read(fixture(fixture_name)).unwrap(),
        ));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (doc.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let body = served.lock().clone();
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tcp.write_all(response.as_bytes()).await;
                    let _ = tcp.write_all(&body).await;
                });
            }
        });
        Self { url, doc, fetches }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_and_refreshed_on_an_unknown_kid_at_a_bounded_rate() {
    let jwks = JwksServer::start("jwks-es256.json").await;
    let server = TestServer::start_with(|config| {
        config.auth.secret = None;
        config.auth.jwks_url = Some(jwks.url.clone());
        config.auth.jwks_refresh_secs = 1;
    })
    .await;
    let es = sign_with_kid(
        jsonwebtoken::Algorithm::ES256,
        "es256-private.pk8.pem",
        "test-es256",
    );
    assert!(welcomed(&server.ws_url(&es)).await);
    let after_first = jwks.fetches();
    assert!((1..=2).contains(&after_first), "{after_first}");

    // The provider rotates in a new key; a flood of tokens with unknown kids costs at most a
    // refresh per interval, however many arrive.
    *jwks.doc.lock() = std::fs::read(fixture("jwks-es256-rs256.json")).unwrap();
    let unknown = sign_with_kid(
        jsonwebtoken::Algorithm::ES256,
        "es256-private.pk8.pem",
        "nope",
    );
    for _ in 0..10 {
        assert_eq!(close_code(&server, &server.ws_url(&unknown)).await, 4001);
    }
    assert!(jwks.fetches() <= after_first + 2, "{}", jwks.fetches());

    // The new key is picked up within the refresh interval.
    let rs = sign_with_kid(
        jsonwebtoken::Algorithm::RS256,
        "rs256-private.pem",
        "test-rs256",
    );
    let mut accepted = false;
    for _ in 0..40 {
        if welcomed(&server.ws_url(&rs)).await {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the rotated key was never fetched");
}

#[tokio::test]
async fn readyz_tells_anonymous_callers_only_ready_or_not() {
    // A JWKS URL that serves nothing: no keys, so not ready.
    let server = TestServer::start_with(|config| {
        config.auth.secret = None;
        config.auth.jwks_url = Some("http://127.0.0.1:9/jwks.json".into());
    })
    .await;
    let response = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "unready"}));

    let ready = TestServer::start().await;
    let response = reqwest::get(ready.url("/readyz")).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[test]
fn the_development_secret_is_refused_off_loopback() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_relay-server"))
        .args(["--listen", "0.0.0.0:0"])
        .env_remove("RELAY_JWT_SECRET")
        .env_remove("RELAY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
}
