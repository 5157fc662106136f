//! [`RestClient`]: history, channels and members over HTTP (`reqwest`).

use relay_proto::{ChannelName, ErrorCode, MemberRole, MessageId, Payload, Seq, Timestamp, UserId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::client::TokenProvider;
use crate::error::ClientError;
use crate::subscription::Message;

/// A channel record.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelInfo {
    /// The name.
    pub name: ChannelName,
    /// Opaque JSON given at creation.
    pub meta: Option<Payload>,
    /// The creator.
    pub created_by: Option<UserId>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A member of a channel record and its role.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemberInfo {
    /// The user.
    pub user: UserId,
    /// Its role: the creator is `owner`; owners grant `admin`.
    pub role: MemberRole,
}

/// Which page of history to read; ascending by seq either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// Only messages after this seq (then the oldest first); without it, the newest.
    pub after: Option<Seq>,
    /// Only messages before this seq.
    pub before: Option<Seq>,
    /// At most this many (server default 50, max 200).
    pub limit: Option<usize>,
}

#[derive(Deserialize)]
struct MessageJson {
    channel: ChannelName,
    id: MessageId,
    seq: Seq,
    #[serde(default)]
    from: Option<UserId>,
    #[serde(default)]
    event: Option<String>,
    payload: Payload,
    ts: Timestamp,
    #[serde(rename = "ref", default)]
    reference: Option<Seq>,
    #[serde(default)]
    edited: Option<Seq>,
    #[serde(default)]
    deleted: Option<Seq>,
}

/// A message as it reads now ([`RestClient::history_current`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentMessage {
    /// The message, carrying the payload of its latest edit (`null` once deleted).
    pub message: Message,
    /// The seq of the edit whose payload it carries, if it was edited.
    pub edited: Option<Seq>,
    /// The seq of its delete, if it was deleted.
    pub deleted: Option<Seq>,
}

impl From<MessageJson> for CurrentMessage {
    fn from(m: MessageJson) -> Self {
        let (edited, deleted) = (m.edited, m.deleted);
        Self {
            message: m.into(),
            edited,
            deleted,
        }
    }
}

impl From<MessageJson> for Message {
    fn from(m: MessageJson) -> Self {
        Message {
            channel: m.channel,
            id: m.id,
            seq: Some(m.seq),
            from: m.from,
            event: m.event,
            payload: m.payload,
            ts: m.ts,
            reference: m.reference,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: ErrorCode,
    message: String,
}

/// The REST API of a Relay server.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base: String,
    token: TokenProvider,
}

/// `ws://host:port/ws` → `http://host:port`.
fn http_base(ws_url: &str) -> Result<String, ClientError> {
    let (scheme, rest) = ws_url
        .split_once("://")
        .ok_or_else(|| ClientError::InvalidUrl(ws_url.into()))?;
    let scheme = match scheme {
        "ws" => "http",
        "wss" => "https",
        other => {
            return Err(ClientError::InvalidUrl(format!(
                "unsupported scheme {other}"
            )));
        }
    };
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    Ok(format!("{scheme}://{authority}"))
}

fn path_segment(s: &str) -> String {
    // Channel names may hold `#` (user-limited channels), which must be escaped in a path.
    s.replace('%', "%25")
        .replace('#', "%23")
        .replace('/', "%2F")
        .replace('?', "%3F")
}

impl RestClient {
    pub(crate) fn new(ws_url: &str, token: TokenProvider) -> Result<Self, ClientError> {
        Ok(Self {
            http: reqwest::Client::new(),
            base: http_base(ws_url)?,
            token,
        })
    }

    /// The same client, each request bounded by `timeout`.
    pub(crate) fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        if let Ok(http) = reqwest::Client::builder().timeout(timeout).build() {
            self.http = http;
        }
        self
    }

