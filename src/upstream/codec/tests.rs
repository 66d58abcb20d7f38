//! Codec tests: request framing, response heads, and body decoding fed
//! whole, in pieces and a byte at a time.

use super::*;

/// A header map with `fields` appended in order.
fn headers(fields: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for &(name, value) in fields {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// The values of `name` in `map`, in order, as strings.
fn values<'a>(map: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    map.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// Encodes a request head; returns the wire text, the fixed-up headers and
/// the framing.
fn encode(
    method: Method,
    target: &str,
    fields: &[(&str, &str)],
    body: Option<Option<u64>>,
) -> (String, HeaderMap, Framing) {
    let mut map = headers(fields);
    let mut dst = Vec::new();
    let framing = encode_head(&method, target, &mut map, &[], body, &mut dst);
    (String::from_utf8(dst).unwrap(), map, framing)
}

/// Splits an encoded head into its request line and its field lines
/// (sorted: `HeaderMap` does not promise an order across names).
fn split_head(wire: &str) -> (&str, Vec<&str>) {
    let head = wire
        .strip_suffix("\r\n\r\n")
        .expect("head ends with a blank line");
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap();
    let mut fields: Vec<&str> = lines.collect();
    fields.sort_unstable();
    (request_line, fields)
}

/// Parses `raw` as a whole response expected to give a final head; returns
/// the head and what is left of the buffer.
fn parse_final(raw: &[u8], method: &Method) -> (Head, BytesMut) {
    let mut buf = BytesMut::from(raw);
    match parse_head(&mut buf, method) {
        Ok(Parsed::Final(head)) => (head, buf),
        other => panic!("expected a final head, got {other:?}"),
    }
}

/// Parses `raw` expecting an error.
fn parse_error(raw: &[u8]) -> ProtocolError {
    let mut buf = BytesMut::from(raw);
    match parse_head(&mut buf, &Method::GET) {
        Err(e) => e,
        Ok(parsed) => panic!("expected an error, got {parsed:?}"),
    }
}

/// Decodes what `buf` holds to the end of the body; returns the body bytes
/// and the trailers, if any. Panics if more input is wanted.
fn decode_whole(
    decoder: &mut Decoder,
    buf: &mut BytesMut,
) -> Result<(Vec<u8>, Option<HeaderMap>), ProtocolError> {
    let mut body = Vec::new();
    loop {
        match decoder.decode(buf)? {
            Decoded::Data(bytes) => body.extend_from_slice(&bytes),
            Decoded::Trailers(t) => return Ok((body, Some(t))),
            Decoded::End => return Ok((body, None)),
            Decoded::More => panic!("decoder wants more after {body:?}"),
        }
    }
}

/// Feeds `input` a byte at a time, decoding after each byte until the
/// decoder wants more; returns the body bytes, the trailers, and whether
/// the end was reached.
fn decode_bytewise(
    decoder: &mut Decoder,
    input: &[u8],
) -> Result<(Vec<u8>, Option<HeaderMap>, bool), ProtocolError> {
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    for &b in input {
        buf.extend_from_slice(&[b]);
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(bytes) => {
                    assert!(!bytes.is_empty(), "empty data piece");
                    body.extend_from_slice(&bytes);
                }
                Decoded::Trailers(t) => {
                    assert!(buf.is_empty());
                    return Ok((body, Some(t), true));
                }
                Decoded::End => {
                    assert!(buf.is_empty());
                    return Ok((body, None, true));
                }
                Decoded::More => break,
            }
        }
    }
    Ok((body, None, false))
}

/// Decodes `input` as a chunked body, all at once, expecting an error.
fn chunked_error(input: &[u8]) -> ProtocolError {
    let mut decoder = Decoder::Chunked(Chunked::Size);
    let mut buf = BytesMut::from(input);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(_)) => {}
            Ok(other) => panic!("expected an error, got {other:?}"),
            Err(e) => return e,
        }
    }
}

// ---- encode_head ----

