//! Request bodies that may be a form (as Rails' `Net::HTTP.post_form` and curl `--data` send)
//! or JSON, both turned into one JSON object for validation.

use axum::http::{HeaderMap, header};
use serde_json::{Map, Value};

use super::error::ApiError;

enum Kind {
    Json,
    Form,
}

fn kind(headers: &HeaderMap) -> Result<Kind, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        Ok(Kind::Json)
    } else if mime == "application/x-www-form-urlencoded" {
        Ok(Kind::Form)
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Parses the body into a flat JSON object. Form values are strings; a form key ending in
/// `[]` collects its values into an array.
///
/// # Errors
/// 415 for other content types, 400 for bodies that do not parse or are not objects.
pub fn object(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match kind(headers)? {
        Kind::Json => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(ApiError::BadRequest(
                "the JSON body must be an object".to_owned(),
            )),
            Err(e) => Err(ApiError::BadRequest(format!("malformed JSON body: {e}"))),
        },
        Kind::Form => {
            let pairs = form_pairs(body)?;
            let mut map = Map::new();
            for (key, value) in pairs {
                if let Some(list_key) = key.strip_suffix("[]") {
                    let entry = map
                        .entry(list_key.to_owned())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(items) = entry {
                        items.push(Value::String(value));
                    }
                } else {
                    map.insert(key, Value::String(value));
                }
            }
            Ok(map)
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` strictly: a name or value that is not UTF-8
/// once percent-decoded is refused, where the usual decoders would store U+FFFD in its place.
fn form_pairs(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |part: &[u8]| -> Result<String, ApiError> {
        let spaced: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&spaced)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| {
                ApiError::BadRequest("malformed form body: not UTF-8 once decoded".to_owned())
            })
    };
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut halves = pair.splitn(2, |&b| b == b'=');
            let name = decode(halves.next().unwrap_or_default())?;
            let value = decode(halves.next().unwrap_or_default())?;
            Ok((name, value))
        })
        .collect()
}

/// The `app` object of an admin request: `{"app": {...}}` in JSON, `app[field]=…` in a form.
///
/// # Errors
/// As [`object`], and 400 when there is no `app` object.
pub fn app_object(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let mut map = object(headers, body)?;
    if let Some(app) = map.remove("app") {
        return match app {
            Value::Object(app) => Ok(app),
            _ => Err(ApiError::BadRequest("`app` must be an object".to_owned())),
        };
    }
    let mut app = Map::new();
    for (key, value) in map {
        if let Some(field) = key.strip_prefix("app[").and_then(|k| k.strip_suffix(']')) {
            app.insert(field.to_owned(), value);
        }
    }
    if app.is_empty() {
        return Err(ApiError::BadRequest(
            "missing the `app` parameter: send {\"app\": {...}} or app[name]=...".to_owned(),
        ));
    }
    Ok(app)
}
