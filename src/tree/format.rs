//! Manifest formats, written and read exactly as the tools people check them
//! with: `sha256sum`/`b3sum` (`hex  path`, with coreutils' escaping of names
//! holding a newline, carriage return or backslash), BSD tags
//! (`SHA256 (path) = hex`), BagIt manifests (RFC 8493: `hex path` with CR,
//! LF and '%' percent-encoded), and our NDJSON records. Pure functions.

use std::collections::BTreeMap;

use crate::kernel::Algorithm;

/// A manifest format (`?format=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Sha256sum,
    Bsd,
    Bagit,
}

impl Format {
    pub const NAMES: &'static str = "ndjson, sha256sum, bsd, bagit";

    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "ndjson" => Ok(Format::Ndjson),
            "sha256sum" => Ok(Format::Sha256sum),
            "bsd" => Ok(Format::Bsd),
            "bagit" => Ok(Format::Bagit),
            other => Err(format!(
                "unknown format '{}'; valid: {}",
                other.escape_default(),
                Format::NAMES
            )),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            _ => "text/plain; charset=utf-8",
        }
    }
}

/// The tag BSD-style tools print for an algorithm (`sha256sum --tag`, `md5 -r`).
fn bsd_tag(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::Sha256 => "SHA256",
        Algorithm::Sha512 => "SHA512",
        Algorithm::Sha384 => "SHA384",
        Algorithm::Sha3_256 => "SHA3-256",
        Algorithm::Sha1 => "SHA1",
        Algorithm::Md5 => "MD5",
        Algorithm::Blake3 => "BLAKE3",
        Algorithm::Crc32c => "CRC32C",
        Algorithm::Crc32 => "CRC32",
        Algorithm::Crc64Nvme => "CRC64NVME",
        Algorithm::Xxh3 => "XXH3",
        Algorithm::Xxh128 => "XXH128",
    }
}

fn needs_escape(path: &[u8]) -> bool {
    path.iter().any(|&b| matches!(b, b'\n' | b'\r' | b'\\'))
}

/// coreutils' escaping: `\\`, `\n`, `\r`.
fn escape(path: &[u8], out: &mut Vec<u8>) {
    for &b in path {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

fn unescape(path: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(path.len());
    let mut it = path.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match it.next()? {
            b'\\' => b'\\',
            b'n' => b'\n',
            b'r' => b'\r',
            _ => return None,
        });
    }
    Some(out)
}

/// RFC 8493 §2.1.3: CR, LF and '%' are percent-encoded in manifest paths.
fn bagit_escape(path: &[u8], out: &mut Vec<u8>) {
    for &b in path {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'\n' => out.extend_from_slice(b"%0A"),
            b'\r' => out.extend_from_slice(b"%0D"),
            _ => out.push(b),
        }
    }
}

/// A path as coreutils shows it in `-c` output: escaped behind a leading
/// backslash when it holds a newline, carriage return or backslash.
pub fn shown_path(path: &[u8], out: &mut Vec<u8>) {
    if needs_escape(path) {
        out.push(b'\\');
    }
    escape(path, out);
}

/// One line of a text format for one file (`format` is not NDJSON).
pub fn text_line(format: Format, alg: Algorithm, hex: &str, path: &[u8], out: &mut Vec<u8>) {
    match format {
        Format::Sha256sum | Format::Ndjson => {
            if needs_escape(path) {
                out.push(b'\\');
            }
            out.extend_from_slice(hex.as_bytes());
            out.extend_from_slice(b"  ");
            escape(path, out);
        }
        Format::Bsd => {
            if needs_escape(path) {
                out.push(b'\\');
            }
            out.extend_from_slice(bsd_tag(alg).as_bytes());
            out.extend_from_slice(b" (");
            escape(path, out);
            out.extend_from_slice(b") = ");
            out.extend_from_slice(hex.as_bytes());
        }
        Format::Bagit => {
            out.extend_from_slice(hex.as_bytes());
            out.extend_from_slice(b"  ");
            bagit_escape(path, out);
        }
    }
    out.push(b'\n');
}

/// A file a manifest lists, with the digests it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub digests: Vec<(Algorithm, String)>,
}

