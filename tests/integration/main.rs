//! One integration-test binary: every test starts the real `hashpress`
//! binary on a free loopback port and talks HTTP to it.

mod api;
mod balance;
mod cli;
mod cluster;
mod codecs;
mod config;
mod confinement;
mod dashboard;
mod digest_fields;
mod hardening;
mod helpers;
mod lifecycle;
mod metrics;
mod scale;
mod shedding;
mod storage;
mod streaming;
mod strict_http;
mod tls;
mod trees;
mod upgrade;
