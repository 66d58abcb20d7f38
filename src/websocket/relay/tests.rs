//! The relay over real sockets: every length class, fragmentation, close
//! codes, protocol violations, pings, and reads split at every byte.

use std::future::Future;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

use super::*;
use crate::metrics::{Metrics, RouteMetrics};
use crate::websocket::frame::{
    Direction, FrameWalker, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, Step,
    apply_mask,
};

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

type Ws = WebSocketStream<TcpStream>;

/// Reads an HTTP head byte by byte, so nothing after it is consumed.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 8192, "head too long");
        let n = s.read(&mut b).await.expect("read head");
        assert_eq!(n, 1, "EOF in head");
        head.push(b[0]);
    }
    String::from_utf8(head).expect("utf-8 head")
}

fn request() -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The proxy's side of a client handshake: reads the request, answers 101.
async fn answer_upgrade(s: &mut TcpStream) {
    let head = read_head(s).await;
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_owned())
        })
        .expect("Sec-WebSocket-Key");
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    s.write_all(resp.as_bytes()).await.expect("write 101");
}

/// A connected pair of sockets: (connecting side, accepted side).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.expect("connect"), b.expect("accept").0)
}

/// A tungstenite client, and the proxy's end of its connection.
async fn ws_client() -> (Ws, TcpStream) {
    let (tcp, mut proxy_side) = tcp_pair().await;
    let connect = tokio_tungstenite::client_async("ws://x/", tcp);
    let (ws, ()) = timeout(WAIT, async {
        tokio::join!(connect, answer_upgrade(&mut proxy_side))
    })
    .await
    .expect("handshake in time");
    (ws.expect("client handshake").0, proxy_side)
}

/// A raw client that did its handshake by hand, and the proxy's end.
async fn raw_client() -> (TcpStream, TcpStream) {
    let (mut raw, mut proxy_side) = tcp_pair().await;
    let client = async {
        raw.write_all(request().as_bytes()).await.expect("request");
        read_head(&mut raw).await
    };
    let (head, ()) = timeout(WAIT, async {
        tokio::join!(client, answer_upgrade(&mut proxy_side))
    })
    .await
    .expect("handshake in time");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (raw, proxy_side)
}

/// A tungstenite server running `behaviour` (which returns what it
/// received), and the proxy's upgraded connection to it.
async fn backend<F, Fut>(behaviour: F) -> (TcpStream, JoinHandle<Vec<Message>>)
where
    F: FnOnce(Ws) -> Fut + Send + 'static,
    Fut: Future<Output = Vec<Message>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        let ws = tokio_tungstenite::accept_async(s)
            .await
            .expect("server handshake");
        behaviour(ws).await
    });
    let mut up = TcpStream::connect(addr).await.expect("connect");
    up.write_all(request().as_bytes()).await.expect("request");
    let head = timeout(WAIT, read_head(&mut up))
        .await
        .expect("101 in time");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (up, task)
}

fn fragment(op: Data, fin: bool, text: &'static str) -> Message {
    Message::Frame(Frame::message(text, OpCode::Data(op), fin))
}

/// Echoes data messages and records everything received. On
/// "fragments please" it sends a fragmented message with a ping inside.
async fn echo(mut ws: Ws) -> Vec<Message> {
    let mut seen = Vec::new();
    while let Ok(Some(Ok(msg))) = timeout(WAIT, ws.next()).await {
        seen.push(msg.clone());
        let replies = match msg {
            Message::Text(t) if t.as_str() == "fragments please" => vec![
                fragment(Data::Text, false, "one "),
                Message::Ping("bp".into()),
                fragment(Data::Continue, false, "two "),
                fragment(Data::Continue, true, "three"),
            ],
            Message::Text(_) | Message::Binary(_) => vec![msg],
            _ => Vec::new(),
        };
        for reply in replies {
            if ws.send(reply).await.is_err() {
                return seen;
            }
        }
    }
    seen
}

/// Records everything received, sends nothing of its own.
async fn record(mut ws: Ws) -> Vec<Message> {
    let mut seen = Vec::new();
    while let Ok(Some(Ok(msg))) = timeout(WAIT, ws.next()).await {
        seen.push(msg);
    }
    seen
}

