//! Draining with a deadline: an operator takes an endpoint, or this whole
//! node, out of service without moving anyone needlessly.
//!
//! - **An endpoint** (`ADDR`, every port of it, or `ADDR:PORT`) is
//!   published at Maglev weight 0 until its deadline: no new client is
//!   placed on it, while its sticky clients (their affinity entries still
//!   name a usable backend) and open connections stay. At the deadline it
//!   leaves the published set: its sticky clients re-pick on their next
//!   connection, and open TCP connections keep it until they end or time
//!   out (the flow table keeps their backend; UDP flows re-pick at once, as
//!   kube-proxy's conntrack cleanup does). A service port whose every
//!   usable endpoint is drained keeps taking new clients on them, before
//!   and after the deadline, rather than dropping them, as Kubernetes falls
//!   back to serving terminating endpoints.
//! - **The node** withdraws every announced route (see
//!   [`crate::announce`]), so the tier's routers send new flows to the
//!   other nodes; it keeps forwarding whatever still arrives.
//!
//! Drains are the operator's: they outlive configuration changes and are
//! ended only by a cancel (or the process). Kubernetes' own way, an
//! endpoint `terminating`, is the translation's (`crate::translate`).

use limpet_dataplane::snapshot::ServicePortSpec;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// What is drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DrainTarget {
    /// An endpoint address, on one port or (`None`) every port.
    Endpoint { addr: IpAddr, port: Option<u16> },
    /// This node, for the tier.
    Node,
}

impl DrainTarget {
    /// Whether a backend at `addr:port` is this target's.
    pub fn covers(&self, addr: IpAddr, port: u16) -> bool {
        match *self {
            DrainTarget::Endpoint { addr: a, port: p } => a == addr && p.is_none_or(|p| p == port),
            DrainTarget::Node => false,
        }
    }
}

impl fmt::Display for DrainTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DrainTarget::Node => f.write_str("node"),
            DrainTarget::Endpoint { addr, port: None } => write!(f, "{addr}"),
            DrainTarget::Endpoint {
                addr,
                port: Some(port),
            } => write!(f, "{}", SocketAddr::new(addr, port)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a drain target: give `node`, an endpoint address (`203.0.113.11`, `2001:db8::11`) or an address and port (`203.0.113.11:9376`, `[2001:db8::11]:9376`)"
)]
pub struct BadTarget(String);

impl FromStr for DrainTarget {
    type Err = BadTarget;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "node" {
            return Ok(DrainTarget::Node);
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(DrainTarget::Endpoint { addr, port: None });
        }
        s.parse::<SocketAddr>()
            .map(|sa| DrainTarget::Endpoint {
                addr: sa.ip(),
                port: Some(sa.port()),
            })
            .map_err(|_| BadTarget(s.to_owned()))
    }
}

/// A drain's deadline when none is given.
pub const DEFAULT_DEADLINE: Duration = Duration::from_mins(5);

/// Parses a deadline: `300`, `300s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (300, 300s, 5m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// One drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub started: Instant,
    pub deadline: Instant,
}

/// Where a drain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No new clients; sticky clients and connections stay.
    Draining,
    /// Sticky clients re-pick; open connections stay until they end.
    DeadlinePassed,
}

/// Every drain, and a generation that moves on each change (the control
/// loop republishes when it does).
#[derive(Debug, Clone, Default)]
pub struct Drains {
    drains: BTreeMap<DrainTarget, Drain>,
    generation: u64,
}

impl Drains {
    /// Starts draining `target` (or moves its deadline) with `deadline`
    /// from `now`.
    pub fn start(&mut self, target: DrainTarget, deadline: Duration, now: Instant) -> Drain {
        let started = self.drains.get(&target).map_or(now, |d| d.started);
        let drain = Drain {
            started,
            deadline: now + deadline,
        };
        self.drains.insert(target, drain);
        self.generation += 1;
        drain
    }

