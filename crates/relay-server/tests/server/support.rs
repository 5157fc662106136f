//! The in-process server (`relay_server::testing`), and the raw WebSocket and HTTP clients
//! these tests drive it with.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use relay_proto::ServerFrame;
use relay_server::{Authenticator, Claims};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use relay_server::testing::TEST_SECRET as SECRET;
pub use relay_server::testing::TestServer;

/// The clients these tests speak to a [`TestServer`] with.
pub trait Clients {
    /// Connects as `user` and consumes the `welcome` frame.
    async fn connect(&self, user: &str) -> WsClient;
    /// An HTTP client sending `token`.
    fn http(&self, token: &str) -> Http;
}

impl Clients for TestServer {
    async fn connect(&self, user: &str) -> WsClient {
        let mut client = WsClient::connect(&self.ws_url(&self.token(user))).await;
        let welcome = client.recv().await;
        assert!(
            matches!(welcome, ServerFrame::Welcome { .. }),
            "{welcome:?}"
        );
        client
    }

    fn http(&self, token: &str) -> Http {
        Http {
            client: reqwest::Client::new(),
            base: format!("http://{}", self.addr),
            token: token.to_owned(),
        }
    }
}

pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self { ws }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    /// Sends a frame; an error once the server is gone.
    pub async fn ws_send(
        &mut self,
        frame: Value,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::Text(frame.to_string().into())).await
    }

    /// The next protocol frame, or `None` once the connection is gone.
    pub async fn try_recv(&mut self) -> Option<ServerFrame> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .ok()??
            {
                Ok(Message::Text(text)) => return ServerFrame::decode(text.as_bytes()).ok(),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                _ => return None,
            }
        }
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    /// The next protocol frame (pings and pongs skipped), within 5 s.
    pub async fn recv(&mut self) -> ServerFrame {
        loop {
            match self.next_message().await {
                Message::Text(text) => return ServerFrame::decode(text.as_bytes()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads what the server sent until the connection ends (within 10 s): true when it
    /// ended with a 4008 close or a reset, false when it is still open.
    pub async fn is_dropped_by_the_server(&mut self) -> bool {
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        return frame.is_some_and(|f| u16::from(f.code) == 4008);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return true,
                }
            }
        })
        .await;
        ended.unwrap_or(false)
    }

    /// Waits for the server's close frame (frames before it are skipped), within 5 s.
    pub async fn recv_close(&mut self) -> CloseFrame {
        loop {
            match self.next_message().await {
                Message::Close(Some(frame)) => return frame,
                Message::Close(None) => panic!("close without a code"),
                _ => continue,
            }
        }
    }

    async fn next_message(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(5), self.ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the connection is open")
            .expect("a valid frame")
    }

    /// Sends a request frame and returns the next frame.
    pub async fn request(&mut self, frame: Value) -> ServerFrame {
        self.send(frame).await;
        self.recv().await
    }

    pub async fn subscribe(&mut self, channel: &str) -> ServerFrame {
        self.request(serde_json::json!({"type": "subscribe", "channel": channel}))
            .await
    }

    /// Proves nothing else is queued: a ping's pong is the very next frame.
    pub async fn expect_nothing_pending(&mut self) {
        let frame = self
            .request(serde_json::json!({"type": "ping", "id": "sync"}))
            .await;
        assert!(
            matches!(frame, ServerFrame::Pong { .. }),
            "unexpected frame {frame:?}"
        );
    }
}

pub struct Http {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Http {
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.client.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn put(&self, path: &str) -> (u16, Value) {
        self.send(self.client.put(format!("{}{path}", self.base)))
            .await
    }

    pub async fn put_json(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.client.put(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.client.delete(format!("{}{path}", self.base)))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(
            self.client
                .patch(format!("{}{path}", self.base))
                .json(&body),
        )
        .await
    }

    /// A DELETE with an `Idempotency-Key` header: status, whether the answer was marked
    /// `Idempotent-Replayed`, body.
    pub async fn delete_keyed(&self, path: &str, key: &str) -> (u16, bool, Value) {
        self.send_keyed(self.client.delete(format!("{}{path}", self.base)), key)
            .await
    }

    /// A POST with an `Idempotency-Key` header: status, whether the answer was marked
    /// `Idempotent-Replayed`, body.
    pub async fn post_keyed(&self, path: &str, key: &str, body: Value) -> (u16, bool, Value) {
        let request = self.client.post(format!("{}{path}", self.base)).json(&body);
        self.send_keyed(request, key).await
    }

    async fn send_keyed(&self, request: reqwest::RequestBuilder, key: &str) -> (u16, bool, Value) {
        let response = request
            .header("idempotency-key", key)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        (
            status,
            replayed,
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(&self.token).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }
}

pub fn error_code(frame: &ServerFrame) -> Option<&'static str> {
    match frame {
        ServerFrame::Error { code, .. } => Some(code.as_str()),
        _ => None,
    }
}

/// A token for `user`, signed with the test secret (for servers running as child processes).
pub fn token_for(user: &str) -> String {
    let auth = Authenticator::from_config(&relay_server::AuthConfig {
        secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap();
    auth.mint(&Claims::new(user, Duration::from_secs(3600)))
        .unwrap()
}

/// The real `relay-server` binary as a child process on an ephemeral port.
pub struct ChildServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    pub fn spawn(extra_args: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay-server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--jwt-secret",
                SECRET,
            ])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line)
                    && log["fields"]["message"] == "listening"
                {
                    let addr = log["fields"]["addr"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = addr_tx.send(addr);
                }
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server reports its address")
            .parse()
            .unwrap();
        Self { child, addr }
    }

    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/ws?token={}", self.addr, token_for(user))
    }

    /// Connects as `user` and consumes the `welcome` frame.
    pub async fn connect(&self, user: &str) -> WsClient {
        let mut client = WsClient::connect(&self.ws_url(user)).await;
        assert!(matches!(client.recv().await, ServerFrame::Welcome { .. }));
        client
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, pid.as_str()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn wait(mut self) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