struct Running {
    task: JoinHandle<RelayOutcome>,
    metrics: Arc<Metrics>,
    token: CancellationToken,
}

fn start<C, U>(client: C, upstream: U, settings: RelaySettings) -> Running
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = Metrics::new();
    let route = RouteMetrics::new(&metrics, "s", "r");
    let token = CancellationToken::new();
    let t = token.clone();
    let task = tokio::spawn(async move { relay(client, upstream, &settings, &route, &t).await });
    Running {
        task,
        metrics,
        token,
    }
}

async fn outcome(task: JoinHandle<RelayOutcome>) -> RelayOutcome {
    timeout(WAIT, task)
        .await
        .expect("relay ends in time")
        .expect("relay task")
}

async fn received(task: JoinHandle<Vec<Message>>) -> Vec<Message> {
    timeout(WAIT, task)
        .await
        .expect("backend ends in time")
        .expect("backend task")
}

/// The next data or close message, and the pings and pongs before it.
async fn next_data(ws: &mut Ws) -> (Vec<Message>, Message) {
    let mut control = Vec::new();
    loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("message");
        match msg {
            Message::Ping(_) | Message::Pong(_) => control.push(msg),
            other => return (control, other),
        }
    }
}

/// Everything received until the stream ends; then the client closes
/// its socket, as real clients do.
async fn drain(mut ws: Ws) -> Vec<Message> {
    let mut seen = Vec::new();
    while let Some(Ok(msg)) = timeout(WAIT, ws.next()).await.expect("stream ends in time") {
        seen.push(msg);
    }
    seen
}

fn close_code(msg: &Message) -> Option<u16> {
    match msg {
        Message::Close(Some(f)) => Some(u16::from(f.code)),
        _ => None,
    }
}

/// Length on the wire of a frame with `payload` bytes.
fn wire(payload: usize, masked: bool) -> u64 {
    let header = match payload {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    (payload + header + if masked { 4 } else { 0 }) as u64
}

/// A masked frame as a client sends it.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    let at = f.len();
    f.extend_from_slice(payload);
    apply_mask(&mut f[at..], MASK, 0);
    f
}

/// Splits a stream into (opcode, unmasked payload) frames.
fn parse(bytes: &[u8], dir: Direction) -> Vec<(u8, Vec<u8>)> {
    let mut walker = FrameWalker::new(dir, true, None);
    let mut pos = 0;
    let mut body = 0;
    let mut frames = Vec::new();
    while let Some(step) = walker.next(bytes, &mut pos) {
        match step {
            Step::Header { .. } => body = pos,
            Step::End { header } => {
                let mut p = bytes[body..pos].to_vec();
                if header.masked {
                    apply_mask(&mut p, header.mask, 0);
                }
                frames.push((header.opcode, p));
            }
            Step::Invalid { error, .. } => panic!("bad frame: {error}"),
        }
    }
    assert!(walker.at_boundary(), "stream ends between frames");
    frames
}

/// Reads a raw socket to its end and splits it into frames.
async fn read_frames(raw: &mut TcpStream, dir: Direction) -> Vec<(u8, Vec<u8>)> {
    let mut all = Vec::new();
    // A reset ends the stream too; what arrived before it is kept.
    let _ = timeout(WAIT, raw.read_to_end(&mut all))
        .await
        .expect("EOF in time");
    parse(&all, dir)
}

fn metric(text: &str, needles: &[&str]) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| needles.iter().all(|n| l.contains(n)))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

const C2U: Direction = Direction::ClientToUpstream;
const U2C: Direction = Direction::UpstreamToClient;

/// Frames relayed each way (client→upstream first), by opcode class:
/// continuation, text, binary, close, ping, pong.
fn both_frames(out: &RelayOutcome) -> [[u64; 6]; 2] {
    Direction::ALL.map(|dir| out.frames(dir))
}

/// Bytes relayed each way (client→upstream first).
fn both_bytes(out: &RelayOutcome) -> [u64; 2] {
    Direction::ALL.map(|dir| out.bytes(dir))
}

