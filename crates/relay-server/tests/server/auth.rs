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
        secret: Some("a-different-secret-entirely".into()),
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
