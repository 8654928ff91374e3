//! Checks every request passes before a route sees it: ComfyUI's Origin check (a web page on
//! another site must not drive a server on this machine) and the optional bearer token.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::routes::ApiError;
use crate::AppState;

/// Runs the Origin check, then the token check.
pub async fn guard(State(core): State<AppState>, request: Request, next: Next) -> Response {
    if let Err(message) = check_origin(request.headers()) {
        tracing::warn!("{message}");
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden_origin", message).into_response();
    }
    if let Some(token) = &core.token {
        if !authorized(&request, token) {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server needs a token: send `Authorization: Bearer <token>` (the WebSocket \
                 and /view also take `?token=<token>`)"
                    .to_string(),
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(request: &Request, token: &str) -> bool {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    if bearer.is_some_and(|b| same_secret(b.as_bytes(), token.as_bytes())) {
        return true;
    }
    // The web frontend cannot send a header: a browser signs in once at `/?token=…`, which
    // sets this cookie (HttpOnly, SameSite=Strict: never sent by another site's page).
    // The cookie is sent by every page of the same site, other ports included, so it counts
    // only for requests whose Origin (browsers send one on WebSockets, POSTs and cross-origin
    // fetches) is this server's own.
    if let Some(cookie) = token_cookie(request.headers()) {
        if same_secret(cookie.as_bytes(), cookie_value(token).as_bytes())
            && origin_is_host(request.headers())
        {
            return true;
        }
    }
    // Browsers cannot set headers on a WebSocket or an <img>: those two take the token in the
    // query string, and so does the frontend's page (to sign in).
    let path = request.uri().path();
    if matches!(path, "/" | "/ws" | "/api/ws" | "/view" | "/api/view") {
        if let Ok(Query(q)) = Query::<HashMap<String, String>>::try_from_uri(request.uri()) {
            if let Some(t) = q.get("token") {
                return same_secret(t.as_bytes(), token.as_bytes());
            }
        }
    }
    false
}

/// The name of the cookie a browser signs in with (`/?token=…`): one per port, since cookies
/// are shared by every port of a host and two servers must not overwrite each other's.
pub fn cookie_name(headers: &HeaderMap) -> String {
    let port = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| host_and_port(h.trim()).1)
        .unwrap_or(80);
    format!("veetance_token_{port}")
}

/// The cookie's value: derived from the token (never the token itself, which other services on
/// the host would receive with the cookie), hex.
pub fn cookie_value(token: &str) -> String {
    blake3::derive_key("veetance serve 2026-12 sign-in cookie", token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `Set-Cookie` value that signs a browser in.
pub fn sign_in_cookie(headers: &HeaderMap, token: &str) -> String {
    format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict",
        cookie_name(headers),
        cookie_value(token)
    )
}

/// The value of this server's sign-in cookie in a request's `Cookie` headers.
fn token_cookie(headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(headers);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim().to_string())
}

/// No Origin, or an Origin naming exactly the Host (name and port), whatever the host.
fn origin_is_host(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, rest)) = origin.trim().split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    let (origin_name, origin_port) = host_and_port(authority);
    let (host_name, host_port) = host_and_port(host.trim());
    origin_name == host_name
        && origin_port.unwrap_or(default_port) == host_port.unwrap_or(default_port)
}

/// `host[:port]` of a Host header or an Origin's authority, host lowercased and IPv6 brackets
/// removed.
fn host_and_port(authority: &str) -> (String, Option<u16>) {
    let authority = authority
        .rsplit('@')
        .next()
        .unwrap_or(authority)
        .to_ascii_lowercase();
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (host.to_string(), port);
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host.to_string(), port.parse().ok()),
        _ => (authority, None),
    }
}

fn is_loopback(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// ComfyUI's `origin_only_middleware`: when the Host is a loopback name or address, a request
/// whose Origin names another host (or port, when both give one) is refused. Unlike ComfyUI,
/// an opaque `Origin: null` (sandboxed frames, `file:` pages) is refused too on loopback.
pub fn check_origin(headers: &HeaderMap) -> Result<(), String> {
    let (Some(host), Some(origin)) = (
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
    ) else {
        return Ok(());
    };
    let (host_name, host_port) = host_and_port(host.trim());
    if !is_loopback(&host_name) {
        return Ok(());
    }
    let origin = origin.trim();
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .unwrap_or("");
    if authority.is_empty() {
        return Err(format!(
            "refused a cross-site request: Origin {origin:?} on a server listening on {host}"
        ));
    }
    let (origin_name, origin_port) = host_and_port(authority);
    let same_port = match (host_port, origin_port) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    if origin_name == host_name && same_port {
        Ok(())
    } else {
        Err(format!(
            "refused a cross-site request: Origin {origin:?} does not match Host {host:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn cross_site_requests_to_loopback_are_refused() {
        assert!(check_origin(&headers("127.0.0.1:8188", None)).is_ok());
        assert!(check_origin(&headers("127.0.0.1:8188", Some("http://127.0.0.1:8188"))).is_ok());
        assert!(check_origin(&headers("localhost:8188", Some("http://localhost"))).is_ok());
        assert!(check_origin(&headers("[::1]:8188", Some("http://[::1]:8188"))).is_ok());
        assert!(check_origin(&headers("127.0.0.1:8188", Some("https://evil.example"))).is_err());
        assert!(check_origin(&headers("localhost:8188", Some("http://localhost:9999"))).is_err());
        assert!(check_origin(&headers("127.0.0.1:8188", Some("null"))).is_err());
        // Not loopback: left to the token (ComfyUI checks loopback hosts only).
        assert!(check_origin(&headers("gpu-box:8188", Some("https://evil.example"))).is_ok());
    }

    #[test]
    fn the_sign_in_cookie_needs_its_own_origin() {
        let mut h = headers("gpu-box:8188", Some("http://gpu-box:8188"));
        assert!(origin_is_host(&h));
        h.insert(header::ORIGIN, "http://gpu-box:8080".parse().unwrap());
        assert!(!origin_is_host(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!origin_is_host(&h));
        assert!(origin_is_host(&headers("gpu-box", Some("http://gpu-box"))));
        assert!(origin_is_host(&headers("gpu-box:8188", None)));
        assert_eq!(
            cookie_name(&headers("gpu-box:8188", None)),
            "veetance_token_8188"
        );
        assert_ne!(cookie_value("s3cret"), "s3cret");
        assert_eq!(cookie_value("s3cret").len(), 64);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