/// Sends a text and a binary message of each size and checks each comes
/// back unchanged, with nothing before it.
async fn echo_each_size(ws: &mut Ws, sizes: &[usize]) {
    for &n in sizes {
        let text = "t".repeat(n);
        ws.send(Message::text(text.clone()))
            .await
            .expect("send text");
        assert_eq!(next_data(ws).await, (vec![], Message::text(text)));
        let bin = vec![(n % 251) as u8; n];
        ws.send(Message::binary(bin.clone()))
            .await
            .expect("send binary");
        assert_eq!(next_data(ws).await, (vec![], Message::binary(bin)));
    }
}

/// Checks the frame and byte counters published for every direction and
/// opcode are what `out` reports.
fn assert_metrics_match(metrics: &Metrics, out: &RelayOutcome) {
    let text = metrics.render();
    for dir in Direction::ALL {
        let label = format!("direction=\"{}\"", crate::metrics::DIRECTIONS[dir.index()]);
        for (c, op) in crate::metrics::OPCODES.iter().enumerate() {
            let op = format!("opcode=\"{op}\"");
            let got = metric(&text, &["switchyard_websocket_frames_total{", &label, &op]);
            assert_eq!(got.unwrap_or(0), out.frames(dir)[c], "{label} {op}");
        }
        let got = metric(&text, &["switchyard_websocket_bytes_total{", &label]);
        assert_eq!(got, Some(out.bytes(dir)), "{label} bytes");
    }
}

#[tokio::test]
async fn echoes_every_length_class_and_counts_it() {
    let (mut ws, proxy_side) = ws_client().await;
    let (upstream, backend) = backend(echo).await;
    let run = start(proxy_side, upstream, RelaySettings::default());
    let sizes = [0usize, 125, 126, 65535, 65536, 1 << 20];
    echo_each_size(&mut ws, &sizes).await;
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    ws.close(Some(bye)).await.expect("close");
    let rest = drain(ws).await;
    assert_eq!(
        rest.iter().map(close_code).collect::<Vec<_>>(),
        [Some(1000)]
    );

    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::CloseHandshake);
    assert_eq!(
        (out.client_close, out.upstream_close),
        (Some(1000), Some(1000))
    );
    // continuation, text, binary, close, ping, pong
    assert_eq!(both_frames(&out), [[0, 6, 6, 1, 0, 0], [0, 6, 6, 1, 0, 0]]);
    let data = |masked| sizes.iter().map(|&n| 2 * wire(n, masked)).sum::<u64>();
    let close = 2 + "done".len();
    assert_eq!(
        both_bytes(&out),
        [
            data(true) + wire(close, true),
            data(false) + wire(close, false)
        ]
    );
    assert_metrics_match(&run.metrics, &out);

    let seen = received(backend).await;
    assert_eq!(seen.len(), 13);
    assert_eq!(close_code(&seen[12]), Some(1000));
}

#[tokio::test]
async fn relays_fragmented_messages_with_pings_in_between() {
    let (mut ws, proxy_side) = ws_client().await;
    let (upstream, backend) = backend(echo).await;
    let run = start(proxy_side, upstream, RelaySettings::default());

    for m in [
        fragment(Data::Text, false, "frag-1 "),
        Message::Ping("p1".into()),
        fragment(Data::Continue, false, "frag-2 "),
        Message::Ping("p2".into()),
        fragment(Data::Continue, true, "end"),
    ] {
        ws.send(m).await.expect("send");
    }
    let (control, data) = next_data(&mut ws).await;
    assert_eq!(
        control,
        [Message::Pong("p1".into()), Message::Pong("p2".into())]
    );
    assert_eq!(data, Message::text("frag-1 frag-2 end"));

    ws.send(Message::text("fragments please"))
        .await
        .expect("send");
    let (control, data) = next_data(&mut ws).await;
    assert_eq!(control, [Message::Ping("bp".into())]);
    assert_eq!(data, Message::text("one two three"));

    ws.close(None).await.expect("close");
    let rest = drain(ws).await;
    assert!(matches!(rest.as_slice(), [Message::Close(_)]), "{rest:?}");

    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::CloseHandshake);
    assert_eq!(
        (out.client_close, out.upstream_close),
        (Some(1005), Some(1005))
    );
    // continuation, text, binary, close, ping, pong
    assert_eq!(out.frames(C2U), [2, 2, 0, 1, 2, 1]);
    assert_eq!(out.frames(U2C), [2, 2, 0, 1, 1, 2]);

    let seen = received(backend).await;
    assert_eq!(
        seen,
        [
            Message::Ping("p1".into()),
            Message::Ping("p2".into()),
            Message::text("frag-1 frag-2 end"),
            Message::text("fragments please"),
            Message::Pong("bp".into()),
            Message::Close(None),
        ]
    );
}

