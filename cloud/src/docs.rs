//! `/docs`: interactive API documentation over `/openapi.json` (Swagger UI), served entirely by
//! the cloud. The UI is vendored from the npm registry (`cloud/assets/docs/VENDORED.md`) and
//! built into the binary, so the page works on a machine with no internet access; its
//! Content-Security-Policy lets it load and ask nothing from anywhere but this origin.

use axum::{Router, response::Redirect, routing::get};

use crate::dashboard::asset;

const INDEX_HTML: &str = include_str!("../assets/docs/index.html");
const INIT: &str = include_str!("../assets/docs/docs.js");
const BUNDLE: &str = include_str!("../assets/docs/swagger-ui-bundle.js");
const STYLE: &str = include_str!("../assets/docs/swagger-ui.css");

/// Swagger UI sets inline styles and draws its icons as `data:` SVG; nothing else is allowed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The docs' routes, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/docs",
            get(|| async {
                asset(
                    INDEX_HTML,
                    "text/html; charset=utf-8",
                    CONTENT_SECURITY_POLICY,
                )
            }),
        )
        .route("/docs/", get(|| async { Redirect::permanent("/docs") }))
        .route(
            "/docs/docs.js",
            get(|| async {
                asset(
                    INIT,
                    "text/javascript; charset=utf-8",
                    CONTENT_SECURITY_POLICY,
                )
            }),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async {
                asset(
                    BUNDLE,
                    "text/javascript; charset=utf-8",
                    CONTENT_SECURITY_POLICY,
                )
            }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8", CONTENT_SECURITY_POLICY) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains(r#"src="/docs/swagger-ui-bundle.js""#));
        assert!(INDEX_HTML.contains(r#"src="/docs/docs.js""#));
        assert!(!INDEX_HTML.contains("://"));
        assert!(INIT.contains(r#"url: "/openapi.json""#));
        assert!(INIT.contains("validatorUrl: null"));
    }
}
