//! Property tests of the wire vocabulary: every frame round-trips, arbitrary input never
//! panics a decoder, and channel validation accepts exactly the grammar of the protocol.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use relay_proto::{
    ChannelName, ClientFrame, ErrorCode, FrameId, IdempotencyKey, MessageId, Payload, Seq,
    ServerFrame, Timestamp, UserId,
};

const CHANNEL_CHARS: &str = "[A-Za-z0-9_:.,#@=-]";

fn channel() -> impl Strategy<Value = ChannelName> {
    proptest::string::string_regex(&format!("{CHANNEL_CHARS}{{1,40}}"))
        .expect("valid regex")
        .prop_map(|s| ChannelName::parse(&s).expect("generated from the grammar"))
}

fn user() -> impl Strategy<Value = UserId> {
    "[a-zA-Z0-9@._ -]{1,20}".prop_map(|s| UserId::parse(&s).expect("valid user"))
}

fn frame_id() -> impl Strategy<Value = Option<FrameId>> {
    prop_oneof![
        Just(None),
        any::<u64>().prop_map(|n| Some(FrameId::from(n))),
        any::<i64>().prop_map(|n| Some(FrameId::Number(n.into()))),
        ".{0,12}".prop_map(|s| Some(FrameId::Text(s))),
    ]
}

fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,16}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn payload() -> impl Strategy<Value = Payload> {
    json().prop_map(|v| Payload::from_value(&v).expect("serializable"))
}

fn event() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(".{0,20}")
}

/// Events a client may send: no control characters.
fn client_event() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[^\\p{Cc}]{0,20}")
}

/// A publish's event, ephemeral flag and `ref` as the pairing rules allow them: any event
/// without a `ref`, or an edit or delete with one (never ephemeral).
fn publish_kind() -> impl Strategy<Value = (Option<String>, bool, Option<Seq>)> {
    prop_oneof![
        (client_event(), any::<bool>()).prop_map(|(event, ephemeral)| (event, ephemeral, None)),
        (prop::bool::ANY, 1..=i64::MAX as u64).prop_map(|(edit, target)| {
            let event = if edit { "edit" } else { "delete" };
            (Some(event.to_owned()), false, Some(Seq(target)))
        }),
    ]
}

/// Keys of visible ASCII, including the characters JSON escapes (`"`, `\\`).
fn idempotency_key() -> impl Strategy<Value = Option<IdempotencyKey>> {
    proptest::option::of("[!-~]{1,128}".prop_map(|s| IdempotencyKey::parse(&s).expect("valid key")))
}

fn seq() -> impl Strategy<Value = Seq> {
    any::<u64>().prop_map(Seq)
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (
            frame_id(),
            channel(),
            proptest::option::of(seq()),
            prop::bool::ANY
        )
            .prop_map(|(id, channel, since, latest)| ClientFrame::Subscribe {
                id,
                channel,
                since,
                mode: if latest {
                    relay_proto::SubscribeMode::Latest
                } else {
                    relay_proto::SubscribeMode::Reliable
                },
            }),
        (frame_id(), channel()).prop_map(|(id, channel)| ClientFrame::Unsubscribe { id, channel }),
        (
            frame_id(),
            channel(),
            payload(),
            publish_kind(),
            idempotency_key(),
        )
            .prop_map(
                |(id, channel, payload, (event, ephemeral, reference), idempotency_key)| {
                    ClientFrame::Publish {
                        id,
                        channel,
                        payload,
                        event,
                        ephemeral,
                        idempotency_key,
                        reference,
                    }
                }
            ),
        (
            frame_id(),
            channel(),
            user(),
            payload(),
            client_event(),
            any::<bool>(),
            proptest::option::of(1..u64::MAX)
        )
            .prop_map(|(id, channel, to, payload, event, receipt, ttl_ms)| {
                ClientFrame::Signal {
                    id,
                    channel,
                    to,
                    payload,
                    event,
                    receipt,
                    ttl_ms,
                }
            }),
        (frame_id(), channel()).prop_map(|(id, channel)| ClientFrame::Presence { id, channel }),
        frame_id().prop_map(|id| ClientFrame::Ping { id }),
        (frame_id(), channel(), seq()).prop_map(|(id, channel, seq)| ClientFrame::Read {
            id,
            channel,
            seq
        }),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::Forbidden),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::RateLimited),
        Just(ErrorCode::Unavailable),
        Just(ErrorCode::Internal),
    ]
}

