//! `concord-jepsen` owns Concord's real-cluster fault-injection harness: it starts the
//! `concord` binary as separate processes ([`cluster`]), drives them through a real CQL
//! driver with one of three workloads ([`workload`]: list-append transactions, bank transfers,
//! an LWT register), hurts them while the clients run ([`nemesis`]: kill -9 and restart,
//! SIGSTOP/SIGCONT, network partitions through nftables in [`net`], clock steps, nodes joining
//! and being removed while the cluster holds data), records every client
//! operation as a Jepsen history (invoke / ok / fail / info, client-side times), and judges the
//! history with `concord-checker` — strict serializability, the bank invariant,
//! linearizability — plus lost acknowledged writes and availability ([`report`], with a
//! latency-over-time SVG whose fault intervals are shaded).
//!
//! `design/jepsen.md` is the design note.
//!
//! **Must never**: link the engine (`concord-server`, `concord-storage`) — it talks to nodes
//! only through the clients a user would run; report a run valid when a checker did not run to
//! completion; record an indeterminate outcome as failed; leave processes or firewall rules
//! behind (every fault is undone by [`cluster::Cluster`]'s and [`net::Partitioner`]'s `Drop`).

pub mod cluster;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod run;
pub mod svg;
pub mod workload;

pub use run::{RunConfig, RunOutcome, Verdict, run};
