//! Pusher's HMAC-SHA256 signatures: channel and user auth strings signed by an app's server,
//! and the HTTP API's request signatures. Every comparison is in constant time.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// Lower-case hex HMAC-SHA256 of `message` keyed with `secret`.
#[must_use]
pub fn sign(secret: &str, message: &str) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(message.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Whether `given` is the hex signature of `message`; case-insensitive, constant time.
#[must_use]
pub fn verify(secret: &str, message: &str, given: &str) -> bool {
    let expected = sign(secret, message);
    let given = given.to_ascii_lowercase();
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Lower-case hex MD5 of a request body (`body_md5`).
#[must_use]
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

/// The string a channel auth signs: `socket_id:channel`, plus `:channel_data` for presence.
#[must_use]
pub fn channel_string(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string a user sign-in signs: `socket_id::user::user_data`.
#[must_use]
pub fn user_string(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Checks an auth value `<key>:<hex signature of message>` against an app's key and secret.
#[must_use]
pub fn check_auth(key: &str, secret: &str, auth: &str, message: &str) -> bool {
    let Some((given_key, signature)) = auth.split_once(':') else {
        return false;
    };
    let key_ok = bool::from(given_key.as_bytes().ct_eq(key.as_bytes()));
    // Both halves are always checked, so timing does not tell which one was wrong.
    let signature_ok = verify(secret, message, signature);
    key_ok & signature_ok
}

/// The string an HTTP API request signs: `METHOD\nPATH\nquery`, where the query is every
/// parameter but `auth_signature`, keys lower-cased, sorted by key, joined `k=v&…` unescaped.
#[must_use]
pub fn request_string(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .filter(|(k, _)| k != "auth_signature")
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{method}\n{path}\n{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked examples of Pusher's documentation (../shared/docs/pusher-protocol.md §4.7).
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn documented_request_signature() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body.as_bytes()), "ec365a775a4cd0599faeb73354201b6f");
        let params = [
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_signature", "ignored"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let string = request_string("POST", "/apps/3/events", &params);
        assert_eq!(
            string,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        let expected = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        assert_eq!(sign(SECRET, &string), expected);
        assert!(verify(SECRET, &string, &expected.to_uppercase()));
        assert!(!verify(SECRET, &string, &expected[1..]));
    }

    #[test]
    fn documented_channel_auth() {
        let string = channel_string("1234.1234", "private-foobar", None);
        let signature = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert_eq!(sign(SECRET, &string), signature);
        assert!(check_auth(
            KEY,
            SECRET,
            &format!("{KEY}:{signature}"),
            &string
        ));
        assert!(!check_auth(
            KEY,
            SECRET,
            &format!("other:{signature}"),
            &string
        ));
        assert!(!check_auth(KEY, SECRET, signature, &string));
        let other = channel_string("1234.1235", "private-foobar", None);
        assert!(!check_auth(
            KEY,
            SECRET,
            &format!("{KEY}:{signature}"),
            &other
        ));
        assert_eq!(
            channel_string("1.2", "presence-x", Some("{}")),
            "1.2:presence-x:{}"
        );
        assert_eq!(
            user_string("1.2", "{\"id\":\"7\"}"),
            "1.2::user::{\"id\":\"7\"}"
        );
    }
}
