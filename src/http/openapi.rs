//! `GET /openapi.json`: the API described in OpenAPI 3.0, embedded in the
//! binary. Tests below keep it, the endpoint table (`crate::routes`) and the
//! router in agreement.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The document, as written in `openapi.json` beside this file.
pub const SPEC: &str = include_str!("openapi.json");

pub async fn spec() -> Response {
    let mut resp = SPEC.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};

    use super::SPEC;
    use crate::http::{ConnFacts, app, test_state};
    use crate::routes::Endpoint;

    fn spec_operations() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(SPEC).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.insert((path.clone(), method.to_ascii_uppercase()));
            }
        }
        ops
    }

    fn route_operations() -> BTreeSet<(String, String)> {
        Endpoint::ALL
            .iter()
            .map(|e| e.spec())
            .flat_map(|s| {
                s.methods
                    .iter()
                    .map(move |m| (s.template.to_string(), m.to_string()))
            })
            .collect()
    }

    #[test]
    fn spec_lists_exactly_the_routes() {
        assert_eq!(spec_operations(), route_operations());
    }

    #[test]
    fn every_response_refs_resolve_and_errors_use_the_schema() {
        let doc: serde_json::Value = serde_json::from_str(SPEC).unwrap();
        // Every $ref points at something that exists.
        fn walk(v: &serde_json::Value, doc: &serde_json::Value) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                        let ptr = r.strip_prefix('#').expect("local ref");
                        assert!(doc.pointer(ptr).is_some(), "dangling {r}");
                    }
                    m.values().for_each(|x| walk(x, doc));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, doc)),
                _ => {}
            }
        }
        walk(&doc, &doc);
        // Every 4xx/5xx response is the Error schema.
        for (code, resp) in doc["components"]["responses"].as_object().unwrap() {
            if code == "Compressed" {
                continue;
            }
            assert_eq!(
                resp["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
                "{code}"
            );
        }
    }

    /// The router answers every listed (path, method) with something other
    /// than "no route" or 405, and answers 405 to the other methods.
    #[tokio::test]
    async fn router_serves_exactly_the_routes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let router = app(test_state(dir.path()));
        let all = ["GET", "POST", "PUT", "DELETE", "PATCH"];
        for e in Endpoint::ALL {
            let (template, methods) = (e.spec().template, e.spec().methods);
            let path = template.replace("{path}", "f");
            for m in all {
                let req = Request::builder()
                    .method(Method::from_bytes(m.as_bytes()).unwrap())
                    .uri(&path)
                    .header("host", "t")
                    .body(Body::empty())
                    .unwrap();
                let resp = router.call_on(req, ConnFacts::FRESH).await.unwrap();
                let status = resp.status();
                if methods.contains(&m) {
                    assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
                    assert_ne!(status, StatusCode::NOT_FOUND, "{m} {path}");
                } else {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
                    let allow = resp.headers()["allow"].to_str().unwrap().to_string();
                    for listed in methods.iter() {
                        assert!(allow.contains(listed), "{m} {path}: Allow {allow}");
                    }
                }
            }
        }
        let req = Request::builder()
            .uri("/nowhere")
            .header("host", "t")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            router
                .call_on(req, ConnFacts::FRESH)
                .await
                .unwrap()
                .status(),
            StatusCode::NOT_FOUND
        );
    }
}
