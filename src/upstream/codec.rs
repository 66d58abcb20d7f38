//! Codec: HTTP/1.1 as written to and read from a pool server, without I/O.
//! The request head and its body framing go out ([`encode_head`],
//! [`Framing`]); the response head ([`parse_head`]) and its body
//! ([`Decoder`]: a length, chunked, or to the close) come in.
//!
//! The rules are RFC 9112's and hyper's client's (which this replaces for
//! pool requests): the same framing chosen for the same request, and the
//! same response accepted or refused.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Largest response head accepted (nginx's `proxy_buffer_size` is 4–8 KiB;
/// hyper's limit is larger, and Django sites send long cookie headers).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// Header fields whose places in the head are kept on the stack.
const INLINE_FIELDS: usize = 24;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section of a chunked response.
const MAX_TRAILERS: usize = 16 * 1024;

/// How a pool server's response broke HTTP/1.1: the server's fault.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The status line or a header field is malformed.
    #[error("malformed response head")]
    Head(#[source] httparse::Error),
    /// The head did not end within [`MAX_HEAD`] bytes.
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// A status code outside 100–999, or a header name or value http refuses.
    #[error("invalid status code or header field in the response head")]
    Field,
    /// Content-Length is not one non-negative number.
    #[error("invalid Content-Length in the response")]
    ContentLength,
    /// Transfer-Encoding in an HTTP/1.0 response, which cannot carry it.
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncoding10,
    /// A 101 to a request that asked for no upgrade.
    #[error("unexpected 101 Switching Protocols")]
    Switching,
    /// The chunked body's framing is malformed.
    #[error("malformed chunked response body: {0}")]
    Chunk(&'static str),
}

/// How a request's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes the request head for `method`, `target` (origin-form) and
/// `headers`, then the fields `added`, into `dst`, first fixing the framing
/// headers as hyper's client does, and returns the body's framing. `body`
/// is `None` for a request without a body, else the body's exact length if
/// it knows it.
pub(crate) fn encode_head(
    method: &Method,
    target: &str,
    headers: &mut HeaderMap,
    added: &[(&HeaderName, HeaderValue)],
    body: Option<Option<u64>>,
    dst: &mut Vec<u8>,
) -> Framing {
    let framing = request_framing(method, headers, body);
    dst.reserve(64 + target.len() + (headers.len() + added.len()) * 32);
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    let added = added.iter().map(|(name, value)| (*name, value));
    for (name, value) in headers.iter().chain(added) {
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    framing
}

/// The framing of a request body, with the headers made to say it.
fn request_framing(method: &Method, headers: &mut HeaderMap, body: Option<Option<u64>>) -> Framing {
    let Some(known) = body else {
        headers.remove(header::TRANSFER_ENCODING);
        return Framing::Length(0);
    };
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // A chunked coding must come last: add it to the last field when
        // it is not there.
        if !ends_chunked(headers.get_all(header::TRANSFER_ENCODING)) {
            let mut fields: Vec<HeaderValue> = headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .cloned()
                .collect();
            if let Some(last) = fields.last_mut()
                && let Ok(v) = HeaderValue::from_bytes(&[last.as_bytes(), b", chunked"].concat())
            {
                *last = v;
            }
            headers.remove(header::TRANSFER_ENCODING);
            for v in fields {
                headers.append(header::TRANSFER_ENCODING, v);
            }
        }
        headers.remove(header::CONTENT_LENGTH);
        return Framing::Chunked;
    }
    if let Some(n) = content_length(headers) {
        return Framing::Length(n);
    }
    headers.remove(header::CONTENT_LENGTH);
    match known {
        Some(n) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            Framing::Length(n)
        }
        // GET, HEAD and CONNECT almost never carry a body: none is sent.
        None if matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) => {
            Framing::Length(0)
        }
        None => {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            Framing::Chunked
        }
    }
}

/// Whether the last transfer coding listed is `chunked`.
fn ends_chunked<'a>(values: header::GetAll<'a, HeaderValue>) -> bool {
    values
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// The one length every Content-Length field gives (`1, 1` counts as 1),
/// or `None` when there is none, or they disagree or do not parse.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().ok()?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = part.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    length
}

/// A response head read off the wire.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    /// How its body is framed.
    pub(crate) body: Decoder,
    /// Whether the connection may carry another request afterwards.
    pub(crate) keep_alive: bool,
}

/// What parsing the start of a buffer found.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A 1xx interim response, taken off the buffer and dropped.
    Interim,
    /// A final response head, taken off the buffer.
    Final(Head),
}

