//! The browser view, embedded in the binary at build time (see `build.rs`), served with content
//! types, security headers and caching: hashed files under `/assets/` forever, `index.html` never,
//! and every other path that is not the API falls back to `index.html` (the view routes by hash).
//! The field app lives under `/app/` (its own page, `app/index.html`, with its web manifest and
//! service worker `app/sw.js`, whose scope is `/app/`); paths under it fall back to that page.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The content security policy of the view: scripts only from us (no inline script, no
/// `eval`); styles from us plus inline `style` attributes (MapLibre positions its markers and
/// controls with them); MapLibre's workers from `blob:`; map tiles only from the configured tile
/// server's origin (`tile_origin`), fetched and drawn as images; nothing may frame the view.
pub fn content_security_policy(tile_origin: Option<&str>) -> String {
    let tiles = tile_origin.map(|o| format!(" {o}")).unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'; worker-src 'self' blob:; child-src 'self' blob:; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:{tiles}; media-src 'self' blob:; \
         connect-src 'self'{tiles}; font-src 'self' data:; object-src 'none'; frame-src 'none'; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
}

/// The origin (`scheme://host[:port]`) of a tile URL template, if it is a plain http(s) URL.
pub fn tile_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let host = rest.split('/').next()?;
    let ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    ok.then(|| format!("{scheme}://{host}"))
}

fn mime(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
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
pub async fn serve(State(s): State<crate::AppState>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    if path.starts_with("api/") {
        return crate::api::ApiError::not_found("endpoint", uri.path()).into_response();
    }
    // A file; else the field app's page for `/app`, `/app/` and anything under it; else a page
    // of its own (`/tip` → `tip/index.html`); else the desk's view.
    let own_page = format!("{}/index.html", path.trim_end_matches('/'));
    let page = if path == "app" || path.starts_with("app/") {
        "app/index.html"
    } else {
        ASSETS.iter().find(|(p, _)| !path.is_empty() && *p == own_page).map_or("index.html", |(p, _)| *p)
    };
    let (name, bytes) = match find(path).filter(|_| !path.is_empty() && !path.ends_with('/')) {
        Some(b) => (path, b),
        None => match find(page) {
            Some(b) => (page, b),
            None => return (StatusCode::NOT_FOUND, "the web view was not built").into_response(),
        },
    };
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime(name)));
    let cache = if name.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_SECURITY_POLICY, s.view_csp.clone());
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
        let app = std::str::from_utf8(find("app/index.html").expect("the field app embedded")).unwrap();
        assert!(app.contains("manifest.webmanifest"), "the app links its manifest");
        assert!(find("app/sw.js").is_some(), "the app's service worker embedded");
        assert_eq!(mime("app/manifest.webmanifest"), "application/manifest+json");
    }

    #[test]
    fn only_the_tile_server_is_allowed_beyond_our_origin() {
        assert_eq!(
            tile_origin("https://tiles.example:8443/{z}/{x}/{y}.png").as_deref(),
            Some("https://tiles.example:8443")
        );
        assert_eq!(tile_origin("javascript:alert(1)"), None);
        assert_eq!(tile_origin("https://a.example;script-src *"), None);
        let csp = content_security_policy(Some("https://t.example"));
        assert!(csp.contains("img-src 'self' data: blob: https://t.example;"), "{csp}");
        assert!(csp.contains("connect-src 'self' https://t.example;"), "{csp}");
        assert!(!content_security_policy(None).contains("http"), "no other origin without tiles");
    }
}
