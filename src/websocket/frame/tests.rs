//! Frame walker tests: every split point, every violation, control frames.

use super::*;
use crate::metrics::OPCODES;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Encodes a frame; `wide` forces the 64-bit length form.
fn encode(
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    wide: bool,
) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if wide || len > 0xFFFF {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    } else if len > 125 {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | len as u8);
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
    let at = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = mask {
        apply_mask(&mut out[at..], k, 0);
    }
    out
}

fn frame(fin: bool, opcode: u8, payload: &[u8], dir: Direction) -> Vec<u8> {
    encode(fin, 0, opcode, payload, dir.masked().then_some(KEY), false)
}

/// Everything observed while walking, with absolute stream offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Header {
        header: FrameHeader,
        start: usize,
        end: usize,
    },
    End {
        opcode: u8,
        at: usize,
        control: Vec<u8>,
    },
    Invalid {
        error: FrameError,
        start: usize,
    },
}

/// Walks `stream` cut at `cuts` (sorted offsets).
fn walk(walker: &mut FrameWalker, stream: &[u8], cuts: &[usize]) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut base = 0;
    let bounds = cuts.iter().copied().chain(std::iter::once(stream.len()));
    for end in bounds {
        let chunk = &stream[base..end];
        let mut pos = 0;
        while let Some(step) = walker.next(chunk, &mut pos) {
            match step {
                Step::Header {
                    header,
                    start,
                    carried,
                } => {
                    assert!(
                        carried == 0 || start == 0,
                        "carried bytes only at a chunk start"
                    );
                    seen.push(Seen::Header {
                        header,
                        start: base + start - carried,
                        end: base + pos,
                    });
                }
                Step::End { header } => seen.push(Seen::End {
                    opcode: header.opcode,
                    at: base + pos,
                    control: if header.is_control() {
                        walker.control_payload().to_vec()
                    } else {
                        Vec::new()
                    },
                }),
                Step::Invalid {
                    error,
                    start,
                    carried,
                } => {
                    seen.push(Seen::Invalid {
                        error,
                        start: base + start - carried,
                    });
                }
            }
        }
        if walker.error().is_none() {
            assert_eq!(pos, chunk.len(), "a live walker consumes every byte");
        }
        base = end;
    }
    seen
}

/// A stream of frames of every kind and length encoding, with a
/// fragmented message interleaved with control frames.
fn sample(dir: Direction, big: bool) -> (Vec<u8>, Vec<usize>) {
    let m = |fin, op, p: &[u8]| frame(fin, op, p, dir);
    let mut frames = vec![
        m(true, OP_TEXT, b"hello"),
        m(true, OP_BINARY, &[]),
        m(true, OP_BINARY, &[7u8; 126]),
        m(true, OP_PING, b"are you there"),
        m(false, OP_TEXT, b"frag-1 "),
        m(true, OP_PING, b""),
        m(false, OP_CONTINUATION, &[]),
        m(true, OP_PONG, &[9u8; 125]),
        m(true, OP_CONTINUATION, b"frag-3"),
        encode(
            true,
            0,
            OP_BINARY,
            b"wide",
            dir.masked().then_some(KEY),
            true,
        ),
    ];
    if big {
        frames.push(m(true, OP_BINARY, &[1u8; 65535]));
        frames.push(m(true, OP_TEXT, &[b'x'; 65536]));
    }
    let mut close = vec![0x03, 0xE8];
    close.extend_from_slice(b"bye");
    frames.push(m(true, OP_CLOSE, &close));
    let mut stream = Vec::new();
    let mut starts = Vec::new();
    for f in frames {
        starts.push(stream.len());
        stream.extend_from_slice(&f);
    }
    (stream, starts)
}

#[test]
fn opcode_classes_match_metric_labels() {
    for (op, name) in [
        (OP_CONTINUATION, "continuation"),
        (OP_TEXT, "text"),
        (OP_BINARY, "binary"),
        (OP_CLOSE, "close"),
        (OP_PING, "ping"),
        (OP_PONG, "pong"),
    ] {
        assert_eq!(opcode_class(op).map(|c| OPCODES[c]), Some(name));
    }
    for op in (3..=7).chain(0xB..=0xF) {
        assert_eq!(opcode_class(op), None);
    }
}

