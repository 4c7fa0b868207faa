//! `GET /`: what a person who opens the address in a browser sees instead of
//! a 404: what this server is and where to go next (the dashboard, the
//! OpenAPI description, the metrics, the routes, and the README's API
//! section, embedded in the binary so the page never drifts from it). The
//! same links as JSON when `Accept` asks for `application/json`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::routes::Endpoint;

/// The README, for its API section.
const README: &str = include_str!("../../README.md");

/// A page of text and links: no script, nothing from another host.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The README's `## API` section, up to the next `## ` heading.
fn api_section() -> &'static str {
    let start = README.find("\n## API\n").map_or(0, |i| i + 1);
    let rest = &README[start..];
    let end = rest[1..].find("\n## ").map_or(rest.len(), |i| i + 1);
    rest[..end].trim_end()
}

/// The pages this listener serves itself, `(path, what it is)`. With
/// `--admin-listen` the metrics and the dashboard live there instead.
fn links(st: &AppState) -> Vec<(&'static str, &'static str)> {
    let mut out = vec![("/openapi.json", "OpenAPI 3 description of the API")];
    if !st.access.metrics_on_admin {
        out.extend([
            ("/dashboard", "live dashboard"),
            ("/metrics", "Prometheus metrics"),
            ("/metrics.json", "the same figures as JSON"),
        ]);
    }
    out.extend([
        ("/healthz", "liveness probe"),
        ("/readyz", "readiness probe"),
    ]);
    out
}

pub async fn page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        json_answer(&st)
    } else {
        html_answer(&st)
    }
}

fn json_answer(st: &AppState) -> Response {
    let links: serde_json::Map<String, serde_json::Value> = links(st)
        .into_iter()
        .map(|(path, _)| (path.trim_start_matches('/').to_string(), json!(path)))
        .chain([("api".to_string(), json!("/#api"))])
        .collect();
    let routes = Endpoint::listing("|");
    Json(json!({
        "service": "hashpress",
        "version": env!("CARGO_PKG_VERSION"),
        "links": links,
        "metrics_on_admin_listener": st.access.metrics_on_admin,
        "token_required": st.access.tokens.is_some(),
        "routes": routes,
    }))
    .into_response()
}

fn html_answer(st: &AppState) -> Response {
    let mut items = String::new();
    for (path, what) in links(st) {
        items.push_str(&format!(
            "<li><a href=\"{path}\"><code>{path}</code></a> — {what}</li>\n"
        ));
    }
    items.push_str("<li><a href=\"#api\">API</a> — the README's API section, below</li>\n");
    let mut notes = String::new();
    if st.access.metrics_on_admin {
        notes.push_str(
            "<p>The metrics and the dashboard are served on the admin listener \
             (<code>--admin-listen</code>).</p>\n",
        );
    }
    if st.access.tokens.is_some() {
        notes.push_str(
            "<p>This server requires <code>Authorization: Bearer &lt;token&gt;</code> \
             everywhere but on <code>/</code>, <code>/healthz</code>, <code>/readyz</code> \
             and the dashboard page (which asks for a token).</p>\n",
        );
    }
    let routes: String = Endpoint::listing(" | ")
        .iter()
        .map(|r| format!("<li><code>{r}</code></li>\n"))
        .collect();
    let body = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>hashpress</title>\n<link rel=\"icon\" href=\"data:,\">\n<style>\n\
         body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; \
         padding: 0 1rem; }}\n\
         pre {{ background: #f4f4f4; padding: 1rem; overflow-x: auto; }}\n</style>\n</head>\n\
         <body>\n<h1>hashpress <small>{version}</small></h1>\n\
         <p>A streaming hash and gzip HTTP server: digests and gzip of request bodies and of \
         files under one served directory.</p>\n<ul>\n{items}</ul>\n{notes}\
         <h2>Routes</h2>\n<ul>\n{routes}</ul>\n\
         <section id=\"api\">\n<h2>API <small>(from the README)</small></h2>\n\
         <pre>{api}</pre>\n</section>\n</body>\n</html>\n",
        version = env!("CARGO_PKG_VERSION"),
        api = escape(api_section()),
    );
    super::dashboard::html(body, CSP)
}

/// Text as HTML character data.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_section_is_the_readmes() {
        let s = api_section();
        assert!(s.starts_with("## API\n"), "{s:.80}");
        assert!(s.contains("/hash-file/"), "{s}");
        assert!(!s.contains("\n## "), "runs into the next section: {s}");
    }

    #[test]
    fn escape_makes_text_inert() {
        assert_eq!(escape("a<b>&\"c"), "a&lt;b&gt;&amp;\"c");
    }
}
