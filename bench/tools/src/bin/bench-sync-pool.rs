//! A pool of synchronous workers, like gunicorn sync workers: WORKERS servers
//! on consecutive ports from BASE, each serving one connection and one request
//! at a time, taking DELAY_MS per request, and closing the connection after
//! each response (a gunicorn sync worker does no keep-alive). Each worker's
//! accept backlog holds whatever a proxy sends it while it is busy.
//!
//! A request whose path contains `/slow` takes SLOW_MS instead (a slow view),
//! for the mixed-latency case.
//!
//! bench-sync-pool --base-port 18100 --workers 4 --delay-ms 20 --slow-ms 500

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

fn serve(l: TcpListener, delay: Duration, slow: Duration, id: usize) {
    let mut buf = vec![0u8; 16 * 1024];
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_nodelay(true);
        let mut n = 0;
        let head_end = loop {
            match s.read(&mut buf[n..]) {
                Ok(0) | Err(_) => break None,
                Ok(k) => n += k,
            }
            if let Some(p) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                break Some(p + 4);
            }
            if n == buf.len() {
                break None;
            }
        };
        let Some(head_end) = head_end else { continue };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let cl: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut left = cl.saturating_sub(n - head_end);
        while left > 0 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => left = left.saturating_sub(k),
            }
        }
        let is_slow = head.lines().next().is_some_and(|l| l.contains("/slow"));
        std::thread::sleep(if is_slow { slow } else { delay });
        let body = format!("worker {id}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes());
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

fn main() {
    let args = switchyard_bench_tools::Args::parse();
    let base: u16 = args.num("base-port", 18100);
    let workers: usize = args.num("workers", 4);
    let delay = Duration::from_millis(args.num("delay-ms", 20));
    let slow = Duration::from_millis(args.num("slow-ms", 500));
    let mut hs = Vec::new();
    for i in 0..workers {
        let addr = format!("127.0.0.1:{}", base + i as u16);
        let l = TcpListener::bind(&addr).expect("bind");
        hs.push(std::thread::spawn(move || serve(l, delay, slow, i)));
    }
    eprintln!("bench-sync-pool: {workers} workers from port {base}, {delay:?} per request");
    for h in hs {
        let _ = h.join();
    }
}