/// Parses a response head (to a `method` request) at the start of `buf`
/// and takes it off. Header values are slices of the head's bytes, not
/// copies.
pub(crate) fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Parsed, ProtocolError> {
    // Where each field's name and value are in the head: the values are
    // sliced out once the head is split off the buffer. Most heads have a
    // few fields: room for those on the stack, more go to the heap.
    let mut inline = [(0u32, 0u32, 0u32, 0u32); INLINE_FIELDS];
    let mut spilled = Vec::new();
    let (len, code, minor, count) = {
        // Uninitialised slots: filling 100 empty headers on every response
        // cost more than parsing a short head.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(ProtocolError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::HeadTooLarge),
            Err(e) => return Err(ProtocolError::Head(e)),
        };
        if len > MAX_HEAD {
            return Err(ProtocolError::HeadTooLarge);
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let at = res.headers.iter().map(|f| {
            let name = offset(f.name.as_bytes());
            let value = offset(f.value);
            (
                name,
                name + f.name.len() as u32,
                value,
                value + f.value.len() as u32,
            )
        });
        if res.headers.len() <= INLINE_FIELDS {
            for (slot, a) in inline.iter_mut().zip(at) {
                *slot = a;
            }
        } else {
            spilled.extend(at);
        }
        (len, res.code.unwrap_or(0), res.version, res.headers.len())
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| ProtocolError::Field)?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProtocolError::Switching);
    }
    if status.is_informational() {
        return Ok(Parsed::Interim);
    }
    let version = if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let at = if count <= INLINE_FIELDS {
        &inline[..count]
    } else {
        &spilled[..]
    };
    let mut headers = HeaderMap::with_capacity(at.len());
    let mut noted = Noted::default();
    for &(n0, n1, v0, v1) in at {
        let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize])
            .map_err(|_| ProtocolError::Field)?;
        let value = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize))
            .map_err(|_| ProtocolError::Field)?;
        noted.note(&name, &value);
        headers.append(name, value);
    }
    let keep_alive = noted.keeps_alive(version, &headers);
    let (body, framed_for_reuse) = response_framing(method, status, version, &mut headers, &noted)?;
    let keep_alive = keep_alive && framed_for_reuse;
    Ok(Parsed::Final(Head {
        status,
        version,
        headers,
        body,
        keep_alive,
    }))
}

/// What the framing needs to know of a response's fields, noted as they
/// are read: the map then needs no lookups for a response without
/// `Connection` or `Transfer-Encoding` and with one plain length (nearly
/// every one). Four lookups and the general length parser had cost 900
/// instructions per response (bench/README.md, issue 20).
#[derive(Debug, Default)]
struct Noted {
    connection: bool,
    transfer_encoding: bool,
    /// How many Content-Length fields there are.
    content_lengths: u32,
    /// The last Content-Length, if it is nothing but digits.
    length: Option<u64>,
}

impl Noted {
    /// Whether the response leaves its connection open; without a
    /// `Connection` field, by its version alone.
    fn keeps_alive(&self, version: Version, headers: &HeaderMap) -> bool {
        if self.connection {
            keeps_alive(version, headers)
        } else {
            version != Version::HTTP_10
        }
    }

    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if *name == header::CONTENT_LENGTH {
            self.content_lengths += 1;
            self.length = plain_length(value.as_bytes());
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if *name == header::CONNECTION {
            self.connection = true;
        }
    }
}

/// A length written as nothing but digits (the common form), or `None`.
fn plain_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// How a response's body is framed (RFC 9112 §6.3), and whether that
/// framing leaves the connection fit for another request.
fn response_framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
    noted: &Noted,
) -> Result<(Decoder, bool), ProtocolError> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Decoder::Length(0), true));
    }
    if noted.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(ProtocolError::TransferEncoding10);
        }
        // Transfer-Encoding overrides Content-Length, and the length must
        // not travel on with the body; the connection is not trusted with
        // another request.
        let both = headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok(
            if ends_chunked(headers.get_all(header::TRANSFER_ENCODING)) {
                (Decoder::Chunked(Chunked::Size), !both)
            } else {
                (Decoder::Close, false)
            },
        );
    }
    if noted.content_lengths > 0 {
        let plain = noted.length.filter(|_| noted.content_lengths == 1);
        let n = plain
            .or_else(|| content_length(headers))
            .ok_or(ProtocolError::ContentLength)?;
        return Ok((Decoder::Length(n), true));
    }
    Ok((Decoder::Close, false))
}

/// Whether a response leaves its connection open: HTTP/1.1 unless it says
/// `close`, HTTP/1.0 only if it says `keep-alive`.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let says = |token: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match version {
        Version::HTTP_10 => says("keep-alive"),
        _ => !says("close"),
    }
}

/// Where a chunked body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// At the trailer section after the last chunk.
    Trailers,
}

/// How much of a response body is left, and how it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// This many bytes are left (0: the body has ended).
    Length(u64),
    /// Chunked, at this point.
    Chunked(Chunked),
    /// Everything until the server closes the connection.
    Close,
    /// Ended (a chunked body's last chunk, or the close).
    Done,
}

