//! switchyard: a TLS-terminating reverse proxy for web apps that split their
//! traffic between a synchronous worker pool (plain HTTP) and an async
//! backend (WebSockets).
//!
//! Modules follow a request's path: [`config`] → [`listener`] / [`tls`] →
//! [`connection`] → [`routing`] → [`proxy`] → [`pool`] or [`websocket`] →
//! [`upstream`] → [`metrics`]. [`server`] ties them into a running proxy;
//! [`cli`] is the command line.
#![deny(unsafe_code)]

mod activity;
pub mod admin;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod connection;
pub mod forwarded;
pub mod headers;
pub mod listener;
mod memory;
pub mod metrics;
pub mod pool;
pub mod prefixed;
pub mod proxy;
pub mod proxy_protocol;
mod random;
pub mod routing;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod websocket;

pub use config::Config;
pub use server::Server;