    /// Ends a drain: the target takes new clients again.
    pub fn cancel(&mut self, target: DrainTarget) -> bool {
        let had = self.drains.remove(&target).is_some();
        if had {
            self.generation += 1;
        }
        had
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn is_empty(&self) -> bool {
        self.drains.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&DrainTarget, &Drain)> {
        self.drains.iter()
    }

    pub fn phase(drain: &Drain, now: Instant) -> Phase {
        if now < drain.deadline {
            Phase::Draining
        } else {
            Phase::DeadlinePassed
        }
    }

    /// How many drains' deadlines have passed at `now`: the control loop
    /// republishes when this changes.
    pub fn passed(&self, now: Instant) -> usize {
        self.drains.values().filter(|d| now >= d.deadline).count()
    }

    /// Why this node does not want traffic, if it is draining.
    pub fn node(&self, now: Instant) -> Option<String> {
        self.drains.get(&DrainTarget::Node).map(|d| {
            let left = d.deadline.saturating_duration_since(now).as_secs();
            format!("the node is draining ({left} s to its deadline)")
        })
    }

    /// Whether a backend at `addr:port` is being drained, and how far.
    pub fn of(&self, addr: IpAddr, port: u16, now: Instant) -> Option<Phase> {
        self.drains
            .iter()
            .filter(|(t, _)| t.covers(addr, port))
            .map(|(_, d)| Self::phase(d, now))
            // A passed deadline wins over a running one for the same backend.
            .max_by_key(|p| *p == Phase::DeadlinePassed)
    }

    /// The published form of `spec`: draining backends at weight 0,
    /// those past their deadline left out. Unless no backend of positive
    /// weight would be left: then the spec is published as it is (its
    /// drained endpoints still take new clients, rather than none being
    /// served, as Kubernetes falls back to terminating endpoints).
    pub fn apply(&self, spec: &mut ServicePortSpec, now: Instant) {
        if self.drains.is_empty() {
            return;
        }
        let undrained = spec
            .backends
            .iter()
            .any(|b| b.weight > 0 && self.of(b.addr, b.port, now).is_none());
        if !undrained {
            return;
        }
        spec.backends
            .retain(|b| self.of(b.addr, b.port, now) != Some(Phase::DeadlinePassed));
        for b in &mut spec.backends {
            if self.of(b.addr, b.port, now) == Some(Phase::Draining) {
                b.weight = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use limpet_dataplane::snapshot::{Affinity, Backend, ForwardMode};
    use limpet_dataplane::wire::MacAddr;

    fn spec(addrs: &[&str]) -> ServicePortSpec {
        ServicePortSpec {
            id: 1,
            name: "default/web:80/TCP".into(),
            protocol: 6,
            affinity: Affinity::client_ip(600),
            mode: ForwardMode::Nat,
            frontends: vec![("192.0.2.10".parse().unwrap(), 80)],
            backends: addrs
                .iter()
                .enumerate()
                .map(|(i, a)| Backend {
                    id: i as u32 + 1,
                    addr: a.parse().unwrap(),
                    port: 9376,
                    weight: 1,
                    mac: MacAddr::UNSPECIFIED,
                    iface: 0,
                })
                .collect(),
            maglev_size: None,
            source_ranges: None,
        }
    }

    fn weights(spec: &ServicePortSpec) -> Vec<(String, u32)> {
        spec.backends
            .iter()
            .map(|b| (b.addr.to_string(), b.weight))
            .collect()
    }

    #[test]
    fn targets_parse_and_print_as_operators_write_them() {
        for s in [
            "node",
            "203.0.113.11",
            "203.0.113.11:9376",
            "2001:db8::11",
            "[2001:db8::11]:9376",
        ] {
            assert_eq!(s.parse::<DrainTarget>().unwrap().to_string(), s);
        }
        assert!("pod-1".parse::<DrainTarget>().is_err());
        let t: DrainTarget = "203.0.113.11".parse().unwrap();
        assert!(t.covers("203.0.113.11".parse().unwrap(), 80));
        let t: DrainTarget = "203.0.113.11:9376".parse().unwrap();
        assert!(!t.covers("203.0.113.11".parse().unwrap(), 80));
        assert_eq!(parse_duration("300s"), Ok(Duration::from_mins(5)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_mins(5)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 minutes").is_err());
    }

    #[test]
    fn draining_weighs_zero_then_leaves_and_never_empties_a_service() {
        let now = Instant::now();
        let mut drains = Drains::default();
        drains.start("203.0.113.11".parse().unwrap(), Duration::from_mins(1), now);
        let mut s = spec(&["203.0.113.11", "203.0.113.12"]);
        drains.apply(&mut s, now);
        assert_eq!(
            weights(&s),
            [("203.0.113.11".into(), 0), ("203.0.113.12".into(), 1)]
        );
        let later = now + Duration::from_secs(61);
        let mut s = spec(&["203.0.113.11", "203.0.113.12"]);
        drains.apply(&mut s, later);
        assert_eq!(weights(&s), [("203.0.113.12".into(), 1)]);
        assert_eq!(drains.passed(later), 1);

        // Its only endpoint draining, or past its deadline: it keeps
        // taking new clients.
        for t in [now, later] {
            let mut s = spec(&["203.0.113.11"]);
            drains.apply(&mut s, t);
            assert_eq!(weights(&s), [("203.0.113.11".into(), 1)]);
        }

        let g = drains.generation();
        assert!(drains.cancel("203.0.113.11".parse().unwrap()));
        assert!(drains.generation() > g);
        let mut s = spec(&["203.0.113.11", "203.0.113.12"]);
        drains.apply(&mut s, later);
        assert_eq!(weights(&s).len(), 2);
        assert!(drains.node(now).is_none());
        drains.start(DrainTarget::Node, Duration::from_secs(30), now);
        assert!(drains.node(now).unwrap().contains("draining"));
    }
}