/// Fields given beside the map are written after the request's own, once each.
#[test]
fn added_fields_follow_the_requests_own() {
    let mut map = headers(&[("host", "shop.example"), ("accept", "*/*")]);
    let xff = HeaderName::from_static("x-forwarded-for");
    let real = HeaderName::from_static("x-real-ip");
    let added = [
        (&xff, HeaderValue::from_static("192.0.2.7")),
        (&real, HeaderValue::from_static("192.0.2.7")),
    ];
    let mut dst = Vec::new();
    let framing = encode_head(&Method::GET, "/a?b", &mut map, &added, None, &mut dst);
    assert_eq!(framing, Framing::Length(0));
    let wire = String::from_utf8(dst).unwrap();
    let (line, _) = split_head(&wire);
    assert_eq!(line, "GET /a?b HTTP/1.1");
    let fields: Vec<&str> = wire.trim_end().split("\r\n").skip(1).collect();
    assert_eq!(fields.len(), 4, "{wire}");
    assert_eq!(
        &fields[2..],
        ["x-forwarded-for: 192.0.2.7", "x-real-ip: 192.0.2.7"],
        "{wire}"
    );
    assert!(!map.contains_key(&xff), "the map itself is left as it was");
}

#[test]
fn encode_head_get_without_body_writes_head_and_strips_transfer_encoding() {
    let (wire, map, framing) = encode(
        Method::GET,
        "/path?q",
        &[
            ("Host", "example.com"),
            ("Transfer-Encoding", "chunked"),
            ("X-Custom", "a"),
            ("x-custom", "b"),
        ],
        None,
    );
    assert_eq!(framing, Framing::Length(0));
    assert!(!map.contains_key(header::TRANSFER_ENCODING));
    assert!(wire.starts_with("GET /path?q HTTP/1.1\r\n"), "{wire:?}");
    let (request_line, fields) = split_head(&wire);
    assert_eq!(request_line, "GET /path?q HTTP/1.1");
    assert_eq!(fields, ["host: example.com", "x-custom: a", "x-custom: b"]);
    // Repeated fields go out in their order.
    assert!(wire.find("x-custom: a").unwrap() < wire.find("x-custom: b").unwrap());
}

#[test]
fn encode_head_empty_target_becomes_slash() {
    let (wire, _, _) = encode(Method::GET, "", &[], None);
    assert_eq!(wire, "GET / HTTP/1.1\r\n\r\n");
}

#[test]
fn encode_head_known_length_body_gets_content_length() {
    let (wire, map, framing) = encode(Method::POST, "/submit", &[("host", "h")], Some(Some(11)));
    assert_eq!(framing, Framing::Length(11));
    assert_eq!(values(&map, "content-length"), ["11"]);
    let (request_line, fields) = split_head(&wire);
    assert_eq!(request_line, "POST /submit HTTP/1.1");
    assert_eq!(fields, ["content-length: 11", "host: h"]);
}

#[test]
fn encode_head_existing_valid_content_length_is_kept_and_wins() {
    // Over a different known length: the caller set it for a reason.
    let (wire, map, framing) = encode(
        Method::POST,
        "/",
        &[("Content-Length", "5")],
        Some(Some(11)),
    );
    assert_eq!(framing, Framing::Length(5));
    assert_eq!(values(&map, "content-length"), ["5"]);
    assert_eq!(split_head(&wire).1, ["content-length: 5"]);

    // Over an unknown length: no chunked coding is added.
    let (_, map, framing) = encode(Method::POST, "/", &[("Content-Length", "5, 5")], Some(None));
    assert_eq!(framing, Framing::Length(5));
    assert!(!map.contains_key(header::TRANSFER_ENCODING));
}

#[test]
fn encode_head_invalid_content_length_is_replaced_by_known_length() {
    let (_, map, framing) = encode(
        Method::PUT,
        "/",
        &[("Content-Length", "abc")],
        Some(Some(3)),
    );
    assert_eq!(framing, Framing::Length(3));
    assert_eq!(values(&map, "content-length"), ["3"]);
}

