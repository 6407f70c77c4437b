//! `/admin/*`: a read-only look at the graph, behind ADMIN_TOKEN (`Authorization:
//! Bearer <token>`). Unset, it is off (404). A missing or wrong token gets 401 and a
//! log line; every attempt takes a token from one bucket ([`ATTEMPTS_PER_SEC`],
//! [`ATTEMPT_BURST`]), and an empty bucket answers 429 without looking at the token.
//! The token is compared in constant time (SHA-256 of both, then `subtle`).

use super::super::AppState;
use super::look;
use crate::rate::TokenBucket;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, OnceLock};
use subtle::ConstantTimeEq;

/// Bytes an admin request body may have.
pub const MAX_BODY: usize = 64 << 10;
pub const ATTEMPTS_PER_SEC: f64 = 5.0;
pub const ATTEMPT_BURST: f64 = 20.0;

/// ADMIN_TOKEN, kept only as its SHA-256.
pub struct Admin {
    token: OnceLock<[u8; 32]>,
    attempts: Mutex<TokenBucket>,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            token: OnceLock::new(),
            attempts: Mutex::new(TokenBucket::new(ATTEMPTS_PER_SEC, ATTEMPT_BURST)),
        }
    }
}

impl Admin {
    /// Turns the admin look on with this token (empty: stays off).
    pub fn set_token(&self, token: &str) {
        if !token.is_empty() {
            let _ = self.token.set(digest(token));
        }
    }

    pub fn enabled(&self) -> bool {
        self.token.get().is_some()
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn json_error(code: StatusCode, msg: &str) -> Response {
    (code, Json(serde_json::json!({ "error": msg }))).into_response()
}

/// None when the request carries the token; otherwise the answer to give.
fn refusal(state: &AppState, headers: &HeaderMap, from: std::net::SocketAddr) -> Option<Response> {
    let admin = &state.console.admin;
    let Some(want) = admin.token.get() else {
        return Some(json_error(
            StatusCode::NOT_FOUND,
            "the graph is not served: ADMIN_TOKEN is not set",
        ));
    };
    if !admin
        .attempts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Some(json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many admin requests; try again in a few seconds",
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| bool::from(digest(g.trim()).ct_eq(want)));
    if ok {
        return None;
    }
    tracing::warn!(
        %from,
        reason = if given.is_none() { "missing" } else { "wrong" },
        "admin request refused: missing or wrong ADMIN_TOKEN"
    );
    Some(json_error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong ADMIN_TOKEN (Authorization: Bearer <token>)",
    ))
}

fn json_text(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn list(items: &[String]) -> String {
    let mut s = String::from("[");
    for (i, t) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(t);
    }
    s.push(']');
    s
}

#[derive(Deserialize)]
pub struct NodeReq {
    id: String,
}

#[derive(Deserialize)]
pub struct QueryReq {
    query: serde_json::Value,
    limit: Option<usize>,
}

#[derive(Deserialize)]
pub struct OplogReq {
    limit: Option<usize>,
}

type AdminStore = Arc<Mutex<crate::store::Store>>;

/// What every admin request goes through: the token and its rate limit, then its JSON
/// body (an empty body reads as `{}`), then a loaded store.
fn admit<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    from: std::net::SocketAddr,
    body: &[u8],
    expected: &str,
) -> Result<(T, AdminStore), Box<Response>> {
    if let Some(r) = refusal(state, headers, from) {
        return Err(Box::new(r));
    }
    let body = if body.is_empty() { b"{}" } else { body };
    let Ok(req) = serde_json::from_slice::<T>(body) else {
        return Err(Box::new(json_error(StatusCode::BAD_REQUEST, expected)));
    };
    let Some(store) = state.store().cloned() else {
        return Err(Box::new(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store is loading",
        )));
    };
    Ok((req, store))
}

/// `POST /admin/node {"id": …}` → `{"node": {…} | null}`.
pub async fn node(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let expected = "expected {\"id\": \"<node id>\"}";
    let (req, store) = match admit::<NodeReq>(&state, &headers, from, &body, expected) {
        Ok(admitted) => admitted,
        Err(r) => return *r,
    };
    let found = look::node(&store.lock().unwrap_or_else(|p| p.into_inner()), &req.id);
    json_text(format!(
        "{{\"node\":{}}}",
        found.as_deref().unwrap_or("null")
    ))
}

/// `POST /admin/query {"query": {…}, "limit": n}` → `{"nodes": […], "scanned", "truncated"}`.
pub async fn query(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let expected = "expected {\"query\": {<GenosDB query>}, \"limit\": <n>}";
    let (req, store) = match admit::<QueryReq>(&state, &headers, from, &body, expected) {
        Ok(admitted) => admitted,
        Err(r) => return *r,
    };
    let q = match look::compile(&req.query.to_string()) {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let limit = req.limit.unwrap_or(look::DEFAULT_LIMIT);
    let found = tokio::task::spawn_blocking(move || {
        look::query(&store.lock().unwrap_or_else(|p| p.into_inner()), &q, limit)
    })
    .await;
    match found {
        Ok(Ok(f)) => json_text(format!(
            "{{\"nodes\":{},\"scanned\":{},\"truncated\":{}}}",
            list(&f.nodes),
            f.scanned,
            f.truncated
        )),
        Ok(Err(e)) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "the query failed"),
    }
}

/// `POST /admin/oplog {"limit": n}` → `{"oplog": […]}`, oldest first.
pub async fn oplog(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let expected = "expected {\"limit\": <n>}";
    let (req, store) = match admit::<OplogReq>(&state, &headers, from, &body, expected) {
        Ok(admitted) => admitted,
        Err(r) => return *r,
    };
    let entries = look::oplog(
        &store.lock().unwrap_or_else(|p| p.into_inner()),
        req.limit.unwrap_or(look::DEFAULT_LIMIT),
    );
    json_text(format!("{{\"oplog\":{}}}", list(&entries)))
}
