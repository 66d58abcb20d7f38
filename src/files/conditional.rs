//! Conditional and range requests against one file (RFC 9110 §13 and §14):
//! its validators, the preconditions in their RFC order, and the one byte
//! range a request may ask for.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};

/// A file's validators: what ETag and Last-Modified say about it.
pub(super) struct Validators {
    /// Modification time, to the second (what an HTTP date can say).
    pub(super) modified: SystemTime,
    /// `"<mtime-seconds-hex>-<length-hex>"`, strong, as nginx makes it.
    pub(super) etag: String,
}

impl Validators {
    /// The validators of a file of `len` bytes modified at `mtime`.
    pub(super) fn new(mtime: SystemTime, len: u64) -> Self {
        let secs = mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Validators {
            modified: UNIX_EPOCH + Duration::from_secs(secs),
            etag: format!("\"{secs:x}-{len:x}\""),
        }
    }

    /// `Last-Modified`.
    pub(super) fn last_modified(&self) -> HeaderValue {
        let date = httpdate::fmt_http_date(self.modified);
        HeaderValue::from_str(&date).unwrap_or(HeaderValue::from_static(""))
    }

    /// `ETag`.
    pub(super) fn etag(&self) -> HeaderValue {
        HeaderValue::from_str(&self.etag).unwrap_or(HeaderValue::from_static(""))
    }
}

/// What the preconditions decide (RFC 9110 §13.2.2).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Precondition {
    /// Serve the file (whole or a range).
    Proceed,
    /// `304 Not Modified`.
    NotModified,
    /// `412 Precondition Failed`.
    Failed,
}

/// Evaluates If-Match, If-Unmodified-Since, If-None-Match and
/// If-Modified-Since, in that order, for a GET or HEAD.
pub(super) fn evaluate(h: &HeaderMap, v: &Validators) -> Precondition {
    if let Some(list) = h.get(header::IF_MATCH) {
        if !list_matches(list, &v.etag, true) {
            return Precondition::Failed;
        }
    } else if let Some(date) = date(h, header::IF_UNMODIFIED_SINCE)
        && v.modified > date
    {
        return Precondition::Failed;
    }
    if let Some(list) = h.get(header::IF_NONE_MATCH) {
        if list_matches(list, &v.etag, false) {
            return Precondition::NotModified;
        }
    } else if let Some(date) = date(h, header::IF_MODIFIED_SINCE)
        && v.modified <= date
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// A header's HTTP date; None if absent or not a date (then it is ignored,
/// as the RFC says).
fn date(h: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    let v = h.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok()
}

/// Whether an entity-tag list (`*`, or `"a", W/"b"`) matches `etag`;
/// strong comparison refuses weak tags (RFC 9110 §8.8.3.2).
fn list_matches(list: &HeaderValue, etag: &str, strong: bool) -> bool {
    let Ok(list) = list.to_str() else {
        return false;
    };
    if list.trim() == "*" {
        return true;
    }
    list.split(',')
        .map(str::trim)
        .any(|tag| match tag.strip_prefix("W/") {
            Some(weak) => !strong && weak == etag,
            None => tag == etag,
        })
}

/// The byte range to send.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Range {
    /// The whole file (no Range, a malformed one, several, or an If-Range
    /// that no longer holds).
    Whole,
    /// These bytes, first and last inclusive.
    Part(u64, u64),
    /// `416 Range Not Satisfiable`.
    Unsatisfiable,
}

/// The range a GET asks for in a file of `len` bytes, after If-Range.
/// Several ranges are answered with the whole file, which RFC 9110 §14.2
/// allows; multipart responses are not made.
pub(super) fn range(h: &HeaderMap, len: u64, v: &Validators) -> Range {
    let Some(spec) = h.get(header::RANGE).and_then(|r| r.to_str().ok()) else {
        return Range::Whole;
    };
    if let Some(cond) = h.get(header::IF_RANGE)
        && !if_range_holds(cond, v)
    {
        return Range::Whole;
    }
    let Some(spec) = spec.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match num(suffix) {
            None => Range::Whole,
            Some(0) => Range::Unsatisfiable,
            Some(_) if len == 0 => Range::Unsatisfiable,
            Some(n) => Range::Part(len.saturating_sub(n), len - 1),
        },
        (first, last) => {
            let Some(a) = num(first) else {
                return Range::Whole;
            };
            let b = match last {
                "" => None,
                l => match num(l) {
                    Some(b) if b >= a => Some(b),
                    _ => return Range::Whole,
                },
            };
            if a >= len {
                return Range::Unsatisfiable;
            }
            Range::Part(a, b.map_or(len - 1, |b| b.min(len - 1)))
        }
    }
}

