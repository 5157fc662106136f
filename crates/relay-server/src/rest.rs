//! The REST API under `/api` (PROTOCOL.md, "REST"). Every endpoint needs a token and follows
//! the same authorization as the WebSocket: reading needs the subscribe right, posting a
//! message the publish right.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use relay_core::{Action, Identity, Publish, SubscribeRule};
use relay_proto::{
    ChannelName, ErrorCode, MessageId, Payload, Seq, Timestamp, UserId, validate_event,
};
use relay_store::{ChannelRecord, HistoryQuery, NewChannel, StoredMessage};
use serde::{Deserialize, Serialize};

use crate::app::{ApiError, App, Body, json, query_param};

/// Default and largest history page.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

type ApiResult = Result<Response<Body>, ApiError>;

pub(crate) async fn route<B>(app: &App, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match dispatch(app, req).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn dispatch<B>(app: &App, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (identity, _) = app.authenticate(&req)?;
    let segments: Vec<String> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let api = Api {
        app,
        identity: &identity,
    };
    match (&method, &segments[..]) {
        (&Method::POST, ["api", "publish"]) => {
            api.service_publish(app.read_body(req.into_body()).await?)
                .await
        }
        (&Method::POST, ["api", "channels"]) => {
            api.create_channel(app.read_body(req.into_body()).await?)
                .await
        }
        (&Method::GET, ["api", "channels"]) => api.my_channels(&req).await,
        (&Method::POST, ["api", "channels", "query"]) => {
            api.query_channels(app.read_body(req.into_body()).await?)
                .await
        }
        (&Method::GET, ["api", "channels", name]) => api.get_channel(channel(name)?).await,
        (&Method::GET, ["api", "channels", name, "members"]) => api.members(channel(name)?).await,
        (&Method::PUT, ["api", "channels", name, "members", user]) => {
            api.add_member(channel(name)?, user_id(user)?).await
        }
        (&Method::DELETE, ["api", "channels", name, "members", user]) => {
            api.remove_member(channel(name)?, user_id(user)?).await
        }
        (&Method::GET, ["api", "channels", name, "messages"]) => {
            let query = history_query(&req)?;
            api.history(channel(name)?, query).await
        }
        (&Method::POST, ["api", "channels", name, "messages"]) => {
            let name = channel(name)?;
            api.post_message(name, app.read_body(req.into_body()).await?)
                .await
        }
        (&Method::GET, ["api", "channels", name, "messages", "count"]) => {
            api.count(channel(name)?).await
        }
        (&Method::GET, ["api", "channels", name, "presence"]) => api.presence(channel(name)?).await,
        (_, ["api", "publish"])
        | (_, ["api", "channels"])
        | (_, ["api", "channels", _])
        | (_, ["api", "channels", _, "members" | "messages" | "presence"])
        | (_, ["api", "channels", _, "members", _])
        | (_, ["api", "channels", _, "messages", "count"]) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("method {method} is not allowed here"),
        )),
        _ => Err(ApiError::new(ErrorCode::NotFound, "no such endpoint")),
    }
}

fn channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad channel name: {e}")))
}

fn user_id(id: &str) -> Result<UserId, ApiError> {
    UserId::parse(id).map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad user id: {e}")))
}

fn check_event(event: &Option<String>) -> Result<(), ApiError> {
    match event.as_deref().map(validate_event) {
        Some(Err(why)) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("`event` {why}"),
        )),
        _ => Ok(()),
    }
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}

fn number<B, T: std::str::FromStr>(req: &Request<B>, name: &str) -> Result<Option<T>, ApiError> {
    query_param(req, name)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::new(ErrorCode::BadRequest, format!("`{name}` must be a number"))
            })
        })
        .transpose()
}

fn history_query<B>(req: &Request<B>) -> Result<HistoryQuery, ApiError> {
    let limit = number::<_, usize>(req, "limit")?.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("`limit` must be 1..={MAX_PAGE}"),
        ));
    }
    Ok(HistoryQuery {
        after: number(req, "after")?.map(Seq),
        before: number(req, "before")?.map(Seq),
        limit,
    })
}

#[derive(Serialize)]
struct ChannelView<'a> {
    name: &'a ChannelName,
    meta: &'a Option<Payload>,
    created_by: &'a Option<UserId>,
    created_at: Timestamp,
}

