//! One integration-test binary: every test starts the real `hashpress`
//! binary on a free loopback port and talks HTTP to it.

mod api;
mod cluster;
mod config;
mod confinement;
mod dashboard;
mod hardening;
mod helpers;
mod lifecycle;
mod metrics;
mod storage;
mod streaming;
