//! Fast HTTP/1.1 backend: `GET /...` answers 1 KiB; `GET /download` streams
//! 1 GiB (or `?bytes=N`); a request with a body (`POST`/`PUT /upload`) is read
//! and discarded, and the answer says how many bytes arrived.
//!
//! For the compression cases (issue 17): `GET /json64k` answers a 64 KiB
//! (65,536-byte) JSON document shaped like a paginated REST API answer
//! (`application/json`, with Content-Length), and `GET /jsonstream?bytes=N`
//! streams N bytes (default 1 GiB) of JSON lines (`application/json`) in
//! 64 KiB chunks, chunked, without Content-Length. Both are generated once,
//! at start-up, from a fixed seed: the same bytes on every run.
//!
//! bench-http --listen 127.0.0.1:18080

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

const CHUNK: usize = 256 * 1024;
/// /json64k's size, and /jsonstream's chunk.
const JSON_SIZE: usize = 64 * 1024;
/// /jsonstream cycles through this much distinct text: more than any
/// encoder's window (zstd 2^19 in switchyard, brotli 2^18, gzip 2^15), so
/// the cycle's repeats cannot be matched.
const JSON_CYCLE: usize = 16 * JSON_SIZE;

/// A body of `left` bytes made of clones of one static chunk.
struct Stream {
    chunk: Bytes,
    left: u64,
}

