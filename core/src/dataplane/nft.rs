//! Weir's own nftables tables, described as data and replaced atomically.
//!
//! Weir never edits another owner's table. A table is replaced in one transaction
//! (`add table; delete table; add table …`): `flush table` would keep stale sets and chains.
//! The `nftables` crate drives the `nft` binary with JSON; the daemon already runs in the
//! namespace it configures, so no namespace switching is needed here.

use std::borrow::Cow;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::{DataplaneError, Result};

/// The family of every Weir table: one table covers IPv4 (and later IPv6) forwarding and NAT.
pub const FAMILY: NfFamily = NfFamily::INet;

/// A condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    SaddrIn(Ipv4Net),
    DaddrIn(Ipv4Net),
    DaddrNotIn(Ipv4Net),
    Iifname(String),
    Oifname(String),
    OifnameNot(String),
    /// Source address not in the named set.
    SaddrNotInSet(String),
    UdpDport(u16),
}

/// What a rule does when its conditions hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Masquerade,
    /// Count in the named counter and drop.
    CountDrop(&'static str),
    /// Skip connection tracking (raw chains): traffic no stateful rule or NAT needs.
    NoTrack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub conds: Vec<Cond>,
    pub action: Action,
    pub comment: Option<String>,
}

impl RuleSpec {
    pub fn new(conds: Vec<Cond>, action: Action, comment: &str) -> Self {
        Self {
            conds,
            action,
            comment: Some(comment.to_string()),
        }
    }
}

/// A base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: String,
    pub kind: NfChainType,
    pub hook: NfHook,
    pub priority: i32,
    pub rules: Vec<RuleSpec>,
}

impl ChainSpec {
    /// A filter chain on the forward hook that lets everything else through (policy accept).
    pub fn forward(rules: Vec<RuleSpec>) -> Self {
        Self {
            name: "forward".into(),
            kind: NfChainType::Filter,
            hook: NfHook::Forward,
            priority: 0,
            rules,
        }
    }
    /// A filter chain on the input hook (policy accept).
    pub fn input(rules: Vec<RuleSpec>) -> Self {
        Self {
            name: "input".into(),
            kind: NfChainType::Filter,
            hook: NfHook::Input,
            priority: 0,
            rules,
        }
    }
    /// A raw chain on the prerouting hook (before connection tracking).
    pub fn raw_prerouting(rules: Vec<RuleSpec>) -> Self {
        Self {
            name: "raw_prerouting".into(),
            kind: NfChainType::Filter,
            hook: NfHook::Prerouting,
            priority: -300,
            rules,
        }
    }
    /// A raw chain on the output hook (before connection tracking).
    pub fn raw_output(rules: Vec<RuleSpec>) -> Self {
        Self {
            name: "raw_output".into(),
            kind: NfChainType::Filter,
            hook: NfHook::Output,
            priority: -300,
            rules,
        }
    }
    /// A source-NAT chain on the postrouting hook.
    pub fn postrouting(rules: Vec<RuleSpec>) -> Self {
        Self {
            name: "postrouting".into(),
            kind: NfChainType::NAT,
            hook: NfHook::Postrouting,
            priority: 100,
            rules,
        }
    }
}

/// A named set of IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub elements: Vec<std::net::Ipv4Addr>,
}

/// A whole table as Weir wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub name: String,
    pub chains: Vec<ChainSpec>,
    pub sets: Vec<SetSpec>,
    pub counters: Vec<&'static str>,
}

impl TableSpec {
    /// How many rules the table holds.
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }

    fn batch(&self) -> Batch<'static> {
        let table = Table {
            family: FAMILY,
            name: Cow::Owned(self.name.clone()),
            handle: None,
        };
        let mut batch = Batch::new();
        // add + delete + add: replaces the table whether or not it existed, atomically.
        batch.add(NfListObject::Table(table.clone()));
        batch.delete(NfListObject::Table(table.clone()));
        batch.add(NfListObject::Table(table));
        for c in &self.counters {
            batch.add(NfListObject::Counter(nftables::schema::Counter {
                family: FAMILY,
                table: Cow::Owned(self.name.clone()),
                name: Cow::Borrowed(c),
                handle: None,
                packets: None,
                bytes: None,
            }));
        }
        for s in &self.sets {
            let elem: Vec<Expression<'static>> = s
                .elements
                .iter()
                .map(|a| Expression::String(Cow::Owned(a.to_string())))
                .collect();
            batch.add(NfListObject::Set(Box::new(nftables::schema::Set {
                family: FAMILY,
                table: Cow::Owned(self.name.clone()),
                name: Cow::Owned(s.name.clone()),
                set_type: nftables::schema::SetTypeValue::Single(
                    nftables::schema::SetType::Ipv4Addr,
                ),
                elem: (!elem.is_empty()).then(|| Cow::Owned(elem)),
                ..nftables::schema::Set::default()
            })));
        }
        for chain in &self.chains {
            batch.add(NfListObject::Chain(Chain {
                family: FAMILY,
                table: Cow::Owned(self.name.clone()),
                name: Cow::Owned(chain.name.clone()),
                _type: Some(chain.kind),
                hook: Some(chain.hook),
                prio: Some(chain.priority),
                policy: Some(NfChainPolicy::Accept),
                ..Chain::default()
            }));
            for rule in &chain.rules {
                batch.add(NfListObject::Rule(Rule {
                    family: FAMILY,
                    table: Cow::Owned(self.name.clone()),
                    chain: Cow::Owned(chain.name.clone()),
                    expr: Cow::Owned(statements(rule)),
                    comment: rule.comment.clone().map(Cow::Owned),
                    ..Rule::default()
                }));
            }
        }
        batch
    }
}

