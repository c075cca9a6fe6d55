//! The integration tests: real nodes on real UDP sockets on loopback, with
//! both packet engines. One binary, modules by subject.

#![allow(clippy::disallowed_methods)] // tests drive real time and threads

mod bench;
mod cli;
mod common;
mod container;
mod deploy;
mod dht;
mod earth_live;
mod egress;
mod end_to_end;
mod engines;
mod fairness;
mod gossip;
mod hostile;
mod hostile_gossip;
mod metrics;
mod nat;
mod notify;
mod registrations;
mod sdk;
mod workspace;
