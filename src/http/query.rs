//! Query strings: only known keys, each at most once, values checked.

use crate::error::ApiError;
use crate::kernel::{AlgorithmList, Codec, Encoding, Format};
use crate::root::percent_decode;

/// Parsed `key=value` pairs of one request.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `raw`, refusing keys outside `allowed` so that typos are not
    /// silently ignored.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = decode(k)?;
            let v = decode(v)?;
            if !allowed.contains(&k.as_str()) {
                let valid = if allowed.is_empty() {
                    "this endpoint takes no parameters".to_string()
                } else {
                    format!("valid parameters: {}", allowed.join(", "))
                };
                return Err(ApiError::BadQuery(format!(
                    "unknown query parameter '{}'; {valid}",
                    k.escape_default()
                )));
            }
            if pairs.iter().any(|(pk, _)| *pk == k) {
                return Err(ApiError::BadQuery(format!(
                    "query parameter '{k}' is given twice"
                )));
            }
            pairs.push((k, v));
        }
        Ok(Query { pairs })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `alg=`, defaulting to SHA-256.
    pub fn algorithms(&self) -> Result<AlgorithmList, ApiError> {
        match self.get("alg") {
            None => Ok(AlgorithmList::default_list()),
            Some(v) => AlgorithmList::parse(v).map_err(|e| ApiError::BadQuery(e.to_string())),
        }
    }

    /// `encoding=hex|base64`, defaulting to hex.
    pub fn encoding(&self) -> Result<Encoding, ApiError> {
        match self.get("encoding") {
            None => Ok(Encoding::Hex),
            Some(v) => Encoding::parse(v).map_err(ApiError::BadQuery),
        }
    }

    /// `format=` of a manifest; `None` when not given.
    pub fn manifest_format(&self) -> Result<Option<crate::tree::format::Format>, ApiError> {
        self.get("format")
            .map(|f| crate::tree::format::Format::parse(f).map_err(ApiError::BadQuery))
            .transpose()
    }

    /// `format=gzip|zstd` (default gzip) and its `level=` (the format's own
    /// range and default).
    pub fn codec(&self) -> Result<Codec, ApiError> {
        let format = match self.get("format") {
            None => Format::Gzip,
            Some(f) => Format::parse(f).map_err(ApiError::BadQuery)?,
        };
        format.codec(self.get("level")).map_err(ApiError::BadQuery)
    }
}

impl Query {
    /// `parallel=1|0` (also true/false); `None` lets the server decide.
    pub fn parallel(&self) -> Result<Option<bool>, ApiError> {
        match self.get("parallel") {
            None => Ok(None),
            Some("1") | Some("true") => Ok(Some(true)),
            Some("0") | Some("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::BadQuery(format!(
                "parallel must be 1 or 0 (true or false), got '{}'",
                v.escape_default()
            ))),
        }
    }
}

fn decode(s: &str) -> Result<String, ApiError> {
    let plus = s.replace('+', " ");
    let bytes = percent_decode(plus.as_bytes())
        .ok_or_else(|| ApiError::BadQuery("the query string has an invalid %-escape".into()))?;
    String::from_utf8(bytes)
        .map_err(|_| ApiError::BadQuery("the query string is not valid UTF-8".into()))
}