impl Body for Stream {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// /jsonstream's body: `left` bytes taken in 64 KiB chunks from `text`
/// (cyclic), with no exact size, so hyper sends it chunked.
struct Lines {
    text: Bytes,
    at: usize,
    left: u64,
}

impl Body for Lines {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(JSON_SIZE as u64) as usize;
        let at = self.at;
        self.left -= n as u64;
        self.at = (at + JSON_SIZE) % self.text.len();
        Poll::Ready(Some(Ok(Frame::data(self.text.slice(at..at + n)))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A small deterministic generator (xorshift64*), so that the JSON is the
/// same on every run without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const FIRST: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Margaret",
    "Ken",
    "Dennis",
    "Frances",
    "John",
    "Radia",
    "Leslie",
    "Tony",
    "Niklaus",
    "Sophie",
    "Guido",
    "Linus",
    "Katherine",
    "Hedy",
    "Claude",
    "Jean",
    "Fernando",
    "Annie",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Hamilton",
    "Thompson",
    "Ritchie",
    "Allen",
    "McCarthy",
    "Perlman",
    "Lamport",
    "Hoare",
    "Wirth",
    "Wilson",
    "van Rossum",
    "Torvalds",
    "Johnson",
    "Lamarr",
    "Shannon",
    "Bartik",
    "Corbato",
    "Easley",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("London", "GB", "Europe/London"),
    ("Paris", "FR", "Europe/Paris"),
    ("Berlin", "DE", "Europe/Berlin"),
    ("Lisbon", "PT", "Europe/Lisbon"),
    ("Toronto", "CA", "America/Toronto"),
    ("Austin", "US", "America/Chicago"),
    ("Seattle", "US", "America/Los_Angeles"),
    ("Tokyo", "JP", "Asia/Tokyo"),
    ("Sydney", "AU", "Australia/Sydney"),
    ("Nairobi", "KE", "Africa/Nairobi"),
    ("Sao Paulo", "BR", "America/Sao_Paulo"),
    ("Bangalore", "IN", "Asia/Kolkata"),
];
const STREETS: &[&str] = &[
    "High Street",
    "Station Road",
    "Church Lane",
    "Mill Road",
    "Park Avenue",
    "King Street",
    "Queen's Road",
    "Victoria Road",
    "Green Lane",
    "Main Street",
    "Elm Grove",
    "Oak Drive",
];
const TAGS: &[&str] = &[
    "python", "django", "rust", "postgres", "redis", "frontend", "backend", "devops", "security",
    "design", "mobile", "data", "ml", "docs", "billing", "support",
];
const PLANS: &[&str] = &["free", "starter", "pro", "team", "enterprise"];
const STATUS: &[&str] = &[
    "active",
    "active",
    "active",
    "trial",
    "past_due",
    "cancelled",
];
const WORDS: &[&str] = &[
    "builds",
    "maintains",
    "reviews",
    "ships",
    "designs",
    "tests",
    "documents",
    "scales",
    "the",
    "a",
    "our",
    "internal",
    "public",
    "billing",
    "search",
    "checkout",
    "API",
    "dashboard",
    "pipeline",
    "service",
    "platform",
    "and",
    "with",
    "for",
    "team",
    "tools",
];

fn timestamp(r: &mut Rng, year: u64) -> String {
    format!(
        "{year}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        1 + r.below(12),
        1 + r.below(28),
        r.below(24),
        r.below(60),
        r.below(60)
    )
}

/// One API object (a user account with profile, address, subscription and
/// recent activity), as a Django REST Framework list view would render it.
fn record(r: &mut Rng, id: u64) -> String {
    let (first, last) = (r.pick(FIRST), r.pick(LAST));
    let login = format!(
        "{}.{}",
        first.to_lowercase(),
        last.to_lowercase().replace(' ', "")
    );
    let (city, country, tz) = CITIES[r.below(CITIES.len() as u64) as usize];
    let ntags = 1 + r.below(4);
    let tags: Vec<String> = (0..ntags)
        .map(|_| format!("\"{}\"", r.pick(TAGS)))
        .collect();
    let bio: Vec<&str> = (0..6 + r.below(8)).map(|_| r.pick(WORDS)).collect();
    let nevents = r.below(3);
    let events: Vec<String> = (0..nevents)
        .map(|k| {
            format!(
                "{{\"id\":{},\"type\":\"{}\",\"at\":\"{}\",\"ip\":\"10.{}.{}.{}\"}}",
                id * 10 + k,
                r.pick(&[
                    "login",
                    "logout",
                    "password_change",
                    "invoice_paid",
                    "export"
                ]),
                timestamp(r, 2026),
                r.below(256),
                r.below(256),
                r.below(256)
            )
        })
        .collect();
    format!(
        concat!(
            "{{\"id\":{id},\"uuid\":\"{u1:08x}-{u2:04x}-4{u3:03x}-a{u4:03x}-{u5:012x}\",",
            "\"username\":\"{login}{n}\",\"full_name\":\"{first} {last}\",",
            "\"email\":\"{login}@example.com\",\"is_active\":{active},\"is_staff\":{staff},",
            "\"date_joined\":\"{joined}\",\"last_login\":\"{seen}\",",
            "\"profile\":{{\"bio\":\"{bio}\",\"locale\":\"en-{country}\",\"timezone\":\"{tz}\",",
            "\"avatar\":\"https://cdn.example.com/avatars/{id}.png\",\"followers\":{followers},",
            "\"score\":{score}.{frac:02}}},",
            "\"address\":{{\"street\":\"{house} {street}\",\"city\":\"{city}\",",
            "\"postcode\":\"{post:05}\",\"country\":\"{country}\"}},",
            "\"subscription\":{{\"plan\":\"{plan}\",\"status\":\"{status}\",",
            "\"renews_at\":\"{renews}\",\"seats\":{seats},\"amount_cents\":{cents}}},",
            "\"settings\":{{\"newsletter\":{news},\"two_factor\":{tfa},\"theme\":\"{theme}\",",
            "\"notifications\":{{\"email\":true,\"push\":{push},\"sms\":false}}}},",
            "\"permissions\":[\"view_project\",\"add_comment\"{perms}],",
            "\"tags\":[{tags}],\"recent_events\":[{events}],",
            "\"links\":{{\"self\":\"https://api.example.com/v1/users/{id}/\",",
            "\"orders\":\"https://api.example.com/v1/users/{id}/orders/\",",
            "\"invoices\":\"https://api.example.com/v1/users/{id}/invoices/\"}}}}"
        ),
        id = id,
        u1 = r.next() as u32,
        u2 = r.below(1 << 16),
        u3 = r.below(1 << 12),
        u4 = r.below(1 << 12),
        u5 = r.next() & 0xffff_ffff_ffff,
        login = login,
        n = r.below(100),
        first = first,
        last = last,
        active = r.below(10) != 0,
        staff = r.below(20) == 0,
        joined = {
            let y = 2019 + r.below(7);
            timestamp(r, y)
        },
        seen = timestamp(r, 2026),
        bio = bio.join(" "),
        country = country,
        tz = tz,
        followers = r.below(5000),
        score = r.below(100),
        frac = r.below(100),
        house = 1 + r.below(200),
        street = r.pick(STREETS),
        city = city,
        post = r.below(100_000),
        plan = r.pick(PLANS),
        status = r.pick(STATUS),
        renews = timestamp(r, 2027),
        seats = 1 + r.below(50),
        cents = 500 * (1 + r.below(40)),
        news = r.below(3) == 0,
        tfa = r.below(4) != 0,
        theme = r.pick(&["light", "dark", "system"]),
        push = r.below(2) == 0,
        perms = if r.below(3) == 0 {
            ",\"change_project\",\"delete_project\""
        } else {
            ""
        },
        tags = tags.join(","),
        events = events.join(","),
    )
}

/// /json64k: `{"count":..,"next":..,"previous":null,"results":[...]}`, as
/// many records as fit in 64 KiB, padded with spaces (insignificant
/// whitespace) before the final brace to exactly 65,536 bytes.
fn json_page() -> Bytes {
    let mut r = Rng(0x5157_17c4_a1b2_c3d4);
    let head = "{\"count\":48213,\"next\":\"https://api.example.com/v1/users/?page=2\",\"previous\":null,\"results\":[";
    let mut out = String::from(head);
    let mut id = 100_000;
    loop {
        let rec = record(&mut r, id);
        // ",", the record, "]}".
        if out.len() + 1 + rec.len() + 2 > JSON_SIZE {
            break;
        }
        if id > 100_000 {
            out.push(',');
        }
        out.push_str(&rec);
        id += 1;
    }
    out.push(']');
    while out.len() < JSON_SIZE - 1 {
        out.push(' ');
    }
    out.push('}');
    Bytes::from(out)
}

/// /jsonstream's text: JSON lines (one record each), JSON_CYCLE bytes in
/// all, the last line padded (a "pad" field of spaces) so that the cycle
/// ends at a line's end.
fn json_lines() -> Bytes {
    let mut r = Rng(0x0bad_5eed_1234_5678);
    let mut out = String::with_capacity(JSON_CYCLE);
    let mut id = 1_000_000;
    loop {
        let rec = record(&mut r, id);
        id += 1;
        // Room for this line and the padded last line (at most ~1 KiB each).
        if out.len() + rec.len() + 1 + 2048 > JSON_CYCLE {
            let last = record(&mut r, id);
            let pad = JSON_CYCLE - out.len() - last.len() - 1 - ",\"pad\":\"\"".len();
            out.push_str(&last[..last.len() - 1]);
            out.push_str(",\"pad\":\"");
            out.push_str(&" ".repeat(pad));
            out.push_str("\"}\n");
            break;
        }
        out.push_str(&rec);
        out.push('\n');
    }
    assert_eq!(out.len(), JSON_CYCLE);
    Bytes::from(out)
}

/// The bodies answered from memory.
#[derive(Clone)]
struct Bodies {
    small: Bytes,
    big: Bytes,
    json: Bytes,
    lines: Bytes,
}

enum Out {
    Small(Option<Bytes>),
    Big(Stream),
    Lines(Lines),
}

impl Body for Out {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Out::Small(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Out::Big(s) => Pin::new(s).poll_frame(cx),
            Out::Lines(s) => Pin::new(s).poll_frame(cx),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            Out::Small(b) => b.is_none(),
            Out::Big(s) => s.is_end_stream(),
            Out::Lines(s) => s.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            Out::Small(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Out::Big(s) => s.size_hint(),
            Out::Lines(s) => s.size_hint(),
        }
    }
}

/// The `bytes=N` query parameter, 1 GiB if absent.
fn bytes_param(req: &Request<Incoming>) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("bytes=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1u64 << 30)
}

async fn handle(req: Request<Incoming>, b: Bodies) -> Result<Response<Out>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/json64k" {
        let mut r = Response::new(Out::Small(Some(b.json)));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return Ok(r);
    }
    if path == "/jsonstream" {
        let mut r = Response::new(Out::Lines(Lines {
            text: b.lines,
            at: 0,
            left: bytes_param(&req),
        }));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return Ok(r);
    }
    if path.starts_with("/download") {
        let mut r = Response::new(Out::Big(Stream {
            chunk: b.big,
            left: bytes_param(&req),
        }));
        r.headers_mut()
            .insert("content-type", "application/octet-stream".parse().unwrap());
        return Ok(r);
    }
    let mut body = req.into_body();
    let mut got: u64 = 0;
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    got += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    if got > 0 || path.starts_with("/upload") {
        return Ok(Response::new(Out::Small(Some(Bytes::from(format!(
            "received {got}\n"
        ))))));
    }
    let mut r = Response::new(Out::Small(Some(b.small)));
    r.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    Ok(r)
}

fn main() {
    let args = switchyard_bench_tools::Args::parse();
    let listen = args.str("listen", "127.0.0.1:18080");
    switchyard_bench_tools::runtime().block_on(async move {
        let l = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        eprintln!("bench-http listening on {listen}");
        let bodies = Bodies {
            small: Bytes::from(vec![b'x'; 1024]),
            big: Bytes::from(vec![b'z'; CHUNK]),
            json: json_page(),
            lines: json_lines(),
        };
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |r| handle(r, bodies.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}