fn users() -> impl Strategy<Value = Vec<UserId>> {
    prop::collection::vec(user(), 0..4)
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let ts = (0u64..4_000_000_000_000).prop_map(Timestamp::from_unix_millis);
    let message_id = any::<u128>().prop_map(MessageId::from_u128);
    prop_oneof![
        (".{0,10}", user(), any::<u64>()).prop_map(|(connection_id, user, heartbeat_ms)| {
            ServerFrame::Welcome {
                connection_id,
                user,
                heartbeat_ms,
            }
        }),
        (
            frame_id(),
            channel(),
            seq(),
            proptest::option::of(any::<bool>()),
            proptest::option::of(users())
        )
            .prop_map(
                |(id, channel, seq, recovered, presence)| ServerFrame::Subscribed {
                    id,
                    channel,
                    seq,
                    recovered,
                    presence
                }
            ),
        (frame_id(), channel(), proptest::option::of(".{0,10}")).prop_map(
            |(id, channel, reason)| ServerFrame::Unsubscribed {
                id,
                channel,
                reason
            }
        ),
        (
            channel(),
            message_id.clone(),
            proptest::option::of(seq()),
            proptest::option::of(user()),
            event(),
            payload(),
            ts,
            proptest::option::of(seq()),
        )
            .prop_map(|(channel, id, seq, from, event, payload, ts, reference)| {
                ServerFrame::Message {
                    channel,
                    id,
                    seq,
                    from,
                    event,
                    payload,
                    ts,
                    reference,
                }
            }),
        (
            frame_id(),
            channel(),
            message_id.clone(),
            proptest::option::of(seq())
        )
            .prop_map(|(id, channel, message_id, seq)| ServerFrame::Ack {
                id,
                channel,
                message_id,
                seq
            }),
        (
            channel(),
            user(),
            payload(),
            event(),
            proptest::option::of(message_id.clone())
        )
            .prop_map(|(channel, from, payload, event, signal)| {
                ServerFrame::Signal {
                    channel,
                    from,
                    payload,
                    event,
                    signal,
                }
            }),
        (
            frame_id(),
            channel(),
            user(),
            message_id.clone(),
            prop_oneof![
                Just(relay_proto::ReceiptStatus::Delivered),
                Just(relay_proto::ReceiptStatus::Held),
                Just(relay_proto::ReceiptStatus::Expired)
            ]
        )
            .prop_map(|(id, channel, to, signal, status)| ServerFrame::Receipt {
                id,
                channel,
                to,
                signal,
                status
            }),
        (channel(), user()).prop_map(|(channel, user)| ServerFrame::Join { channel, user }),
        (channel(), user()).prop_map(|(channel, user)| ServerFrame::Leave { channel, user }),
        (frame_id(), channel(), users()).prop_map(|(id, channel, users)| ServerFrame::Presence {
            id,
            channel,
            users
        }),
        frame_id().prop_map(|id| ServerFrame::Pong { id }),
        (frame_id(), channel(), seq()).prop_map(|(id, channel, seq)| ServerFrame::Read {
            id,
            channel,
            seq
        }),
        (
            frame_id(),
            error_code(),
            ".{0,20}",
            proptest::option::of(channel())
        )
            .prop_map(|(id, code, message, channel)| ServerFrame::Error {
                id,
                code,
                message,
                channel
            }),
    ]
}

fn is_grammar(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:.,#@=-".contains(&b))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let text = frame.encode();
        prop_assert_eq!(ClientFrame::decode(text.as_bytes()), Ok(frame));
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let encoded = frame.encode();
        prop_assert_eq!(ServerFrame::decode(encoded.as_bytes()), Ok(frame));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ClientFrame::decode(&bytes);
        let _ = ServerFrame::decode(&bytes);
    }

    #[test]
    fn arbitrary_json_objects_never_panic_the_decoders(
        ty in prop_oneof![
            Just("subscribe".to_owned()),
            Just("publish".to_owned()),
            Just("signal".to_owned()),
            Just("message".to_owned()),
            Just("ack".to_owned()),
            ".{0,8}",
        ],
        fields in prop::collection::btree_map(
            prop_oneof![Just("channel"), Just("payload"), Just("since"), Just("to"), Just("id"), Just("seq"), Just("ts")],
            json(),
            0..6,
        ),
    ) {
        let mut obj: serde_json::Map<String, serde_json::Value> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        obj.insert("type".into(), ty.into());
        let bytes = serde_json::to_vec(&obj).expect("serializable");
        let _ = ClientFrame::decode(&bytes);
        let _ = ServerFrame::decode(&bytes);
    }

    #[test]
    fn channel_validation_accepts_exactly_the_grammar(s in prop_oneof![
        proptest::string::string_regex(&format!("{CHANNEL_CHARS}{{0,260}}")).expect("regex"),
        ".{0,20}",
        proptest::string::string_regex(&format!("{CHANNEL_CHARS}{{1,10}}[ /?*%ü\u{0}]{CHANNEL_CHARS}{{0,10}}")).expect("regex"),
    ]) {
        prop_assert_eq!(ChannelName::parse(&s).is_ok(), is_grammar(&s), "{:?}", s);
    }

    #[test]
    fn long_valid_names_are_accepted_up_to_255_bytes(len in 1usize..=300) {
        let name = "a".repeat(len);
        prop_assert_eq!(ChannelName::parse(&name).is_ok(), len <= 255);
    }
}