#[test]
fn encode_head_transfer_encoding_gets_chunked_appended_and_content_length_removed() {
    let (wire, map, framing) = encode(
        Method::POST,
        "/",
        &[("Transfer-Encoding", "gzip"), ("Content-Length", "10")],
        Some(Some(10)),
    );
    assert_eq!(framing, Framing::Chunked);
    assert_eq!(values(&map, "transfer-encoding"), ["gzip, chunked"]);
    assert!(!map.contains_key(header::CONTENT_LENGTH));
    assert_eq!(split_head(&wire).1, ["transfer-encoding: gzip, chunked"]);
}

#[test]
fn encode_head_transfer_encoding_ending_chunked_is_left_alone() {
    let (_, map, framing) = encode(
        Method::POST,
        "/",
        &[("Transfer-Encoding", "gzip, Chunked")],
        Some(None),
    );
    assert_eq!(framing, Framing::Chunked);
    assert_eq!(values(&map, "transfer-encoding"), ["gzip, Chunked"]);
}

#[test]
fn encode_head_chunked_is_appended_to_the_last_of_several_transfer_encoding_fields() {
    // As hyper's add_chunked: the earlier fields' codings stay.
    let (_, map, framing) = encode(
        Method::POST,
        "/",
        &[("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "br")],
        Some(None),
    );
    assert_eq!(framing, Framing::Chunked);
    assert_eq!(values(&map, "transfer-encoding"), ["gzip", "br, chunked"]);
}

#[test]
fn encode_head_unknown_length_post_body_is_chunked() {
    let (wire, map, framing) = encode(Method::POST, "/upload", &[], Some(None));
    assert_eq!(framing, Framing::Chunked);
    assert_eq!(values(&map, "transfer-encoding"), ["chunked"]);
    assert_eq!(
        wire,
        "POST /upload HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
}

#[test]
fn encode_head_unknown_length_body_on_get_head_connect_is_not_sent() {
    for method in [Method::GET, Method::HEAD, Method::CONNECT] {
        let (wire, map, framing) = encode(method.clone(), "/", &[], Some(None));
        assert_eq!(framing, Framing::Length(0), "{method}");
        assert!(map.is_empty(), "{method}: {map:?}");
        assert_eq!(wire, format!("{method} / HTTP/1.1\r\n\r\n"));
    }
}

// ---- parse_head ----

#[test]
fn parse_head_complete_200_with_content_length() {
    let raw = b"HTTP/1.1 200 OK\r\n\
        Content-Length: 5\r\n\
        Set-Cookie: a=1\r\n\
        Content-Type: text/plain\r\n\
        Set-Cookie: b=2\r\n\
        \r\n\
        hello";
    let (head, rest) = parse_final(raw, &Method::GET);
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(values(&head.headers, "set-cookie"), ["a=1", "b=2"]);
    assert_eq!(values(&head.headers, "content-type"), ["text/plain"]);
    assert_eq!(values(&head.headers, "content-length"), ["5"]);
    assert_eq!(head.body, Decoder::Length(5));
    assert!(head.keep_alive);
    assert_eq!(&rest[..], b"hello");
}

#[test]
fn parse_head_keeps_empty_header_values() {
    let (head, rest) = parse_final(
        b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\nX-After: z\r\n\r\n",
        &Method::GET,
    );
    assert_eq!(values(&head.headers, "x-empty"), [""]);
    assert_eq!(values(&head.headers, "x-after"), ["z"]);
    assert!(rest.is_empty());
}

#[test]
fn parse_head_partial_input_leaves_buffer_untouched() {
    let raw: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    // Every proper prefix, from empty to the last byte missing.
    for end in 0..raw.len() {
        let mut buf = BytesMut::from(&raw[..end]);
        let parsed = parse_head(&mut buf, &Method::GET).unwrap();
        assert!(
            matches!(parsed, Parsed::Partial),
            "prefix {end}: {parsed:?}"
        );
        assert_eq!(&buf[..], &raw[..end]);
    }
}

#[test]
fn parse_head_interim_responses_are_consumed_before_the_final_head() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\n\
           HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
           HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"[..],
    );
    for _ in 0..2 {
        let parsed = parse_head(&mut buf, &Method::POST).unwrap();
        assert!(matches!(parsed, Parsed::Interim), "{parsed:?}");
    }
    assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let Parsed::Final(head) = parse_head(&mut buf, &Method::POST).unwrap() else {
        panic!("expected the final head");
    };
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.body, Decoder::Length(2));
    assert_eq!(&buf[..], b"hi");
}

