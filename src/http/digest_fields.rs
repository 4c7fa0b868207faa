//! RFC 9530 Digest Fields, as text: reading `Content-Digest` and
//! `Want-Repr-Digest`/`Want-Content-Digest` from a request, writing
//! `Content-Digest`/`Repr-Digest` into an answer. Pure (no I/O, no async):
//! the handlers bring the digests, this module only speaks the fields'
//! syntax, the structured dictionaries of RFC 9651 (`sfv`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sfv::{BareItem, DictSerializer, Dictionary, KeyRef, ListEntry, Parser, RefBareItem};

use crate::kernel::{Algorithm, Digests, Encoding};

/// The algorithms of the RFC's registry we verify and send ("Active" in
/// the IANA Hash Algorithms for HTTP Digest Fields registry): field key,
/// our algorithm, digest length in bytes. Other keys (`md5`, `sha`,
/// `unixsum`, ... are deprecated there) are ignored, as the RFC allows.
const KEYS: [(&str, Algorithm, usize); 2] = [
    ("sha-256", Algorithm::Sha256, 32),
    ("sha-512", Algorithm::Sha512, 64),
];

fn key_of(alg: Algorithm) -> &'static str {
    KEYS.iter()
        .find(|(_, a, _)| *a == alg)
        .map_or("", |(k, _, _)| k)
}

/// Parses field lines as one dictionary: RFC 9651 §4.2 joins the lines of
/// a list or dictionary field with commas before parsing.
fn dictionary<'a>(
    name: &str,
    lines: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<Dictionary>, String> {
    let mut joined: Vec<u8> = Vec::new();
    for line in lines {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(line);
    }
    if joined.is_empty() {
        return Ok(None);
    }
    Parser::new(&joined)
        .parse_dictionary()
        .map(Some)
        .map_err(|e| format!("{name} is not a structured dictionary (RFC 9651): {e}"))
}

/// The digests a request's `Content-Digest` declares, of the algorithms we
/// know, in the field's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected(Vec<(Algorithm, Vec<u8>)>);

/// A declared digest that the content does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The field key, `sha-256` or `sha-512`.
    pub key: &'static str,
    /// Both digests in the field's own form, `:base64:`.
    pub declared: String,
    pub computed: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the content does not match its Content-Digest: {} declared {}, computed {}",
            self.key, self.declared, self.computed
        )
    }
}

impl Expected {
    /// Reads the `Content-Digest` field lines; `None` when there are none
    /// or none names an algorithm we know. A field that does not parse, or
    /// a known key whose value is not a byte sequence of its digest's
    /// length, is an error (the sentence says which).
    pub fn parse<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<Option<Expected>, String> {
        let Some(dict) = dictionary("Content-Digest", lines)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for (key, alg, len) in KEYS {
            let Some(entry) = dict.get(key) else {
                continue;
            };
            let bytes = match entry {
                ListEntry::Item(item) => match &item.bare_item {
                    BareItem::ByteSequence(b) => b,
                    _ => {
                        return Err(format!(
                            "Content-Digest {key} must be a byte sequence (:base64:)"
                        ));
                    }
                },
                ListEntry::InnerList(_) => {
                    return Err(format!(
                        "Content-Digest {key} must be a byte sequence (:base64:), not a list"
                    ));
                }
            };
            if bytes.len() != len {
                return Err(format!(
                    "Content-Digest {key} holds {} bytes; a {key} digest has {len}",
                    bytes.len()
                ));
            }
            out.push((alg, bytes.clone()));
        }
        Ok((!out.is_empty()).then_some(Expected(out)))
    }

    /// `parse` of a request's `Content-Digest` lines; a malformed field is
    /// a 400 `bad_digest_field`.
    pub fn from_headers(
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<Expected>, crate::error::ApiError> {
        let lines = headers
            .get_all("content-digest")
            .into_iter()
            .map(|v| v.as_bytes());
        Expected::parse(lines).map_err(crate::error::ApiError::BadDigestField)
    }

    /// The algorithms to compute for the check.
    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        self.0.iter().map(|(a, _)| *a)
    }

    /// Checks every declared digest against `computed`, which must hold
    /// them all (`algorithms`); the first that differs is the error.
    pub fn check(&self, computed: &Digests) -> Result<(), Mismatch> {
        for (alg, declared) in &self.0 {
            let hex = computed
                .entries
                .iter()
                .find(|(a, _)| a == alg)
                .map(|(_, h)| h.as_str())
                .expect("the declared algorithms were computed");
            let declared = STANDARD.encode(declared);
            let ours = Encoding::Base64.render(hex);
            if ours != declared {
                return Err(Mismatch {
                    key: key_of(*alg),
                    declared: format!(":{declared}:"),
                    computed: format!(":{ours}:"),
                });
            }
        }
        Ok(())
    }
}

/// The algorithm a `Want-Repr-Digest` or `Want-Content-Digest` field
/// prefers among those we send: the highest preference (1..=10; 0 means
/// "not acceptable"), the registry's order on a tie; `None` when the field
/// is absent or accepts none of ours. Values of our keys must be integers
/// 0..=10 (RFC 9530 §4); other keys are ignored.
pub fn wanted<'a>(
    name: &str,
    lines: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<Algorithm>, String> {
    let Some(dict) = dictionary(name, lines)? else {
        return Ok(None);
    };
    let mut best: Option<(i64, Algorithm)> = None;
    for (key, alg, _) in KEYS {
        let Some(entry) = dict.get(key) else {
            continue;
        };
        let pref = match entry {
            ListEntry::Item(item) => item.bare_item.as_integer().map(i64::from),
            ListEntry::InnerList(_) => None,
        };
        let Some(pref @ 0..=10) = pref else {
            return Err(format!(
                "{name} {key} must be a preference, an integer from 0 to 10"
            ));
        };
        if pref > 0 && best.is_none_or(|(b, _)| pref > b) {
            best = Some((pref, alg));
        }
    }
    Ok(best.map(|(_, a)| a))
}

