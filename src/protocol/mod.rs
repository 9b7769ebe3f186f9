//! Wire formats only: bytes to typed frames and back, with no I/O. One module per protocol.

pub mod phoenix;
pub mod pusher;

/// Why a client frame could not be decoded, whatever the protocol.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("wrong message shape: {0}")]
    Shape(&'static str),
}

/// The wire format of one socket: what the hub encodes an event into for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Phoenix(phoenix::Vsn),
    Pusher,
}

impl Wire {
    /// How many wire formats there are: the hub encodes an event at most this many times.
    pub const COUNT: usize = 3;

    /// A dense index below [`Wire::COUNT`].
    #[must_use]
    pub fn index(self) -> usize {
        match self {
            Wire::Phoenix(phoenix::Vsn::V1) => 0,
            Wire::Phoenix(phoenix::Vsn::V2) => 1,
            Wire::Pusher => 2,
        }
    }

    /// The `protocol` label of the connection metrics.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Wire::Phoenix(_) => "phoenix",
            Wire::Pusher => "pusher",
        }
    }
}
