//! The replicated cluster state and the commands that change it: the pure,
//! deterministic part of the metadata state machine (no I/O, no clock).
//!
//! Every node applies the same commands in the same (Raft log) order, so
//! every node computes the same [`ClusterState`]. A command that does not
//! apply (an unknown node, a token already taken) is rejected the same way on
//! every node and changes nothing: [`ClusterState::apply`] validates before
//! it mutates.
//!
//! ```text
//!   AddNode ─► member Joining (tokens recorded, not in the ring)
//!   NodeUp  ─► member Up (tokens enter the ring)          epoch + 1
//!   RemoveNode ─► member gone                              epoch + 1 if it was Up
//!   SetReplication ─► keyspace RF                          epoch + 1
//!   Schema ─► DDL appended to the log, schema_version + 1  (epoch unchanged)
//! ```
//!
//! Once the cluster may hold rows, a placement change does not apply at once: it starts a
//! [`Transition`] (design/cluster.md, "Epoch transitions and bootstrap"). Every node seals
//! the epoch; each node of the next placement reports `TransitionReady` once it has applied
//! every transaction of the old epoch on its kept ranges and fetched its gained ones; the
//! last report applies the change (epoch + 1, `sealed_epoch` = it). `AbortTransition` gives
//! up: the epoch still moves on (every node fenced the old one) with the placement unchanged.

use std::collections::{BTreeMap, BTreeSet};

use concord_storage::partitioner::{MIN_TOKEN, Token, serialize_partition_key, token};
use concord_txn::topology::REPLICAS_PER_SHARD_MAX;
use serde::{Deserialize, Serialize};

/// Tokens (virtual nodes) a node takes on the ring when none are given.
pub const VNODES_PER_NODE_DEFAULT: usize = 16;
/// The most tokens one node may own.
pub const VNODES_PER_NODE_MAX: usize = 256;
/// The largest replication factor a keyspace may ask for (the transaction
/// layer sizes its quorum trackers for at most this many replicas).
pub const REPLICATION_FACTOR_MAX: u32 = REPLICAS_PER_SHARD_MAX as u32;
/// The longest keyspace name, in bytes (Cassandra's limit).
pub const KEYSPACE_NAME_BYTES_MAX: usize = 48;
/// The longest node address (`host:port`), in bytes.
pub const ADDRESS_BYTES_MAX: usize = 256;
/// The largest schema change (one DDL statement), in bytes.
pub const DDL_BYTES_MAX: usize = 64 * 1024;
/// The most client endpoints a member may list.
pub const ENDPOINTS_MAX: usize = 8;
/// The longest endpoint name (`cql`, `pg`, `grpc`), in bytes.
pub const ENDPOINT_NAME_BYTES_MAX: usize = 32;

/// A member's client endpoints: protocol name (`cql`, `pg`, `grpc`) →
/// `host:port` clients reach it at.
pub type Endpoints = BTreeMap<String, String>;

/// A node's identifier: the same number in the Raft group (as `u64`) and in
/// the transaction layer (`concord_txn::timestamp::NodeId`).
pub type NodeIdx = u32;

/// Where a member is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Registered with its tokens; catching up as a Raft learner; owns no
    /// range yet.
    Joining,
    /// A voter that owns its tokens' ranges.
    Up,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `host:port` of the node's cluster (Raft and transport) endpoint.
    pub address: String,
    pub status: NodeStatus,
    /// The node's tokens, ascending; each ends the ring range it owns.
    pub tokens: Vec<Token>,
    /// Where clients reach it (absent in state stored before endpoints
    /// existed: decodes as none).
    #[serde(default)]
    pub endpoints: Endpoints,
}

/// One schema change as the log recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaChange {
    /// The schema version this change produced (1 for the first).
    pub version: u64,
    /// The epoch in force when it was applied.
    pub epoch: u64,
    /// The DDL statement, opaque to the cluster layer.
    pub ddl: String,
    /// The proposer's request id: a retried proposal with the same id
    /// applies once.
    pub request: u64,
    /// The change creates a table: from now on the cluster may hold rows.
    #[serde(default)]
    pub creates_table: bool,
}