/// Why a manifest body was refused: the line (1-based) and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn is_hex(s: &[u8]) -> bool {
    !s.is_empty() && s.len().is_multiple_of(2) && s.iter().all(|b| b.is_ascii_hexdigit())
}

/// Reads a manifest. `format`: as the client said, or detected from the
/// first line (NDJSON starts with '{', BSD with `TAG (`, else sha256sum;
/// BagIt only when said, since its lines look like sha256sum's). `alg`:
/// the algorithm of formats that do not name one. Blank lines are ignored;
/// NDJSON summary and error records are skipped.
pub fn parse(
    body: &[u8],
    format: Option<Format>,
    alg: Algorithm,
) -> Result<(Format, BTreeMap<Vec<u8>, Listed>), ParseError> {
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let format = format.unwrap_or_else(|| {
        let first = lines
            .iter()
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .find(|l| !l.is_empty());
        match first {
            Some(l) if l.starts_with(b"{") => Format::Ndjson,
            Some(l) if bsd_line(l).is_some() => Format::Bsd,
            _ => Format::Sha256sum,
        }
    });
    let mut out = BTreeMap::new();
    for (i, raw) in lines.iter().enumerate() {
        let line = i + 1;
        let l = raw.strip_suffix(b"\r").unwrap_or(raw);
        if l.is_empty() {
            continue;
        }
        let err = |message: String| ParseError { line, message };
        let (path, listed) = match format {
            Format::Ndjson => {
                let v: serde_json::Value = serde_json::from_slice(l)
                    .map_err(|e| err(format!("not a JSON object: {e}")))?;
                let Some(obj) = v.as_object() else {
                    return Err(err("not a JSON object".into()));
                };
                if obj.contains_key("files")
                    || obj.contains_key("error")
                    || obj.contains_key("skipped")
                {
                    continue;
                }
                let path = obj
                    .get("path")
                    .and_then(|p| p.as_str())
                    .ok_or_else(|| err("a record without \"path\"".into()))?;
                let digests: Vec<(Algorithm, String)> = obj
                    .iter()
                    .filter_map(|(k, v)| Some((Algorithm::from_name(k)?, v.as_str()?.to_string())))
                    .collect();
                if digests.is_empty() {
                    return Err(err("a record without any digest".into()));
                }
                (path.as_bytes().to_vec(), Listed { digests })
            }
            Format::Bsd => {
                let (a, path, hex) =
                    bsd_line(l).ok_or_else(|| err("not a 'TAG (path) = hex' line".into()))?;
                (
                    path,
                    Listed {
                        digests: vec![(a, hex)],
                    },
                )
            }
            Format::Sha256sum => {
                let (escaped, rest) = match l.strip_prefix(b"\\") {
                    Some(r) => (true, r),
                    None => (false, l),
                };
                let sp = rest
                    .iter()
                    .position(|&b| b == b' ')
                    .ok_or_else(|| err("not a 'hex  path' line".into()))?;
                let (hex, tail) = rest.split_at(sp);
                // "hex  path" (text mode) or "hex *path" (binary mode).
                let path = tail
                    .strip_prefix(b"  ")
                    .or_else(|| tail.strip_prefix(b" *"))
                    .ok_or_else(|| {
                        err("expected two spaces (or ' *') between digest and path".into())
                    })?;
                if !is_hex(hex) {
                    return Err(err("the digest is not hex".into()));
                }
                let path = if escaped {
                    unescape(path)
                        .ok_or_else(|| err("a bad backslash escape in the path".into()))?
                } else {
                    path.to_vec()
                };
                (
                    path,
                    Listed {
                        digests: vec![(alg, String::from_utf8_lossy(hex).to_lowercase())],
                    },
                )
            }
            Format::Bagit => {
                let sp = l
                    .iter()
                    .position(|b| b.is_ascii_whitespace())
                    .ok_or_else(|| err("not a 'checksum path' line".into()))?;
                let (hex, tail) = l.split_at(sp);
                if !is_hex(hex) {
                    return Err(err("the checksum is not hex".into()));
                }
                let tail = tail.trim_ascii_start();
                let path = crate::root::percent_decode(tail)
                    .ok_or_else(|| err("a bad %-escape in the path".into()))?;
                (
                    path,
                    Listed {
                        digests: vec![(alg, String::from_utf8_lossy(hex).to_lowercase())],
                    },
                )
            }
        };
        if path.is_empty() {
            return Err(err("an empty path".into()));
        }
        if out.insert(path, listed).is_some() {
            return Err(err("this path is listed twice".into()));
        }
    }
    Ok((format, out))
}