/// If-Range: an entity tag must match strongly; a date must equal
/// Last-Modified exactly.
fn if_range_holds(cond: &HeaderValue, v: &Validators) -> bool {
    let Ok(cond) = cond.to_str() else {
        return false;
    };
    let cond = cond.trim();
    if cond.starts_with('"') || cond.starts_with("W/") {
        return cond == v.etag;
    }
    httpdate::parse_http_date(cond).is_ok_and(|d| d == v.modified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Validators {
        Validators::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000), 100)
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, val) in pairs {
            m.append(*k, HeaderValue::from_str(val).unwrap());
        }
        m
    }

    #[test]
    fn preconditions_follow_rfc_9110_order() {
        let v = v();
        let etag = v.etag.clone();
        let lm = httpdate::fmt_http_date(v.modified);
        let old = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(evaluate(&h(&[]), &v), Precondition::Proceed);
        assert_eq!(
            evaluate(&h(&[("if-none-match", &etag)]), &v),
            Precondition::NotModified
        );
        let weak = format!("\"x\", W/{etag}");
        assert_eq!(
            evaluate(&h(&[("if-none-match", &weak)]), &v),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&h(&[("if-none-match", "*")]), &v),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&h(&[("if-none-match", "\"x\"")]), &v),
            Precondition::Proceed
        );
        assert_eq!(
            evaluate(&h(&[("if-modified-since", &lm)]), &v),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&h(&[("if-modified-since", old)]), &v),
            Precondition::Proceed
        );
        // If-None-Match wins over If-Modified-Since.
        let both = [
            ("if-none-match", "\"x\""),
            ("if-modified-since", lm.as_str()),
        ];
        assert_eq!(evaluate(&h(&both), &v), Precondition::Proceed);
        assert_eq!(
            evaluate(&h(&[("if-match", "\"x\"")]), &v),
            Precondition::Failed
        );
        let weak_only = format!("W/{etag}");
        assert_eq!(
            evaluate(&h(&[("if-match", &weak_only)]), &v),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&h(&[("if-match", &etag)]), &v),
            Precondition::Proceed
        );
        assert_eq!(
            evaluate(&h(&[("if-unmodified-since", old)]), &v),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&h(&[("if-unmodified-since", &lm)]), &v),
            Precondition::Proceed
        );
        assert_eq!(
            evaluate(&h(&[("if-unmodified-since", "junk")]), &v),
            Precondition::Proceed
        );
    }

    #[test]
    fn ranges() {
        let v = v();
        let r = |s: &str| range(&h(&[("range", s)]), 100, &v);
        assert_eq!(r("bytes=0-9"), Range::Part(0, 9));
        assert_eq!(r("bytes=90-"), Range::Part(90, 99));
        assert_eq!(r("bytes=90-500"), Range::Part(90, 99));
        assert_eq!(r("bytes=-5"), Range::Part(95, 99));
        assert_eq!(r("bytes=-500"), Range::Part(0, 99));
        assert_eq!(r("bytes=100-"), Range::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Range::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), Range::Whole);
        assert_eq!(r("bytes=5-1"), Range::Whole);
        assert_eq!(r("items=0-1"), Range::Whole);
        assert_eq!(r("bytes=a-b"), Range::Whole);
        assert_eq!(r("bytes=+1-2"), Range::Whole);
        assert_eq!(
            range(&h(&[("range", "bytes=0-")]), 0, &v),
            Range::Unsatisfiable
        );
        let etag = v.etag.clone();
        let ok = [("range", "bytes=0-9"), ("if-range", etag.as_str())];
        assert_eq!(range(&h(&ok), 100, &v), Range::Part(0, 9));
        let stale = [("range", "bytes=0-9"), ("if-range", "\"old\"")];
        assert_eq!(range(&h(&stale), 100, &v), Range::Whole);
        let lm = httpdate::fmt_http_date(v.modified);
        let by_date = [("range", "bytes=0-9"), ("if-range", lm.as_str())];
        assert_eq!(range(&h(&by_date), 100, &v), Range::Part(0, 9));
    }
}
