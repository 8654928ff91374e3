//! Checks every request passes before a route sees it: the Origin check (a web page on another
//! site must not drive this server: ComfyUI's check, on every host), the Host check of a
//! loopback server without a token (a page that rebinds its own name to 127.0.0.1 must not
//! reach it), and the optional bearer token.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::routes::ApiError;
use crate::AppState;

/// Runs the Origin check, the Host check, then the token check.
pub async fn guard(State(core): State<AppState>, request: Request, next: Next) -> Response {
    if let Err(message) = check_origin(request.headers()) {
        tracing::warn!("{message}");
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden_origin", message).into_response();
    }
    if core.local_only && core.token.is_none() {
        if let Err(message) = check_host(request.headers()) {
            tracing::warn!("{message}");
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden_host", message).into_response();
        }
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

/// `host[:port]` with nothing else: no user info, no stray characters, a port that is a number.
/// (`http://127.0.0.1:8188.evil.example` would otherwise read as host 127.0.0.1, port unknown.)
fn plain_authority(authority: &str) -> bool {
    if authority.is_empty() || authority.contains(['@', ' ', '\\', '?', '#']) {
        return false;
    }
    let port = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((_, "")) => None,
            Some((_, after)) => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
            None => return false,
        },
        None => authority.split_once(':').map(|(_, port)| port),
    };
    port.is_none_or(|p| p.parse::<u16>().is_ok())
}

fn is_loopback(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// ComfyUI's `origin_only_middleware`, on every host: a request whose Origin names another
/// host (or port, when both give one) than its Host is refused. Browsers send an Origin on
/// cross-site POSTs (which need no CORS preflight when their type is `text/plain`), on
/// WebSockets and on cross-origin fetches; other clients send none. Unlike ComfyUI, which checks
/// loopback hosts only, a server on the network without a token is protected too, and an opaque
/// `Origin: null` (sandboxed frames, `file:` pages) is refused.
pub fn check_origin(headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let Ok(origin) = origin.to_str() else {
        return Err("refused a cross-site request: its Origin is not readable text".into());
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return Err(format!(
            "refused a cross-site request: Origin {origin:?} without a Host header"
        ));
    };
    let (host_name, host_port) = host_and_port(host.trim());
    let origin = origin.trim();
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .unwrap_or("");
    if !plain_authority(authority) {
        return Err(format!(
            "refused a cross-site request: Origin {origin:?} on a server reached as {host}"
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

/// For a server that listens on loopback without a token: the Host must be a loopback name or
/// address. A page on `http://evil.example` whose DNS answer turns into 127.0.0.1 (DNS
/// rebinding) sends `Host: evil.example` with a matching Origin, which the Origin check lets
/// through; this does not. Clients that send no Host (HTTP/1.0) are not browsers and pass.
pub fn check_host(headers: &HeaderMap) -> Result<(), String> {
    let Some(host) = headers.get(header::HOST) else {
        return Ok(());
    };
    let host = host.to_str().unwrap_or("");
    let (name, _) = host_and_port(host.trim());
    if is_loopback(&name) {
        Ok(())
    } else {
        Err(format!(
            "refused a request for Host {host:?}: this server listens on loopback without a \
             token, so it answers only to localhost names and loopback addresses (a web page \
             could otherwise point its own name at 127.0.0.1); give it --token to be reached \
             under other names, through a proxy say"
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
    fn cross_site_requests_are_refused() {
        assert!(check_origin(&headers("127.0.0.1:8188", None)).is_ok());
        assert!(check_origin(&headers("127.0.0.1:8188", Some("http://127.0.0.1:8188"))).is_ok());
        assert!(check_origin(&headers("localhost:8188", Some("http://localhost"))).is_ok());
        assert!(check_origin(&headers("[::1]:8188", Some("http://[::1]:8188"))).is_ok());
        assert!(check_origin(&headers("127.0.0.1:8188", Some("https://evil.example"))).is_err());
        assert!(check_origin(&headers("localhost:8188", Some("http://localhost:9999"))).is_err());
        assert!(check_origin(&headers("127.0.0.1:8188", Some("null"))).is_err());
        for forged in [
            "http://127.0.0.1:8188.evil.example",
            "http://evil@127.0.0.1:8188",
            "http://127.0.0.1:x",
            "http://[::1]x",
        ] {
            assert!(
                check_origin(&headers("127.0.0.1:8188", Some(forged))).is_err(),
                "{forged}"
            );
        }
        // On the network too (ComfyUI checks loopback hosts only).
        assert!(check_origin(&headers("gpu-box:8188", Some("https://evil.example"))).is_err());
        assert!(check_origin(&headers("gpu-box:8188", Some("http://gpu-box:8188"))).is_ok());
        assert!(check_origin(&headers("gpu-box:8188", Some("http://gpu-box:9999"))).is_err());
        // A rebound name matches its own Origin: the Host check stops it.
        assert!(check_origin(&headers(
            "evil.example:8188",
            Some("http://evil.example:8188")
        ))
        .is_ok());
    }

    #[test]
    fn a_loopback_server_answers_only_to_loopback_names() {
        for host in [
            "127.0.0.1:8188",
            "localhost:8188",
            "[::1]:8188",
            "a.localhost",
            "127.1.2.3",
        ] {
            assert!(check_host(&headers(host, None)).is_ok(), "{host}");
        }
        for host in [
            "evil.example:8188",
            "gpu-box",
            "192.168.1.5:8188",
            "localhost.evil.example",
        ] {
            assert!(check_host(&headers(host, None)).is_err(), "{host}");
        }
        assert!(check_host(&HeaderMap::new()).is_ok());
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
