//! Compression: responses encoded with zstd, br or gzip at the proxy for
//! routes with `compress = true`, so no worker spends its time on it.
//!
//! [`eligible`] decides from the response head, under the contract's
//! conditions (the coding is the client's favourite, see
//! `accept_encoding`); [`apply`] rewrites the head and wraps the body in a
//! [`CompressBody`].

mod body;
mod codec;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::accept_encoding::Coding;

pub(crate) use body::CompressBody;
pub(crate) use codec::Encoder;

/// Bodies shorter than this are sent as they are: the encoding would cost
/// more than it saves.
const MIN_LENGTH: u64 = 1024;

/// Whether a response is one to compress (for a client that takes a
/// coding, and a method other than HEAD): a 200 of a textual type, not
/// encoded yet, without `Cache-Control: no-transform`, and at least 1 KiB
/// long (or of unknown length). Such a response varies by Accept-Encoding
/// whoever asks.
pub(crate) fn eligible(status: StatusCode, headers: &HeaderMap, length: Option<u64>) -> bool {
    if status != StatusCode::OK
        || headers.contains_key(header::CONTENT_ENCODING)
        || headers.contains_key(header::CONTENT_RANGE)
    {
        return false;
    }
    worth_it(headers.get(header::CONTENT_TYPE), length) && !no_transform(headers)
}

/// Whether a body of this type and length is worth encoding: textual, and
/// at least [`MIN_LENGTH`] long (or of unknown length).
pub(crate) fn worth_it(content_type: Option<&HeaderValue>, length: Option<u64>) -> bool {
    length.is_none_or(|n| n >= MIN_LENGTH)
        && content_type
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_textual)
}

/// Whether a Content-Type is text worth compressing: `text/*` but event
/// streams (which must not be held back), JSON, JavaScript, XML and SVG.
fn is_textual(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let Some((kind, sub)) = media.split_once('/') else {
        return false;
    };
    match kind {
        "text" => sub != "event-stream",
        "application" => {
            matches!(
                sub,
                "json"
                    | "x-ndjson"
                    | "jsonl"
                    | "json-seq"
                    | "javascript"
                    | "x-javascript"
                    | "ecmascript"
                    | "xml"
                    | "xhtml+xml"
            ) || sub.ends_with("+json")
                || sub.ends_with("+xml")
        }
        "image" => sub == "svg+xml",
        _ => false,
    }
}

/// `Cache-Control: no-transform` (RFC 9111 §5.2.2.6).
fn no_transform(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
}

/// `resp` encoded with `coding`: Content-Encoding set, Content-Length and
/// Accept-Ranges dropped (the length is unknown and ranges would address
/// the plain bytes), a strong ETag made weak, `Accept-Encoding` merged into
/// Vary; the body wrapped by `wrap`. Unchanged if the encoder could not be
/// made.
pub(crate) fn apply<B, C>(
    resp: Response<B>,
    coding: Coding,
    wrap: impl FnOnce(B, Encoder) -> C,
    unchanged: impl FnOnce(B) -> C,
) -> Response<C> {
    let encoder = match Encoder::new(coding) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, coding = coding.token(), "compression encoder failed to start");
            return resp.map(unchanged);
        }
    };
    let (mut parts, body) = resp.into_parts();
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::ACCEPT_RANGES);
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    weaken_etag(h);
    add_vary(h);
    Response::from_parts(parts, wrap(body, encoder))
}

/// A strong ETag made weak: the encoded bytes are not the ones it named.
fn weaken_etag(h: &mut HeaderMap) {
    if let Some(etag) = h.get(header::ETAG)
        && !etag.as_bytes().starts_with(b"W/")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            h.insert(header::ETAG, v);
        }
    }
}

/// A 304 to a client that takes a coding, on a route that compresses:
/// the ETag and Vary its 200 would have had (RFC 9110 §15.4.5), as far as
/// the 304 tells (a textual or absent Content-Type, no `no-transform`, not
/// encoded), so a cache can match it to the compressed copy it holds.
pub(crate) fn not_modified(h: &mut HeaderMap) {
    let textual = h
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.to_str().is_ok_and(is_textual));
    if textual && !no_transform(h) && !h.contains_key(header::CONTENT_ENCODING) {
        weaken_etag(h);
        add_vary(h);
    }
}

