//! HTTP Basic credentials, compared in constant time.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

/// `user:password` from an `Authorization: Basic …` header, if it has one that decodes.
#[must_use]
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Both halves are always compared, so timing does not tell which one was wrong.
#[must_use]
pub fn credentials_match(given: (&str, &str), expected: (&str, &str)) -> bool {
    let user = given.0.as_bytes().ct_eq(expected.0.as_bytes());
    let password = given.1.as_bytes().ct_eq(expected.1.as_bytes());
    bool::from(user & password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn parses_and_compares() {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode("admin:pa:ss"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        let (u, p) = basic_credentials(&headers).unwrap();
        assert_eq!((u.as_str(), p.as_str()), ("admin", "pa:ss"));
        assert!(credentials_match((&u, &p), ("admin", "pa:ss")));
        assert!(!credentials_match((&u, &p), ("admin", "pa:sS")));
        assert!(!credentials_match((&u, &p), ("admin2", "pa:ss")));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(basic_credentials(&headers).is_none());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(basic_credentials(&headers).is_none());
    }
}