#[test]
fn parse_head_101_is_switching_error() {
    let err = parse_error(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    assert!(matches!(err, ProtocolError::Switching), "{err:?}");
}

#[test]
fn parse_head_status_below_100_is_field_error() {
    let err = parse_error(b"HTTP/1.1 099 Odd\r\n\r\n");
    assert!(matches!(err, ProtocolError::Field), "{err:?}");
}

#[test]
fn parse_head_head_204_304_have_no_body_despite_framing_headers() {
    let cases: [(&[u8], Method); 4] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
            Method::HEAD,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::HEAD,
        ),
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 42\r\n\r\n",
            Method::GET,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n",
            Method::GET,
        ),
    ];
    for (raw, method) in cases {
        let (head, _) = parse_final(raw, &method);
        assert_eq!(head.body, Decoder::Length(0), "{method} {:?}", head.status);
        assert!(head.body.is_done());
        assert!(head.keep_alive);
    }
}

#[test]
fn parse_head_transfer_encoding_chunked_is_chunked() {
    let (head, _) = parse_final(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
        &Method::GET,
    );
    assert_eq!(head.body, Decoder::Chunked(Chunked::Size));
    assert!(head.keep_alive);
}

#[test]
fn parse_head_transfer_encoding_with_content_length_is_chunked_without_keep_alive() {
    let (head, _) = parse_final(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
        &Method::GET,
    );
    assert_eq!(head.body, Decoder::Chunked(Chunked::Size));
    assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
    assert!(!head.keep_alive);
}

#[test]
fn parse_head_transfer_encoding_not_ending_chunked_reads_to_close() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    ] {
        let (head, _) = parse_final(raw, &Method::GET);
        assert_eq!(head.body, Decoder::Close);
        assert!(!head.keep_alive);
    }
}

#[test]
fn parse_head_without_framing_reads_to_close() {
    let (head, rest) = parse_final(b"HTTP/1.1 200 OK\r\n\r\nbody", &Method::GET);
    assert_eq!(head.body, Decoder::Close);
    assert!(!head.keep_alive);
    assert_eq!(&rest[..], b"body");
}

#[test]
fn parse_head_connection_close_disables_keep_alive() {
    for connection in ["close", "Close", "upgrade, CLOSE"] {
        let raw =
            format!("HTTP/1.1 200 OK\r\nConnection: {connection}\r\nContent-Length: 0\r\n\r\n");
        let (head, _) = parse_final(raw.as_bytes(), &Method::GET);
        assert!(!head.keep_alive, "{connection}");
    }
}

#[test]
fn parse_head_http10_keeps_alive_only_when_asked() {
    let (head, _) = parse_final(
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        &Method::GET,
    );
    assert_eq!(head.version, Version::HTTP_10);
    assert!(!head.keep_alive);

    let (head, _) = parse_final(
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
        &Method::GET,
    );
    assert_eq!(head.version, Version::HTTP_10);
    assert_eq!(head.body, Decoder::Length(0));
    assert!(head.keep_alive);
}

#[test]
fn parse_head_http10_transfer_encoding_is_error() {
    let err = parse_error(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(matches!(err, ProtocolError::TransferEncoding10), "{err:?}");
}

#[test]
fn parse_head_differing_content_lengths_are_error() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
    ] {
        let err = parse_error(raw);
        assert!(matches!(err, ProtocolError::ContentLength), "{err:?}");
    }
}

