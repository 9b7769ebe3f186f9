//! Entry points of the fuzz targets (`fuzz/`, `make fuzz`) and of their regression replay
//! (`tests/fuzz_corpus.rs`): each feeds arbitrary bytes through the whole decoding path of one
//! kind of outside input, as the server would, and panics only on a broken invariant. A panic
//! here is a defect: the server must answer every input with a value or a refusal.
//!
//! Where a decoder has an encoder, the target also checks that what decodes re-encodes to the
//! same thing. Payloads are compared as text where floats could lose their last bit.

use std::sync::LazyLock;

use axum::http::header::{CONTENT_TYPE, HeaderValue};
use axum::http::{HeaderMap, Uri};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::config::Config;
use crate::domain::app::{App, AppParams};
use crate::domain::{signature, topic::Topic, webhook};
use crate::http::{body, events, history, longpoll, pusher_api};
use crate::protocol::{phoenix, pusher};
use crate::session::{phoenix::Wish, pusher::parse_member};
use crate::token;

/// One fuzz target: its name (its binary in `fuzz/`) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// The decoders the fuzz targets cover, by target name: `make fuzz` runs each.
pub const TARGETS: &[Target] = &[
    ("phoenix_frame", phoenix_frame),
    ("pusher_frame", pusher_frame),
    ("longpoll_body", longpoll_body),
    ("event_body", event_body),
    ("admin_body", admin_body),
    ("pusher_query", pusher_query),
    ("pusher_body", pusher_body),
    ("jwt", jwt),
    ("webhook_config", webhook_config),
    ("history_query", history_query),
];

const SLUG: &str = "foo-app";
const SECRET: &str = "7ad3773142a6692b25b8";
/// The clock of the token checks: tokens of the corpus expire around it.
const NOW: i64 = 1_700_000_000;

static CONFIG: LazyLock<Config> = LazyLock::new(Config::default);
static APP: LazyLock<App> = LazyLock::new(app);

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The first byte picks a variant (content type, serializer); the rest is the input.
fn split_first(data: &[u8]) -> (u8, &[u8]) {
    data.split_first()
        .map_or((0, &[][..]), |(b, rest)| (*b, rest))
}

fn app() -> App {
    let epoch = chrono::DateTime::UNIX_EPOCH;
    App {
        id: 1,
        name: "Foo App".to_owned(),
        slug: SLUG.to_owned(),
        key: "278d425bdf160c739803".to_owned(),
        secret: SECRET.to_owned(),
        active: true,
        client_events: true,
        allowed_origins: Vec::new(),
        max_presence_members: 100,
        webhooks: Vec::new(),
        history_size: 10,
        history_ttl_secs: 60,
        max_connections: None,
        max_triggers_per_sec: None,
        webhook_max_queue: None,
        inserted_at: epoch,
        updated_at: epoch,
    }
}

fn headers(content_type: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers
}

/// One Phoenix text frame, as a socket of either serializer reads it, then the join params a
/// `phx_join` carries.
pub fn phoenix_frame(data: &[u8]) {
    let Some(text) = text(data) else { return };
    for vsn in [phoenix::Vsn::V1, phoenix::Vsn::V2] {
        let Ok(frame) = phoenix::decode(vsn, text) else {
            continue;
        };
        let _ = Topic::parse(&frame.topic);
        let _ = Wish::parse(&frame.payload);
        let payload = frame.payload.to_string();
        let encoded = phoenix::encode_raw(
            vsn,
            frame.join_ref.as_deref(),
            frame.msg_ref.as_deref(),
            &frame.topic,
            &frame.event,
            &payload,
        );
        let again = phoenix::decode(vsn, &encoded).expect("an encoded frame decodes");
        // V1 frames from the server carry no join_ref.
        let join_ref = if vsn == phoenix::Vsn::V1 {
            None
        } else {
            frame.join_ref
        };
        assert_eq!(again.join_ref, join_ref);
        assert_eq!(again.msg_ref, frame.msg_ref);
        assert_eq!(again.topic, frame.topic);
        assert_eq!(again.event, frame.event);
        assert_eq!(again.payload.to_string(), payload);
    }
    let _ = phoenix::Vsn::negotiate(Some(text));
}

/// One Pusher text frame, then the `data` of each `pusher:*` event it could be, with the
/// channel authorization a subscription carries.
pub fn pusher_frame(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(frame) = pusher::decode(text) else {
        return;
    };
    let data = frame.data.as_deref();
    if let Ok(subscribe) = pusher::data_of::<pusher::Subscribe>(data)
        && let Ok(topic) = Topic::new(&subscribe.channel, SLUG)
    {
        if let Some(channel_data) = &subscribe.channel_data {
            let _ = parse_member(channel_data);
        }
        if let Some(auth) = &subscribe.auth {
            let message = signature::channel_string(
                "123.456",
                topic.channel(),
                subscribe.channel_data.as_deref(),
            );
            let _ = signature::check_auth("278d425bdf160c739803", SECRET, auth, &message);
        }
    }
    if let Ok(signin) = pusher::data_of::<pusher::Signin>(data) {
        let message = signature::user_string("123.456", &signin.user_data);
        let _ = signature::check_auth("278d425bdf160c739803", SECRET, &signin.auth, &message);
    }
    // A client event is relayed with its data byte-identical.
    if let (Some(channel), Some(raw)) = (&frame.channel, data) {
        let relayed = pusher::event(channel, &frame.event, raw.get(), None);
        let again = pusher::decode(&relayed).expect("a relayed frame decodes");
        assert_eq!(again.event, frame.event);
        assert_eq!(again.channel.as_deref(), Some(channel.as_str()));
        assert_eq!(
            again.data.map(|d| d.get().to_owned()),
            Some(raw.get().to_owned())
        );
    }
}