/// The replicated cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The topology epoch: bumped by every change of placement.
    pub epoch: u64,
    pub members: BTreeMap<NodeIdx, Member>,
    /// Keyspace name → replication factor.
    pub keyspaces: BTreeMap<String, u32>,
    /// The number of schema changes applied.
    pub schema_version: u64,
    /// Every schema change, in log order.
    pub schema: Vec<SchemaChange>,
    /// The placement change in progress, if any.
    #[serde(default)]
    pub transition: Option<Transition>,
    /// The latest epoch entered through a completed transition: every transaction of an
    /// earlier epoch is applied on every replica of it (0: none).
    #[serde(default)]
    pub sealed_epoch: u64,
}

/// A placement change waiting for the old epoch to be sealed and gained ranges fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The change (`NodeUp`, `RemoveNode` or `SetReplication`) applied when it completes.
    pub command: Command,
    /// The epoch being left; the change enters `from_epoch + 1`.
    pub from_epoch: u64,
    /// Nodes of the next placement that have not reported ready.
    pub waiting: BTreeSet<NodeIdx>,
}

impl Transition {
    /// The epoch the transition enters.
    pub fn next_epoch(&self) -> u64 {
        self.from_epoch + 1
    }
}

/// A change to the cluster state: the payload of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Registers a node (status `Joining`) with its address, tokens and
    /// client endpoints. Repeating it with the same address and tokens is a
    /// no-op, except that non-empty `endpoints` that differ replace the
    /// member's (a restarted node's new client ports; no new epoch).
    AddNode {
        node: NodeIdx,
        address: String,
        tokens: Vec<Token>,
        #[serde(default)]
        endpoints: Endpoints,
    },
    /// A joining node became a voter: its tokens enter the ring.
    NodeUp { node: NodeIdx },
    /// Removes a member and its tokens.
    RemoveNode { node: NodeIdx },
    /// Creates a keyspace or changes its replication factor.
    SetReplication {
        keyspace: String,
        replication_factor: u32,
    },
    /// Appends one DDL statement to the schema log, once per `request` id
    /// (a proposal retried after a leader change is not applied twice).
    /// `creates_table`: the proposer says the statement creates a table (the
    /// DDL is opaque here).
    Schema {
        ddl: String,
        request: u64,
        #[serde(default)]
        creates_table: bool,
    },
    /// `node` has applied every transaction of the transition's old epoch on the ranges it
    /// keeps and holds the rows of the ranges it gains (`epoch`: the epoch entered).
    TransitionReady { node: NodeIdx, epoch: u64 },
    /// Gives up the transition entering `epoch`: the epoch moves on with the placement
    /// unchanged.
    AbortTransition { epoch: u64 },
}

/// What applying a command did (the Raft response of an entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied; the epoch and schema version afterwards.
    Applied { epoch: u64, schema_version: u64 },
    /// Nothing to do (a repeated command, or a Raft-internal entry).
    Unchanged { epoch: u64, schema_version: u64 },
    /// Refused; the state is unchanged.
    Rejected(String),
}

/// The default tokens of `node`: `count` Murmur3 tokens of
/// `("concord-vnode", node, index)`, the same on every node.
pub fn default_tokens(node: NodeIdx, count: usize) -> Vec<Token> {
    let mut tokens = BTreeSet::new();
    let mut index: u32 = 0;
    while tokens.len() < count {
        let node_bytes = node.to_be_bytes();
        let index_bytes = index.to_be_bytes();
        let key = serialize_partition_key(&[b"concord-vnode", &node_bytes, &index_bytes]);
        let candidate = token(&key);
        if candidate != MIN_TOKEN {
            tokens.insert(candidate);
        }
        index += 1;
    }
    tokens.into_iter().collect()
}

