//! The nemesis: faults injected while the clients run, one at a time, on a fixed rhythm —
//! `interval` healthy, then `interval` with one fault, then healed, and so on, cycling through
//! the requested kinds. Every fault window is recorded (`nemesis.jsonl`) for the report and the
//! latency plot.
//!
//! - `kill`: SIGKILL a random node; healed by restarting it (it must replay its journal and
//!   come back ready).
//! - `pause`: SIGSTOP a random node; healed by SIGCONT.
//! - `partition`: nftables cuts (`net.rs`), cycling through a minority/majority split, one node
//!   isolated (every node coordinates, so this also isolates a coordinator) and, with three or
//!   more nodes, a bridge (one node sees both sides, the sides do not see each other).
//! - `clock`: restarts a random node with its wall clock stepped back or forward by
//!   [`CLOCK_STEP_MS_MAX`] at most (`test_clock_offset_ms`); healed by restarting it with the
//!   true clock. A step back across a restart is what NTP or a restored VM does; write times
//!   must stay ordered through it.
//! - `skew`: steps a random node's wall clock while it runs, by up to [`CLOCK_STEP_MS_MAX`]
//!   either way (libfaketime preloaded into every node, reading its offset from a file the
//!   nemesis rewrites, `Cluster::set_live_clock_offset`); healed by stepping it back to the
//!   true clock, which is a step back for a node that ran ahead.
//! - `membership`: changes the cluster's membership while it holds data (sealed epoch
//!   transitions, design/cluster.md). Each step is one change, its window from the request to
//!   its completion (nothing to heal): with the starting number of members it adds a node (a
//!   fresh id, joining through a live member, until it prints `ready`); with one more it
//!   removes one — alternately the node added last and one of the original nodes (at random;
//!   any but the newest once no original is left) — through `concord cluster remove-node`,
//!   waits until no remaining member lists it, and stops its process. So the cluster never has
//!   fewer members than it started with. Other kinds target current members only.
//!
//! Must never: end with a fault in place (`heal_all` runs at the end whatever happened).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::net::Partitioner;

/// The largest clock step the clock nemesis applies, either way.
pub const CLOCK_STEP_MS_MAX: i64 = 120_000;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NemesisKind {
    Kill,
    Pause,
    Partition,
    Clock,
    Skew,
    Membership,
}

impl NemesisKind {
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Partition => "partition",
            NemesisKind::Clock => "clock",
            NemesisKind::Skew => "skew",
            NemesisKind::Membership => "membership",
        }
    }
}

impl fmt::Display for NemesisKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for NemesisKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "kill" => Ok(NemesisKind::Kill),
            "pause" => Ok(NemesisKind::Pause),
            "partition" => Ok(NemesisKind::Partition),
            "clock" => Ok(NemesisKind::Clock),
            "skew" => Ok(NemesisKind::Skew),
            "membership" => Ok(NemesisKind::Membership),
            other => Err(format!(
                "unknown nemesis {other:?} (expected kill, pause, partition, clock, skew or \
                 membership)"
            )),
        }
    }
}

/// One fault, from injection to heal, in microseconds since the run started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    pub kind: NemesisKind,
    /// What exactly: `"n2"`, `"n1,n2 | n3"`, ...
    pub detail: String,
    pub start_us: u64,
    pub end_us: u64,
}

impl FaultWindow {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind.name(),
            "detail": self.detail,
            "start_us": self.start_us,
            "end_us": self.end_us,
        })
    }
}

/// The state shared with the nemesis thread.
#[derive(Debug)]
pub struct Nemesis {
    pub kinds: Vec<NemesisKind>,
    pub interval: Duration,
    pub seed: u64,
}

fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Sleeps up to `duration`, waking early when `stop` is set; returns whether it was set.
fn sleep_unless(stop: &AtomicBool, duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20).min(deadline - Instant::now()));
    }
    stop.load(Ordering::SeqCst)
}