#[test]
fn parse_head_repeated_equal_content_lengths_are_accepted() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    ] {
        let (head, _) = parse_final(raw, &Method::GET);
        assert_eq!(head.body, Decoder::Length(5));
    }
}

#[test]
fn parse_head_non_numeric_content_length_is_error() {
    for value in [
        "abc",
        "+5",
        "-1",
        "5 5",
        "0x10",
        "",
        "5,",
        "18446744073709551616",
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
        let err = parse_error(raw.as_bytes());
        assert!(
            matches!(err, ProtocolError::ContentLength),
            "{value:?}: {err:?}"
        );
    }
}

#[test]
fn parse_head_malformed_status_line_is_head_error() {
    for raw in [
        &b"HTTP/1.1 2OO OK\r\n\r\n"[..],
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    ] {
        let err = parse_error(raw);
        assert!(matches!(err, ProtocolError::Head(_)), "{err:?}");
    }
}

#[test]
fn parse_head_larger_than_max_head_is_too_large() {
    let start = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Big: ";
    // Still incomplete at MAX_HEAD bytes.
    let mut raw = start.to_vec();
    raw.resize(MAX_HEAD, b'a');
    let err = parse_error(&raw);
    assert!(matches!(err, ProtocolError::HeadTooLarge), "{err:?}");

    // Complete, but one byte over.
    let mut raw = start.to_vec();
    raw.resize(MAX_HEAD + 1 - 4, b'a');
    raw.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw.len(), MAX_HEAD + 1);
    let err = parse_error(&raw);
    assert!(matches!(err, ProtocolError::HeadTooLarge), "{err:?}");

    // Exactly MAX_HEAD bytes is accepted.
    raw.remove(start.len());
    assert_eq!(raw.len(), MAX_HEAD);
    let (head, rest) = parse_final(&raw, &Method::GET);
    assert_eq!(head.headers["x-big"].len(), MAX_HEAD - start.len() - 4);
    assert!(rest.is_empty());
}

