//! A small, synchronous server of website-traffic analytics, simulated or counted from
//! real sites' events (live mode): REST for polling and a WebSocket or Server-Sent Events
//! stream on the same path, fed by one generator thread.
//!
//! Data flows one way: [`simulator`] (pure) or `live` (events) → `feed` → `generator` (one thread) → `hub` (latest
//! sample and subscribers) → `stream` (each client on its own thread; WebSocket and SSE
//! are its two encoders) and `routes` (REST), which share a `context`. `edge` owns the
//! listener and every client connection, reads request heads strictly and hands them to
//! tiny_http; `server` decides REST, WebSocket or SSE for each request. [`platform`] is the only code that knows the operating system. [`start`] runs it all
//! in-process, which is how the integration tests drive the real server on port 0.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod budget;
pub mod chaos;
pub mod config;
mod context;
mod edge;
mod error;
mod feed;
mod generator;
mod http;
mod hub;
mod live;
pub mod logging;
pub mod metrics;
mod options;
mod paths;
pub mod platform;
mod request;
mod routes;
pub mod sample;
mod server;
pub mod simulator;
mod stream;
mod sync;
mod watchdog;
mod watcher;

pub use config::Config;
pub use context::Caps;
pub use error::{Failure, StartError};
pub use server::{Server, start};
