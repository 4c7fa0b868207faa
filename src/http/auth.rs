//! Bearer-token access control (`--token-file`) and where `/metrics` lives
//! (`--admin-listen`).
//!
//! The token file holds one token per line; blank lines and lines starting
//! with `#` are ignored. Every endpoint except the open ones (`crate::routes`)
//! then requires `Authorization: Bearer <token>`; anything else gets 401
//! with `WWW-Authenticate: Bearer`. Tokens are kept only as SHA-256 digests
//! and a presented token is compared against every one of them in constant
//! time (no early exit on the first differing byte, nor on the first
//! matching token), so response timing says nothing about how close a guess
//! was. The file is re-read on SIGHUP; a reload that fails keeps the tokens
//! already loaded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::Request;
use axum::http::header;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::error::ApiError;
use crate::routes::Endpoint;

/// Who may call what, and where `/metrics` is served.
#[derive(Clone, Default)]
pub struct Access {
    /// `--token-file`: `None` means the API is open.
    pub tokens: Option<Arc<Tokens>>,
    /// True when `--admin-listen` serves `/metrics`, so the main listener does not.
    pub metrics_on_admin: bool,
}

/// The accepted tokens, as SHA-256 digests, and the file they came from.
pub struct Tokens {
    path: PathBuf,
    digests: RwLock<Arc<Vec<[u8; 32]>>>,
}

impl Tokens {
    /// Reads `path`. An unreadable file, or one without any token, is an error.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let digests = read_token_file(path)?;
        Ok(Tokens {
            path: path.to_path_buf(),
            digests: RwLock::new(Arc::new(digests)),
        })
    }

    /// Re-reads the file; on error the previous tokens stay in force.
    /// Returns how many tokens are now accepted.
    pub fn reload(&self) -> Result<usize, String> {
        let digests = read_token_file(&self.path)?;
        let n = digests.len();
        *self.digests.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(digests);
        Ok(n)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when `presented` is one of the tokens. Takes the same time
    /// whichever token (if any) matches and wherever a guess goes wrong.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let current = self
            .digests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let wanted: [u8; 32] = Sha256::digest(presented).into();
        let mut any = 0u8;
        for d in current.iter() {
            any |= ct_eq_32(&wanted, d);
        }
        std::hint::black_box(any) == 1
    }
}

/// 1 when equal, 0 otherwise, without data-dependent branches.
fn ct_eq_32(a: &[u8; 32], b: &[u8; 32]) -> u8 {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= a[i] ^ b[i];
    }
    let diff = std::hint::black_box(diff);
    // 0 -> 1, anything else -> 0.
    ((u16::from(diff).wrapping_sub(1) >> 8) & 1) as u8
}

fn read_token_file(path: &Path) -> Result<Vec<[u8; 32]>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --token-file {}: {e}", path.display()))?;
    let mut digests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "--token-file {} line {}: a token must be printable ASCII without spaces",
                path.display(),
                i + 1
            ));
        }
        digests.push(Sha256::digest(token.as_bytes()).into());
    }
    if digests.is_empty() {
        return Err(format!(
            "--token-file {} holds no token (one per line; blank and # lines are ignored)",
            path.display()
        ));
    }
    Ok(digests)
}

/// Start-up checks for `serve`: the token file must load (the caller exits 2
/// otherwise), and exposure without protection earns a warning.
pub fn check_startup(
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    token_file: Option<&Path>,
) -> Result<(), String> {
    if let Some(path) = token_file {
        Tokens::load(path)?;
    }
    for w in exposure_warnings(listen, admin, token_file.is_some()) {
        tracing::warn!("{w}");
    }
    Ok(())
}

/// What is reachable beyond this machine without a token.
pub fn exposure_warnings(
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    have_tokens: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if !have_tokens && !listen.ip().is_loopback() {
        out.push(format!(
            "listening on {listen}, which is not a loopback address, without --token-file: \
             anyone who can reach it may hash and compress files under the root"
        ));
    }
    if let Some(a) = admin
        && !a.ip().is_loopback()
    {
        out.push(format!(
            "--admin-listen {a} is not a loopback address; the admin listener has no authentication"
        ));
    }
    out
}

/// Lets the open endpoints through, and everything
/// else only with a valid bearer token (when a token file is configured).
pub fn check(st: &AppState, req: &Request) -> Result<(), ApiError> {
    let Some(tokens) = &st.access.tokens else {
        return Ok(());
    };
    if Endpoint::find(req.uri().path()).is_some_and(|e| e.spec().open) {
        return Ok(());
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| bearer(v.as_bytes()));
    match presented {
        Some(Some(token)) if tokens.accepts(token) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized(true)),
        None => Err(ApiError::Unauthorized(false)),
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.strip_prefix(b" ")?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_is_equality() {
        let a = [7u8; 32];
        let mut b = a;
        assert_eq!(ct_eq_32(&a, &b), 1);
        for i in [0, 13, 31] {
            for bit in 0..8 {
                b = a;
                b[i] ^= 1 << bit;
                assert_eq!(ct_eq_32(&a, &b), 0);
            }
        }
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
    }

    #[test]
    fn warns_when_exposed_without_tokens() {
        let lo: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        let lo6: SocketAddr = "[::1]:3000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:3000".parse().unwrap();
        let lan: SocketAddr = "192.168.1.5:3000".parse().unwrap();
        assert!(exposure_warnings(lo, None, false).is_empty());
        assert!(exposure_warnings(lo6, None, false).is_empty());
        assert_eq!(exposure_warnings(any, None, false).len(), 1);
        assert_eq!(exposure_warnings(lan, None, false).len(), 1);
        assert!(exposure_warnings(any, None, true).is_empty());
        assert_eq!(exposure_warnings(lo, Some(any), true).len(), 1);
        assert!(exposure_warnings(lo, Some(lo), false).is_empty());
    }

    #[test]
    fn token_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "# ops\n\n  alpha  \nbeta\n").unwrap();
        let t = Tokens::load(&f).unwrap();
        assert!(t.accepts(b"alpha"));
        assert!(t.accepts(b"beta"));
        assert!(!t.accepts(b"alph"));
        assert!(!t.accepts(b"# ops"));
        assert!(!t.accepts(b""));
        std::fs::write(&f, "gamma\n").unwrap();
        assert_eq!(t.reload(), Ok(1));
        assert!(t.accepts(b"gamma") && !t.accepts(b"alpha"));
        // A broken reload keeps what was loaded.
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(t.reload().is_err());
        assert!(t.accepts(b"gamma"));
        std::fs::write(&f, "two words\n").unwrap();
        assert!(Tokens::load(&f).is_err());
        assert!(Tokens::load(&dir.path().join("missing")).is_err());
    }
}
