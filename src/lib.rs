//! switchyard: a TLS-terminating reverse proxy for web apps that split their
//! traffic between a synchronous worker pool (plain HTTP) and an async
//! backend (WebSockets).
//!
//! Modules follow a request's path: `config` → `server` / `listener`
//! (accept, PROXY protocol, drain, reload) → `tls` → `connection` (one
//! downstream connection) → `proxy` (the phases of one request: identify
//! the client, route, hand over, respond, log) → `pool` above `upstream`
//! (servers, connect, the HTTP/1 client), or `websocket` (the frame relay).
//! `metrics` names every metric. README.md's "Code map" has one line per
//! module. Only what the binary, the tests and the fuzz targets use is
//! public.
#![deny(unsafe_code)]

mod accept_encoding;
mod acme;
mod activity;
mod admin;
mod buffer;
mod burst;
pub mod cli;
mod compress;
pub mod config;
mod connection;
pub mod files;
pub mod forwarded;
pub mod headers;
mod listener;
mod memory;
mod metrics;
mod pool;
mod prefixed;
mod proxy;
pub mod proxy_protocol;
mod random;
pub mod routing;
mod sendfile;
pub mod server;
mod socket;
mod state;
mod tls;
mod upstream;
pub mod websocket;
pub mod workers;

pub use config::Config;
pub use server::Server;
