//! A minimal Phoenix Channels client over a real WebSocket, for tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

/// One received frame, normalized to the V2 field order.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub join_ref: Value,
    pub msg_ref: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub vsn: Vsn,
    next_ref: u64,
}

pub async fn connect(
    addr: std::net::SocketAddr,
    vsn: Vsn,
    query: &str,
    origin: Option<&str>,
) -> Client {
    try_connect(addr, vsn, query, origin)
        .await
        .expect("websocket upgrade")
}

pub async fn try_connect(
    addr: std::net::SocketAddr,
    vsn: Vsn,
    query: &str,
    origin: Option<&str>,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let vsn_param = match vsn {
        Vsn::V1 => "1.0.0",
        Vsn::V2 => "2.0.0",
    };
    let sep = if query.is_empty() { "" } else { "&" };
    let url = format!("ws://{addr}/socket/websocket?{query}{sep}vsn={vsn_param}");
    let mut request = url.into_client_request()?;
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(Client {
        ws,
        vsn,
        next_ref: 0,
    })
}

impl Client {
    pub fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub async fn push(
        &mut self,
        join_ref: Option<&str>,
        msg_ref: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let text = match self.vsn {
            Vsn::V2 => json!([join_ref, msg_ref, topic, event, payload]).to_string(),
            Vsn::V1 => {
                json!({"join_ref": join_ref, "ref": msg_ref, "topic": topic, "event": event, "payload": payload})
                    .to_string()
            }
        };
        self.send_raw(text).await;
    }

    /// The next text frame, or a panic after [`WAIT`].
    pub async fn recv(&mut self) -> Frame {
        self.try_recv(WAIT)
            .await
            .expect("a frame within the timeout")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            let message = tokio::time::timeout(wait, self.ws.next())
                .await
                .ok()??
                .ok()?;
            if let Message::Text(text) = message {
                return Some(parse(self.vsn, &text));
            }
            if let Message::Close(_) = message {
                return None;
            }
        }
    }

    /// Waits for the server's close frame and returns its code.
    pub async fn closed_with(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("no close within the timeout"),
                Ok(None | Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Joins and returns the reply frame.
    pub async fn join(&mut self, topic: &str) -> (String, Frame) {
        let r = self.make_ref();
        self.push(Some(&r), &r, topic, "phx_join", json!({})).await;
        let reply = self.recv_reply(&r).await;
        (r, reply)
    }

    /// Skips frames until the reply to `msg_ref`.
    pub async fn recv_reply(&mut self, msg_ref: &str) -> Frame {
        loop {
            let frame = self.recv().await;
            if frame.event == "phx_reply" && frame.msg_ref == json!(msg_ref) {
                return frame;
            }
        }
    }

    /// Skips frames until one with this event name.
    pub async fn recv_event(&mut self, event: &str) -> Frame {
        loop {
            let frame = self.recv().await;
            if frame.event == event {
                return frame;
            }
        }
    }
}

pub fn parse(vsn: Vsn, text: &str) -> Frame {
    let value: Value = serde_json::from_str(text).expect("server frames are JSON");
    match vsn {
        Vsn::V2 => Frame {
            join_ref: value[0].clone(),
            msg_ref: value[1].clone(),
            topic: value[2].as_str().unwrap().to_owned(),
            event: value[3].as_str().unwrap().to_owned(),
            payload: value[4].clone(),
        },
        Vsn::V1 => {
            assert!(value.get("join_ref").is_none(), "V1 never carries join_ref");
            Frame {
                join_ref: Value::Null,
                msg_ref: value["ref"].clone(),
                topic: value["topic"].as_str().unwrap().to_owned(),
                event: value["event"].as_str().unwrap().to_owned(),
                payload: value["payload"].clone(),
            }
        }
    }
}
