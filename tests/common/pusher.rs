//! A minimal Pusher protocol 7 client over a real WebSocket, and Pusher HTTP API signing, for
//! tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pushlite::domain::signature;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// From `pusher:connection_established`, when the server sent it.
    pub socket_id: String,
    pub activity_timeout: u64,
}

/// Opens `/app/:key` with `query` and returns before reading anything.
pub async fn open(
    addr: std::net::SocketAddr,
    key: &str,
    query: &str,
    origin: Option<&str>,
) -> Client {
    let mut request = format!("ws://{addr}/app/{key}?{query}")
        .into_client_request()
        .expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket upgrade");
    Client {
        ws,
        socket_id: String::new(),
        activity_timeout: 0,
    }
}

/// Connects with protocol 7 and waits for `pusher:connection_established`.
pub async fn connect(addr: std::net::SocketAddr, key: &str) -> Client {
    let mut client = open(addr, key, "protocol=7&client=rust-test&version=8.4.0", None).await;
    let hello = client.recv().await;
    assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
    let data: Value = serde_json::from_str(hello["data"].as_str().expect("data is a string"))
        .expect("data holds JSON");
    client.socket_id = data["socket_id"].as_str().expect("socket_id").to_owned();
    client.activity_timeout = data["activity_timeout"].as_u64().expect("activity_timeout");
    client
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON, or a panic after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT)
            .await
            .expect("a frame within the timeout")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(wait, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match message {
                Message::Text(text) => return Some(serde_json::from_str(&text).expect("JSON")),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// The next frame with this event name, skipping others.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["event"] == event {
                return frame;
            }
        }
    }

    /// Subscribes and returns the server's answer (succeeded or error).
    pub async fn subscribe(&mut self, channel: &str, auth: Option<String>) -> Value {
        let mut data = json!({ "channel": channel });
        if let Some(auth) = auth {
            data["auth"] = json!(auth);
        }
        self.send(json!({"event": "pusher:subscribe", "data": data}))
            .await;
        loop {
            let frame = self.recv().await;
            if frame["channel"] == channel
                && (frame["event"] == "pusher_internal:subscription_succeeded"
                    || frame["event"] == "pusher:subscription_error")
            {
                return frame;
            }
        }
    }

    /// Subscribes and asserts success.
    pub async fn subscribed(&mut self, channel: &str, auth: Option<String>) {
        let answer = self.subscribe(channel, auth).await;
        assert_eq!(
            answer["event"], "pusher_internal:subscription_succeeded",
            "{answer}"
        );
    }

    /// Waits for the server's close frame; returns its code and the frames before it.
    pub async fn closed_with(&mut self) -> (Option<u16>, Vec<Value>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("no close within the timeout; got {frames:?}"),
                Ok(None | Some(Err(_))) => return (None, frames),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return (frame.map(|f| u16::from(f.code)), frames);
                }
                Ok(Some(Ok(Message::Text(text)))) => {
                    frames.push(serde_json::from_str(&text).expect("JSON"));
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// `key:signature` for a private channel, as an app's auth endpoint returns it.
pub fn channel_auth(key: &str, secret: &str, socket_id: &str, channel: &str) -> String {
    let signed = signature::sign(secret, &signature::channel_string(socket_id, channel, None));
    format!("{key}:{signed}")
}

/// The query string of a signed HTTP API request.
pub fn signed_query(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    timestamp: i64,
) -> String {
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), key.into()),
        ("auth_timestamp".into(), timestamp.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), signature::md5_hex(body)));
    }
    params.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let string = signature::request_string(method, path, &params);
    params.push(("auth_signature".into(), signature::sign(secret, &string)));
    params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A signed `POST /apps/:app_id/events` of `body` (a trigger as the SDKs send it) for `app`
/// (as the admin API answered it), to the node at `base` (`http://host:port`).
pub fn signed_trigger(
    http: &reqwest::Client,
    base: &str,
    app: &Value,
    body: String,
) -> reqwest::RequestBuilder {
    signed_post(
        http,
        base,
        app["key"].as_str().expect("an app's key"),
        app["secret"].as_str().expect("an app's secret"),
        &format!("/apps/{}/events", app["id"]),
        body,
    )
}

/// A `POST` of the JSON `body` to `path` (such as `/apps/1/batch_events`) on the node at `base`,
/// signed with `key` and `secret` as the Pusher HTTP API wants.
pub fn signed_post(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    secret: &str,
    path: &str,
    body: String,
) -> reqwest::RequestBuilder {
    let query = signed_query(
        key,
        secret,
        "POST",
        path,
        &[],
        body.as_bytes(),
        chrono::Utc::now().timestamp(),
    );
    http.post(format!("{base}{path}?{query}"))
        .header("content-type", "application/json")
        .body(body)
}
