//! Join tokens for private topics: JWTs signed with HS256 and the app's secret.
//!
//! Only HS256 is accepted (the header's `alg` must say so; `none` and every other algorithm are
//! refused). Claims: `exp` (required, seconds since the epoch), `sub` (optional), and two lists
//! of topic patterns, `subscribe` (also read as the article's `listen`) and `publish`. A pattern
//! ending in `*` matches any suffix (`private:*`); any other pattern matches exactly.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The user: a presence channel's member id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// A presence channel member's info (any JSON, at most 1 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<serde_json::Value>,
    #[serde(default, alias = "listen")]
    pub subscribe: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
}

impl Claims {
    #[must_use]
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|p| pattern_matches(p, topic))
    }

    #[must_use]
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| pattern_matches(p, topic))
    }
}

#[must_use]
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported algorithm")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("unsupported critical header extension")]
    Critical,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    /// RFC 7515 §4.1.11: extensions the verifier must understand. We understand none, so any
    /// `crit` (even an empty one, which the RFC forbids) refuses the token.
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

fn sign(secret: &str, signing_input: &str) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(signing_input.as_bytes());
    mac
}

/// `signing_input` (`header.body`) with its HS256 signature appended: a token.
#[must_use]
pub fn signed(secret: &str, signing_input: &str) -> String {
    let signature = URL_SAFE_NO_PAD.encode(sign(secret, signing_input).finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Mints a token for `claims`, signed with `secret`.
#[must_use]
pub fn mint(secret: &str, claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    signed(secret, &format!("{header}.{body}"))
}

/// Verifies signature, algorithm and expiry (`now` in seconds since the epoch).
///
/// # Errors
/// Why the token is refused; never more detail than that.
pub fn verify(secret: &str, token: &str, now: i64) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let decoded_header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let parsed: Header =
        serde_json::from_slice(&decoded_header).map_err(|_| TokenError::Malformed)?;
    if parsed.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    if parsed.crit.is_some() {
        return Err(TokenError::Critical);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let signing_input = &token[..header.len() + 1 + body.len()];
    sign(secret, signing_input)
        .verify_slice(&signature)
        .map_err(|_| TokenError::Signature)?;
    let body = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now) {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            exp,
            nbf: None,
            sub: Some("user-1".into()),
            presence: None,
            subscribe: vec!["private:foo-app".into()],
            publish: vec!["private:*".into()],
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let token = mint("s3cret", &claims(2_000));
        assert_eq!(verify("s3cret", &token, 1_000), Ok(claims(2_000)));
        assert_eq!(verify("other", &token, 1_000), Err(TokenError::Signature));
        assert_eq!(verify("s3cret", &token, 2_000), Err(TokenError::Expired));
        assert_eq!(verify("s3cret", "a.b", 0), Err(TokenError::Malformed));
        assert_eq!(verify("s3cret", "", 0), Err(TokenError::Malformed));
        let mut tampered = token.clone();
        tampered.insert(token.find('.').unwrap() + 2, 'x');
        assert!(verify("s3cret", &tampered, 1_000).is_err());
    }

    #[test]
    fn nbf_and_crit() {
        let mut early = claims(2_000);
        early.nbf = Some(1_500);
        let token = mint("s", &early);
        assert_eq!(verify("s", &token, 1_000), Err(TokenError::NotYetValid));
        assert_eq!(verify("s", &token, 1_500), Ok(early));
        // a correctly signed token whose header asks for an extension we do not know
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","crit":["exp-ext"],"exp-ext":1}"#);
        let body = URL_SAFE_NO_PAD.encode(br#"{"exp":99999999999,"subscribe":["private:*"]}"#);
        let input = format!("{header}.{body}");
        let signature = URL_SAFE_NO_PAD.encode(sign("s", &input).finalize().into_bytes());
        let token = format!("{input}.{signature}");
        assert_eq!(verify("s", &token, 0), Err(TokenError::Critical));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let body = URL_SAFE_NO_PAD.encode(br#"{"exp":99999999999,"subscribe":["private:*"]}"#);
        let token = format!("{header}.{body}.");
        assert_eq!(verify("s", &token, 0), Err(TokenError::Algorithm));
    }

    #[test]
    fn patterns_and_listen_alias() {
        let c: Claims =
            serde_json::from_str(r#"{"exp":1,"listen":["public:*"],"publish":["private:a"]}"#)
                .unwrap();
        assert!(c.may_subscribe("public:anything"));
        assert!(!c.may_subscribe("private:a"));
        assert!(c.may_publish("private:a"));
        assert!(!c.may_publish("private:ab"));
    }
}