impl ClusterState {
    /// Members whose tokens are in the ring.
    pub fn up_nodes(&self) -> impl Iterator<Item = NodeIdx> + '_ {
        self.members
            .iter()
            .filter(|(_, member)| member.status == NodeStatus::Up)
            .map(|(node, _)| *node)
    }

    /// Checks `command` against the state without changing it.
    ///
    /// # Errors
    /// A message saying why the command cannot apply.
    pub fn validate(&self, command: &Command) -> Result<(), String> {
        match command {
            Command::AddNode {
                node,
                address,
                tokens,
                endpoints,
            } => {
                if endpoints.len() > ENDPOINTS_MAX
                    || endpoints.iter().any(|(name, address)| {
                        name.is_empty()
                            || name.len() > ENDPOINT_NAME_BYTES_MAX
                            || address.is_empty()
                            || address.len() > ADDRESS_BYTES_MAX
                    })
                {
                    return Err(format!(
                        "node {node}: at most {ENDPOINTS_MAX} endpoints (ENDPOINTS_MAX), names \
                         1..={ENDPOINT_NAME_BYTES_MAX} bytes, addresses 1..={ADDRESS_BYTES_MAX} \
                         bytes"
                    ));
                }
                if address.is_empty() || address.len() > ADDRESS_BYTES_MAX {
                    return Err(format!(
                        "node {node}: address must be 1..={ADDRESS_BYTES_MAX} bytes \
                         (ADDRESS_BYTES_MAX), got {}",
                        address.len()
                    ));
                }
                if tokens.is_empty() || tokens.len() > VNODES_PER_NODE_MAX {
                    return Err(format!(
                        "node {node}: 1..={VNODES_PER_NODE_MAX} tokens (VNODES_PER_NODE_MAX), \
                         got {}",
                        tokens.len()
                    ));
                }
                let distinct: BTreeSet<Token> = tokens.iter().copied().collect();
                if distinct.len() != tokens.len() || distinct.contains(&MIN_TOKEN) {
                    return Err(format!(
                        "node {node}: tokens must be distinct and not the minimum token"
                    ));
                }
                if let Some(existing) = self.members.get(node) {
                    if existing.address != *address || existing.tokens != sorted(tokens) {
                        return Err(format!(
                            "node {node} is already a member at {} with other tokens",
                            existing.address
                        ));
                    }
                    return Ok(());
                }
                for (other, member) in &self.members {
                    if member.address == *address {
                        return Err(format!("address {address} is taken by node {other}"));
                    }
                    if let Some(taken) = member.tokens.iter().find(|t| distinct.contains(t)) {
                        return Err(format!("token {taken} is owned by node {other}"));
                    }
                }
                Ok(())
            }
            Command::NodeUp { node } => match self.members.get(node) {
                Some(_) => Ok(()),
                None => Err(format!("node {node} is not a member")),
            },
            Command::RemoveNode { node } => {
                let Some(member) = self.members.get(node) else {
                    return Err(format!("node {node} is not a member"));
                };
                if member.status == NodeStatus::Up && self.up_nodes().count() == 1 {
                    return Err(format!("node {node} is the last node that is up"));
                }
                Ok(())
            }
            Command::SetReplication {
                keyspace,
                replication_factor,
            } => {
                if keyspace.is_empty() || keyspace.len() > KEYSPACE_NAME_BYTES_MAX {
                    return Err(format!(
                        "keyspace name must be 1..={KEYSPACE_NAME_BYTES_MAX} bytes \
                         (KEYSPACE_NAME_BYTES_MAX), got {}",
                        keyspace.len()
                    ));
                }
                if *replication_factor == 0 || *replication_factor > REPLICATION_FACTOR_MAX {
                    return Err(format!(
                        "keyspace {keyspace}: replication factor must be \
                         1..={REPLICATION_FACTOR_MAX} (REPLICATION_FACTOR_MAX), got \
                         {replication_factor}"
                    ));
                }
                Ok(())
            }
            Command::TransitionReady { epoch, .. } | Command::AbortTransition { epoch } => {
                match &self.transition {
                    Some(transition) if transition.next_epoch() == *epoch => Ok(()),
                    _ => Err(format!("no transition to epoch {epoch} is in progress")),
                }
            }
            Command::Schema { ddl, .. } => {
                if ddl.is_empty() || ddl.len() > DDL_BYTES_MAX {
                    return Err(format!(
                        "a schema change must be 1..={DDL_BYTES_MAX} bytes (DDL_BYTES_MAX), got {}",
                        ddl.len()
                    ));
                }
                Ok(())
            }
        }
    }

    /// Applies `command`: validates it, then changes the state. Deterministic:
    /// the same state and command give the same result on every node.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        if let Err(reason) = self.validate(command) {
            return CommandResult::Rejected(reason);
        }
        // The change the transition in progress waits to apply, asked again (a joining node
        // re-registering its endpoints): nothing more to do.
        if self
            .transition
            .as_ref()
            .is_some_and(|transition| transition.command == *command)
        {
            return self.unchanged();
        }
        match self.transition_for(command) {
            Err(reason) => return CommandResult::Rejected(reason),
            Ok(Some(transition)) => {
                self.transition = Some(transition);
                return CommandResult::Applied {
                    epoch: self.epoch,
                    schema_version: self.schema_version,
                };
            }
            Ok(None) => {}
        }
        if self.change(command) {
            CommandResult::Applied {
                epoch: self.epoch,
                schema_version: self.schema_version,
            }
        } else {
            self.unchanged()
        }
    }

    /// Whether the schema log ever created a table: the cluster may then hold rows.
    pub fn may_hold_data(&self) -> bool {
        self.schema.iter().any(|change| change.creates_table)
    }

    /// Whether `command` must wait for a transition, and which: once the cluster may hold
    /// rows, a change of placement seals the epoch and waits for every node of the next
    /// placement (`TransitionReady`), so that no transaction of the old epoch is left
    /// unapplied on a replica of the new one and every node that gains a range holds its
    /// rows first (design/cluster.md, "Epoch transitions and bootstrap"). Refused while
    /// another transition is in progress.
    fn transition_for(&self, command: &Command) -> Result<Option<Transition>, String> {
        let moves_placement = matches!(
            command,
            Command::NodeUp { .. } | Command::RemoveNode { .. } | Command::SetReplication { .. }
        );
        if !moves_placement {
            return Ok(None);
        }
        if let Some(transition) = &self.transition {
            return Err(format!(
                "a transition to epoch {} is in progress ({:?}); retry when it ends",
                transition.next_epoch(),
                transition.command
            ));
        }
        if !self.may_hold_data() {
            return Ok(None);
        }
        let mut next = self.clone();
        if !next.change(command)
            || next.epoch == self.epoch
            || super::view::same_placement(self, &next)
        {
            return Ok(None);
        }
        Ok(Some(Transition {
            command: command.clone(),
            from_epoch: self.epoch,
            waiting: next.up_nodes().collect(),
        }))
    }

    /// The state the transition in progress leads to (`None` without one).
    pub fn transition_target(&self) -> Option<ClusterState> {
        let transition = self.transition.as_ref()?;
        let mut next = self.clone();
        next.transition = None;
        next.change(&transition.command);
        Some(next)
    }

    /// Changes the state by a validated command; whether anything changed.
    fn change(&mut self, command: &Command) -> bool {
        match command {
            Command::AddNode {
                node,
                address,
                tokens,
                endpoints,
            } => {
                if let Some(member) = self.members.get_mut(node) {
                    if !endpoints.is_empty() && member.endpoints != *endpoints {
                        member.endpoints = endpoints.clone();
                        true
                    } else {
                        false
                    }
                } else {
                    self.members.insert(
                        *node,
                        Member {
                            address: address.clone(),
                            status: NodeStatus::Joining,
                            tokens: sorted(tokens),
                            endpoints: endpoints.clone(),
                        },
                    );
                    true
                }
            }
            Command::NodeUp { node } => match self.members.get_mut(node) {
                Some(member) if member.status == NodeStatus::Joining => {
                    member.status = NodeStatus::Up;
                    self.epoch += 1;
                    true
                }
                _ => false,
            },
            Command::RemoveNode { node } => {
                let removed = self.members.remove(node);
                if removed.is_some_and(|member| member.status == NodeStatus::Up) {
                    self.epoch += 1;
                }
                true
            }
            Command::SetReplication {
                keyspace,
                replication_factor,
            } => {
                let previous = self.keyspaces.insert(keyspace.clone(), *replication_factor);
                if previous == Some(*replication_factor) {
                    false
                } else {
                    self.epoch += 1;
                    true
                }
            }
            Command::TransitionReady { node, .. } => {
                let Some(transition) = self.transition.as_mut() else {
                    return false;
                };
                if !transition.waiting.remove(node) {
                    return false;
                }
                if transition.waiting.is_empty() {
                    let command = transition.command.clone();
                    let next_epoch = transition.next_epoch();
                    self.transition = None;
                    self.change(&command);
                    // Every placement change moves the epoch by one; the sealed floor is
                    // the epoch entered.
                    self.epoch = next_epoch;
                    self.sealed_epoch = next_epoch;
                }
                true
            }
            Command::AbortTransition { epoch } => {
                self.transition = None;
                self.epoch = *epoch;
                true
            }
            Command::Schema {
                ddl,
                request,
                creates_table,
            } => {
                if self.schema.iter().any(|change| change.request == *request) {
                    false
                } else {
                    self.schema_version += 1;
                    self.schema.push(SchemaChange {
                        version: self.schema_version,
                        epoch: self.epoch,
                        ddl: ddl.clone(),
                        request: *request,
                        creates_table: *creates_table,
                    });
                    true
                }
            }
        }
    }

    /// The result of an entry that changes nothing.
    pub fn unchanged(&self) -> CommandResult {
        CommandResult::Unchanged {
            epoch: self.epoch,
            schema_version: self.schema_version,
        }
    }
}