    /// A REST client for a server (`http://host:port`) with a fixed token.
    pub fn with_token(base: impl Into<String>, token: impl Into<String>) -> Self {
        let token: String = token.into();
        let provider: TokenProvider = std::sync::Arc::new(move || {
            let token = token.clone();
            Box::pin(async move { Ok(token) })
        });
        Self {
            http: reqwest::Client::new(),
            base: base.into(),
            token: provider,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let token = (self.token)().await.map_err(ClientError::Token)?;
        let response = request.bearer_auth(token).send().await?;
        if response.status().is_success() {
            return Ok(response.json().await?);
        }
        let status = response.status();
        match response.json::<ErrorBody>().await {
            Ok(body) => Err(ClientError::Server {
                code: body.error.code,
                message: body.error.message,
            }),
            Err(_) => Err(ClientError::Protocol(format!("HTTP {status}"))),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A page of a channel's history, ascending by seq: the raw log, edits and deletes
    /// included as messages of their own.
    pub async fn history(
        &self,
        channel: &str,
        page: HistoryPage,
    ) -> Result<Vec<Message>, ClientError> {
        let page = self.history_page(channel, page, "log").await?;
        Ok(page.into_iter().map(Message::from).collect())
    }

    /// A page of a channel's history as it reads now (`?view=current`): edits and deletes
    /// left out (the page counts the other messages only) and applied, each message with
    /// the payload of its latest edit, deleted ones with `null`.
    pub async fn history_current(
        &self,
        channel: &str,
        page: HistoryPage,
    ) -> Result<Vec<CurrentMessage>, ClientError> {
        let page = self.history_page(channel, page, "current").await?;
        Ok(page.into_iter().map(CurrentMessage::from).collect())
    }

    async fn history_page(
        &self,
        channel: &str,
        page: HistoryPage,
        view: &str,
    ) -> Result<Vec<MessageJson>, ClientError> {
        #[derive(Deserialize)]
        struct Page {
            messages: Vec<MessageJson>,
        }
        let mut query: Vec<(&str, String)> = vec![("view", view.to_owned())];
        query.extend(page.after.map(|s| ("after", s.0.to_string())));
        query.extend(page.before.map(|s| ("before", s.0.to_string())));
        query.extend(page.limit.map(|l| ("limit", l.to_string())));
        let url = self.url(&format!("/api/channels/{}/messages", path_segment(channel)));
        let page: Page = self.send(self.http.get(url).query(&query)).await?;
        Ok(page.messages)
    }

    /// Edits message `seq` over HTTP (`PATCH …/messages/{seq}`); returns the stored edit.
    pub async fn edit_message<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        seq: Seq,
        payload: &T,
    ) -> Result<Message, ClientError> {
        let body = serde_json::json!({ "payload": payload });
        let url = self.url(&format!(
            "/api/channels/{}/messages/{seq}",
            path_segment(channel)
        ));
        Ok(self
            .send::<MessageJson>(self.http.patch(url).json(&body))
            .await?
            .into())
    }

    /// Deletes message `seq` over HTTP (`DELETE …/messages/{seq}`); returns the stored
    /// delete event.
    pub async fn delete_message(&self, channel: &str, seq: Seq) -> Result<Message, ClientError> {
        let url = self.url(&format!(
            "/api/channels/{}/messages/{seq}",
            path_segment(channel)
        ));
        Ok(self
            .send::<MessageJson>(self.http.delete(url))
            .await?
            .into())
    }

    /// Number of stored messages.
    pub async fn count(&self, channel: &str) -> Result<u64, ClientError> {
        #[derive(Deserialize)]
        struct Count {
            count: u64,
        }
        let url = self.url(&format!(
            "/api/channels/{}/messages/count",
            path_segment(channel)
        ));
        Ok(self.send::<Count>(self.http.get(url)).await?.count)
    }

    /// Publishes over HTTP; returns the stored message.
    pub async fn post_message<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        event: Option<&str>,
        payload: &T,
    ) -> Result<Message, ClientError> {
        let body = serde_json::json!({"payload": payload, "event": event});
        let url = self.url(&format!("/api/channels/{}/messages", path_segment(channel)));
        Ok(self
            .send::<MessageJson>(self.http.post(url).json(&body))
            .await?
            .into())
    }

    /// Creates a channel record, or returns the existing one; `true` when created now.
    pub async fn create_channel<T: Serialize + ?Sized>(
        &self,
        name: &str,
        meta: Option<&T>,
        members: &[&str],
    ) -> Result<(ChannelInfo, bool), ClientError> {
        let token = (self.token)().await.map_err(ClientError::Token)?;
        let body = serde_json::json!({"name": name, "meta": meta, "members": members});
        let response = self
            .http
            .post(self.url("/api/channels"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let created = response.status() == reqwest::StatusCode::CREATED;
        if response.status().is_success() {
            return Ok((response.json().await?, created));
        }
        let body: ErrorBody = response.json().await?;
        Err(ClientError::Server {
            code: body.error.code,
            message: body.error.message,
        })
    }

    /// One channel record, if it exists.
    pub async fn channel(&self, name: &str) -> Result<Option<ChannelInfo>, ClientError> {
        match self
            .send(
                self.http
                    .get(self.url(&format!("/api/channels/{}", path_segment(name)))),
            )
            .await
        {
            Ok(info) => Ok(Some(info)),
            Err(ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The records that exist among `names`.
    pub async fn query_channels(&self, names: &[&str]) -> Result<Vec<ChannelInfo>, ClientError> {
        #[derive(Deserialize)]
        struct Channels {
            channels: Vec<ChannelInfo>,
        }
        let body = serde_json::json!({ "names": names });
        Ok(self
            .send::<Channels>(self.http.post(self.url("/api/channels/query")).json(&body))
            .await?
            .channels)
    }

    /// Channels the caller is a member of.
    pub async fn my_channels(
        &self,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<ChannelInfo>, ClientError> {
        #[derive(Deserialize)]
        struct Channels {
            channels: Vec<ChannelInfo>,
        }
        let request = self
            .http
            .get(self.url("/api/channels"))
            .query(&[("limit", limit), ("offset", offset)]);
        Ok(self.send::<Channels>(request).await?.channels)
    }

    /// Members of a channel with their roles, by user id.
    pub async fn members(&self, channel: &str) -> Result<Vec<MemberInfo>, ClientError> {
        #[derive(Deserialize)]
        struct Members {
            members: Vec<MemberInfo>,
        }
        let url = self.url(&format!("/api/channels/{}/members", path_segment(channel)));
        Ok(self.send::<Members>(self.http.get(url)).await?.members)
    }

    /// Adds a member (as a plain member; an existing member keeps its role).
    pub async fn add_member(&self, channel: &str, user: &str) -> Result<MemberInfo, ClientError> {
        self.put_member(channel, user, None).await
    }

    /// Adds a member with `role`, or changes an existing member's role (owners only).
    pub async fn set_role(
        &self,
        channel: &str,
        user: &str,
        role: MemberRole,
    ) -> Result<MemberInfo, ClientError> {
        self.put_member(channel, user, Some(role)).await
    }

    async fn put_member(
        &self,
        channel: &str,
        user: &str,
        role: Option<MemberRole>,
    ) -> Result<MemberInfo, ClientError> {
        let url = self.url(&format!(
            "/api/channels/{}/members/{}",
            path_segment(channel),
            path_segment(user)
        ));
        let mut request = self.http.put(url);
        if let Some(role) = role {
            request = request.json(&serde_json::json!({ "role": role }));
        }
        self.send::<MemberInfo>(request).await
    }

    /// Removes a member.
    pub async fn remove_member(&self, channel: &str, user: &str) -> Result<(), ClientError> {
        let url = self.url(&format!(
            "/api/channels/{}/members/{}",
            path_segment(channel),
            path_segment(user)
        ));
        self.send::<serde_json::Value>(self.http.delete(url))
            .await
            .map(|_| ())
    }

    /// Server-side publish to one or more topics (needs a service token).
    pub async fn publish_topics<T: Serialize + ?Sized>(
        &self,
        channels: &[&str],
        event: Option<&str>,
        payload: &T,
    ) -> Result<Vec<Seq>, ClientError> {
        #[derive(Deserialize)]
        struct Published {
            published: Vec<Entry>,
        }
        #[derive(Deserialize)]
        struct Entry {
            seq: Option<Seq>,
        }
        let body = serde_json::json!({"channels": channels, "event": event, "payload": payload});
        let published: Published = self
            .send(self.http.post(self.url("/api/publish")).json(&body))
            .await?;
        Ok(published
            .published
            .into_iter()
            .filter_map(|e| e.seq)
            .collect())
    }
}

impl std::fmt::Debug for RestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_base_comes_from_the_websocket_url() {
        assert_eq!(
            http_base("ws://127.0.0.1:8080/ws").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            http_base("wss://relay.example/ws?x=1").unwrap(),
            "https://relay.example"
        );
        assert!(http_base("http://x").is_err());
        assert_eq!(path_segment("dm:#alice,bob"), "dm:%23alice,bob");
    }
}