#[tokio::test]
async fn backend_close_code_reaches_the_client() {
    let (ws, proxy_side) = ws_client().await;
    let (upstream, backend) = backend(|mut ws: Ws| async move {
        let bye = CloseFrame {
            code: CloseCode::from(4001),
            reason: "bye".into(),
        };
        ws.close(Some(bye)).await.expect("backend close");
        record(ws).await
    })
    .await;
    let run = start(proxy_side, upstream, RelaySettings::default());

    let seen = drain(ws).await;
    assert_eq!(seen.len(), 1);
    match &seen[0] {
        Message::Close(Some(f)) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4001, "bye"))
        }
        other => panic!("expected a close, got {other:?}"),
    }
    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::CloseHandshake);
    assert_eq!(
        (out.upstream_close, out.client_close),
        (Some(4001), Some(4001))
    );
    assert_eq!(both_frames(&out), [[0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0]]);
    let seen = received(backend).await;
    assert_eq!(
        seen.iter().map(close_code).collect::<Vec<_>>(),
        [Some(4001)]
    );
}

#[tokio::test]
async fn unmasked_client_frame_closes_both_sides_with_1002() {
    let (mut raw, proxy_side) = raw_client().await;
    let (upstream, backend) = backend(record).await;
    let run = start(proxy_side, upstream, RelaySettings::default());

    let mut bytes = masked(0x80 | OP_TEXT, b"ok");
    bytes.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    raw.write_all(&bytes).await.expect("write");
    let frames = read_frames(&mut raw, Direction::UpstreamToClient).await;
    assert_eq!(frames, [(OP_CLOSE, 1002u16.to_be_bytes().to_vec())]);
    drop(raw);

    let seen = received(backend).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], Message::text("ok"));
    assert_eq!(close_code(&seen[1]), Some(1002));
    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::ProtocolError(1002));
    assert_eq!(out.frames(C2U), [0, 1, 0, 0, 0, 0]);
    // The backend's close reply is held back: the client gets the
    // proxy's 1002.
    assert_eq!(both_bytes(&out), [wire(2, true), 0]);
    assert_eq!(out.upstream_close, Some(1002));
    assert_eq!(out.client_close, None);
}

#[tokio::test]
async fn oversized_message_closes_both_sides_with_1009() {
    let (mut ws, proxy_side) = ws_client().await;
    let (upstream, backend) = backend(echo).await;
    let settings = RelaySettings {
        max_message_bytes: Some(1000),
        ..RelaySettings::default()
    };
    let run = start(proxy_side, upstream, settings);

    ws.send(Message::binary(vec![1; 1000])).await.expect("send");
    assert_eq!(next_data(&mut ws).await.1, Message::binary(vec![1; 1000]));
    ws.send(Message::binary(vec![2; 1001])).await.expect("send");
    let (_, close) = next_data(&mut ws).await;
    assert_eq!(close_code(&close), Some(1009));
    drain(ws).await;

    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::MessageTooBig);
    assert_eq!(out.frames(C2U), [0, 0, 1, 0, 0, 0]);
    let seen = received(backend).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(close_code(&seen[1]), Some(1009));
}

