//! The REST API under `/api` (docs/protocol.md, "REST API"). Every endpoint needs a token.
//! This module only translates: it parses paths and bodies, calls the hub's channel API
//! (which holds every rule: rights, roles, limits) and maps its answers onto HTTP.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use relay_core::{CreateChannel, Identity, MAX_LISTED_NAMES, Publish, Published};
use relay_proto::{
    ChannelName, ErrorCode, IdempotencyKey, MemberRole, MessageId, Payload, Revision, Seq,
    Timestamp, UserId, validate_event,
};
use relay_store::{ChannelRecord, CurrentMessage, HistoryQuery, Member, StoredMessage};
use serde::{Deserialize, Serialize};

use crate::app::{ApiError, App, Body, json, query_param};

/// Default history page (the largest is the hub's `MAX_PAGE`).
const DEFAULT_PAGE: usize = 50;

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
    let identity = app.authenticate_rest(&req).await?;
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
            let key = idempotency_key(&req)?;
            api.service_publish(key, app.read_body(req.into_body()).await?)
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
            let (name, user) = (channel(name)?, user_id(user)?);
            api.add_member(name, user, app.read_body(req.into_body()).await?)
                .await
        }
        (&Method::DELETE, ["api", "channels", name, "members", user]) => {
            api.remove_member(channel(name)?, user_id(user)?).await
        }
        (&Method::GET, ["api", "channels", name, "messages"]) => {
            let query = history_query(&req)?;
            match query_param(&req, "view").as_deref() {
                None | Some("log") => api.history(channel(name)?, query).await,
                Some("current") => api.history_current(channel(name)?, query).await,
                Some(_) => Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "`view` must be \"log\" or \"current\"",
                )),
            }
        }
        (&Method::POST, ["api", "channels", name, "messages"]) => {
            let (name, key) = (channel(name)?, idempotency_key(&req)?);
            api.post_message(name, key, app.read_body(req.into_body()).await?)
                .await
        }
        (&Method::GET, ["api", "channels", name, "messages", "count"]) => {
            api.count(channel(name)?).await
        }
        (&Method::PATCH, ["api", "channels", name, "messages", seq]) => {
            let (name, seq, key) = (channel(name)?, message_seq(seq)?, idempotency_key(&req)?);
            let body = app.read_body(req.into_body()).await?;
            let request: EditMessage = parse_body(&body)?;
            let publish = Publish::edit(name, seq, request.payload);
            api.revise(Publish {
                idempotency_key: key,
                ..publish
            })
            .await
        }
        (&Method::DELETE, ["api", "channels", name, "messages", seq]) => {
            let (name, seq, key) = (channel(name)?, message_seq(seq)?, idempotency_key(&req)?);
            api.revise(Publish {
                idempotency_key: key,
                ..Publish::delete(name, seq)
            })
            .await
        }
        (&Method::GET, ["api", "channels", name, "presence"]) => api.presence(channel(name)?).await,
        (&Method::GET, ["api", "channels", name, "read"]) => api.read_marker(channel(name)?).await,
        (&Method::PUT, ["api", "channels", name, "read"]) => {
            let name = channel(name)?;
            api.mark_read(name, app.read_body(req.into_body()).await?)
                .await
        }
        (&Method::GET, ["api", "unread"]) => api.unread(&req).await,
        (_, ["api", "unread"]) | (_, ["api", "channels", _, "read"]) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("method {method} is not allowed here"),
        )),
        (_, ["api", "publish"])
        | (_, ["api", "channels"])
        | (_, ["api", "channels", _])
        | (_, ["api", "channels", _, "members" | "messages" | "presence"])
        | (_, ["api", "channels", _, "members", _])
        | (_, ["api", "channels", _, "messages", _]) => Err(ApiError::new(
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

fn message_seq(seq: &str) -> Result<Seq, ApiError> {
    match seq.parse::<u64>() {
        Ok(n) if n > 0 && n <= i64::MAX as u64 => Ok(Seq(n)),
        _ => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("`{seq}` is not a message seq (a number from 1 to 2^63 - 1)"),
        )),
    }
}

