//! `GET /manifest/{dir}` and `POST /manifest/{dir}/check`: a tree's
//! digests, streamed as they are computed, and a check of a manifest
//! against the tree that finds what changed, what is missing and what is new.

use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::AppState;
use super::body::BodyReader;
use super::query::Query;
use crate::error::ApiError;
use crate::kernel::AlgorithmList;
use crate::root::RelPath;
use crate::tree::check::{Check, Verdict};
use crate::tree::format::{self, Format};
use crate::tree::manifest::{Manifest, Options, Record, Summary, ndjson_line};

/// The directory after `/manifest/` (None: the root), with `suffix` removed first.
fn dir_of(uri_path: &str, suffix: &str) -> Result<Option<RelPath>, ApiError> {
    let raw = uri_path.strip_prefix("/manifest/").unwrap_or("");
    let raw = raw.strip_suffix(suffix).unwrap_or(raw);
    let raw = raw.trim_end_matches('/');
    if raw.is_empty() {
        return Ok(None);
    }
    RelPath::parse(raw).map(Some).map_err(ApiError::from_path)
}

/// Records go out a few per chunk: one write per file would cost more
/// than hashing a small one.
const CHUNK: usize = 16 << 10;

/// The body of a walk: `each` writes what a record says as it comes (and
/// updates `state`), `end` writes the last lines from the final state.
fn records_body<S, F, E>(m: Manifest, state: S, each: F, end: E) -> Body
where
    S: Send + 'static,
    F: FnMut(&mut S, Record, &mut Vec<u8>) + Send + 'static,
    E: FnOnce(S, &mut Vec<u8>) + Send + 'static,
{
    let stream = futures_util::stream::unfold(Some((m, state, each, end)), |walk| async move {
        let (mut m, mut state, mut each, end) = walk?;
        let mut out = Vec::with_capacity(CHUNK);
        while out.len() < CHUNK {
            match m.next().await {
                Some(r) => each(&mut state, r, &mut out),
                None => {
                    end(state, &mut out);
                    return Some((Ok::<_, std::io::Error>(Bytes::from(out)), None));
                }
            }
        }
        Some((Ok(Bytes::from(out)), Some((m, state, each, end))))
    });
    Body::from_stream(stream)
}

