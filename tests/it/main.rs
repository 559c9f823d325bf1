//! The integration tests: one binary, one shared harness.

mod adaptive;
mod browser;
mod cli;
mod cloud;
mod crash_loop;
mod faults;
mod harness;
mod history;
mod hostile;
mod kind_cli;
mod kind_signing;
mod kinds;
mod ops;
mod pauses;
mod pg;
mod polling;
mod postgres;
mod schema;
mod security;
mod signing;
mod store;
mod tidy;
mod ui;
mod webhooks;
