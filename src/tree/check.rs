//! A manifest against a walk: the verdict of each path, in path order.
//!
//! The walk comes sorted and the listed paths are kept sorted, so the two
//! are merged like sorted lists: a listed path that sorts before the file
//! just reached was passed by the walk and is missing. Each verdict is
//! known as soon as its file is hashed, and the answer streams.

use std::collections::BTreeMap;

use super::format::Listed;
use super::manifest::Record;
use crate::error::ApiError;
use crate::kernel::Algorithm;

/// What the check says of one path.
#[derive(Debug)]
pub enum Verdict {
    Ok,
    /// Listed digests and the ones computed now.
    Changed {
        expected: Vec<(Algorithm, String)>,
        actual: Vec<(Algorithm, String)>,
    },
    Missing,
    /// Present, not listed (`error` when it could not even be read).
    New {
        error: Option<ApiError>,
    },
    /// Listed, but could not be read (or is no longer a regular file).
    Error {
        error: ApiError,
    },
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Changed { .. } => "changed",
            Verdict::Missing => "missing",
            Verdict::New { .. } => "new",
            Verdict::Error { .. } => "error",
        }
    }
}

/// Counts by verdict.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub changed: u64,
    pub missing: u64,
    pub new: u64,
    pub errors: u64,
}

impl Counts {
    /// Nothing changed, missing or unreadable (new files are the caller's
    /// call: `check --new` counts them too).
    pub fn pass(&self) -> bool {
        self.changed + self.missing + self.errors == 0
    }
}

/// The merge of a manifest with a walk.
pub struct Check {
    /// Listed paths not reached yet.
    listed: BTreeMap<Vec<u8>, Listed>,
    pub counts: Counts,
}

impl Check {
    pub fn new(listed: BTreeMap<Vec<u8>, Listed>) -> Check {
        Check {
            listed,
            counts: Counts::default(),
        }
    }

    fn count(&mut self, v: &Verdict) {
        let c = &mut self.counts;
        match v {
            Verdict::Ok => c.ok += 1,
            Verdict::Changed { .. } => c.changed += 1,
            Verdict::Missing => c.missing += 1,
            Verdict::New { .. } => c.new += 1,
            Verdict::Error { .. } => c.errors += 1,
        }
    }

    /// The verdicts up to and including `r`'s path, in order.
    pub fn record(&mut self, r: Record, mut emit: impl FnMut(&[u8], &Verdict)) {
        while let Some(first) = self.listed.first_key_value().map(|(k, _)| k.clone()) {
            if first.as_slice() >= r.path() {
                break;
            }
            self.listed.remove(&first);
            self.count(&Verdict::Missing);
            emit(&first, &Verdict::Missing);
        }
        let listed = self.listed.remove(r.path());
        let (path, v) = match (r, listed) {
            (Record::File { path, .. }, None) => (path, Verdict::New { error: None }),
            // Not listed and not a regular file: nothing to say.
            (Record::Skipped { .. }, None) => return,
            (Record::Error { path, error }, None) => (path, Verdict::New { error: Some(error) }),
            (Record::Error { path, error }, Some(_)) => (path, Verdict::Error { error }),
            (Record::Skipped { path, why }, Some(_)) => (
                path,
                Verdict::Error {
                    error: ApiError::NotAFile(why.to_string()),
                },
            ),
            (Record::File { path, digests }, Some(listed)) => {
                let actual: Vec<(Algorithm, String)> = listed
                    .digests
                    .iter()
                    .map(|(a, _)| {
                        let got = digests
                            .entries
                            .iter()
                            .find(|(x, _)| x == a)
                            .map_or(String::new(), |(_, h)| h.clone());
                        (*a, got)
                    })
                    .collect();
                let same = listed
                    .digests
                    .iter()
                    .zip(&actual)
                    .all(|((_, want), (_, got))| want.eq_ignore_ascii_case(got));
                let v = if same {
                    Verdict::Ok
                } else {
                    Verdict::Changed {
                        expected: listed.digests,
                        actual,
                    }
                };
                (path, v)
            }
        };
        self.count(&v);
        emit(&path, &v);
    }

    /// The listed paths the walk never reached: missing.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8], &Verdict)) {
        while let Some((path, _)) = self.listed.pop_first() {
            self.count(&Verdict::Missing);
            emit(&path, &Verdict::Missing);
        }
    }
}
