//! Shared helpers for the benchmark tools: a tiny `--key value` parser and a
//! one-worker tokio runtime (every tool is pinned to one core by bench/run.sh).

use std::collections::HashMap;

pub struct Args {
    map: HashMap<String, String>,
}

impl Args {
    /// Parses `--key value` pairs (and bare `--flag`, stored as "true").
    pub fn parse() -> Args {
        let mut map = HashMap::new();
        let mut it = std::env::args().skip(1).peekable();
        while let Some(a) = it.next() {
            let Some(k) = a.strip_prefix("--") else {
                eprintln!("unexpected argument {a:?}");
                std::process::exit(2);
            };
            let v = match it.peek() {
                Some(n) if !n.starts_with("--") => it.next().unwrap(),
                _ => "true".to_string(),
            };
            map.insert(k.to_string(), v);
        }
        Args { map }
    }

    pub fn str(&self, k: &str, default: &str) -> String {
        self.map
            .get(k)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    pub fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> T {
        match self.map.get(k) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{k}: cannot parse {v:?}");
                std::process::exit(2);
            }),
        }
    }
}

/// A current-thread runtime: each tool runs on the one core it is pinned to,
/// so a worker thread would only add wake-ups between threads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
