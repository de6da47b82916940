//! knock-server: sniffs knocks without binding a port, verifies them, and
//! opens the firewall for the sender alone, with expiry held by the kernel.
//!
//! A knock's path: [`capture`] (AF_PACKET + kernel BPF filter) → [`verify`]
//! (length → key hint → AEAD → replay guard → source binding → policy) →
//! [`state`] (durable replay state) → [`firewall`] (timed set elements).
#![deny(unsafe_code)]

pub mod capture;
pub mod clients;
pub mod daemon;
pub mod firewall;
pub mod privileges;
pub mod state;
pub mod verify;