#[test]
fn parse_head_more_than_max_headers_is_too_large() {
    let with_fields = |n: usize| {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..n {
            raw.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    };
    let (head, _) = parse_final(&with_fields(MAX_HEADERS), &Method::GET);
    assert_eq!(head.headers.len(), MAX_HEADERS);
    let err = parse_error(&with_fields(MAX_HEADERS + 1));
    assert!(matches!(err, ProtocolError::HeadTooLarge), "{err:?}");
}

// ---- Decoder ----

#[test]
fn decoder_length_takes_exactly_n_bytes_and_leaves_the_rest() {
    let mut decoder = Decoder::Length(5);
    let mut buf = BytesMut::from(&b"helloHTTP/1.1 garbage"[..]);
    let Decoded::Data(data) = decoder.decode(&mut buf).unwrap() else {
        panic!("expected data");
    };
    assert_eq!(&data[..], b"hello");
    assert_eq!(decoder, Decoder::Length(0));
    assert!(matches!(decoder.decode(&mut buf).unwrap(), Decoded::End));
    assert_eq!(&buf[..], b"HTTP/1.1 garbage");
}

#[test]
fn decoder_length_over_input_arriving_in_pieces() {
    let mut decoder = Decoder::Length(6);
    let mut buf = BytesMut::new();
    assert!(matches!(decoder.decode(&mut buf).unwrap(), Decoded::More));
    let mut body = Vec::new();
    for piece in [&b"ab"[..], b"cd", b"ef"] {
        buf.extend_from_slice(piece);
        let Decoded::Data(data) = decoder.decode(&mut buf).unwrap() else {
            panic!("expected data");
        };
        body.extend_from_slice(&data);
        assert!(buf.is_empty());
        if !decoder.is_done() {
            assert!(matches!(decoder.decode(&mut buf).unwrap(), Decoded::More));
        }
    }
    assert_eq!(body, b"abcdef");
    assert!(matches!(decoder.decode(&mut buf).unwrap(), Decoded::End));
}

#[test]
fn decoder_close_takes_everything() {
    let mut decoder = Decoder::Close;
    let mut buf = BytesMut::from(&b"all of it\r\n0\r\n\r\n"[..]);
    let Decoded::Data(data) = decoder.decode(&mut buf).unwrap() else {
        panic!("expected data");
    };
    assert_eq!(&data[..], b"all of it\r\n0\r\n\r\n");
    assert!(buf.is_empty());
    assert!(matches!(decoder.decode(&mut buf).unwrap(), Decoded::More));
    assert!(!decoder.is_done());
    assert_eq!(decoder.remaining(), None);
}

/// A chunked body with extensions, whitespace before one, and an
/// upper-case size.
const CHUNKED_BODY: &[u8] = b"5;foo=bar\r\nhello\r\n\
    1 ;x\r\n,\r\n\
    A\r\n 012345678\r\n\
    0\r\n\r\n";

#[test]
fn decoder_chunked_whole_body_with_extensions() {
    let mut decoder = Decoder::Chunked(Chunked::Size);
    let mut buf = BytesMut::from(CHUNKED_BODY);
    let (body, trailers) = decode_whole(&mut decoder, &mut buf).unwrap();
    assert_eq!(body, b"hello, 012345678");
    assert!(trailers.is_none());
    assert!(buf.is_empty());
    assert_eq!(decoder, Decoder::Done);
}

#[test]
fn decoder_chunked_leaves_bytes_after_the_body() {
    let mut decoder = Decoder::Chunked(Chunked::Size);
    let mut buf = BytesMut::from(&b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"[..]);
    let (body, _) = decode_whole(&mut decoder, &mut buf).unwrap();
    assert_eq!(body, b"ok");
    assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
}

#[test]
fn decoder_chunked_fed_one_byte_at_a_time() {
    let mut decoder = Decoder::Chunked(Chunked::Size);
    let (body, trailers, ended) = decode_bytewise(&mut decoder, CHUNKED_BODY).unwrap();
    assert!(ended);
    assert_eq!(body, b"hello, 012345678");
    assert!(trailers.is_none());
    assert!(decoder.is_done());

    let input = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n";
    let mut decoder = Decoder::Chunked(Chunked::Size);
    let (body, trailers, ended) = decode_bytewise(&mut decoder, input).unwrap();
    assert!(ended);
    assert_eq!(body, b"abc");
    assert_eq!(values(&trailers.unwrap(), "x-sum"), ["1"]);
}

#[test]
fn decoder_chunked_returns_trailers() {
    let mut decoder = Decoder::Chunked(Chunked::Size);
    let mut buf = BytesMut::from(
        &b"4\r\ndata\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\nx-other: 2\r\n\r\n"[..],
    );
    let (body, trailers) = decode_whole(&mut decoder, &mut buf).unwrap();
    assert_eq!(body, b"data");
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers.len(), 3);
    assert_eq!(values(&trailers, "x-checksum"), ["abc"]);
    assert_eq!(values(&trailers, "x-other"), ["1", "2"]);
    assert!(buf.is_empty());
    assert!(decoder.is_done());
    assert!(matches!(decoder.decode(&mut buf).unwrap(), Decoded::End));
}

#[test]
fn decoder_chunked_missing_crlf_after_data_is_error() {
    for input in [&b"5\r\nhelloX\r\n0\r\n\r\n"[..], b"5\r\nhello0\r\n\r\n"] {
        let err = chunked_error(input);
        assert!(matches!(err, ProtocolError::Chunk(_)), "{err:?}");
    }
}

#[test]
fn decoder_chunked_bare_lf_is_error() {
    for input in [
        &b"5\nhello\r\n0\r\n\r\n"[..],
        b"5;ext\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"\n",
    ] {
        let err = chunked_error(input);
        assert!(matches!(err, ProtocolError::Chunk(_)), "{input:?}: {err:?}");
    }
}

#[test]
fn decoder_chunked_invalid_size_is_error() {
    for input in [
        &b"x\r\n"[..],
        b"\r\n",
        b"-1\r\n",
        b" 5\r\nhello\r\n",
        b"5x\r\nhello\r\n",
        b"5\r\r\nhello\r\n",
    ] {
        let err = chunked_error(input);
        assert!(matches!(err, ProtocolError::Chunk(_)), "{input:?}: {err:?}");
    }
}

#[test]
fn decoder_chunked_size_of_16_hex_digits_is_error() {
    let err = chunked_error(b"10000000000000000\r\n");
    assert!(matches!(err, ProtocolError::Chunk(_)), "{err:?}");
    let err = chunked_error(b"0000000000000005\r\nhello\r\n");
    assert!(matches!(err, ProtocolError::Chunk(_)), "{err:?}");

    // 15 digits is the most accepted.
    let mut decoder = Decoder::Chunked(Chunked::Size);
    let mut buf = BytesMut::from(&b"fffffffffffffff\r\n"[..]);
    assert!(matches!(decoder.decode(&mut buf).unwrap(), Decoded::More));
    assert_eq!(
        decoder,
        Decoder::Chunked(Chunked::Data(0x0fff_ffff_ffff_ffff))
    );
}

#[test]
fn decoder_chunked_long_size_line_without_crlf_is_error() {
    // Up to the limit, more is awaited.
    let mut decoder = Decoder::Chunked(Chunked::Size);
    let mut line = b"5;".to_vec();
    line.resize(MAX_CHUNK_LINE, b'a');
    let mut buf = BytesMut::from(&line[..]);
    assert!(matches!(decoder.decode(&mut buf).unwrap(), Decoded::More));

    buf.extend_from_slice(b"a");
    let err = decoder.decode(&mut buf).unwrap_err();
    assert!(matches!(err, ProtocolError::Chunk(_)), "{err:?}");
}

#[test]
fn decoder_chunked_size_line_limit_does_not_depend_on_read_boundaries() {
    // A body of one chunk whose size line is `len` bytes long.
    let body = |len: usize| {
        let mut input = b"5;".to_vec();
        input.resize(len, b'a');
        input.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        input
    };

    // At the limit: accepted whole and a byte at a time (CR and LF apart).
    let input = body(MAX_CHUNK_LINE);
    let mut decoder = Decoder::Chunked(Chunked::Size);
    let mut buf = BytesMut::from(&input[..]);
    assert_eq!(decode_whole(&mut decoder, &mut buf).unwrap().0, b"hello");
    let mut decoder = Decoder::Chunked(Chunked::Size);
    let (data, _, ended) = decode_bytewise(&mut decoder, &input).unwrap();
    assert_eq!((&data[..], ended), (&b"hello"[..], true));

    // Over it: refused even when the CRLF arrives with the line.
    let err = chunked_error(&body(MAX_CHUNK_LINE + 1));
    assert!(matches!(err, ProtocolError::Chunk(_)), "{err:?}");
}

#[test]
fn decoder_chunked_trailer_section_over_limit_is_error() {
    let field = |len: usize| {
        let mut t = b"X-Big: ".to_vec();
        t.resize(len, b'a');
        t
    };

    // Unfinished and past the limit.
    let mut input = b"0\r\n".to_vec();
    input.extend_from_slice(&field(MAX_TRAILERS + 1));
    let err = chunked_error(&input);
    assert!(matches!(err, ProtocolError::Chunk(_)), "{err:?}");

    // Finished, but one byte over.
    let mut input = b"0\r\n".to_vec();
    input.extend_from_slice(&field(MAX_TRAILERS + 1 - 4));
    input.extend_from_slice(b"\r\n\r\n");
    let err = chunked_error(&input);
    assert!(matches!(err, ProtocolError::Chunk(_)), "{err:?}");

    // Exactly the limit is accepted.
    let mut input = b"0\r\n".to_vec();
    input.extend_from_slice(&field(MAX_TRAILERS - 4));
    input.extend_from_slice(b"\r\n\r\n");
    let mut decoder = Decoder::Chunked(Chunked::Size);
    let mut buf = BytesMut::from(&input[..]);
    let (_, trailers) = decode_whole(&mut decoder, &mut buf).unwrap();
    assert!(trailers.unwrap().contains_key("x-big"));
}

#[test]
fn decoder_is_done_and_remaining() {
    assert!(Decoder::Length(0).is_done());
    assert!(Decoder::Done.is_done());
    assert!(!Decoder::Length(3).is_done());
    assert!(!Decoder::Close.is_done());
    assert!(!Decoder::Chunked(Chunked::Size).is_done());

    assert_eq!(Decoder::Length(7).remaining(), Some(7));
    assert_eq!(Decoder::Done.remaining(), Some(0));
    assert_eq!(Decoder::Close.remaining(), None);
    assert_eq!(Decoder::Chunked(Chunked::Data(4)).remaining(), None);

    // Counting down as bytes are taken.
    let mut decoder = Decoder::Length(7);
    let mut buf = BytesMut::from(&b"abc"[..]);
    decoder.decode(&mut buf).unwrap();
    assert_eq!(decoder.remaining(), Some(4));
    assert!(!decoder.is_done());
}

// ---- chunked request bodies ----

#[test]
fn chunk_line_is_upper_case_hex_and_crlf() {
    assert_eq!(&chunk_line(255)[..], b"FF\r\n");
    assert_eq!(&chunk_line(1)[..], b"1\r\n");
    assert_eq!(&chunk_line(0x1000)[..], b"1000\r\n");
}

#[test]
fn last_chunk_writes_only_announced_trailers() {
    assert_eq!(&last_chunk(None, &[])[..], b"0\r\n\r\n");

    let trailers = headers(&[
        ("x-checksum", "abc"),
        ("x-secret", "no"),
        ("x-timing", "1"),
        ("x-timing", "2"),
    ]);
    let announced = [
        HeaderName::from_static("x-checksum"),
        HeaderName::from_static("x-timing"),
    ];
    let out = last_chunk(Some(&trailers), &announced);
    let text = std::str::from_utf8(&out).unwrap();
    let section = text.strip_prefix("0\r\n").unwrap();
    let wire = format!("start\r\n{section}");
    let (_, fields) = split_head(&wire);
    assert_eq!(fields, ["x-checksum: abc", "x-timing: 1", "x-timing: 2"]);

    // Nothing announced: an empty trailer section.
    assert_eq!(&last_chunk(Some(&trailers), &[])[..], b"0\r\n\r\n");
}

#[test]
fn announced_trailers_parses_lists_across_fields() {
    let map = headers(&[
        ("Trailer", "X-Checksum, x-timing"),
        ("Trailer", " Server-Timing ,,"),
    ]);
    assert_eq!(
        announced_trailers(&map),
        [
            HeaderName::from_static("x-checksum"),
            HeaderName::from_static("x-timing"),
            HeaderName::from_static("server-timing"),
        ]
    );
    assert!(announced_trailers(&HeaderMap::new()).is_empty());
}

/// The fast path for a plain length agrees with the general parser, and
/// leaves everything else to it.
#[test]
fn plain_lengths_are_digits_only_and_overflow_is_none() {
    assert_eq!(plain_length(b"0"), Some(0));
    assert_eq!(plain_length(b"1024"), Some(1024));
    assert_eq!(plain_length(b"18446744073709551615"), Some(u64::MAX));
    for odd in [
        &b""[..],
        b"18446744073709551616",
        b"1, 1",
        b" 5",
        b"+5",
        b"5a",
        b"-1",
    ] {
        assert_eq!(
            plain_length(odd),
            None,
            "{:?}",
            String::from_utf8_lossy(odd)
        );
    }
    // Two fields that agree, and one field listing the same length twice,
    // still parse (the general path); lengths that disagree do not.
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
    ] {
        assert_eq!(parse_final(raw, &Method::GET).0.body, Decoder::Length(3));
    }
    let err = parse_error(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
    assert!(matches!(err, ProtocolError::ContentLength), "{err:?}");
}
