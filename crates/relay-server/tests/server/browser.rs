//! What the server hands to browsers: the client module at `/client/relay.js`, cached by
//! ETag, and with `--demo` the demo app and its development tokens (loopback clients only).

use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn the_client_module_is_served_with_an_etag() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let response = http
        .get(server.url("/client/relay.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["access-control-allow-origin"], "*");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    let body = response.text().await.unwrap();
    assert!(body.contains("export class RelayClient"), "the module");

    // A browser holding this version revalidates and gets 304, no body.
    let again = http
        .get(server.url("/client/relay.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.text().await.unwrap().is_empty());
    let stale = http
        .get(server.url("/client/relay.js"))
        .header("if-none-match", "\"0000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    // A proxy that compressed it sends the tag back weak: still the same version.
    let weak = http
        .get(server.url("/client/relay.js"))
        .header("if-none-match", format!("W/{etag}"))
        .send()
        .await
        .unwrap();
    assert_eq!(weak.status(), 304);

    let types = http
        .get(server.url("/client/relay.d.ts"))
        .send()
        .await
        .unwrap();
    assert_eq!(types.status(), 200);
    assert!(types.text().await.unwrap().contains("RelayClient"));

    // Without --demo there is no demo.
    for path in ["/", "/demo.js"] {
        let response = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let token = http
        .post(server.url("/demo/token"))
        .json(&json!({"name": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 404);
}

#[tokio::test]
async fn the_demo_hands_out_tokens_to_loopback_clients_only() {
    let server = TestServer::start_with(|c| {
        c.demo = true;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let http = reqwest::Client::new();
    let page = http.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().contains("/demo.js"));
    for (path, kind) in [("/demo.css", "text/css"), ("/demo.js", "text/javascript")] {
        let response = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
    }

    let ask = |name: Value, forwarded: Option<&'static str>| {
        let mut request = http
            .post(server.url("/demo/token"))
            .json(&json!({"name": name}));
        if let Some(ip) = forwarded {
            request = request.header("x-forwarded-for", ip);
        }
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = ask(json!("alice"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], "alice");
    // The token works, and the demo namespace shows presence.
    let token = body["token"].as_str().unwrap();
    let mut alice = WsClient::connect(&server.ws_url(token)).await;
    assert!(matches!(
        alice.recv().await,
        relay_proto::ServerFrame::Welcome { .. }
    ));
    let presence = alice
        .request(json!({"type": "presence", "channel": "demo:lobby"}))
        .await;
    assert!(
        matches!(presence, relay_proto::ServerFrame::Presence { .. }),
        "{presence:?}"
    );

    for bad in [json!(""), json!("a b"), json!("x".repeat(33)), json!(7)] {
        let (status, body) = ask(bad.clone(), None).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) gets none.
    let rebound = http
        .post(server.url("/demo/token"))
        .header("host", "evil.example:8080")
        .json(&json!({"name": "mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    // A client elsewhere on the network (behind the trusted proxy) gets none.
    let (status, body) = ask(json!("mallory"), Some("203.0.113.9")).await;
    assert_eq!(status, 403, "{body}");
}