#[tokio::test]
async fn idle_session_is_closed_with_1001() {
    let (mut ws, proxy_side) = ws_client().await;
    let (upstream, backend) = backend(echo).await;
    let settings = RelaySettings {
        idle_timeout: Some(Duration::from_millis(300)),
        ..RelaySettings::default()
    };
    let run = start(proxy_side, upstream, settings);

    ws.send(Message::text("hi")).await.expect("send");
    assert_eq!(next_data(&mut ws).await.1, Message::text("hi"));
    let rest = drain(ws).await;
    assert_eq!(
        rest.iter().map(close_code).collect::<Vec<_>>(),
        [Some(1001)]
    );

    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::Idle);
    // Both sides answered the proxy's close.
    assert_eq!(
        (out.client_close, out.upstream_close),
        (Some(1001), Some(1001))
    );
    assert_eq!(both_frames(&out), [[0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]);
    let seen = received(backend).await;
    assert_eq!(
        seen.iter().map(close_code).collect::<Vec<_>>(),
        [None, Some(1001)]
    );
}

#[tokio::test]
async fn silent_client_times_out_on_ping() {
    let (mut raw, proxy_side) = raw_client().await;
    let (upstream, backend) = backend(record).await;
    let settings = RelaySettings {
        ping_interval: Some(Duration::from_millis(100)),
        ..RelaySettings::default()
    };
    let run = start(proxy_side, upstream, settings);

    // The backend is told the client went away, and its connection ends.
    let seen = received(backend).await;
    assert_eq!(
        seen.iter().map(close_code).collect::<Vec<_>>(),
        [Some(1001)]
    );
    // The client got the proxy's ping (unanswered), then the socket closed.
    let frames = read_frames(&mut raw, Direction::UpstreamToClient).await;
    assert!(!frames.is_empty());
    for (op, payload) in &frames {
        assert_eq!(*op, OP_PING);
        assert!(
            payload.starts_with(b"switchyard") && payload.len() == 18,
            "{payload:?}"
        );
    }
    drop(raw);
    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::PingTimeout);
    assert_eq!(both_frames(&out), [[0; 6]; 2]);
    assert_eq!(both_bytes(&out), [0, 0]);
}

#[tokio::test]
async fn answered_pings_keep_the_session_and_pongs_stay_at_the_proxy() {
    let (mut ws, proxy_side) = ws_client().await;
    let (upstream, backend) = backend(echo).await;
    let settings = RelaySettings {
        ping_interval: Some(Duration::from_millis(150)),
        ..RelaySettings::default()
    };
    let run = start(proxy_side, upstream, settings);

    let mut pings = 0;
    while pings < 3 {
        let msg = timeout(WAIT, ws.next()).await.expect("ping in time");
        match msg {
            Some(Ok(Message::Ping(p))) => {
                assert!(p.starts_with(b"switchyard"), "{p:?}");
                pings += 1;
            }
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    ws.send(Message::text("still here")).await.expect("send");
    assert_eq!(next_data(&mut ws).await.1, Message::text("still here"));
    ws.close(None).await.expect("close");
    drain(ws).await;

    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::CloseHandshake);
    assert_eq!(out.frames(C2U), [0, 1, 0, 1, 0, 0]);
    assert_eq!(out.frames(U2C), [0, 1, 0, 1, 0, 0]);
    let seen = received(backend).await;
    assert_eq!(seen, [Message::text("still here"), Message::Close(None)]);
}

#[tokio::test]
async fn drain_closes_both_sides_with_1001() {
    let (mut ws, proxy_side) = ws_client().await;
    let (upstream, backend) = backend(echo).await;
    let run = start(proxy_side, upstream, RelaySettings::default());

    ws.send(Message::text("x")).await.expect("send");
    assert_eq!(next_data(&mut ws).await.1, Message::text("x"));
    run.token.cancel();
    let rest = drain(ws).await;
    assert_eq!(
        rest.iter().map(close_code).collect::<Vec<_>>(),
        [Some(1001)]
    );

    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::Shutdown);
    assert_eq!(
        (out.client_close, out.upstream_close),
        (Some(1001), Some(1001))
    );
    let seen = received(backend).await;
    assert_eq!(
        seen.iter().map(close_code).collect::<Vec<_>>(),
        [None, Some(1001)]
    );
}