fn sorted(tokens: &[Token]) -> Vec<Token> {
    let mut tokens = tokens.to_vec();
    tokens.sort_unstable();
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(node: NodeIdx) -> Command {
        Command::AddNode {
            node,
            address: format!("127.0.0.1:{}", 7000 + node),
            tokens: default_tokens(node, VNODES_PER_NODE_DEFAULT),
            endpoints: Endpoints::from([("cql".into(), format!("127.0.0.1:{}", 9000 + node))]),
        }
    }

    #[test]
    fn a_rejoin_updates_endpoints_without_a_new_epoch() {
        let mut state = ClusterState::default();
        state.apply(&add(1));
        state.apply(&Command::NodeUp { node: 1 });
        let Command::AddNode {
            node,
            address,
            tokens,
            ..
        } = add(1)
        else {
            unreachable!()
        };
        let moved = Endpoints::from([("cql".into(), "127.0.0.1:19042".into())]);
        let rejoin = Command::AddNode {
            node,
            address: address.clone(),
            tokens: tokens.clone(),
            endpoints: moved.clone(),
        };
        assert!(matches!(
            state.apply(&rejoin),
            CommandResult::Applied { epoch: 1, .. }
        ));
        assert_eq!(state.members[&1].endpoints, moved);
        // No endpoints: the stored ones stay.
        let bare = Command::AddNode {
            node,
            address,
            tokens,
            endpoints: Endpoints::new(),
        };
        assert!(matches!(
            state.apply(&bare),
            CommandResult::Unchanged { epoch: 1, .. }
        ));
        assert_eq!(state.members[&1].endpoints, moved);
        // State stored before endpoints existed still decodes.
        let old = r#"{"address":"127.0.0.1:7001","status":"Up","tokens":[]}"#;
        let member: Member = serde_json::from_str(old).unwrap();
        assert!(member.endpoints.is_empty());
    }

    #[test]
    fn epochs_move_with_placement_only() {
        let mut state = ClusterState::default();
        assert!(matches!(
            state.apply(&add(1)),
            CommandResult::Applied { epoch: 0, .. }
        ));
        assert!(matches!(
            state.apply(&Command::NodeUp { node: 1 }),
            CommandResult::Applied { epoch: 1, .. }
        ));
        // Repeating a join is a no-op, not a new epoch.
        assert!(matches!(
            state.apply(&add(1)),
            CommandResult::Unchanged { epoch: 1, .. }
        ));
        assert!(matches!(
            state.apply(&Command::NodeUp { node: 1 }),
            CommandResult::Unchanged { epoch: 1, .. }
        ));
        let ks = Command::SetReplication {
            keyspace: "ks".into(),
            replication_factor: 3,
        };
        assert!(matches!(
            state.apply(&ks),
            CommandResult::Applied { epoch: 2, .. }
        ));
        assert!(matches!(
            state.apply(&ks),
            CommandResult::Unchanged { epoch: 2, .. }
        ));
        let ddl = Command::Schema {
            ddl: "CREATE TABLE ks.t (k int PRIMARY KEY)".into(),
            request: 7,
            creates_table: true,
        };
        assert_eq!(
            state.apply(&ddl),
            CommandResult::Applied {
                epoch: 2,
                schema_version: 1
            }
        );
        // The same request again (a retried proposal) applies once.
        assert!(matches!(
            state.apply(&ddl),
            CommandResult::Unchanged {
                schema_version: 1,
                ..
            }
        ));
        assert_eq!(state.schema[0].epoch, 2);
        // Removing a joining node does not change placement.
        state.apply(&add(2));
        assert!(matches!(
            state.apply(&Command::RemoveNode { node: 2 }),
            CommandResult::Applied { epoch: 2, .. }
        ));
    }

    #[test]
    fn bad_commands_are_rejected_and_change_nothing() {
        let mut state = ClusterState::default();
        state.apply(&add(1));
        state.apply(&Command::NodeUp { node: 1 });
        let before = state.clone();
        let stolen = Command::AddNode {
            node: 2,
            address: "127.0.0.1:9".into(),
            tokens: vec![default_tokens(1, 1)[0]],
            endpoints: Endpoints::new(),
        };
        let cases = [
            stolen,
            Command::AddNode {
                node: 2,
                address: "127.0.0.1:7001".into(),
                tokens: default_tokens(2, 4),
                endpoints: Endpoints::new(),
            },
            Command::AddNode {
                node: 2,
                address: String::new(),
                tokens: default_tokens(2, 4),
                endpoints: Endpoints::new(),
            },
            Command::AddNode {
                node: 2,
                address: "127.0.0.1:7002".into(),
                tokens: default_tokens(2, 4),
                endpoints: (0..=ENDPOINTS_MAX)
                    .map(|i| (format!("e{i}"), "127.0.0.1:1".to_string()))
                    .collect(),
            },
            Command::NodeUp { node: 9 },
            Command::RemoveNode { node: 9 },
            Command::RemoveNode { node: 1 },
            Command::SetReplication {
                keyspace: "ks".into(),
                replication_factor: 0,
            },
            Command::SetReplication {
                keyspace: "ks".into(),
                replication_factor: REPLICATION_FACTOR_MAX + 1,
            },
            Command::SetReplication {
                keyspace: "k".repeat(KEYSPACE_NAME_BYTES_MAX + 1),
                replication_factor: 1,
            },
            Command::Schema {
                ddl: String::new(),
                request: 1,
                creates_table: false,
            },
            Command::Schema {
                ddl: "x".repeat(DDL_BYTES_MAX + 1),
                request: 2,
                creates_table: false,
            },
        ];
        for command in cases {
            let result = state.apply(&command);
            assert!(
                matches!(result, CommandResult::Rejected(_)),
                "{command:?} gave {result:?}"
            );
            assert_eq!(state, before, "{command:?} changed the state");
        }
    }

    #[test]
    fn default_tokens_are_stable_and_distinct() {
        let first = default_tokens(1, VNODES_PER_NODE_DEFAULT);
        assert_eq!(first, default_tokens(1, VNODES_PER_NODE_DEFAULT));
        assert_eq!(first.len(), VNODES_PER_NODE_DEFAULT);
        assert!(first.windows(2).all(|pair| pair[0] < pair[1]));
        let second: BTreeSet<Token> = default_tokens(2, VNODES_PER_NODE_DEFAULT)
            .into_iter()
            .collect();
        assert!(first.iter().all(|t| !second.contains(t)));
    }

    /// Nodes 1..=n up, keyspace `ks` at `rf`, and (when `table`) a table created.
    fn cluster(n: NodeIdx, rf: u32, table: bool) -> ClusterState {
        let mut state = ClusterState::default();
        for node in 1..=n {
            state.apply(&add(node));
            state.apply(&Command::NodeUp { node });
        }
        state.apply(&Command::SetReplication {
            keyspace: "ks".into(),
            replication_factor: rf,
        });
        if table {
            // A keyspace alone holds no rows; the flag, not the (opaque) text, says so.
            state.apply(&Command::Schema {
                ddl: "CREATE KEYSPACE other".into(),
                request: 1,
                creates_table: false,
            });
            assert!(!state.may_hold_data());
            state.apply(&Command::Schema {
                ddl: "CREATE TABLE ks.t (k int PRIMARY KEY)".into(),
                request: 2,
                creates_table: true,
            });
        }
        state
    }

    fn ready(node: NodeIdx, epoch: u64) -> Command {
        Command::TransitionReady { node, epoch }
    }

    #[test]
    fn once_tables_exist_a_placement_change_waits_for_its_transition() {
        // Before any table, nodes join at once (the usual way to build a cluster).
        let mut empty = cluster(3, 3, false);
        assert!(!empty.may_hold_data());
        empty.apply(&add(4));
        assert!(matches!(
            empty.apply(&Command::NodeUp { node: 4 }),
            CommandResult::Applied { .. }
        ));
        assert!(empty.transition.is_none());

        // With a table, a fourth node's NodeUp starts a transition and changes nothing else.
        let mut state = cluster(3, 3, true);
        let epoch = state.epoch;
        state.apply(&add(4));
        assert!(matches!(
            state.apply(&Command::NodeUp { node: 4 }),
            CommandResult::Applied { epoch: e, .. } if e == epoch
        ));
        let transition = state.transition.clone().expect("a transition");
        assert_eq!(transition.from_epoch, epoch);
        assert_eq!(transition.waiting, BTreeSet::from([1, 2, 3, 4]));
        assert_eq!(state.members[&4].status, NodeStatus::Joining);
        let target = state.transition_target().expect("a target");
        assert_eq!(target.members[&4].status, NodeStatus::Up);
        assert_eq!(target.epoch, epoch + 1);
        // The same change asked again is a no-op; another placement change waits; a schema
        // change does not.
        assert!(matches!(
            state.apply(&add(4)),
            CommandResult::Unchanged { .. }
        ));
        assert!(matches!(
            state.apply(&Command::NodeUp { node: 4 }),
            CommandResult::Unchanged { .. }
        ));
        let before = state.clone();
        match state.apply(&Command::RemoveNode { node: 1 }) {
            CommandResult::Rejected(reason) => assert!(reason.contains("in progress"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(state, before);
        assert!(matches!(
            state.apply(&Command::Schema {
                ddl: "CREATE TABLE ks.u (k int PRIMARY KEY)".into(),
                request: 3,
                creates_table: true,
            }),
            CommandResult::Applied { .. }
        ));
        // Reports: of another epoch are refused; a repeated one changes nothing.
        assert!(matches!(
            state.apply(&ready(1, epoch + 2)),
            CommandResult::Rejected(_)
        ));
        for node in [1, 2, 3] {
            assert!(matches!(
                state.apply(&ready(node, epoch + 1)),
                CommandResult::Applied { .. }
            ));
        }
        assert!(matches!(
            state.apply(&ready(3, epoch + 1)),
            CommandResult::Unchanged { .. }
        ));
        assert_eq!(state.epoch, epoch);
        assert_eq!(state.members[&4].status, NodeStatus::Joining);
        // The last report applies the change.
        assert!(matches!(
            state.apply(&ready(4, epoch + 1)),
            CommandResult::Applied { epoch: e, .. } if e == epoch + 1
        ));
        assert_eq!(state.members[&4].status, NodeStatus::Up);
        assert_eq!(state.sealed_epoch, epoch + 1);
        assert!(state.transition.is_none());
        assert!(matches!(
            state.apply(&ready(4, epoch + 1)),
            CommandResult::Rejected(_)
        ));
    }

    #[test]
    fn an_aborted_transition_moves_the_epoch_and_keeps_the_placement() {
        let mut state = cluster(4, 3, true);
        let epoch = state.epoch;
        let members = state.members.clone();
        assert!(matches!(
            state.apply(&Command::RemoveNode { node: 2 }),
            CommandResult::Applied { .. }
        ));
        assert_eq!(
            state.transition.as_ref().map(|t| t.waiting.clone()),
            Some(BTreeSet::from([1, 3, 4]))
        );
        assert!(matches!(
            state.apply(&Command::AbortTransition { epoch: epoch + 1 }),
            CommandResult::Applied { epoch: e, .. } if e == epoch + 1
        ));
        assert_eq!(state.members, members);
        assert_eq!(state.sealed_epoch, 0);
        assert!(state.transition.is_none());
        // A wider replication factor is a placement change too.
        let mut four = cluster(4, 2, true);
        four.apply(&Command::SetReplication {
            keyspace: "wide".into(),
            replication_factor: 3,
        });
        assert!(four.transition.is_some());
        // A new keyspace within the topology's replication factor moves nothing.
        let mut three = cluster(3, 3, true);
        assert!(matches!(
            three.apply(&Command::SetReplication {
                keyspace: "other".into(),
                replication_factor: 3,
            }),
            CommandResult::Applied { .. }
        ));
        assert!(three.transition.is_none());
        // A restarted member's repeated join changes nothing.
        let mut four = cluster(4, 3, true);
        assert!(matches!(
            four.apply(&add(2)),
            CommandResult::Unchanged { .. }
        ));
        assert!(matches!(
            four.apply(&Command::NodeUp { node: 2 }),
            CommandResult::Unchanged { .. }
        ));
        assert!(four.transition.is_none());
    }
}
