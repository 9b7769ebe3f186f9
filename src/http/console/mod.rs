//! The web console at `/console`: log in with the admin credentials, then manage apps and
//! watch their traffic in a browser.
//!
//! Everything it serves is embedded in the binary (`assets/`), so it works with no network and
//! no build step. The pages are one HTML shell and one script; the script reads and changes
//! apps through `/console/api`, the admin API's handlers behind a session instead of HTTP
//! Basic. Security, in layers:
//! - a session is a random token in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the
//!   request came over https, as `X-Forwarded-Proto` says), stored only as its SHA-256 in the
//!   registry, so every node knows it and logging out ends it everywhere;
//! - every state change carries a CSRF token derived from the session token
//!   (`X-CSRF-Token`, or a form field), compared in constant time; the login form carries its
//!   own (a double-submit cookie), so nobody can log a browser in as somebody else;
//! - failed logins are answered after `console.login_delay_ms`, at most
//!   `console.login_concurrency` checked at once per node, and counted
//!   (`pushlite_console_logins_total`);
//! - a strict Content-Security-Policy: scripts, styles and connections from this origin only,
//!   no inline code, no framing.

mod api;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Form, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::auth::credentials_match;
use super::error::{ApiError, detail_response};
use super::extract::{ClientIp, Slug};
use super::{admin, events, stats};
use crate::config::{DEV_ADMIN_PASSWORD, DEV_ADMIN_USERNAME};
use crate::limits::Limit;
use crate::node::NodeState;
use crate::registry::RegistryError;

const SESSION_COOKIE: &str = "pushlite_session";
const LOGIN_COOKIE: &str = "pushlite_login";
const CSRF_HEADER: &str = "x-csrf-token";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const SHELL: &str = include_str!("assets/shell.html");
const LOGIN: &str = include_str!("assets/login.html");

/// The files under `/console/assets/`: name, content type, bytes.
const ASSETS: [(&str, &str, &str); 2] = [
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
];

/// Lets at most `console.login_concurrency` logins be checked at once.
struct LoginGate(Arc<Semaphore>);

