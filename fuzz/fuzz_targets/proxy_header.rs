//! The PROXY protocol header parser (v1 text, v2 binary), fed arbitrary
//! bytes as the first read of a connection.
//!
//! It must never panic, never claim more bytes than it was given, and give
//! the same answer however the header is split across reads: a header that
//! parses whole parses the same from exactly its own bytes, and every
//! strict prefix of it asks for more (`Ok(None)`). A v1 line is at most
//! 107 bytes (the specification's limit), whole or in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::proxy_protocol::{Header, MAX_HEADER, parse};

/// The v1 line length limit of the specification (and of `proxy-header`).
const V1_MAX: usize = 107;

fuzz_target!(|data: &[u8]| {
    let Some((header, used)) = (match parse(data) {
        Ok(Some(r)) => Some(r),
        Ok(None) => {
            // Waiting for more is only for a buffer below the limit.
            assert!(data.len() < MAX_HEADER, "Ok(None) at {} bytes", data.len());
            None
        }
        Err(_) => None,
    }) else {
        return;
    };
    assert!(used <= data.len(), "used {used} of {} bytes", data.len());
    assert!(used > 0);
    assert!(used <= MAX_HEADER, "a {used}-byte header was accepted");
    if let Header::Proxied {
        source,
        destination,
    } = header
    {
        assert_eq!(source.is_ipv4(), destination.is_ipv4(), "{header:?}");
    }
    let v1 = data[0] == b'P';
    if v1 {
        // A v1 header is one CRLF-terminated line.
        assert!(data[..used].ends_with(b"\r\n"));
        assert_eq!(memchr_lf(&data[..used]), Some(used - 1));
        assert!(used <= V1_MAX, "a {used}-byte v1 line was accepted");
    }

    // Exactly its own bytes: the same header, all of them used.
    match parse(&data[..used]) {
        Ok(Some((again, n))) => {
            assert_eq!(again, header);
            assert_eq!(n, used);
        }
        other => panic!("the {used}-byte header alone parsed as {other:?}"),
    }

    // Every strict prefix asks for more.
    for i in 0..used {
        match parse(&data[..i]) {
            Ok(None) => {}
            other => panic!("{i} bytes of a {used}-byte header parsed as {other:?}"),
        }
    }
});

fn memchr_lf(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}