impl<'a> From<&'a ChannelRecord> for ChannelView<'a> {
    fn from(r: &'a ChannelRecord) -> Self {
        Self {
            name: &r.name,
            meta: &r.meta,
            created_by: &r.created_by,
            created_at: r.created_at,
        }
    }
}

#[derive(Serialize)]
struct MessageView<'a> {
    channel: &'a ChannelName,
    id: MessageId,
    seq: Seq,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: &'a Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: &'a Option<String>,
    payload: &'a Payload,
    ts: Timestamp,
}

impl<'a> From<&'a StoredMessage> for MessageView<'a> {
    fn from(m: &'a StoredMessage) -> Self {
        Self {
            channel: &m.channel,
            id: m.id,
            seq: m.seq,
            from: &m.from,
            event: &m.event,
            payload: &m.payload,
            ts: m.ts,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateChannel {
    name: ChannelName,
    #[serde(default)]
    meta: Option<Payload>,
    #[serde(default)]
    members: Vec<UserId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryChannels {
    names: Vec<ChannelName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    payload: Payload,
    #[serde(default)]
    event: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicePublish {
    #[serde(default)]
    channel: Option<ChannelName>,
    #[serde(default)]
    channels: Vec<ChannelName>,
    payload: Payload,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    ephemeral: bool,
}

/// Largest `names` list of a query, and largest `channels` list of a service publish.
const MAX_NAMES: usize = 1000;

struct Api<'a> {
    app: &'a App,
    identity: &'a Identity,
}

impl Api<'_> {
    fn hub(&self) -> &relay_core::Hub {
        &self.app.inner.hub
    }

    async fn can(&self, channel: &ChannelName, action: Action) -> Result<(), ApiError> {
        Ok(self.hub().authorize(self.identity, channel, action).await?)
    }

    /// Creating needs the subscribe right, except in `members` namespaces, where creating is
    /// what makes the caller a member (the user limit still applies).
    async fn may_create(&self, name: &ChannelName) -> Result<(), ApiError> {
        if self.hub().policy(name).subscribe == SubscribeRule::Members
            && !self.identity.is_service()
        {
            if !name.admits(&self.identity.user) {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!("user is not listed in {name}"),
                ));
            }
            return Ok(());
        }
        self.can(name, Action::Subscribe).await
    }

    async fn create_channel(&self, body: Bytes) -> ApiResult {
        let request: CreateChannel = parse_body(&body)?;
        let name = request.name.clone();
        self.may_create(&name).await?;
        let meta_limit = self.hub().policy(&request.name).max_payload_bytes;
        if request.meta.as_ref().is_some_and(|m| m.len() > meta_limit) {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("meta over {meta_limit} bytes"),
            ));
        }
        let created_by = (!self.identity.is_service()).then(|| self.identity.user.clone());
        let created = self
            .hub()
            .store()
            .create_channel(NewChannel {
                name: request.name,
                meta: request.meta,
                created_by,
                members: request.members,
            })
            .await?;
        if !created.is_new() {
            // An existing record is shown only to who may read it: in a `members` namespace,
            // creating does not make a non-member a member.
            self.can(&name, Action::Subscribe).await?;
        }
        let status = if created.is_new() {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(json(status, &ChannelView::from(created.record())))
    }

    async fn query_channels(&self, body: Bytes) -> ApiResult {
        let request: QueryChannels = parse_body(&body)?;
        if request.names.len() > MAX_NAMES {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("at most {MAX_NAMES} names"),
            ));
        }
        let mut allowed = Vec::with_capacity(request.names.len());
        for name in request.names {
            if self.can(&name, Action::Subscribe).await.is_ok() {
                allowed.push(name);
            }
        }
        let records = self.hub().store().query_channels(&allowed).await?;
        let views: Vec<ChannelView<'_>> = records.iter().map(ChannelView::from).collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channels": views }),
        ))
    }

    async fn my_channels<B>(&self, req: &Request<B>) -> ApiResult {
        let limit = number::<_, usize>(req, "limit")?
            .unwrap_or(DEFAULT_PAGE)
            .min(MAX_PAGE);
        let offset = number::<_, usize>(req, "offset")?.unwrap_or(0);
        let records = self
            .hub()
            .store()
            .channels_of_member(&self.identity.user, limit, offset)
            .await?;
        let views: Vec<ChannelView<'_>> = records.iter().map(ChannelView::from).collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channels": views }),
        ))
    }

    async fn get_channel(&self, name: ChannelName) -> ApiResult {
        self.can(&name, Action::Subscribe).await?;
        match self.hub().store().get_channel(&name).await? {
            Some(record) => Ok(json(StatusCode::OK, &ChannelView::from(&record))),
            None => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("channel {name} does not exist"),
            )),
        }
    }

    async fn members(&self, name: ChannelName) -> ApiResult {
        self.can(&name, Action::Subscribe).await?;
        let members = self.hub().store().members(&name).await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "members": members }),
        ))
    }

    /// Membership changes need an existing member or a service token.
    async fn may_manage_members(&self, name: &ChannelName) -> Result<(), ApiError> {
        if self.identity.is_service()
            || self
                .hub()
                .store()
                .is_member(name, &self.identity.user)
                .await?
        {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("only members of {name} may change its members"),
        ))
    }

    async fn add_member(&self, name: ChannelName, user: UserId) -> ApiResult {
        // Rights first, so that a stranger cannot probe which channels exist.
        self.may_manage_members(&name).await?;
        if self.hub().store().get_channel(&name).await?.is_none() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("channel {name} does not exist"),
            ));
        }
        let added = self.hub().store().add_member(&name, &user).await?;
        let status = if added {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(json(
            status,
            &serde_json::json!({ "channel": name, "user": user }),
        ))
    }

    async fn remove_member(&self, name: ChannelName, user: UserId) -> ApiResult {
        if user != self.identity.user {
            self.may_manage_members(&name).await?;
        }
        if !self.hub().store().remove_member(&name, &user).await? {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("{user} is not a member of {name}"),
            ));
        }
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "user": user }),
        ))
    }

    async fn history(&self, name: ChannelName, query: HistoryQuery) -> ApiResult {
        self.can(&name, Action::Subscribe).await?;
        let messages = self.hub().store().history(&name, query).await?;
        let views: Vec<MessageView<'_>> = messages.iter().map(MessageView::from).collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "messages": views }),
        ))
    }

    async fn count(&self, name: ChannelName) -> ApiResult {
        self.can(&name, Action::Subscribe).await?;
        let count = self.hub().store().count(&name).await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "count": count }),
        ))
    }

    async fn presence(&self, name: ChannelName) -> ApiResult {
        self.can(&name, Action::Subscribe).await?;
        if !self.hub().policy(&name).presence {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("presence is disabled on {name}"),
            ));
        }
        let users = self.hub().presence(&name);
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "users": users }),
        ))
    }

    async fn post_message(&self, name: ChannelName, body: Bytes) -> ApiResult {
        let request: PostMessage = parse_body(&body)?;
        check_event(&request.event)?;
        self.can(&name, Action::Publish).await?;
        let publish = Publish {
            from: Some(self.identity.user.clone()),
            event: request.event.clone(),
            ..Publish::new(name, request.payload.clone())
        };
        let published = self.hub().publish(publish).await?;
        let Some(seq) = published.seq else {
            // An ephemeral-only namespace: delivered live, nothing stored.
            return Ok(json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "channel": published.channel, "id": published.id }),
            ));
        };
        let stored = StoredMessage {
            channel: published.channel,
            seq,
            id: published.id,
            from: Some(self.identity.user.clone()),
            event: request.event,
            payload: request.payload,
            ts: published.ts,
        };
        Ok(json(StatusCode::CREATED, &MessageView::from(&stored)))
    }

    async fn service_publish(&self, body: Bytes) -> ApiResult {
        if !self.identity.is_service() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "POST /api/publish needs a token with role \"service\"",
            ));
        }
        let request: ServicePublish = parse_body(&body)?;
        check_event(&request.event)?;
        let mut channels = request.channels;
        channels.extend(request.channel);
        if channels.is_empty() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give `channel` or `channels`",
            ));
        }
        if channels.len() > MAX_NAMES {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("at most {MAX_NAMES} channels"),
            ));
        }
        let mut published = Vec::with_capacity(channels.len());
        for channel in channels {
            let publish = Publish {
                event: request.event.clone(),
                ephemeral: request.ephemeral,
                ..Publish::new(channel, request.payload.clone())
            };
            let p = self.hub().publish(publish).await?;
            published.push(
                serde_json::json!({ "channel": p.channel, "message_id": p.id, "seq": p.seq }),
            );
        }
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "published": published }),
        ))
    }
}