/// The `Idempotency-Key` header of a publish, if any.
fn idempotency_key<B>(req: &Request<B>) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let bad =
        |why: String| ApiError::new(ErrorCode::BadRequest, format!("`Idempotency-Key`: {why}"));
    let text = value
        .to_str()
        .map_err(|_| bad("not visible ASCII".into()))?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// Marks the answer to a repeated idempotency key.
const REPLAYED: &str = "idempotent-replayed";

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
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<Seq>,
    /// Current view: the seq of the edit whose payload this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    edited: Option<Seq>,
    /// Current view: the seq of the delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<Seq>,
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
            reference: m.reference,
            edited: None,
            deleted: None,
        }
    }
}

impl<'a> From<&'a CurrentMessage> for MessageView<'a> {
    fn from(c: &'a CurrentMessage) -> Self {
        Self {
            edited: c.edited,
            deleted: c.deleted,
            ..Self::from(&c.message)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateChannelBody {
    name: ChannelName,
    #[serde(default)]
    meta: Option<Payload>,
    #[serde(default)]
    members: Vec<UserId>,
}

#[derive(Serialize)]
struct MemberView<'a> {
    user: &'a UserId,
    role: MemberRole,
}

impl<'a> From<&'a Member> for MemberView<'a> {
    fn from(m: &'a Member) -> Self {
        Self {
            user: &m.user,
            role: m.role,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PutMember {
    #[serde(default)]
    role: Option<MemberRole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryChannels {
    names: Vec<ChannelName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    /// Optional for a delete only.
    #[serde(default)]
    payload: Option<Payload>,
    #[serde(default)]
    event: Option<String>,
    #[serde(rename = "ref", default)]
    reference: Option<Seq>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditMessage {
    payload: Payload,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicePublish {
    #[serde(default)]
    channel: Option<ChannelName>,
    #[serde(default)]
    channels: Vec<ChannelName>,
    #[serde(default)]
    payload: Option<Payload>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    ephemeral: bool,
    #[serde(rename = "ref", default)]
    reference: Option<Seq>,
}

/// The payload of a publish body: required, except for a delete (`null` then).
fn body_payload(
    payload: Option<Payload>,
    event: &Option<String>,
    reference: Option<Seq>,
    ephemeral: bool,
) -> Result<Payload, ApiError> {
    let revision =
        Revision::check(event.as_deref(), reference, ephemeral).map_err(|(field, why)| {
            ApiError::new(ErrorCode::BadRequest, format!("`{field}`: {why}"))
        })?;
    match (payload, revision) {
        (Some(payload), _) => Ok(payload),
        (None, Some(Revision::Delete)) => Ok(Payload::null()),
        (None, _) => Err(ApiError::new(
            ErrorCode::BadRequest,
            "invalid JSON body: missing field `payload`",
        )),
    }
}

struct Api<'a> {
    app: &'a App,
    identity: &'a Identity,
}

impl Api<'_> {
    fn hub(&self) -> &relay_core::Hub {
        &self.app.inner.hub
    }

    async fn create_channel(&self, body: Bytes) -> ApiResult {
        let request: CreateChannel = {
            let body: CreateChannelBody = parse_body(&body)?;
            CreateChannel {
                name: body.name,
                meta: body.meta,
                members: body.members,
            }
        };
        let created = self.hub().create_channel(self.identity, request).await?;
        let status = if created.is_new() {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(json(status, &ChannelView::from(created.record())))
    }

    async fn query_channels(&self, body: Bytes) -> ApiResult {
        let request: QueryChannels = parse_body(&body)?;
        let records = self
            .hub()
            .query_channels(self.identity, request.names)
            .await?;
        let views: Vec<ChannelView<'_>> = records.iter().map(ChannelView::from).collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channels": views }),
        ))
    }

    async fn my_channels<B>(&self, req: &Request<B>) -> ApiResult {
        let limit = number::<_, usize>(req, "limit")?.unwrap_or(DEFAULT_PAGE);
        let offset = number::<_, usize>(req, "offset")?.unwrap_or(0);
        let records = self.hub().channels_of(self.identity, limit, offset).await?;
        let views: Vec<ChannelView<'_>> = records.iter().map(ChannelView::from).collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channels": views }),
        ))
    }

    async fn get_channel(&self, name: ChannelName) -> ApiResult {
        let record = self.hub().channel(self.identity, &name).await?;
        Ok(json(StatusCode::OK, &ChannelView::from(&record)))
    }

    async fn members(&self, name: ChannelName) -> ApiResult {
        let members = self.hub().members(self.identity, &name).await?;
        let views: Vec<MemberView<'_>> = members.iter().map(MemberView::from).collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "members": views }),
        ))
    }

    async fn add_member(&self, name: ChannelName, user: UserId, body: Bytes) -> ApiResult {
        let request: PutMember = if body.is_empty() {
            PutMember::default()
        } else {
            parse_body(&body)?
        };
        let update = self
            .hub()
            .add_member(self.identity, &name, &user, request.role)
            .await?;
        let status = if update.is_new() {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let member = update.member();
        Ok(json(
            status,
            &serde_json::json!({ "channel": name, "user": member.user, "role": member.role }),
        ))
    }

    async fn remove_member(&self, name: ChannelName, user: UserId) -> ApiResult {
        let role = self
            .hub()
            .remove_member(self.identity, &name, &user)
            .await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "user": user, "role": role }),
        ))
    }

    async fn history_current(&self, name: ChannelName, query: HistoryQuery) -> ApiResult {
        let messages = self
            .hub()
            .history_current(self.identity, &name, query)
            .await?;
        let views: Vec<MessageView<'_>> = messages.iter().map(MessageView::from).collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "view": "current", "messages": views }),
        ))
    }

    /// `PATCH` or `DELETE …/messages/{seq}`: an edit or delete, answered like a publish.
    async fn revise(&self, publish: Publish) -> ApiResult {
        let (event, reference, payload) = (
            publish.event.clone(),
            publish.reference,
            publish.payload.clone(),
        );
        let name = publish.channel.clone();
        let published = self.hub().publish_as(self.identity, publish).await?;
        self.published(name, published, event, reference, payload)
    }

    async fn history(&self, name: ChannelName, query: HistoryQuery) -> ApiResult {
        let messages = self.hub().history(self.identity, &name, query).await?;
        let views: Vec<MessageView<'_>> = messages.iter().map(MessageView::from).collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "messages": views }),
        ))
    }

    async fn count(&self, name: ChannelName) -> ApiResult {
        let count = self.hub().count(self.identity, &name).await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "count": count }),
        ))
    }

    async fn read_marker(&self, name: ChannelName) -> ApiResult {
        let seq = self.hub().read_marker(self.identity, &name).await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "seq": seq }),
        ))
    }

    async fn mark_read(&self, name: ChannelName, body: Bytes) -> ApiResult {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct MarkRead {
            seq: Seq,
        }
        let request: MarkRead = parse_body(&body)?;
        let seq = self
            .hub()
            .mark_read(self.identity, &name, request.seq)
            .await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "seq": seq }),
        ))
    }

    /// The read state of the caller's channels, by name: `?after=NAME&limit=N` (default
    /// 1,000, at most 10,000); `next` is the `after` of the following page, or null.
    async fn unread<B>(&self, req: &Request<B>) -> ApiResult {
        let limit = number::<_, usize>(req, "limit")?
            .unwrap_or(1000)
            .clamp(1, relay_core::MAX_UNREAD_PAGE);
        let after = query_param(req, "after").map(|a| channel(&a)).transpose()?;
        let states = self
            .hub()
            .unread(self.identity, after.as_ref(), limit)
            .await?;
        let next = (states.len() == limit)
            .then(|| states.last().map(|s| s.channel.clone()))
            .flatten();
        let total: u64 = states.iter().map(relay_store::ReadState::unread).sum();
        let channels: Vec<serde_json::Value> = states
            .iter()
            .map(|s| {
                serde_json::json!({
                    "channel": s.channel,
                    "last_seq": s.last_seq,
                    "read_seq": s.read_seq,
                    "unread": s.unread(),
                })
            })
            .collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channels": channels, "unread": total, "next": next }),
        ))
    }

    async fn presence(&self, name: ChannelName) -> ApiResult {
        let users = self.hub().presence(self.identity, &name).await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "channel": name, "users": users }),
        ))
    }

    async fn post_message(
        &self,
        name: ChannelName,
        key: Option<IdempotencyKey>,
        body: Bytes,
    ) -> ApiResult {
        let request: PostMessage = parse_body(&body)?;
        check_event(&request.event)?;
        let payload = body_payload(request.payload, &request.event, request.reference, false)?;
        let publish = Publish {
            event: request.event.clone(),
            idempotency_key: key,
            reference: request.reference,
            ..Publish::new(name.clone(), payload.clone())
        };
        let published = self.hub().publish_as(self.identity, publish).await?;
        self.published(name, published, request.event, request.reference, payload)
    }

    /// The answer to a publish as a user: the message as stored (201), what a repeat of its
    /// idempotency key got (200), or, in an ephemeral-only namespace, its id (202).
    fn published(
        &self,
        name: ChannelName,
        published: Published,
        event: Option<String>,
        reference: Option<Seq>,
        payload: Payload,
    ) -> ApiResult {
        let Some(seq) = published.seq else {
            // An ephemeral-only namespace: delivered live, nothing stored.
            return Ok(json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "channel": name, "id": published.id }),
            ));
        };
        let stored = StoredMessage {
            channel: name,
            seq,
            id: published.id,
            from: Some(self.identity.user.clone()),
            event,
            // An edit that lost a race with a delete was stored without its content.
            payload: if published.scrubbed {
                Payload::null()
            } else {
                payload
            },
            ts: published.ts,
            reference,
        };
        if published.repeat {
            // Stored the first time; this answers with what that one got.
            let mut response = json(StatusCode::OK, &MessageView::from(&stored));
            response
                .headers_mut()
                .insert(REPLAYED, http::HeaderValue::from_static("true"));
            return Ok(response);
        }
        Ok(json(StatusCode::CREATED, &MessageView::from(&stored)))
    }

    async fn service_publish(&self, key: Option<IdempotencyKey>, body: Bytes) -> ApiResult {
        let request: ServicePublish = parse_body(&body)?;
        check_event(&request.event)?;
        let payload = body_payload(
            request.payload,
            &request.event,
            request.reference,
            request.ephemeral,
        )?;
        let mut channels = request.channels;
        channels.extend(request.channel);
        if channels.is_empty() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give `channel` or `channels`",
            ));
        }
        if request.reference.is_some() && channels.len() > 1 {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "an edit or delete (`ref`) names a message of one `channel`",
            ));
        }
        if channels.len() > MAX_LISTED_NAMES {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("at most {MAX_LISTED_NAMES} channels"),
            ));
        }
        let mut published = Vec::with_capacity(channels.len());
        for channel in channels {
            let publish = Publish {
                event: request.event.clone(),
                ephemeral: request.ephemeral,
                idempotency_key: key.clone(),
                reference: request.reference,
                ..Publish::new(channel, payload.clone())
            };
            let p = self
                .hub()
                .publish_for_service(self.identity, publish)
                .await?;
            let mut entry =
                serde_json::json!({ "channel": p.channel, "message_id": p.id, "seq": p.seq });
            if p.repeat {
                entry["repeat"] = true.into();
            }
            published.push(entry);
        }
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "published": published }),
        ))
    }
}
