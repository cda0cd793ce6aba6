//! `/dashboard`: a page served by the cloud that draws the analytics views.
//!
//! Its three files are built into the binary (`cloud/assets/dashboard/`), and it loads nothing
//! from anywhere else: the charts are SVG drawn by its own script, the data comes from
//! `/v1/analytics/...` (or the person's `/v1/users/{id}/analytics`) with the bearer token the
//! visitor types in. The page itself is public and holds no data; every figure is behind the API's
//! authorisation. A strict Content-Security-Policy keeps it that way: scripts, styles and
//! requests only from this origin.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};

const INDEX_HTML: &str = include_str!("../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard/dashboard.css");

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The dashboard's routes, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/dashboard",
            get(|| async {
                asset(
                    INDEX_HTML,
                    "text/html; charset=utf-8",
                    CONTENT_SECURITY_POLICY,
                )
            }),
        )
        .route(
            "/dashboard/dashboard.js",
            get(|| async {
                asset(
                    SCRIPT,
                    "text/javascript; charset=utf-8",
                    CONTENT_SECURITY_POLICY,
                )
            }),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8", CONTENT_SECURITY_POLICY) }),
        )
}

/// A file built into the binary, with the headers that keep a page to its own origin.
pub(crate) fn asset(
    body: &'static str,
    content_type: &'static str,
    content_security_policy: &'static str,
) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(content_security_policy),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // A new binary may bring new assets: revalidate rather than run a stale script.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str) -> (axum::http::StatusCode, axum::http::HeaderMap, String) {
        let response = routes::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_from_the_binary() {
        for (path, kind) in [
            ("/dashboard", "text/html"),
            ("/dashboard/dashboard.js", "text/javascript"),
            ("/dashboard/dashboard.css", "text/css"),
        ] {
            let (status, headers, body) = get(path).await;
            assert_eq!(status, 200, "{path}");
            assert!(
                headers[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with(kind)
            );
            assert!(
                headers[header::CONTENT_SECURITY_POLICY]
                    .to_str()
                    .unwrap()
                    .contains("default-src 'none'")
            );
            assert!(!body.is_empty(), "{path}");
        }
        let (_, _, page) = get("/dashboard").await;
        assert!(page.contains(r#"src="/dashboard/dashboard.js""#));
        assert!(page.contains(r#"href="/dashboard/dashboard.css""#));
    }

    #[test]
    fn nothing_is_loaded_from_elsewhere() {
        // The only absolute URL is the SVG namespace, which names, and is never fetched.
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("dashboard.js", SCRIPT),
            ("dashboard.css", STYLE),
        ] {
            let urls = text
                .match_indices("://")
                .map(|(i, _)| &text[i.saturating_sub(5)..(i + 30).min(text.len())])
                .filter(|context| !context.contains("http://www.w3.org/2000/svg"))
                .collect::<Vec<_>>();
            assert!(urls.is_empty(), "{name} names external URLs: {urls:?}");
            assert!(!text.contains("@import"), "{name}");
        }
    }
}