#[test]
fn walks_whole_stream_in_one_chunk() {
    for dir in [Direction::ClientToUpstream, Direction::UpstreamToClient] {
        let (stream, starts) = sample(dir, true);
        let mut w = FrameWalker::new(dir, false, None);
        let seen = walk(&mut w, &stream, &[]);
        assert!(w.at_boundary());
        let headers: Vec<_> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Header { header, start, .. } => Some((*start, *header)),
                _ => None,
            })
            .collect();
        assert_eq!(headers.iter().map(|h| h.0).collect::<Vec<_>>(), starts);
        let ends: Vec<_> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::End { at, .. } => Some(*at),
                _ => None,
            })
            .collect();
        let mut expected_ends: Vec<_> = starts[1..].to_vec();
        expected_ends.push(stream.len());
        assert_eq!(ends, expected_ends);
        for (start, h) in &headers {
            assert_eq!(h.masked, dir.masked());
            if h.masked {
                assert_eq!(h.mask, KEY);
            }
            let hl = usize::from(h.header_len);
            let expect_hl = match h.payload_len {
                _ if stream[start + 1] & 0x7F == 127 => 10,
                0..=125 => 2,
                126..=0xFFFF => 4,
                _ => 10,
            } + if h.masked { 4 } else { 0 };
            assert_eq!(hl, expect_hl);
        }
        let lens: Vec<u64> = headers.iter().map(|h| h.1.payload_len).collect();
        assert_eq!(lens, [5, 0, 126, 13, 7, 0, 0, 125, 6, 4, 65535, 65536, 5]);
        // Control payloads are captured unmasked; the close code is read.
        let controls: Vec<_> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::End {
                    opcode, control, ..
                } if opcode & 8 != 0 => Some((*opcode, control.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(controls[0], (OP_PING, b"are you there".to_vec()));
        assert_eq!(controls[1], (OP_PING, Vec::new()));
        assert_eq!(controls[2], (OP_PONG, vec![9u8; 125]));
        assert_eq!(controls[3].0, OP_CLOSE);
        assert_eq!(&controls[3].1[2..], b"bye");
        assert_eq!(w.close_code(), Some(1000));
    }
}

#[test]
fn every_single_split_point_gives_the_same_walk() {
    for dir in [Direction::ClientToUpstream, Direction::UpstreamToClient] {
        let (stream, _) = sample(dir, true);
        let reference = walk(&mut FrameWalker::new(dir, false, None), &stream, &[]);
        for cut in 0..=stream.len() {
            let mut w = FrameWalker::new(dir, false, None);
            let seen = walk(&mut w, &stream, &[cut]);
            assert_eq!(seen, reference, "split at {cut}");
            assert!(w.at_boundary());
        }
    }
}

#[test]
fn every_pair_of_split_points_gives_the_same_walk() {
    for dir in [Direction::ClientToUpstream, Direction::UpstreamToClient] {
        let (stream, _) = sample(dir, false);
        let reference = walk(&mut FrameWalker::new(dir, false, None), &stream, &[]);
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let seen = walk(&mut FrameWalker::new(dir, false, None), &stream, &[a, b]);
                assert_eq!(seen, reference, "split at {a} and {b}");
            }
        }
    }
}

#[test]
fn byte_at_a_time_gives_the_same_walk() {
    for dir in [Direction::ClientToUpstream, Direction::UpstreamToClient] {
        let (stream, _) = sample(dir, true);
        let reference = walk(&mut FrameWalker::new(dir, false, None), &stream, &[]);
        let cuts: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(
            walk(&mut FrameWalker::new(dir, false, None), &stream, &cuts),
            reference
        );
    }
}

