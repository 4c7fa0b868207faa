//! `GET /dashboard`: the live dashboard, one self-contained page embedded in
//! the binary. It polls `/metrics.json` once a second and draws its charts
//! with its own script: nothing is loaded from another host.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The page: HTML, CSS and JS in one file.
const PAGE: &str = include_str!("dashboard.html");

/// The page may run its own inline script and style, talk to this origin
/// only (the `/metrics.json` polls) and load nothing from anywhere else.
const CSP: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
                   style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn page() -> Response {
    let mut resp = html(PAGE, CSP);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// An HTML page of ours (this one, the index): its type, the page's own
/// content security policy, and no content sniffing.
pub fn html(body: impl IntoResponse, csp: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}