fn names(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|node| format!("n{}", node + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Which member the membership nemesis removes: `removal` counts removals so far; even ones
/// take the newest member (the node added last), odd ones an original node (index below
/// `originals`) at random, or any member but the newest when no original is left. `None` with
/// fewer than two members.
pub fn removal_victim(
    members: &[usize],
    originals: usize,
    removal: usize,
    rng: &mut StdRng,
) -> Option<usize> {
    let newest = *members.iter().max()?;
    if members.len() < 2 {
        return None;
    }
    if removal.is_multiple_of(2) {
        return Some(newest);
    }
    let original: Vec<usize> = members
        .iter()
        .copied()
        .filter(|member| *member < originals)
        .collect();
    let pool = if original.is_empty() {
        members
            .iter()
            .copied()
            .filter(|member| *member != newest)
            .collect()
    } else {
        original
    };
    pool.choose(rng).copied()
}

impl Nemesis {
    /// Runs faults until `stop` is set, then heals everything. Returns the fault windows and,
    /// when a fault could not be injected or healed (e.g. a killed node does not come back, a
    /// membership change does not complete), the error that ended the faults: the run is
    /// then reported as broken, not valid. The windows up to it are kept (a failed step's
    /// window ends when it failed, its detail says `failed`).
    pub fn run(
        &self,
        cluster: &Arc<Mutex<Cluster>>,
        partitioner: Option<Partitioner>,
        start: Instant,
        stop: &AtomicBool,
    ) -> (Vec<FaultWindow>, Option<anyhow::Error>) {
        let mut windows = Vec::new();
        let error = self
            .run_into(cluster, partitioner, start, stop, &mut windows)
            .err();
        (windows, error)
    }

    fn run_into(
        &self,
        cluster: &Arc<Mutex<Cluster>>,
        mut partitioner: Option<Partitioner>,
        start: Instant,
        stop: &AtomicBool,
        windows: &mut Vec<FaultWindow>,
    ) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        if self.kinds.is_empty() {
            while !sleep_unless(stop, Duration::from_millis(200)) {}
            return Ok(());
        }
        let node_count = lock(cluster)?.len();
        let mut round = 0usize;
        let mut partition_shape = 0usize;
        let mut removals = 0usize;
        loop {
            if sleep_unless(stop, self.interval) {
                break;
            }
            let kind = self.kinds[round % self.kinds.len()];
            round += 1;
            // Only current members are hurt (the membership nemesis removes nodes).
            let members = lock(cluster)?.members();
            let target = *members
                .choose(&mut rng)
                .context("the cluster has no member left")?;
            let start_us = micros(start);
            let detail = match kind {
                NemesisKind::Membership => {
                    let mut cluster = lock(cluster)?;
                    let (detail, result) = if members.len() <= cluster.original_nodes() {
                        let id = cluster.next_id();
                        (format!("join n{id}"), cluster.add_node().map(|_| ()))
                    } else {
                        let victim =
                            removal_victim(&members, cluster.original_nodes(), removals, &mut rng)
                                .context("no member to remove")?;
                        removals += 1;
                        (
                            format!("remove n{}", cluster.id(victim)),
                            cluster.remove_node(victim),
                        )
                    };
                    if let Err(error) = result {
                        windows.push(FaultWindow {
                            kind,
                            detail: format!("{detail} failed"),
                            start_us,
                            end_us: micros(start),
                        });
                        return Err(error);
                    }
                    detail
                }
                NemesisKind::Kill => {
                    lock(cluster)?.kill(target);
                    names(&[target])
                }
                NemesisKind::Pause => {
                    lock(cluster)?.pause(target)?;
                    names(&[target])
                }
                NemesisKind::Clock => {
                    let magnitude = rng.random_range(1_000..=CLOCK_STEP_MS_MAX);
                    // Mostly backwards: the dangerous direction.
                    let offset = if rng.random_bool(0.75) {
                        -magnitude
                    } else {
                        magnitude
                    };
                    let mut cluster = lock(cluster)?;
                    cluster.kill(target);
                    cluster.set_clock_offset(target, offset)?;
                    cluster.restart(target).with_context(|| {
                        format!("restart n{} with its clock at {offset} ms", target + 1)
                    })?;
                    format!("n{} {offset:+} ms", target + 1)
                }
                NemesisKind::Skew => {
                    let seconds = rng.random_range(1..=CLOCK_STEP_MS_MAX / 1_000);
                    let offset = if rng.random_bool(0.5) {
                        -seconds
                    } else {
                        seconds
                    };
                    lock(cluster)?.set_live_clock_offset(target, offset)?;
                    format!("n{} {offset:+} s live", target + 1)
                }
                NemesisKind::Partition => {
                    let partitioner = partitioner
                        .as_mut()
                        .context("the partition nemesis needs nftables (net.rs)")?;
                    let groups = partition_groups(node_count, partition_shape, &mut rng);
                    partition_shape += 1;
                    partitioner.partition(&groups)?;
                    groups
                        .iter()
                        .map(|group| names(group))
                        .collect::<Vec<_>>()
                        .join(" | ")
                }
            };
            // A membership change is complete when its step returns: nothing to heal.
            let stopped = if kind == NemesisKind::Membership {
                stop.load(Ordering::SeqCst)
            } else {
                sleep_unless(stop, self.interval)
            };
            match kind {
                NemesisKind::Membership => {}
                NemesisKind::Kill => lock(cluster)?
                    .restart(target)
                    .with_context(|| format!("restart n{} after kill -9", target + 1))?,
                NemesisKind::Pause => lock(cluster)?.resume(target)?,
                NemesisKind::Clock => {
                    let mut cluster = lock(cluster)?;
                    cluster.kill(target);
                    cluster.set_clock_offset(target, 0)?;
                    cluster
                        .restart(target)
                        .with_context(|| format!("restart n{} with its true clock", target + 1))?;
                }
                NemesisKind::Partition => {
                    if let Some(partitioner) = partitioner.as_mut() {
                        partitioner.heal()?;
                    }
                }
                NemesisKind::Skew => lock(cluster)?.set_live_clock_offset(target, 0)?,
            }
            windows.push(FaultWindow {
                kind,
                detail,
                start_us,
                end_us: micros(start),
            });
            if stopped {
                break;
            }
        }
        Ok(())
    }
}

fn lock(cluster: &Arc<Mutex<Cluster>>) -> anyhow::Result<std::sync::MutexGuard<'_, Cluster>> {
    match cluster.lock() {
        Ok(guard) => Ok(guard),
        Err(_) => bail!("the cluster lock is poisoned"),
    }
}