fn streamed(content_type: &'static str, body: Body) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Every regular file under `{dir}`, in byte-wise path order, with its digests.
pub async fn manifest(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(q.as_deref(), &["alg", "format"])?;
    let algs = query.algorithms()?;
    let format = query.manifest_format()?.unwrap_or(Format::Ndjson);
    let dir = dir_of(req.uri().path(), "")?;
    let m = Manifest::start(
        &st.pool,
        st.root.clone().ok_or(ApiError::NeedsDirectory)?,
        dir,
        &algs,
        st.digest_cache.clone(),
        Options {
            sort_in_memory: st.config.dir_sort_names,
        },
    )
    .await?;
    let primary = algs.as_slice()[0];
    let each = move |summary: &mut Summary, r: Record, out: &mut Vec<u8>| {
        summary.add(&r);
        match (&r, format) {
            (_, Format::Ndjson) => ndjson_line(&r, &algs, out),
            (Record::File { path, digests }, f) => {
                let hex = digests
                    .entries
                    .iter()
                    .find(|(a, _)| *a == primary)
                    .map(|(_, h)| h.as_str())
                    .expect("the requested algorithm was computed");
                format::text_line(f, primary, hex, path, out);
            }
            // Text formats list what could be read; unreadable files are in
            // the NDJSON form and the log.
            (Record::Error { path, error }, _) => {
                tracing::warn!(path = %String::from_utf8_lossy(path), error = %error.message(), "manifest: file not read");
            }
            (Record::Skipped { .. }, _) => {}
        }
    };
    let end = move |summary: Summary, out: &mut Vec<u8>| {
        if format == Format::Ndjson {
            let s = json!({
                "files": summary.files,
                "bytes": summary.bytes,
                "errors": summary.errors,
                "skipped": summary.skipped,
                "manifest_sha256": summary.manifest_sha256(),
            });
            serde_json::to_writer(&mut *out, &s).expect("JSON into a Vec");
            out.push(b'\n');
        }
    };
    let body = records_body(m, Summary::default(), each, end);
    Ok(streamed(format.content_type(), body))
}

/// A manifest checked against the tree: one NDJSON record per path (`ok`,
/// `changed`, `missing`, `new`, `error`), in path order, then the counts and
/// the verdict. 200 whatever the verdict: the answer starts before the walk
/// ends, so the verdict is in the summary line.
pub async fn check(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(q.as_deref(), &["alg", "format"])?;
    let alg = query.algorithms()?.as_slice()[0];
    let format = query.manifest_format()?;
    let path = req.uri().path().to_string();
    if !(path.ends_with("/check") || path == "/manifest/check") {
        return Err(ApiError::BadPath(
            "to check a manifest, POST it to /manifest/{dir}/check (or /manifest/check for the whole root)".into(),
        ));
    }
    let dir = dir_of(&path, "check")?;
    let mut body = BodyReader::new(req, st.config.max_body, st.config.body_read_timeout)?;
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await? {
        text.extend_from_slice(&chunk);
    }
    let (_, listed) = format::parse(&text, format, alg)
        .map_err(|e| ApiError::BadBody(format!("manifest line {}: {}", e.line, e.message)))?;
    // Every algorithm any listed file names, computed in one pass.
    let mut names: Vec<&str> = Vec::new();
    for l in listed.values() {
        for (a, _) in &l.digests {
            if !names.contains(&a.name()) {
                names.push(a.name());
            }
        }
    }
    let algs = if names.is_empty() {
        AlgorithmList::parse(alg.name()).expect("a known name")
    } else {
        AlgorithmList::parse(&names.join(",")).expect("known names")
    };
    let m = Manifest::start(
        &st.pool,
        st.root.clone().ok_or(ApiError::NeedsDirectory)?,
        dir,
        &algs,
        st.digest_cache.clone(),
        Options {
            sort_in_memory: st.config.dir_sort_names,
        },
    )
    .await?;
    let each = |c: &mut Check, r: Record, out: &mut Vec<u8>| {
        c.record(r, |p, v| verdict_line(p, v, out));
    };
    let end = |mut c: Check, out: &mut Vec<u8>| {
        c.finish(|p, v| verdict_line(p, v, out));
        let n = c.counts;
        let s = json!({
            "ok": n.ok, "changed": n.changed, "missing": n.missing,
            "new": n.new, "errors": n.errors,
            "verdict": if n.pass() { "pass" } else { "fail" },
        });
        serde_json::to_writer(&mut *out, &s).expect("JSON into a Vec");
        out.push(b'\n');
    };
    let body = records_body(m, Check::new(listed), each, end);
    Ok(streamed("application/x-ndjson", body))
}

/// One NDJSON record of a check.
fn verdict_line(path: &[u8], v: &Verdict, out: &mut Vec<u8>) {
    let mut obj = Map::new();
    obj.insert(
        "path".into(),
        String::from_utf8_lossy(path).into_owned().into(),
    );
    obj.insert("status".into(), v.name().into());
    let digests = |d: &[(crate::kernel::Algorithm, String)]| -> Value {
        d.iter()
            .map(|(a, h)| (a.name().to_string(), Value::from(h.as_str())))
            .collect::<Map<_, _>>()
            .into()
    };
    match v {
        Verdict::Changed { expected, actual } => {
            obj.insert("expected".into(), digests(expected));
            obj.insert("actual".into(), digests(actual));
        }
        Verdict::New { error: Some(error) } | Verdict::Error { error } => {
            obj.insert("error".into(), error.code().into());
            obj.insert("message".into(), error.message().into());
        }
        _ => {}
    }
    serde_json::to_writer(&mut *out, &obj).expect("JSON into a Vec");
    out.push(b'\n');
}