#[tokio::test]
async fn backend_gone_sends_the_client_1011() {
    let (mut ws, proxy_side) = ws_client().await;
    let (upstream, backend) = backend(|mut ws: Ws| async move {
        // Read one message, then drop the connection without a close.
        let first = timeout(WAIT, ws.next()).await.ok().flatten();
        first.into_iter().filter_map(Result::ok).collect()
    })
    .await;
    let run = start(proxy_side, upstream, RelaySettings::default());

    ws.send(Message::text("x")).await.expect("send");
    let rest = drain(ws).await;
    assert_eq!(
        rest.iter().map(close_code).collect::<Vec<_>>(),
        [Some(1011)]
    );
    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::UpstreamGone);
    assert_eq!(out.upstream_close, None);
    assert_eq!(received(backend).await, [Message::text("x")]);
}

#[tokio::test]
async fn client_gone_sends_the_backend_1001() {
    let (mut raw, proxy_side) = raw_client().await;
    let (upstream, backend) = backend(record).await;
    let run = start(proxy_side, upstream, RelaySettings::default());

    raw.write_all(&masked(0x80 | OP_TEXT, b"bye"))
        .await
        .expect("write");
    drop(raw);
    let seen = received(backend).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], Message::text("bye"));
    assert_eq!(close_code(&seen[1]), Some(1001));
    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::ClientGone);
    assert_eq!(out.client_close, None);
}

#[tokio::test]
async fn pongs_split_across_reads_and_rsv_bits_with_extensions() {
    let (mut raw, proxy_side) = raw_client().await;
    let (mut backend, upstream) = tcp_pair().await;
    let settings = RelaySettings {
        ping_interval: Some(Duration::from_millis(300)),
        extensions: true,
        ..RelaySettings::default()
    };
    let run = start(proxy_side, upstream, settings);

    // The proxy's ping: 2-byte header and an 18-byte payload.
    let mut ping = [0u8; 20];
    timeout(WAIT, raw.read_exact(&mut ping))
        .await
        .expect("ping in time")
        .expect("read ping");
    assert_eq!(ping[..2], [0x80 | OP_PING, 18]);
    let pong = masked(0x80 | OP_PONG, &ping[2..]);
    // RSV1 passes when an extension was negotiated.
    let first = masked(0x80 | 0x40 | OP_TEXT, b"first");
    // Someone else's pong of the same length passes unchanged.
    let foreign = masked(0x80 | OP_PONG, &[b'x'; 18]);
    let second = masked(0x80 | OP_BINARY, b"second");

    // The pong's header is cut after 3 bytes.
    raw.write_all(&[&first[..], &pong[..3]].concat())
        .await
        .expect("write");
    let mut got = vec![0u8; first.len()];
    timeout(WAIT, backend.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(got, first);
    raw.write_all(&[&pong[3..], &foreign[..10]].concat())
        .await
        .expect("write");
    raw.write_all(&[&foreign[10..], &second[..]].concat())
        .await
        .expect("write");
    let mut got = vec![0u8; foreign.len() + second.len()];
    timeout(WAIT, backend.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(got, [&foreign[..], &second[..]].concat());

    // Close handshake, client first.
    let close = masked(0x80 | OP_CLOSE, &1000u16.to_be_bytes());
    raw.write_all(&close).await.expect("write close");
    let mut got = vec![0u8; close.len()];
    timeout(WAIT, backend.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(got, close);
    backend
        .write_all(&[0x88, 0x02, 0x03, 0xE8])
        .await
        .expect("reply");
    let frames = read_frames(&mut raw, Direction::UpstreamToClient).await;
    assert_eq!(frames.last(), Some(&(OP_CLOSE, vec![0x03, 0xE8])));
    let mut rest = Vec::new();
    let _ = timeout(WAIT, backend.read_to_end(&mut rest))
        .await
        .expect("EOF in time");
    assert!(rest.is_empty(), "nothing after the close: {rest:?}");
    drop((raw, backend));

    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::CloseHandshake);
    assert_eq!(out.frames(C2U), [0, 1, 1, 1, 0, 1]);
    assert_eq!(out.frames(U2C), [0, 0, 0, 1, 0, 0]);
    let sent = first.len() + foreign.len() + second.len() + close.len();
    assert_eq!(both_bytes(&out), [sent as u64, 4]);
}

/// Reads from `io` until it ends.
async fn read_all<R: AsyncRead + Unpin>(io: &mut R) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = timeout(WAIT, io.read_to_end(&mut all))
        .await
        .expect("EOF in time");
    all
}

#[tokio::test]
async fn tiny_reads_forward_byte_exact_up_to_the_violation() {
    // Every read the relay makes from the client returns 1..=5 bytes,
    // so headers are split everywhere.
    let (mut client, proxy_side) = tokio::io::duplex(5);
    let (mut backend, upstream) = tokio::io::duplex(1 << 20);
    let run = start(proxy_side, upstream, RelaySettings::default());

    let frames = [
        masked(OP_TEXT, b"frag"),
        masked(0x80 | OP_PING, b"ping"),
        masked(0x80 | OP_CONTINUATION, b"ment"),
        masked(0x80 | OP_BINARY, &[7; 300]),
        masked(0x80 | OP_PONG, b""),
        masked(0x80 | OP_BINARY, &[9; 70_000]),
        masked(0x80 | OP_TEXT, b""),
    ];
    let valid = frames.concat();
    // A reserved opcode, then more bytes that must not be passed on.
    let mut all = valid.clone();
    all.extend(masked(0x80 | 0x3, b"bad"));
    all.extend(masked(0x80 | OP_TEXT, b"after"));
    let writer = async {
        // The relay stops reading at the violation; what it never reads
        // is simply left behind.
        let _ = client.write_all(&all).await;
        read_all(&mut client).await
    };
    let (to_client, to_backend) = tokio::join!(writer, read_all(&mut backend));
    assert_eq!(
        parse(&to_client, Direction::UpstreamToClient),
        [(OP_CLOSE, vec![0x03, 0xEA])]
    );
    assert!(
        to_backend.starts_with(&valid),
        "the valid prefix is relayed unchanged"
    );
    let tail = parse(&to_backend[valid.len()..], Direction::ClientToUpstream);
    assert_eq!(tail, [(OP_CLOSE, vec![0x03, 0xEA])]);
    drop((client, backend));

    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::ProtocolError(1002));
    assert_eq!(out.frames(C2U), [1, 2, 2, 0, 1, 1]);
    assert_eq!(out.bytes(C2U), valid.len() as u64);
}

