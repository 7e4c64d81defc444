//! The browser view, embedded in the binary at build time (see `build.rs`), served with content
//! types, security headers and caching: hashed files under `/assets/` forever, `index.html` never,
//! and every other path that is not the API falls back to `index.html` (the view routes by hash).

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The content security policy of the view: scripts and styles only from us; map tiles and
/// their fonts may come from a configured tile server; MapLibre runs its workers from blobs.
const CSP: &str = "default-src 'self'; script-src 'self'; worker-src 'self' blob:; child-src blob:; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data: blob: http: https:; media-src 'self' blob:; \
    connect-src 'self' http: https:; font-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'self'";

fn mime(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn find(path: &str) -> Option<&'static [u8]> {
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, b)| *b)
}

/// Serves an embedded file, or `index.html` for any other path outside `/api/`.
pub async fn serve(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    if path.starts_with("api/") {
        return crate::api::ApiError::not_found("endpoint", uri.path()).into_response();
    }
    let (name, bytes) = match find(path).filter(|_| !path.is_empty()) {
        Some(b) => (path, b),
        None => match find("index.html") {
            Some(b) => ("index.html", b),
            None => return (StatusCode::NOT_FOUND, "the web view was not built").into_response(),
        },
    };
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime(name)));
    let cache = if name.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_view_is_embedded() {
        let index = std::str::from_utf8(find("index.html").expect("index.html embedded")).unwrap();
        assert!(index.contains("<script"), "index.html loads the bundle");
        assert!(ASSETS.iter().any(|(p, _)| p.starts_with("assets/") && p.ends_with(".js")));
        assert_eq!(mime("assets/x.js"), "text/javascript; charset=utf-8");
    }
}
