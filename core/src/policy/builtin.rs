//! The built-in policy: what Weir decides when no plugin does, and the fallback after a fault.
//! Allocation is [`crate::ipam`]; the firewall allows everything (today's open overlay); the
//! router keeps every pair on the hub and NATs at the runner.

use crate::decision::{Egress, FirewallDecision, PathKind, RouteDecision, RouteRequest, Verdict};

pub fn firewall() -> FirewallDecision {
    FirewallDecision {
        rules: Vec::new(),
        default_verdict: Verdict::Allow,
    }
}

pub fn route(req: &RouteRequest) -> RouteDecision {
    RouteDecision {
        peers: req
            .peers
            .iter()
            .map(|p| (p.name.clone(), PathKind::ViaHub))
            .collect(),
        egress: Egress::RunnerNat,
    }
}