/// The longest a login waits for its turn before it is answered 429.
const LOGIN_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// The console's routes, to be merged at the root.
pub fn router(state: &NodeState) -> Router<NodeState> {
    let console = &state.config.console;
    let gate = Arc::new(LoginGate(Arc::new(Semaphore::new(
        usize::try_from(console.login_concurrency).unwrap_or(1),
    ))));
    let admin_limit = state.config.limits.admin_body_bytes;
    let pages = Router::new()
        .route("/console", get(page))
        .route("/console/nodes", get(page))
        .route("/console/apps/new", get(page))
        .route("/console/apps/{slug}", get(app_page))
        .route("/console/apps/{slug}/debug", get(app_page));
    let api = Router::new()
        .route("/overview", get(api::overview))
        .route("/nodes", get(stats::nodes))
        .route("/apps", get(admin::index).post(admin::create))
        .route(
            "/apps/{slug}",
            get(admin::show).patch(admin::update).delete(admin::delete),
        )
        .route("/apps/{slug}/rotate_secret", post(admin::rotate_secret))
        .route("/apps/{slug}/stats", get(stats::app_stats))
        .route(
            "/apps/{slug}/events",
            post(api::test_event).layer(DefaultBodyLimit::max(events::body_limit(
                state.config.limits.event_payload_bytes,
            ))),
        )
        .route("/apps/{slug}/debug", get(api::debug_stream))
        .layer(DefaultBodyLimit::max(admin_limit))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .merge(pages)
        .route("/console/", get(|| async { redirect("/console") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/{name}", get(asset))
        .nest("/console/api", api)
        .layer(DefaultBodyLimit::max(admin_limit))
        .layer(Extension(gate))
        .layer(middleware::from_fn(headers))
}

/// The security headers of every console response.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// 32 random bytes as hex, from the OS generator (two v4 UUIDs carry 244 random bits): the
/// login form's token.
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

type HmacSha256 = Hmac<Sha256>;

/// A session token: 32 random hex digits and their HMAC under a key made from the admin
/// credentials. A forged or stale cookie is refused without a database query, and changing
/// the admin password ends every session.
fn session_token(state: &NodeState) -> String {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let mac = token_mac(state, &nonce);
    format!("{nonce}{mac}")
}

fn token_mac(state: &NodeState, nonce: &str) -> String {
    let admin = &state.config.admin;
    let key = sha256_hex(&[
        "pushlite-console-key:",
        &admin.username,
        "\0",
        &admin.password,
    ]);
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|e| unreachable!("HMAC takes keys of any length: {e}"));
    mac.update(nonce.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Whether `token` is one this cluster made.
fn signed(state: &NodeState, token: &str) -> bool {
    token.len() == SESSION_TOKEN_LEN && same(&token[32..], &token_mac(state, &token[..32]))
}

const SESSION_TOKEN_LEN: usize = 32 + 64;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hex(&hasher.finalize())
}

/// What the registry stores for a session token.
fn token_hash(token: &str) -> String {
    sha256_hex(&["pushlite-console-session:", token])
}

/// The CSRF token of a session: the page gets it, the cookie's token stays unreadable.
fn csrf_of(token: &str) -> String {
    sha256_hex(&["pushlite-console-csrf:", token])
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The first cookie called `name` that this server could have set: `len` hex digits.
fn cookie<'a>(headers: &'a HeaderMap, name: &str, len: usize) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .find(|value| value.len() == len && value.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `Secure` when the browser reached us over https (through a proxy that says so).
fn secure(headers: &HeaderMap) -> &'static str {
    // The first value is the client's hop: `https, http` is a browser on https.
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    if https { "; Secure" } else { "" }
}

fn set_cookie(
    headers: &HeaderMap,
    name: &str,
    value: &str,
    path: &str,
    max_age: u64,
) -> HeaderValue {
    let text = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        secure(headers)
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The session of a request, when it has a live one.
struct Session {
    token: String,
}

enum Check {
    Valid(Session),
    Missing,
    Unavailable(RegistryError),
}

async fn session(state: &NodeState, headers: &HeaderMap) -> Check {
    let Some(token) = cookie(headers, SESSION_COOKIE, SESSION_TOKEN_LEN) else {
        return Check::Missing;
    };
    if !signed(state, token) {
        return Check::Missing;
    }
    let now = chrono::Utc::now().timestamp();
    match state.database.session_valid(&token_hash(token), now).await {
        Ok(true) => Check::Valid(Session {
            token: token.to_owned(),
        }),
        Ok(false) => Check::Missing,
        Err(error) => Check::Unavailable(error),
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The stored hash of the request's session, for handlers that check it again later.
#[derive(Clone)]
pub(super) struct SessionHash(pub String);

/// Middleware of `/console/api`: a live session, and its CSRF token on every state change.
async fn require_session(
    State(state): State<NodeState>,
    mut request: Request,
    next: Next,
) -> Response {
    let session = match session(&state, request.headers()).await {
        Check::Valid(session) => session,
        Check::Missing => {
            return detail_response(StatusCode::UNAUTHORIZED, "log in to the console first");
        }
        Check::Unavailable(error) => return ApiError::from(error).into_response(),
    };
    if !is_safe(request.method()) {
        let given = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !same(given, &csrf_of(&session.token)) {
            return detail_response(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
        }
    }
    request
        .extensions_mut()
        .insert(SessionHash(token_hash(&session.token)));
    next.run(request).await
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A development credential is in use: the banner says so on every page.
fn dev_credentials(state: &NodeState) -> bool {
    state.config.admin.username == DEV_ADMIN_USERNAME
        || state.config.admin.password == DEV_ADMIN_PASSWORD
}

const DEV_BANNER: &str = "<p class=\"banner\" role=\"alert\">This node uses the development admin \
     credentials. Set <code>PUSHER_ADMIN_USERNAME</code> and <code>PUSHER_ADMIN_PASSWORD</code> \
     before anyone else can reach it.</p>";

fn banner(state: &NodeState) -> &'static str {
    if dev_credentials(state) {
        DEV_BANNER
    } else {
        ""
    }
}

/// One of the console's pages, for a live session; the login page otherwise.
async fn render(state: &NodeState, headers: &HeaderMap, page: &str, slug: &str) -> Response {
    match session(state, headers).await {
        Check::Valid(session) => html(
            SHELL
                .replace("{{banner}}", banner(state))
                .replace("{{csrf}}", &csrf_of(&session.token))
                .replace("{{user}}", &escape(&state.config.admin.username))
                .replace("{{page}}", page)
                .replace("{{slug}}", &escape(slug)),
        ),
        Check::Missing => redirect("/console/login"),
        Check::Unavailable(error) => ApiError::from(error).into_response(),
    }
}

async fn page(
    State(state): State<NodeState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let page = match uri.path() {
        "/console/nodes" => "nodes",
        "/console/apps/new" => "new",
        _ => "apps",
    };
    render(&state, &headers, page, "").await
}

async fn app_page(
    State(state): State<NodeState>,
    Slug(slug): Slug,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let page = if uri.path().ends_with("/debug") {
        "debug"
    } else {
        "app"
    };
    render(&state, &headers, page, &slug).await
}

fn login_form(state: &NodeState, headers: &HeaderMap, status: StatusCode, error: &str) -> Response {
    let token = random_token();
    let body = LOGIN
        .replace("{{banner}}", banner(state))
        .replace("{{csrf}}", &token)
        .replace("{{error}}", error);
    let mut response = (status, html(body)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(headers, LOGIN_COOKIE, &token, "/console/login", 3600),
    );
    response
}

async fn login_page(State(state): State<NodeState>, headers: HeaderMap) -> Response {
    if let Check::Valid(_) = session(&state, &headers).await {
        return redirect("/console");
    }
    login_form(&state, &headers, StatusCode::OK, "")
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

const LOGIN_FAILED: &str = "<p class=\"error\" role=\"alert\">Wrong username or password.</p>";
const LOGIN_EXPIRED: &str =
    "<p class=\"error\" role=\"alert\">The login form expired; please try again.</p>";

async fn login(
    State(state): State<NodeState>,
    Extension(gate): Extension<Arc<LoginGate>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return login_form(&state, &headers, StatusCode::BAD_REQUEST, LOGIN_EXPIRED);
    };
    let expected = cookie(&headers, LOGIN_COOKIE, 64).unwrap_or_default();
    if expected.is_empty() || !same(&form.csrf, expected) {
        return login_form(&state, &headers, StatusCode::FORBIDDEN, LOGIN_EXPIRED);
    }
    // The admin API and the console share each address's budget of wrong passwords.
    if let Err(wait) = state.limits.login_allowed(ip) {
        state.metrics.limit_refused(Limit::AdminLogin);
        return ApiError::too_many("too many failed logins from this address; try later", wait)
            .into_response();
    }
    // A turn is held while checking and, for a failure, while its delay runs out, on a task
    // of its own: a client that hangs up cannot cut the delay short. Waiting for a turn is
    // bounded too, so a flood of guesses cannot queue without end.
    let Ok(Ok(turn)) = tokio::time::timeout(LOGIN_QUEUE_WAIT, gate.0.clone().acquire_owned()).await
    else {
        let mut response = detail_response(
            StatusCode::TOO_MANY_REQUESTS,
            "too many login attempts; try again",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    };
    let admin = &state.config.admin;
    if !credentials_match(
        (&form.username, &form.password),
        (&admin.username, &admin.password),
    ) {
        state.metrics.console_login("failed");
        state.limits.login_failed(ip);
        tracing::warn!(%ip, "console login failed");
        let delay = Duration::from_millis(state.config.console.login_delay_ms);
        let served = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            drop(turn);
        });
        let _ = served.await;
        return login_form(&state, &headers, StatusCode::UNAUTHORIZED, LOGIN_FAILED);
    }
    drop(turn);
    let token = session_token(&state);
    let ttl = state.config.console.session_ttl_secs;
    let expires = chrono::Utc::now().timestamp() + i64::try_from(ttl).unwrap_or(i64::MAX / 2);
    if let Err(error) = state
        .database
        .start_session(&token_hash(&token), expires)
        .await
    {
        return ApiError::from(error).into_response();
    }
    state.metrics.console_login("ok");
    tracing::info!("console login");
    let mut response = redirect("/console");
    let cookies = response.headers_mut();
    cookies.append(
        header::SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, &token, "/console", ttl),
    );
    cookies.append(
        header::SET_COOKIE,
        set_cookie(&headers, LOGIN_COOKIE, "", "/console/login", 0),
    );
    response
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<NodeState>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let session = match session(&state, &headers).await {
        Check::Valid(session) => session,
        Check::Missing => return redirect("/console/login"),
        Check::Unavailable(error) => return ApiError::from(error).into_response(),
    };
    let given = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !same(&given, &csrf_of(&session.token)) {
        return detail_response(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    if let Err(error) = state
        .database
        .end_session(&token_hash(&session.token))
        .await
    {
        return ApiError::from(error).into_response();
    }
    let mut response = redirect("/console/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, "", "/console", 0),
    );
    response
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => detail_response(StatusCode::NOT_FOUND, "no such asset"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_only_when_they_could_be_ours() {
        let mut headers = HeaderMap::new();
        let token = random_token();
        assert_eq!(token.len(), 64);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!(
                "a=b; {SESSION_COOKIE}=<script>; {SESSION_COOKIE}={token}; c=d"
            ))
            .unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE, 64), Some(token.as_str()));
        assert_eq!(cookie(&headers, SESSION_COOKIE, 96), None);
    }

    #[test]
    fn the_csrf_token_is_not_the_session_token_nor_its_stored_hash() {
        let token = random_token();
        assert_ne!(csrf_of(&token), token);
        assert_ne!(csrf_of(&token), token_hash(&token));
        assert_eq!(csrf_of(&token), csrf_of(&token));
    }

    #[test]
    fn cookies_are_secure_behind_https() {
        let mut headers = HeaderMap::new();
        let plain = set_cookie(&headers, SESSION_COOKIE, "x", "/console", 60);
        assert!(!plain.to_str().unwrap().contains("Secure"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        let secure = set_cookie(&headers, SESSION_COOKIE, "x", "/console", 60);
        let secure = secure.to_str().unwrap();
        assert!(
            secure.contains("HttpOnly; SameSite=Strict; Secure"),
            "{secure}"
        );
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
