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
}

/// What a rule does when its conditions hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Masquerade,
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

/// A whole table as Weir wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub name: String,
    pub chains: Vec<ChainSpec>,
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
    out.push(Statement::Counter(Counter::Anonymous(None)));
    out.push(match rule.action {
        Action::Accept => Statement::Accept(None),
        Action::Masquerade => Statement::Masquerade(None),
    });
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
    };
    Statement::Match(Match { left, right, op })
}

/// Replace the table atomically with `spec`. Runs `nft` on a blocking thread.
pub async fn apply(spec: &TableSpec) -> Result<()> {
    let batch = spec.batch().to_nftables();
    let name = spec.name.clone();
    tokio::task::spawn_blocking(move || nftables::helper::apply_ruleset(&batch))
        .await
        .map_err(|e| DataplaneError::Nft(format!("apply table {name}: {e}")))?
        .map_err(|e| DataplaneError::Nft(format!("apply table {name}: {}", nft_error(e))))
}

/// Delete Weir's table `name` if it exists.
pub async fn delete(name: &str) -> Result<()> {
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
