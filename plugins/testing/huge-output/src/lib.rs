//! Test plugin `huge-output`: a firewall answer of 1,000,000 rules (about 60 MB of guest
//! memory at its peak), which the host must refuse or cap.

use weir_plugin_sdk::prelude::*;

/// How many rules the answer carries.
pub const RULES: usize = 1_000_000;

struct HugeOutput;

impl Plugin for HugeOutput {
    fn configure(_config: Config) -> Result<(), String> {
        Ok(())
    }
}

impl Firewall for HugeOutput {
    fn rules(_request: FirewallRequest) -> FirewallDecision {
        FirewallDecision {
            rules: huge(),
            default_verdict: Verdict::Deny,
        }
    }
}

weir_plugin_sdk::export_firewall!(HugeOutput);

/// `RULES` rules, each allowing one tcp port from anyone (ports 1..=65535, round and round).
pub fn huge() -> Vec<Rule> {
    (0..RULES)
        .map(|i| {
            let port = (i % 65535) as u16 + 1;
            Rule {
                direction: Direction::Ingress,
                peer: Peer::Any,
                protocol: Protocol::Tcp,
                ports: vec![PortRange {
                    first: port,
                    last: port,
                }],
                verdict: Verdict::Allow,
            }
        })
        .collect()
}