/// The next piece of a response body.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// A chunked body's trailer fields (not empty); the body has ended.
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More bytes must be read first.
    More,
}

impl Decoder {
    /// Whether the body has ended.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Decoder::Length(0) | Decoder::Done)
    }

    /// Bytes of the body left, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body off the front of `buf`, which holds
    /// what has been read past the head.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match *self {
                Decoder::Length(0) | Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    *self = Decoder::Length(n - take as u64);
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Decoder::Close => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                Decoder::Chunked(Chunked::Size) => {
                    let Some(line) = line_end(buf, MAX_CHUNK_LINE, "chunk-size line too long")?
                    else {
                        return Ok(Decoded::More);
                    };
                    let size = chunk_size(&buf[..line])?;
                    let _ = buf.split_to(line + 2);
                    *self = Decoder::Chunked(if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    });
                }
                Decoder::Chunked(Chunked::Data(n)) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let left = n - take as u64;
                    *self = Decoder::Chunked(if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    });
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Decoder::Chunked(Chunked::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError::Chunk("no CRLF after chunk data"));
                    }
                    let _ = buf.split_to(2);
                    *self = Decoder::Chunked(Chunked::Size);
                }
                Decoder::Chunked(Chunked::Trailers) => {
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                        *self = Decoder::Done;
                        return Ok(Decoded::End);
                    }
                    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
                        if buf.len() > MAX_TRAILERS {
                            return Err(ProtocolError::Chunk("trailer section too large"));
                        }
                        return Ok(Decoded::More);
                    };
                    if end + 4 > MAX_TRAILERS {
                        return Err(ProtocolError::Chunk("trailer section too large"));
                    }
                    let trailers = parse_trailers(&buf[..end + 4])?;
                    let _ = buf.split_to(end + 4);
                    *self = Decoder::Done;
                    return Ok(if trailers.is_empty() {
                        Decoded::End
                    } else {
                        Decoded::Trailers(trailers)
                    });
                }
            }
        }
    }
}

/// Where the CRLF ending the line at the start of `buf` is, if it is there.
fn line_end(
    buf: &[u8],
    max: usize,
    too_long: &'static str,
) -> Result<Option<usize>, ProtocolError> {
    // The limit holds however the line arrives: whole, or a byte at a time
    // (a full line and its CR may wait for the LF).
    match memchr::memchr(b'\n', buf) {
        Some(i) if i > max + 1 => Err(ProtocolError::Chunk(too_long)),
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(ProtocolError::Chunk("bare LF in chunk-size line")),
        None if buf.len() > max + 1 || (buf.len() == max + 1 && buf[max] != b'\r') => {
            Err(ProtocolError::Chunk(too_long))
        }
        None => Ok(None),
    }
}

/// The size a chunk-size line (without its CRLF) gives; extensions are
/// skipped.
fn chunk_size(line: &[u8]) -> Result<u64, ProtocolError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ProtocolError::Chunk("no chunk size"));
    }
    if digits > 15 {
        return Err(ProtocolError::Chunk("chunk size too large"));
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !(ext.is_empty() || ext[0] == b';') || rest.iter().any(|&b| b == b'\r' || b == 0) {
        return Err(ProtocolError::Chunk("invalid chunk-size line"));
    }
    let mut n = 0u64;
    for &b in &line[..digits] {
        // 15 hex digits cannot overflow a u64.
        n = n * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
    }
    Ok(n)
}

/// Parses a trailer section (fields and the blank line ending it).
fn parse_trailers(section: &[u8]) -> Result<HeaderMap, ProtocolError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => {
            let mut map = HeaderMap::with_capacity(parsed.len());
            for f in parsed {
                let name =
                    HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| ProtocolError::Field)?;
                let value = HeaderValue::from_bytes(f.value).map_err(|_| ProtocolError::Field)?;
                map.append(name, value);
            }
            Ok(map)
        }
        Ok(httparse::Status::Partial) => Err(ProtocolError::Chunk("truncated trailer section")),
        Err(_) => Err(ProtocolError::Chunk("malformed trailer field")),
    }
}

/// The line that opens a chunk of `len` bytes.
pub(crate) fn chunk_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:X}\r\n"))
}

/// The last chunk and the trailer section after it: those of `trailers`
/// the request's `Trailer` header announced (none: an empty section).
pub(crate) fn last_chunk(trailers: Option<&HeaderMap>, announced: &[HeaderName]) -> Bytes {
    let mut out = b"0\r\n".to_vec();
    if let Some(t) = trailers {
        for (name, value) in t.iter().filter(|(n, _)| announced.contains(n)) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// The trailer fields a request's `Trailer` header announces.
pub(crate) fn announced_trailers(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests;