fn statements(rule: &RuleSpec) -> Vec<Statement<'static>> {
    let mut out: Vec<Statement<'static>> = rule.conds.iter().map(cond).collect();
    match rule.action {
        Action::Accept => {
            out.push(Statement::Counter(Counter::Anonymous(None)));
            out.push(Statement::Accept(None));
        }
        Action::Masquerade => {
            out.push(Statement::Counter(Counter::Anonymous(None)));
            out.push(Statement::Masquerade(None));
        }
        Action::CountDrop(name) => {
            out.push(Statement::Counter(Counter::Named(Cow::Borrowed(name))));
            out.push(Statement::Drop(None));
        }
        Action::NoTrack => out.push(Statement::Notrack),
    }
    out
}

fn cond(c: &Cond) -> Statement<'static> {
    let ip = |field: &'static str| {
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: Cow::Borrowed("ip"),
                field: Cow::Borrowed(field),
            },
        )))
    };
    let prefix = |net: &Ipv4Net| {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
            len: u32::from(net.prefix_len()),
        }))
    };
    let meta = |key| Expression::Named(NamedExpression::Meta(Meta { key }));
    let (left, right, op) = match c {
        Cond::SaddrIn(n) => (ip("saddr"), prefix(n), Operator::EQ),
        Cond::DaddrIn(n) => (ip("daddr"), prefix(n), Operator::EQ),
        Cond::DaddrNotIn(n) => (ip("daddr"), prefix(n), Operator::NEQ),
        Cond::Iifname(i) => (
            meta(MetaKey::Iifname),
            Expression::String(Cow::Owned(i.clone())),
            Operator::EQ,
        ),
        Cond::Oifname(i) => (
            meta(MetaKey::Oifname),
            Expression::String(Cow::Owned(i.clone())),
            Operator::EQ,
        ),
        Cond::OifnameNot(i) => (
            meta(MetaKey::Oifname),
            Expression::String(Cow::Owned(i.clone())),
            Operator::NEQ,
        ),
        Cond::SaddrNotInSet(s) => (
            ip("saddr"),
            Expression::String(Cow::Owned(format!("@{s}"))),
            Operator::NEQ,
        ),
        Cond::UdpDport(port) => (
            Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                PayloadField {
                    protocol: Cow::Borrowed("udp"),
                    field: Cow::Borrowed("dport"),
                },
            ))),
            Expression::Number(u32::from(*port)),
            Operator::EQ,
        ),
    };
    Statement::Match(Match { left, right, op })
}

/// The `nftables` crate writes the `notrack` statement as the string `"notrack"`; `nft`
/// wants `{"notrack": null}`.
fn fix_notrack(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Array(items) => {
            for item in items {
                if item.as_str() == Some("notrack") {
                    *item = serde_json::json!({ "notrack": null });
                } else {
                    fix_notrack(item);
                }
            }
        }
        serde_json::Value::Object(map) => map.values_mut().for_each(fix_notrack),
        _ => {}
    }
}

/// Replace the table atomically with `spec`. Runs `nft` on a blocking thread.
pub async fn apply(spec: &TableSpec) -> Result<()> {
    crate::telemetry::kernel("nftables.apply", async {
        let name = spec.name.clone();
        let mut json = serde_json::to_value(spec.batch().to_nftables())
            .map_err(|e| DataplaneError::Nft(format!("encode table {name}: {e}")))?;
        fix_notrack(&mut json);
        let payload = json.to_string();
        tokio::task::spawn_blocking(move || {
            nftables::helper::apply_ruleset_raw(&payload, None::<&str>, std::iter::empty::<&str>())
        })
        .await
        .map_err(|e| DataplaneError::Nft(format!("apply table {name}: {e}")))?
        .map(|_| ())
        .map_err(|e| DataplaneError::Nft(format!("apply table {name}: {}", nft_error(e))))
    })
    .await
}

/// Apply an `nft -f` script (one transaction). For tables whose text form is clearer than the
/// JSON schema (the firewall); runs on a blocking thread.
pub async fn apply_script(script: &str) -> Result<()> {
    crate::telemetry::kernel("nftables.script", async {
        let script = script.to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::io::Write;
            let mut child = std::process::Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| {
                    DataplaneError::Nft(if e.kind() == std::io::ErrorKind::NotFound {
                        "the nft program is not installed (Debian package nftables)".into()
                    } else {
                        format!("run nft: {e}")
                    })
                })?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(script.as_bytes())
                    .map_err(|e| DataplaneError::Nft(format!("write to nft: {e}")))?;
            }
            let out = child
                .wait_with_output()
                .map_err(|e| DataplaneError::Nft(format!("wait for nft: {e}")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(DataplaneError::Nft(format!(
                    "nft refused the script: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        })
        .await
        .map_err(|e| DataplaneError::Nft(format!("nft task: {e}")))?
    })
    .await
}

/// Delete Weir's table `name` if it exists.
pub async fn delete(name: &str) -> Result<()> {
    crate::telemetry::kernel("nftables.delete", async {
        let table = Table {
            family: FAMILY,
            name: Cow::Owned(name.to_string()),
            handle: None,
        };
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(table.clone()));
        batch.delete(NfListObject::Table(table));
        let nft = batch.to_nftables();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || nftables::helper::apply_ruleset(&nft))
            .await
            .map_err(|e| DataplaneError::Nft(format!("delete table {name}: {e}")))?
            .map_err(|e| DataplaneError::Nft(format!("delete table {name}: {}", nft_error(e))))
    })
    .await
}

fn nft_error(e: nftables::helper::NftablesError) -> String {
    match e {
        nftables::helper::NftablesError::NftExecution { inner, .. }
            if inner.kind() == std::io::ErrorKind::NotFound =>
        {
            "the nft program is not installed (Debian package nftables)".into()
        }
        other => other.to_string(),
    }
}