/// The groups of a partition: shape 0 a minority/majority split, 1 one node isolated, 2 a
/// bridge (with at least three nodes), cycling. Nodes are shuffled, so each shape hits
/// different nodes.
pub fn partition_groups(nodes: usize, shape: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..nodes).collect();
    order.shuffle(rng);
    let shapes = if nodes >= 3 { 3 } else { 2 };
    match shape % shapes {
        0 => {
            let minority = (nodes.saturating_sub(1) / 2).max(1);
            let (small, large) = order.split_at(minority);
            vec![small.to_vec(), large.to_vec()]
        }
        1 => vec![vec![order[0]], order[1..].to_vec()],
        _ => {
            // A bridge: the first node is in both groups, the rest split in two.
            let bridge = order[0];
            let rest = &order[1..];
            let (left, right) = rest.split_at(rest.len() / 2);
            let mut left = left.to_vec();
            let mut right = right.to_vec();
            left.push(bridge);
            right.push(bridge);
            vec![left, right]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_every_node_and_split_the_cluster() {
        let mut rng = StdRng::seed_from_u64(7);
        for nodes in [2usize, 3, 5] {
            for shape in 0..3 {
                let groups = partition_groups(nodes, shape, &mut rng);
                assert!(groups.len() >= 2, "{groups:?}");
                let mut covered: Vec<usize> = groups.iter().flatten().copied().collect();
                covered.sort_unstable();
                covered.dedup();
                assert_eq!(covered, (0..nodes).collect::<Vec<_>>(), "{groups:?}");
                // Some pair of nodes can no longer talk.
                let cut = (0..nodes).any(|a| {
                    (0..nodes).any(|b| {
                        a != b
                            && !groups
                                .iter()
                                .any(|group| group.contains(&a) && group.contains(&b))
                    })
                });
                assert!(cut, "{nodes} nodes, shape {shape}: {groups:?}");
            }
        }
    }

    #[test]
    fn nemesis_names_parse_and_unknown_ones_are_refused() {
        for kind in [
            NemesisKind::Kill,
            NemesisKind::Pause,
            NemesisKind::Partition,
            NemesisKind::Clock,
            NemesisKind::Skew,
            NemesisKind::Membership,
        ] {
            assert_eq!(kind.name().parse::<NemesisKind>(), Ok(kind));
        }
        let error = "disk".parse::<NemesisKind>().unwrap_err();
        assert!(
            error.contains("expected kill, pause, partition, clock, skew or membership"),
            "{error}"
        );
    }

    #[test]
    fn removals_alternate_between_the_newest_node_and_an_original_one() {
        let mut rng = StdRng::seed_from_u64(3);
        // Originals 0, 1, 2; node 3 was added.
        let members = [0, 1, 2, 3];
        assert_eq!(removal_victim(&members, 3, 0, &mut rng), Some(3));
        for _ in 0..20 {
            let victim = removal_victim(&members, 3, 1, &mut rng).unwrap();
            assert!(victim < 3, "{victim}");
        }
        // No original left: anything but the newest.
        let members = [4, 6, 7];
        for _ in 0..20 {
            let victim = removal_victim(&members, 3, 1, &mut rng).unwrap();
            assert!(victim == 4 || victim == 6, "{victim}");
        }
        assert_eq!(removal_victim(&[5], 3, 0, &mut rng), None);
        assert_eq!(removal_victim(&[], 3, 1, &mut rng), None);
    }
}