#[tokio::test]
async fn tiny_reads_consume_our_pong_and_pass_others() {
    let (mut client, proxy_side) = tokio::io::duplex(3);
    let (mut backend, upstream) = tokio::io::duplex(1 << 16);
    let settings = RelaySettings {
        ping_interval: Some(Duration::from_millis(300)),
        ..RelaySettings::default()
    };
    let run = start(proxy_side, upstream, settings);

    let mut ping = [0u8; 20];
    timeout(WAIT, client.read_exact(&mut ping))
        .await
        .expect("ping in time")
        .expect("read ping");
    assert_eq!(ping[..2], [0x80 | OP_PING, 18]);
    let before = masked(0x80 | OP_TEXT, b"before");
    let foreign = masked(0x80 | OP_PONG, &[b'y'; 18]);
    let after = masked(0x80 | OP_BINARY, &[1; 200]);
    let close = masked(0x80 | OP_CLOSE, &1000u16.to_be_bytes());
    let stream = [
        &before[..],
        &masked(0x80 | OP_PONG, &ping[2..]),
        &foreign,
        &after,
        &close,
    ]
    .concat();
    timeout(WAIT, client.write_all(&stream))
        .await
        .expect("in time")
        .expect("write");
    let expected = [&before[..], &foreign, &after, &close].concat();
    let mut got = vec![0u8; expected.len()];
    timeout(WAIT, backend.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(got, expected);
    backend
        .write_all(&[0x88, 0x02, 0x03, 0xE8])
        .await
        .expect("reply");
    let frames = parse(&read_all(&mut client).await, Direction::UpstreamToClient);
    assert_eq!(frames.last(), Some(&(OP_CLOSE, vec![0x03, 0xE8])));
    assert!(read_all(&mut backend).await.is_empty());
    drop((client, backend));

    let out = outcome(run.task).await;
    assert_eq!(out.end, RelayEnd::CloseHandshake);
    assert_eq!(out.frames(C2U), [0, 1, 1, 1, 0, 1]);
    assert_eq!(out.bytes(C2U), expected.len() as u64);
}