/// Merges `Accept-Encoding` into Vary (unless it is there, or `*`).
pub(crate) fn add_vary(h: &mut HeaderMap) {
    let varies = h
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| {
            let f = f.trim();
            f == "*" || f.eq_ignore_ascii_case("accept-encoding")
        });
    if !varies {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    /// The coding to compress a response with: the client's favourite
    /// (`accepted`, best first), if the response is [`eligible`] and the
    /// method is not HEAD.
    fn negotiate(
        method: &Method,
        accepted: &[Coding],
        status: StatusCode,
        headers: &HeaderMap,
        length: Option<u64>,
    ) -> Option<Coding> {
        let coding = *accepted.first()?;
        (*method != Method::HEAD && eligible(status, headers, length)).then_some(coding)
    }

    fn head(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_textual_200s_of_some_length_are_compressed() {
        let gz = [Coding::Gzip];
        let json = head(&[("content-type", "application/json")]);
        let get = Method::GET;
        let ok = StatusCode::OK;
        assert_eq!(negotiate(&get, &gz, ok, &json, None), Some(Coding::Gzip));
        assert_eq!(
            negotiate(&get, &gz, ok, &json, Some(1024)),
            Some(Coding::Gzip)
        );
        assert_eq!(negotiate(&get, &gz, ok, &json, Some(1023)), None);
        assert_eq!(negotiate(&get, &[], ok, &json, None), None);
        assert_eq!(negotiate(&Method::HEAD, &gz, ok, &json, None), None);
        for status in [204, 206, 304, 404, 500] {
            let s = StatusCode::from_u16(status).unwrap();
            assert_eq!(negotiate(&get, &gz, s, &json, None), None, "{status}");
        }
        for ct in [
            "text/html; charset=utf-8",
            "text/css",
            "TEXT/PLAIN",
            "application/javascript",
            "text/javascript",
            "application/ld+json",
            "application/xml",
            "application/atom+xml",
            "image/svg+xml",
        ] {
            let h = head(&[("content-type", ct)]);
            assert_eq!(
                negotiate(&get, &gz, ok, &h, None),
                Some(Coding::Gzip),
                "{ct}"
            );
        }
        for ct in [
            "text/event-stream",
            "image/png",
            "application/octet-stream",
            "video/mp4",
        ] {
            let h = head(&[("content-type", ct)]);
            assert_eq!(negotiate(&get, &gz, ok, &h, None), None, "{ct}");
        }
        assert_eq!(negotiate(&get, &gz, ok, &HeaderMap::new(), None), None);
        let encoded = head(&[("content-type", "text/html"), ("content-encoding", "br")]);
        assert_eq!(negotiate(&get, &gz, ok, &encoded, None), None);
        let nt = head(&[
            ("content-type", "text/html"),
            ("cache-control", "public, No-Transform"),
        ]);
        assert_eq!(negotiate(&get, &gz, ok, &nt, None), None);
    }

    #[test]
    fn the_head_says_what_was_done() {
        let resp = Response::builder()
            .header("content-length", "5000")
            .header("accept-ranges", "bytes")
            .header("etag", "\"abc\"")
            .header("vary", "Cookie")
            .body(())
            .unwrap();
        let r = apply(resp, Coding::Zstd, |(), _| (), |()| ());
        let h = r.headers();
        assert!(h.get("content-length").is_none());
        assert!(h.get("accept-ranges").is_none());
        assert_eq!(h["content-encoding"], "zstd");
        assert_eq!(h["etag"], "W/\"abc\"");
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["Cookie", "Accept-Encoding"]);
        let resp = Response::builder()
            .header("etag", "W/\"abc\"")
            .header("vary", "accept-encoding")
            .body(())
            .unwrap();
        let r = apply(resp, Coding::Gzip, |(), _| (), |()| ());
        assert_eq!(r.headers()["etag"], "W/\"abc\"");
        assert_eq!(r.headers().get_all("vary").iter().count(), 1);
    }
}
