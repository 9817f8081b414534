//! Network partitions between nodes on loopback, through nftables.
//!
//! Every node runs under its own uid (`cluster.rs`), so a packet a node sends is tagged with its
//! socket owner's uid. Cutting the link between nodes `a` and `b` adds, in an `output` chain of
//! the harness's own table (`inet concord_jepsen_<pid>`), a drop rule for packets owned by
//! `a`'s uid going to any of `b`'s ports, and the same from `b` to `a`. Both dialling
//! directions are cut, so established streams stall (TCP retransmits into the drop) and new
//! connections time out; clients (the harness, another uid) still reach every node, as in
//! Jepsen where partitions cut only the nodes' links to each other. Healing flushes the chain.
//!
//! Must never: leave the table behind (`Drop` deletes it); touch any other table.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, bail};

use crate::cluster::NodeSpec;

/// Checks that nftables can be used here (the `nft` binary and permission to add a table);
/// the error says why not.
///
/// # Errors
/// When partitions cannot run on this machine.
pub fn check_available() -> anyhow::Result<()> {
    let output = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .context("run `nft` (install the Debian package `nftables`)")?;
    if !output.status.success() {
        bail!(
            "`nft list tables` failed (partitions need root and nf_tables): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Applies and heals partitions between the cluster's nodes.
#[derive(Debug)]
pub struct Partitioner {
    table: String,
    nodes: Vec<(u32, Vec<u16>)>,
    created: bool,
}

fn nft(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("nft").args(args).output().context("run nft")?;
    if !output.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Partitioner {
    /// Creates the harness's table and chain. Every node must run under its own uid.
    ///
    /// # Errors
    /// When nftables is unavailable or a node has no uid of its own.
    pub fn new(specs: &[NodeSpec]) -> anyhow::Result<Partitioner> {
        check_available()?;
        let mut nodes = Vec::with_capacity(specs.len());
        for spec in specs {
            let uid = spec
                .uid
                .with_context(|| format!("node {} runs without a uid of its own", spec.id))?;
            nodes.push((uid, spec.ports()));
        }
        let table = format!("concord_jepsen_{}", std::process::id());
        let mut partitioner = Partitioner {
            table,
            nodes,
            created: false,
        };
        nft(&["add", "table", "inet", &partitioner.table])?;
        partitioner.created = true;
        nft(&[
            "add",
            "chain",
            "inet",
            &partitioner.table,
            "links",
            "{ type filter hook output priority 0 ; policy accept ; }",
        ])?;
        Ok(partitioner)
    }

    /// Cuts every link between nodes of different `groups` (node indexes); nodes in no group
    /// are cut from everyone. Replaces any earlier partition.
    ///
    /// # Errors
    /// When nft fails.
    pub fn partition(&mut self, groups: &[Vec<usize>]) -> anyhow::Result<()> {
        self.heal()?;
        let together = |a: usize, b: usize| {
            groups
                .iter()
                .any(|group| group.contains(&a) && group.contains(&b))
        };
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                let cut = a != b && !together(a, b);
                if !cut {
                    continue;
                }
                let (uid, _) = &self.nodes[a];
                let ports: BTreeSet<String> = self.nodes[b]
                    .1
                    .iter()
                    .map(|port| port.to_string())
                    .collect();
                let ports = ports.into_iter().collect::<Vec<_>>().join(", ");
                let rule = format!("meta skuid {uid} tcp dport {{ {ports} }} drop");
                nft(&["add", "rule", "inet", &self.table, "links", &rule])?;
            }
        }
        Ok(())
    }

    /// Removes every cut.
    ///
    /// # Errors
    /// When nft fails.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        nft(&["flush", "chain", "inet", &self.table, "links"])
    }
}

impl Drop for Partitioner {
    fn drop(&mut self) {
        if self.created {
            let _ = nft(&["delete", "table", "inet", &self.table]);
        }
    }
}
