//! `GET /api/apps/:app_slug/history`: an app's server reads a channel's history, authenticated
//! with the app's `key:secret` over HTTP Basic.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::error::ApiError;
use super::events::authenticate;
use super::extract::Slug;
use crate::domain::history::{EPOCH_MAX_BYTES, Read};
use crate::domain::topic::Topic;
use crate::node::NodeState;

/// Events a read returns unless `limit` says otherwise (and `history.max_read` allows).
const DEFAULT_LIMIT: u32 = 100;

/// What the query asks.
#[derive(Debug, PartialEq)]
pub(crate) struct Query {
    /// The channel (`public`, `cache-prices`) or its full topic (`public:foo-app`).
    pub(crate) topic: String,
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<u32>,
}

pub(crate) fn parse(query: Option<&str>) -> Result<Query, ApiError> {
    let bad = |message: &str| ApiError::Unprocessable(message.to_owned());
    let (mut topic, mut since, mut epoch, mut limit) = (None, None, None, None);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "topic" => topic = Some(value.into_owned()),
            "since" => {
                since = Some(value.parse::<u64>().map_err(|_| {
                    bad("`since` must be an offset (an integer from 0) the history gave")
                })?);
            }
            "epoch" if value.is_empty() || value.len() > EPOCH_MAX_BYTES => {
                return Err(bad("`epoch` must be the epoch the history gave"));
            }
            "epoch" => epoch = Some(value.into_owned()),
            "limit" => {
                limit = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("`limit` must be an integer from 1"))?,
                );
            }
            // Unknown parameters are ignored, as by every other endpoint.
            _ => {}
        }
    }
    let topic = topic.ok_or_else(|| bad("`topic` is required"))?;
    if epoch.is_some() && since.is_none() {
        return Err(bad("`epoch` goes with `since`"));
    }
    Ok(Query {
        topic,
        since,
        epoch,
        limit,
    })
}

/// The topic a query names in app `slug`: a channel name, or a full topic of that app.
pub(crate) fn topic_of(name: &str, slug: &str) -> Result<Topic, ApiError> {
    let invalid = || {
        ApiError::Unprocessable(
            "`topic` must be a channel of this app: `public`, `cache-prices`, or `public:<app slug>`"
                .to_owned(),
        )
    };
    match name.split_once(':') {
        Some((_, of)) if of == slug => Topic::parse(name).ok_or_else(invalid),
        Some(_) => Err(invalid()),
        None => Topic::new(name, slug).map_err(|_| invalid()),
    }
}

pub async fn read(
    State(state): State<NodeState>,
    Slug(slug): Slug,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let app = authenticate(&state, &slug, &headers).await?;
    let query = parse(query.as_deref())?;
    let topic = topic_of(&query.topic, &app.slug)?;
    let keep = state.keep(&app, &topic).ok_or(ApiError::NotFound(
        "this channel keeps no history: set the app's history_size",
    ))?;
    let max = state.config.history.max_read;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(max);
    let read = match query.since {
        Some(offset) => Read::Since { offset, limit },
        None => Read::Last(limit),
    };
    let page = state
        .bus
        .history(topic.as_str(), keep, read)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let events: Vec<Value> = page
        .events
        .iter()
        .map(|event| {
            json!({
                "offset": event.position.as_ref().map(|p| p.offset),
                "event": event.event,
                "payload": serde_json::from_str::<Value>(&event.data.phoenix_payload())
                    .unwrap_or(Value::Null),
            })
        })
        .collect();
    let mut body = json!({
        "topic": topic.as_str(),
        "offset": page.top.offset,
        "epoch": page.top.epoch,
        "events": events,
    });
    if let (Some(offset), Some(epoch)) = (query.since, query.epoch) {
        // Whether every event after `since` is still kept: `events` then starts right after
        // it (and goes on up to `limit`). Only an epoch says which numbering `since` is of.
        let first = page.events.first().and_then(|e| e.position.as_ref());
        let complete = epoch == page.top.epoch
            && offset <= page.top.offset
            && (offset == page.top.offset || first.is_some_and(|p| p.offset == offset + 1));
        body["complete"] = json!(complete);
    }
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let query = parse(Some("topic=public&since=4&epoch=ab12&limit=10&x=1")).unwrap();
        assert_eq!(
            query,
            Query {
                topic: "public".into(),
                since: Some(4),
                epoch: Some("ab12".into()),
                limit: Some(10),
            }
        );
        for bad in [
            None,
            Some("since=1"),
            Some("topic=public&since=-1"),
            Some("topic=public&since=x"),
            Some("topic=public&limit=0"),
            Some("topic=public&epoch=e"),
            Some("topic=public&since=1&epoch="),
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(topic_of("public", "foo").unwrap().as_str(), "public:foo");
        assert_eq!(topic_of("room:foo", "foo").unwrap().as_str(), "room:foo");
        assert!(topic_of("room:bar", "foo").is_err());
        assert!(topic_of("bad name", "foo").is_err());
        assert!(topic_of("", "foo").is_err());
    }
}