#[test]
fn pending_header_and_payload_state_across_chunks() {
    let dir = Direction::ClientToUpstream;
    let f = frame(true, OP_BINARY, &[0u8; 300], dir); // 4 + 4 header bytes
    let mut w = FrameWalker::new(dir, false, None);
    let mut pos = 0;
    assert_eq!(w.next(&f[..3], &mut pos), None);
    assert_eq!(
        (pos, w.pending_header_len(), w.at_boundary()),
        (3, 3, false)
    );
    let mut pos = 0;
    match w.next(&f[3..10], &mut pos) {
        Some(Step::Header {
            header,
            start,
            carried,
        }) => {
            assert_eq!((start, carried, pos), (0, 3, 5));
            assert_eq!(header.payload_len, 300);
            assert_eq!(header.header_len, 8);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(w.next(&f[3..10], &mut pos), None);
    assert!(w.in_payload());
    assert_eq!(w.remaining(), 298);
    let mut pos = 0;
    assert!(matches!(w.next(&f[10..], &mut pos), Some(Step::End { .. })));
    assert_eq!(pos, f.len() - 10);
    assert!(w.at_boundary());
}

fn first_error(
    dir: Direction,
    ext: bool,
    max: Option<u64>,
    stream: &[u8],
) -> Option<(FrameError, usize)> {
    let seen = walk(&mut FrameWalker::new(dir, ext, max), stream, &[]);
    seen.iter().find_map(|s| match s {
        Seen::Invalid { error, start } => Some((*error, *start)),
        _ => None,
    })
}

/// Checks a violation is found at `at` however the stream is split, and
/// that nothing after it is reported.
fn assert_violation(
    dir: Direction,
    ext: bool,
    max: Option<u64>,
    stream: &[u8],
    error: FrameError,
    at: usize,
) {
    for cut in 0..=stream.len() {
        let mut w = FrameWalker::new(dir, ext, max);
        let seen = walk(&mut w, stream, &[cut]);
        let last = seen.last().cloned();
        assert_eq!(
            last,
            Some(Seen::Invalid { error, start: at }),
            "split at {cut}: {seen:?}"
        );
        assert_eq!(w.error(), Some(error));
        let mut pos = 0;
        assert_eq!(w.next(stream, &mut pos), None, "poisoned");
        assert_eq!(pos, 0);
    }
}

#[test]
fn rejects_reserved_opcodes() {
    for dir in [Direction::ClientToUpstream, Direction::UpstreamToClient] {
        let ok = frame(true, OP_TEXT, b"fine", dir);
        for op in (3..=7).chain(0xB..=0xF) {
            let mut s = ok.clone();
            s.extend(frame(true, op, b"x", dir));
            assert_violation(
                dir,
                false,
                None,
                &s,
                FrameError::ReservedOpcode(op),
                ok.len(),
            );
        }
    }
}

#[test]
fn checks_masking_by_direction() {
    let c = Direction::ClientToUpstream;
    let u = Direction::UpstreamToClient;
    let ok = frame(true, OP_TEXT, b"a", c);
    let mut s = ok.clone();
    s.extend(encode(true, 0, OP_TEXT, b"b", None, false));
    assert_violation(c, false, None, &s, FrameError::Unmasked, ok.len());
    let ok = frame(true, OP_TEXT, b"a", u);
    let mut s = ok.clone();
    s.extend(encode(true, 0, OP_PING, b"b", Some(KEY), false));
    assert_violation(u, false, None, &s, FrameError::Masked, ok.len());
}

#[test]
fn checks_control_frames() {
    let d = Direction::UpstreamToClient;
    let s = encode(false, 0, OP_PING, b"x", None, false);
    assert_violation(d, false, None, &s, FrameError::FragmentedControl, 0);
    // 126 bytes, whatever the encoding.
    let s = encode(true, 0, OP_PONG, &[0; 126], None, false);
    assert_violation(d, false, None, &s, FrameError::ControlTooLong, 0);
    let s = encode(true, 0, OP_PING, &[0; 3], None, true);
    assert_violation(d, false, None, &s, FrameError::ControlTooLong, 0);
    let s = encode(true, 0, OP_CLOSE, &[3], None, false);
    assert_violation(d, false, None, &s, FrameError::BadClosePayload, 0);
    // A close frame with no payload is fine and has no code.
    let mut w = FrameWalker::new(d, false, None);
    let seen = walk(&mut w, &encode(true, 0, OP_CLOSE, &[], None, false), &[]);
    assert_eq!(seen.len(), 2);
    assert_eq!(w.close_code(), None);
}

#[test]
fn checks_rsv_bits_unless_an_extension_was_negotiated() {
    let d = Direction::ClientToUpstream;
    for rsv in 1..8 {
        let s = encode(true, rsv, OP_TEXT, b"z", Some(KEY), false);
        assert_violation(d, false, None, &s, FrameError::ReservedBits, 0);
        let mut w = FrameWalker::new(d, true, None);
        let seen = walk(&mut w, &s, &[]);
        assert!(matches!(seen[0], Seen::Header { header, .. } if header.rsv == rsv));
        assert!(w.at_boundary());
    }
}

#[test]
fn checks_fragmentation() {
    let d = Direction::UpstreamToClient;
    let s = frame(true, OP_CONTINUATION, b"x", d);
    assert_violation(d, false, None, &s, FrameError::UnexpectedContinuation, 0);
    let mut s = frame(false, OP_TEXT, b"a", d);
    let at = s.len();
    s.extend(frame(true, OP_BINARY, b"b", d));
    assert_violation(d, false, None, &s, FrameError::UnfinishedMessage, at);
    // After a finished message, a continuation is again unexpected.
    let mut s = frame(false, OP_TEXT, b"a", d);
    s.extend(frame(true, OP_CONTINUATION, b"b", d));
    let at = s.len();
    s.extend(frame(true, OP_CONTINUATION, b"c", d));
    assert_violation(d, false, None, &s, FrameError::UnexpectedContinuation, at);
    // Control frames in the middle of a message are fine.
    let mut s = frame(false, OP_BINARY, b"a", d);
    s.extend(frame(true, OP_PING, b"p", d));
    s.extend(frame(true, OP_CONTINUATION, b"b", d));
    assert_eq!(first_error(d, false, None, &s), None);
}

#[test]
fn rejects_64_bit_length_with_msb_set() {
    let d = Direction::ClientToUpstream;
    let mut s = frame(true, OP_TEXT, b"ok", d);
    let at = s.len();
    s.extend_from_slice(&[0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1]);
    s.extend_from_slice(&KEY);
    assert_violation(d, false, None, &s, FrameError::LengthOverflow, at);
    // The largest legal length is accepted.
    let mut w = FrameWalker::new(d, false, None);
    let hdr = [
        0x82,
        0x80 | 127,
        0x7F,
        0xFF,
        0xFF,
        0xFF,
        0xFF,
        0xFF,
        0xFF,
        0xFF,
        1,
        2,
        3,
        4,
    ];
    let mut pos = 0;
    assert!(matches!(
        w.next(&hdr, &mut pos),
        Some(Step::Header { header, .. }) if header.payload_len == u64::MAX >> 1
    ));
}

#[test]
fn limits_message_size() {
    let d = Direction::ClientToUpstream;
    let limit = Some(10);
    // Exactly at the limit, fragmented, with a ping in between: fine.
    let mut s = frame(false, OP_TEXT, &[b'a'; 4], d);
    s.extend(frame(true, OP_PING, &[0; 100], d));
    s.extend(frame(false, OP_CONTINUATION, &[b'b'; 3], d));
    s.extend(frame(true, OP_CONTINUATION, &[b'c'; 3], d));
    // A new message starts counting again.
    s.extend(frame(true, OP_BINARY, &[0; 10], d));
    assert_eq!(first_error(d, false, limit, &s), None);
    // One byte over, in a continuation.
    let mut over = s.clone();
    over.extend(frame(false, OP_TEXT, &[b'a'; 6], d));
    let at = over.len();
    over.extend(frame(true, OP_CONTINUATION, &[b'b'; 5], d));
    let e = FrameError::MessageTooBig { limit: 10 };
    assert_eq!(e.close_code(), 1009);
    assert_violation(d, false, limit, &over, e, at);
    // One byte over in a single frame, with a 16-bit length.
    let mut over = s;
    let at = over.len();
    over.extend(frame(true, OP_BINARY, &[0; 300], d));
    assert_violation(
        d,
        false,
        Some(299),
        &over,
        FrameError::MessageTooBig { limit: 299 },
        at,
    );
}

#[test]
fn errors_map_to_close_codes() {
    assert_eq!(FrameError::Unmasked.close_code(), 1002);
    assert_eq!(FrameError::ReservedOpcode(3).close_code(), 1002);
    assert_eq!(FrameError::MessageTooBig { limit: 1 }.close_code(), 1009);
}

#[test]
fn builds_control_frames() {
    let f = ControlFrame::close(1002, "", None);
    assert_eq!(f.as_bytes(), [0x88, 0x02, 0x03, 0xEA]);
    let f = ControlFrame::ping(b"hi", None);
    assert_eq!(f.as_bytes(), [0x89, 0x02, b'h', b'i']);
    assert_ne!(f.len(), 0);
    // Masked frames walk cleanly in the client direction and unmask.
    let key = random_mask();
    let f = ControlFrame::close(4001, "bye now", Some(key));
    assert_eq!(f.len(), 6 + 2 + 7);
    let mut w = FrameWalker::new(Direction::ClientToUpstream, false, None);
    let seen = walk(&mut w, f.as_bytes(), &[]);
    assert!(
        matches!(seen[0], Seen::Header { header, .. } if header.mask == key && header.opcode == OP_CLOSE)
    );
    assert_eq!(w.close_code(), Some(4001));
    assert_eq!(&w.control_payload()[2..], b"bye now");
    // Long reasons are cut at a character boundary.
    let reason = "é".repeat(100);
    let f = ControlFrame::close(1000, &reason, None);
    assert_eq!(f.len(), 2 + 2 + 122);
    let mut w = FrameWalker::new(Direction::UpstreamToClient, false, None);
    walk(&mut w, f.as_bytes(), &[]);
    assert!(std::str::from_utf8(&w.control_payload()[2..]).is_ok());
    // Oversized ping payloads are cut to 125 bytes.
    assert_eq!(ControlFrame::ping(&[0; 200], None).len(), 127);
}

#[test]
fn reencodes_control_frames_exactly() {
    for (dir, mask) in [
        (Direction::ClientToUpstream, Some(KEY)),
        (Direction::UpstreamToClient, None),
    ] {
        for payload in [&b""[..], b"switchyard0001", &[0xAB; 125]] {
            let original = encode(true, 0, OP_PONG, payload, mask, false);
            for cut in 0..=original.len() {
                let mut w = FrameWalker::new(dir, false, None);
                walk(&mut w, &original, &[cut]);
                let again = w.reencode_control();
                assert_eq!(
                    again.as_ref().map(ControlFrame::as_bytes),
                    Some(&original[..])
                );
            }
        }
    }
    // Not for data frames.
    let mut w = FrameWalker::new(Direction::UpstreamToClient, false, None);
    walk(
        &mut w,
        &frame(true, OP_TEXT, b"x", Direction::UpstreamToClient),
        &[],
    );
    assert!(w.reencode_control().is_none());
}

#[test]
fn masks_differ() {
    let keys: std::collections::HashSet<[u8; 4]> = (0..64).map(|_| random_mask()).collect();
    assert!(keys.len() > 60);
    let mut data = *b"payload";
    apply_mask(&mut data, KEY, 0);
    assert_ne!(&data, b"payload");
    apply_mask(&mut data[..3], KEY, 0);
    apply_mask(&mut data[3..], KEY, 3);
    assert_eq!(&data, b"payload");
}
