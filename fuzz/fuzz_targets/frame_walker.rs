//! The WebSocket frame walker, fed one stream split at arbitrary points.
//!
//! Input: byte 0 picks direction / extensions / message limit, byte 1 the
//! number of split sizes that follow, then the sizes, then the stream.
//! Whatever the splits, the walker must report the same frames at the same
//! stream offsets as when it sees the stream whole, always make progress,
//! and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::websocket::frame::{Direction, FrameWalker, Step};

/// A step with offsets made absolute in the stream.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Header(switchyard::websocket::frame::FrameHeader, usize),
    End(switchyard::websocket::frame::FrameHeader, usize),
    Invalid(String, usize),
}

fn walk(walker: &mut FrameWalker, chunks: &[&[u8]]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut base = 0usize;
    for chunk in chunks {
        let mut pos = 0usize;
        // Each call consumes bytes or reports something; a frame with an
        // empty payload reports Header then End in place. Bound the loop so
        // a walker that stops making progress is found, not hung on.
        let mut calls = 0usize;
        let limit = 4 * chunk.len() + 8;
        loop {
            let before = pos;
            let Some(step) = walker.next(chunk, &mut pos) else {
                break;
            };
            assert!(pos >= before, "position went backwards");
            assert!(pos <= chunk.len(), "position past the chunk");
            calls += 1;
            assert!(calls <= limit, "walker is not making progress");
            match step {
                Step::Header {
                    header,
                    start,
                    carried,
                } => {
                    assert!(start <= chunk.len());
                    assert!(base + start >= carried);
                    events.push(Event::Header(header, base + start - carried));
                }
                Step::End { header } => events.push(Event::End(header, base + pos)),
                Step::Invalid {
                    error,
                    start,
                    carried,
                } => {
                    assert!(base + start >= carried);
                    events.push(Event::Invalid(format!("{error:?}"), base + start - carried));
                    assert!(walker.error().is_some());
                }
            }
        }
        if walker.error().is_none() {
            assert_eq!(pos, chunk.len(), "chunk not used up");
        }
        base += chunk.len();
    }
    events
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let flags = data[0];
    let direction = if flags & 1 == 0 {
        Direction::ClientToUpstream
    } else {
        Direction::UpstreamToClient
    };
    let extensions = flags & 2 != 0;
    let max = match (flags >> 2) & 3 {
        0 => None,
        1 => Some(0),
        2 => Some(125),
        _ => Some(70_000),
    };
    let nsplits = (data[1] as usize).min(data.len() - 2);
    let (sizes, stream) = data[2..].split_at(nsplits);
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut rest = stream;
    for &s in sizes {
        let n = (s as usize).min(rest.len());
        let (a, b) = rest.split_at(n);
        chunks.push(a);
        rest = b;
    }
    chunks.push(rest);

    let mut whole = FrameWalker::new(direction, extensions, max);
    let expected = walk(&mut whole, &[stream]);
    let mut split = FrameWalker::new(direction, extensions, max);
    let got = walk(&mut split, &chunks);
    assert_eq!(expected, got, "splitting the stream changed what was found");
    assert_eq!(whole.at_boundary(), split.at_boundary());
    assert_eq!(whole.in_message(), split.in_message());
    assert_eq!(whole.error(), split.error());
    if whole.error().is_none() {
        assert_eq!(whole.remaining(), split.remaining());
        assert_eq!(whole.pending_header_len(), split.pending_header_len());
        if let (Some(a), Some(b)) = (whole.reencode_control(), split.reencode_control()) {
            assert_eq!(a.as_bytes(), b.as_bytes());
        }
    }
});
