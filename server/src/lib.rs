//! knock-server: sniffs knocks without binding a port, verifies them, and
//! opens the firewall for the sender alone, with expiry held by the kernel.
//!
//! A knock's path: [`capture`] (AF_PACKET + kernel BPF filter) → [`pipeline`]:
//! [`verify`] (length → key hint → AEAD → replay guard → source binding →
//! policy → for a public-key client, the signature, limited per client by
//! [`sig_limit`] → grants per client, [`grant_limit`]) → [`state`] (durable
//! replay state: one journal write for every knock read together) →
//! [`firewall`] (timed set elements). The clients and their hint index
//! (a `Roster`) are read by [`loader`], at start and for each reload, beside
//! the loop; their pair keys (shared-key and public-key clients mix) come
//! from [`pair_keys`], which caches the public-key ones.
//! Refusals go to [`rejections`]. [`daemon`] runs the loop; [`health`] keeps
//! our firewall rules in place beside it, and [`saved_rules`] remembers them
//! for the next boot; [`status`] is what the loop publishes for
//! `knock-server status`.
//!
//! Changes: the loop answers reload requests on the [`control`] socket and
//! records what it loaded ([`running_config`]), which is what [`apply`]
//! restores when a change is not confirmed; [`sanity`] says what in a
//! configuration that loads is doubtful.
#![deny(unsafe_code)]

pub mod apply;
pub mod capture;
pub mod clients;
pub mod control;
pub mod daemon;
pub mod firewall;
pub mod grant_limit;
pub mod health;
pub mod loader;
pub mod pair_keys;
pub mod parallel;
pub mod pipeline;
pub mod privileges;
pub mod rejections;
pub mod running_config;
pub mod sanity;
pub mod saved_rules;
pub mod sig_limit;
pub mod state;
pub mod status;
pub mod timers;
pub mod tuning;
pub mod verify;
