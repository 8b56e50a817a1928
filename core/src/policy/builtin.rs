//! The built-in policy: what Weir decides when no plugin does, and the fallback after a fault.
//! Allocation is [`crate::ipam`]; the firewall allows everything (today's open overlay); the
//! router keeps every pair on the hub and NATs at the runner.

use crate::decision::{Egress, FirewallDecision, RouteDelta, RouteRequest, Verdict};

pub fn firewall() -> FirewallDecision {
    FirewallDecision {
        rules: Vec::new(),
        default_verdict: Verdict::Allow,
    }
}

/// Every path via the hub (a new peer starts there), egress at the runner.
pub fn route(req: &RouteRequest) -> RouteDelta {
    RouteDelta {
        paths: Vec::new(),
        egress: matches!(req.change, crate::decision::RouteChange::Joined)
            .then_some(Egress::RunnerNat),
    }
}