/// `[\]TAG (path) = hex`.
fn bsd_line(l: &[u8]) -> Option<(Algorithm, Vec<u8>, String)> {
    let (escaped, l) = match l.strip_prefix(b"\\") {
        Some(r) => (true, r),
        None => (false, l),
    };
    let open = l.windows(2).position(|w| w == b" (")?;
    let tag = std::str::from_utf8(&l[..open]).ok()?;
    let alg = Algorithm::ALL.into_iter().find(|&a| bsd_tag(a) == tag)?;
    let close = l.windows(4).rposition(|w| w == b") = ")?;
    if close < open + 2 {
        return None;
    }
    let path = &l[open + 2..close];
    let hex = &l[close + 4..];
    if !is_hex(hex) {
        return None;
    }
    let path = if escaped {
        unescape(path)?
    } else {
        path.to_vec()
    };
    Some((alg, path, String::from_utf8_lossy(hex).to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "ab01";

    fn line(f: Format, path: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        text_line(f, Algorithm::Sha256, H, path, &mut out);
        out
    }

    /// Each format reads back what it writes, names with a newline,
    /// backslash, percent, spaces and non-ASCII included.
    #[test]
    fn every_format_round_trips_awkward_names() {
        let names: [&[u8]; 6] = [
            b"a b",
            b"new\nline",
            b"back\\slash",
            b"100%",
            "é/ü".as_bytes(),
            b"cr\rx",
        ];
        for f in [Format::Sha256sum, Format::Bsd, Format::Bagit] {
            let mut body = Vec::new();
            for n in names {
                body.extend(line(f, n));
            }
            let (got_format, parsed) = parse(&body, Some(f), Algorithm::Sha256).unwrap();
            assert_eq!(got_format, f);
            assert_eq!(parsed.len(), names.len(), "{f:?}");
            for n in names {
                assert_eq!(
                    parsed[n].digests,
                    [(Algorithm::Sha256, H.to_string())],
                    "{f:?}"
                );
            }
        }
    }

    /// The exact bytes coreutils writes and reads.
    #[test]
    fn coreutils_escaping() {
        assert_eq!(line(Format::Sha256sum, b"a b"), b"ab01  a b\n");
        assert_eq!(line(Format::Sha256sum, b"x\ny\\z"), b"\\ab01  x\\ny\\\\z\n");
        assert_eq!(line(Format::Bsd, b"a"), b"SHA256 (a) = ab01\n");
        assert_eq!(line(Format::Bagit, b"50%\n"), b"ab01  50%25%0A\n");
        // Binary-mode lines ("hex *path") as `sha256sum -b` writes them.
        let (_, p) = parse(b"ab01 *bin.dat\n", None, Algorithm::Sha256).unwrap();
        assert!(p.contains_key(b"bin.dat".as_slice()));
    }

    #[test]
    fn detection_and_line_numbered_errors() {
        let (f, p) = parse(
            b"{\"path\":\"a\",\"bytes\":1,\"blake3\":\"ab01\"}\n{\"files\":1}\n",
            None,
            Algorithm::Sha256,
        )
        .unwrap();
        assert_eq!(f, Format::Ndjson);
        assert_eq!(
            p[b"a".as_slice()].digests,
            [(Algorithm::Blake3, H.to_string())]
        );
        let (f, _) = parse(b"MD5 (x) = ab01\n", None, Algorithm::Sha256).unwrap();
        assert_eq!(f, Format::Bsd);
        let e = parse(b"ab01  a\n\nzz  b\n", None, Algorithm::Sha256).unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse(b"ab01  a\nab01  a\n", None, Algorithm::Sha256).unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "this path is listed twice")
        );
        assert!(parse(b"ab01 a\n", None, Algorithm::Sha256).is_err());
    }
}