/// A `Content-Digest` or `Repr-Digest` value holding one digest, given as
/// our lowercase hex: `sha-256=:base64:`.
pub fn field_value(alg: Algorithm, hex: &str) -> String {
    let bytes = STANDARD
        .decode(Encoding::Base64.render(hex).as_bytes())
        .expect("base64 we wrote");
    let mut ser = DictSerializer::new();
    // No parameters: the serializer it returns has nothing to add.
    let _ = ser.bare_item(
        KeyRef::constant(key_of(alg)),
        RefBareItem::ByteSequence(&bytes),
    );
    ser.finish().expect("one member")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{AlgorithmList, MultiHasher};

    /// RFC 9530's example content (Appendix B and §2-§4).
    const HELLO: &[u8] = b"{\"hello\": \"world\"}";
    const HELLO_256: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
    const HELLO_512: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

    fn digests(data: &[u8]) -> Digests {
        let mut h = MultiHasher::new(&AlgorithmList::parse("sha256,sha512").unwrap());
        h.update(data);
        h.finish()
    }

    fn parse(lines: &[&str]) -> Result<Option<Expected>, String> {
        Expected::parse(lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn the_rfc_examples_verify_and_are_written_as_the_rfc_writes_them() {
        let d = digests(HELLO);
        for field in [HELLO_256, HELLO_512] {
            let exp = parse(&[field]).unwrap().unwrap();
            assert_eq!(exp.check(&d), Ok(()));
        }
        // Both in one field, both on two lines, with an unknown key and parameters.
        let both = format!("{HELLO_256}, {HELLO_512}");
        let exp = parse(&[&both]).unwrap().unwrap();
        assert_eq!(
            exp.algorithms().collect::<Vec<_>>(),
            [Algorithm::Sha256, Algorithm::Sha512]
        );
        assert_eq!(exp.check(&d), Ok(()));
        let exp = parse(&[HELLO_512, "unixsum=30637, md5=:AAAA:", HELLO_256]).unwrap();
        assert_eq!(exp.unwrap().check(&d), Ok(()));
        let (sha256, sha512) = (&d.entries[0].1, &d.entries[1].1);
        assert_eq!(field_value(Algorithm::Sha256, sha256), HELLO_256);
        assert_eq!(field_value(Algorithm::Sha512, sha512), HELLO_512);
        // The RFC's example with the trailing newline of its messages.
        let nl = digests(b"{\"hello\": \"world\"}\n");
        assert_eq!(
            field_value(Algorithm::Sha256, &nl.entries[0].1),
            "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"
        );
    }

    #[test]
    fn a_different_content_is_a_mismatch_naming_both_values() {
        let exp = parse(&[HELLO_256]).unwrap().unwrap();
        let err = exp.check(&digests(b"{\"hello\": \"World\"}")).unwrap_err();
        assert_eq!(err.key, "sha-256");
        assert_eq!(
            err.declared,
            ":X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
        assert_ne!(err.computed, err.declared);
        let text = err.to_string();
        assert!(
            text.contains("sha-256") && text.contains(&err.computed),
            "{text}"
        );
    }

    #[test]
    fn unknown_keys_alone_or_no_field_ask_for_nothing() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&["md5=:AAAA:, unixsum=3"]), Ok(None));
        assert_eq!(parse(&["sha=:AAAA:"]), Ok(None));
    }

    #[test]
    fn malformed_fields_are_errors_that_say_why() {
        for (lines, says) in [
            (
                &["sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE"][..],
                "byte sequence",
            ),
            (
                &["sha-256=\"X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=\""][..],
                "byte sequence",
            ),
            (
                &["sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="][..],
                "dictionary",
            ),
            (
                &["sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:;"][..],
                "dictionary",
            ),
            (&["sha-256=:AAAA:"][..], "holds 3 bytes"),
            (&["sha-512=(:AAAA:)"][..], "not a list"),
            (&["{\"sha-256\": 1}"][..], "dictionary"),
            (&["sha-256=:not base64!:"][..], "dictionary"),
            (&["SHA-256=:AAAA:"][..], "dictionary"),
        ] {
            let err = parse(lines).unwrap_err();
            assert!(err.contains(says), "{lines:?}: {err}");
        }
    }

    #[test]
    fn want_fields_pick_the_preferred_algorithm() {
        let want = |v: &str| wanted("Want-Repr-Digest", std::iter::once(v.as_bytes()));
        // RFC 9530 Appendix C's examples.
        assert_eq!(want("sha-256=1"), Ok(Some(Algorithm::Sha256)));
        assert_eq!(
            want("sha-512=3, sha-256=10, unixsum=0"),
            Ok(Some(Algorithm::Sha256))
        );
        assert_eq!(want("sha-512=10, sha-256=3"), Ok(Some(Algorithm::Sha512)));
        assert_eq!(want("sha-256=5, sha-512=5"), Ok(Some(Algorithm::Sha256)));
        assert_eq!(want("sha-256=0, md5=10"), Ok(None));
        assert_eq!(wanted("Want-Repr-Digest", std::iter::empty()), Ok(None));
        assert!(want("sha-256=11").unwrap_err().contains("0 to 10"));
        assert!(want("sha-256=:AAAA:").unwrap_err().contains("0 to 10"));
        assert!(want("sha-256=1,,").unwrap_err().contains("dictionary"));
    }
}