/// A LongPoll `POST` body: ndjson lines or one frame (the first byte picks), each decoded as a
/// socket of the V2 serializer would.
pub fn longpoll_body(data: &[u8]) {
    let (variant, rest) = split_first(data);
    let Some(body) = text(rest) else { return };
    for frame in longpoll::frames(body, variant & 1 == 1) {
        let _ = phoenix::decode(phoenix::Vsn::V2, frame);
    }
}

/// The body type a leading byte picks: form when odd, JSON when even.
fn body_type(variant: u8) -> &'static str {
    if variant & 1 == 1 {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    }
}

/// A trigger of the seed API: a JSON or form body (the first byte picks) and its fields.
pub fn event_body(data: &[u8]) {
    let (variant, rest) = split_first(data);
    let content_type = body_type(variant);
    if let Ok(fields) = body::object(&headers(content_type), rest) {
        let _ = events::parse_event(SLUG, fields, 10_000);
    }
}

/// An admin request's `app` object (JSON or form, the first byte picks), validated for a new
/// app and for changes to one.
pub fn admin_body(data: &[u8]) {
    let (variant, rest) = split_first(data);
    let content_type = body_type(variant);
    let Ok(map) = body::app_object(&headers(content_type), rest) else {
        return;
    };
    let rules = CONFIG.app_rules();
    let _ = AppParams::from_map(map.clone()).into_new_app(rules);
    let _ = AppParams::from_map(map).into_changes(rules);
}

/// The query of a signed Pusher HTTP API request: its parameters, the string it signs, and
/// the `info` attributes it asks.
pub fn pusher_query(data: &[u8]) {
    let Some(query) = text(data) else { return };
    let Ok(uri) = format!("/apps/1/events?{query}").parse::<Uri>() else {
        return;
    };
    let Ok(params) = pusher_api::query_params(&uri) else {
        return;
    };
    let string = signature::request_string("POST", uri.path(), &params);
    if let Some(given) = pusher_api::param(&params, "auth_signature") {
        let _ = signature::verify(SECRET, &string, given);
    }
    let info = pusher_api::param(&params, "info");
    let _ = pusher_api::Info::parse(info);
    let _ = pusher_api::Info::parse_one(info);
}

/// The JSON body of a Pusher HTTP API trigger or batch, checked as the node checks it.
pub fn pusher_body(data: &[u8]) {
    let app = &*APP;
    if let Ok(trigger) = pusher_api::parse_json::<pusher_api::Trigger>(data) {
        let _ = pusher_api::check_trigger(&CONFIG, app, trigger, true);
    }
    if let Ok(batch) = pusher_api::parse_json::<pusher_api::Batch>(data) {
        for trigger in batch.batch {
            let _ = pusher_api::check_trigger(&CONFIG, app, trigger, false);
        }
    }
}

/// A join token as given, and one made of the input's header and claims (split at the first
/// newline) with a valid signature, so the fuzzer reaches the claims.
pub fn jwt(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let _ = token::verify(SECRET, text, NOW);
    let (header, claims) = text.split_once('\n').unwrap_or((text, "{}"));
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let Ok(verified) = token::verify(SECRET, &token::signed(SECRET, &signing_input), NOW) else {
        return;
    };
    let _ = verified.may_subscribe("private-chat:foo-app");
    let _ = verified.may_publish("private-chat:foo-app");
    let again = token::verify(SECRET, &token::mint(SECRET, &verified), NOW)
        .expect("a minted token verifies");
    assert_eq!(
        (
            again.exp,
            again.nbf,
            &again.sub,
            &again.subscribe,
            &again.publish
        ),
        (
            verified.exp,
            verified.nbf,
            &verified.sub,
            &verified.subscribe,
            &verified.publish
        )
    );
}

/// An app's `webhooks` field, as JSON and as the JSON text of a form field.
pub fn webhook_config(data: &[u8]) {
    let rules = CONFIG.webhooks.rules();
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let _ = webhook::cast(&value, rules);
    }
    if let Some(text) = text(data) {
        let _ = webhook::cast(&Value::String(text.to_owned()), rules);
        let _ = webhook::check_url(text, false);
    }
}

/// The query of a history read: `topic`, `since`, `epoch`, `limit`.
pub fn history_query(data: &[u8]) {
    let Some(query) = text(data) else { return };
    if let Ok(query) = history::parse(Some(query)) {
        let _ = history::topic_of(&query.topic, SLUG);
    }
}
