//! Machine groups (`[machine]` in conf.ini), gocron-compatible: `name = member|member|...`.
//!
//! A member is an IP address (every executor advertising that IP), an `ip:port` (exactly one
//! executor) or an executor name. A job's `machine` column names a group; empty means any executor.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// One member of a machine group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// Every executor whose advertised address has this IP.
    Ip(IpAddr),
    /// The executor advertising exactly this address.
    Addr(SocketAddr),
    /// The executor with this name.
    Name(String),
}

impl Member {
    /// Parses one member; the empty string is refused.
    pub fn parse(text: &str) -> Result<Member, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty member (look for a doubled or trailing |)".to_owned());
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Member::Addr(addr));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Member::Ip(ip));
        }
        if text.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(format!(
                "{text:?} is neither an IP, an ip:port nor an executor name (members are separated by |)"
            ));
        }
        Ok(Member::Name(text.to_owned()))
    }

    /// Whether this member designates the executor `exec`.
    pub fn matches(&self, exec: &ExecutorInfo) -> bool {
        match self {
            Member::Ip(ip) => exec.address.ip() == *ip,
            Member::Addr(addr) => exec.address == *addr,
            Member::Name(name) => exec.name == *name,
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Ip(ip) => ip.fmt(f),
            Member::Addr(addr) => addr.fmt(f),
            Member::Name(name) => name.fmt(f),
        }
    }
}

/// What an executor registers in etcd, and what dispatchers know of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorInfo {
    /// Its unique name.
    pub name: String,
    /// The address dispatchers dial.
    pub address: SocketAddr,
    /// The gocron version it runs.
    pub version: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// A random id of this executor process: a run held by an instance that is no longer
    /// registered is lost (see [`crate::live`]), even if an executor of the same name is back.
    #[serde(default)]
    pub instance: String,
    /// Whether it holds a run handed over before its tick until the tick
    /// ([`crate::rpc::RunRequest::start_at_ms`]). Executors of earlier releases start a run
    /// when they get it, so dispatchers hand them a run only at its tick.
    #[serde(default)]
    pub starts_at_tick: bool,
    /// Whether it takes several runs in one call ([`crate::rpc::ExecutorRpc::start_runs_json`]);
    /// executors of earlier releases are sent one call per run.
    #[serde(default)]
    pub takes_batches: bool,
}

impl ExecutorInfo {
    /// A fresh random instance id.
    pub fn new_instance() -> String {
        format!("{:016x}", rand::random::<u64>())
    }
}

impl fmt::Display for ExecutorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.address)
    }
}

/// All machine groups, by name.
#[derive(Debug, Clone, Default)]
pub struct MachineGroups {
    groups: BTreeMap<String, Vec<Member>>,
}

impl MachineGroups {
    /// Adds group `name` from its `a|b|c` definition.
    pub fn insert(&mut self, name: &str, definition: &str) -> Result<(), String> {
        let members = definition
            .split('|')
            .map(Member::parse)
            .collect::<Result<Vec<_>, _>>()?;
        self.groups.insert(name.to_owned(), members);
        Ok(())
    }

    /// The members of group `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<&[Member]> {
        self.groups.get(name).map(Vec::as_slice)
    }

    /// Whether a job may target `machine`: empty (any executor) or a known group.
    pub fn is_known(&self, machine: &str) -> bool {
        machine.is_empty() || self.groups.contains_key(machine)
    }

    /// The names of all groups.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    /// The executors among `live` that a job with this `machine` may run on, in `live`'s order;
    /// `None` when the group is unknown.
    pub fn select<'a>(
        &self,
        machine: &str,
        live: &'a [ExecutorInfo],
    ) -> Option<Vec<&'a ExecutorInfo>> {
        if machine.is_empty() {
            return Some(live.iter().collect());
        }
        let members = self.groups.get(machine)?;
        Some(
            live.iter()
                .filter(|e| members.iter().any(|m| m.matches(e)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(name: &str, addr: &str) -> ExecutorInfo {
        ExecutorInfo {
            name: name.into(),
            address: addr.parse().unwrap(),
            version: "0".into(),
            started_at: String::new(),
            instance: String::new(),
            starts_at_tick: true,
            takes_batches: true,
        }
    }

    #[test]
    fn members_parse_by_shape() {
        assert_eq!(
            Member::parse("10.0.0.74").unwrap(),
            Member::Ip("10.0.0.74".parse().unwrap())
        );
        assert_eq!(
            Member::parse(" 10.0.0.74:7070 ").unwrap(),
            Member::Addr("10.0.0.74:7070".parse().unwrap())
        );
        assert_eq!(
            Member::parse("cron74").unwrap(),
            Member::Name("cron74".into())
        );
        assert!(Member::parse("").is_err());
        assert!(Member::parse("a b").is_err());
    }

    #[test]
    fn groups_select_by_ip_addr_and_name() {
        let mut groups = MachineGroups::default();
        groups.insert("php", "10.0.0.74|10.0.0.75:7071").unwrap();
        groups.insert("named", "exec-c").unwrap();
        let live = vec![
            exec("exec-a", "10.0.0.74:7070"),
            exec("exec-a2", "10.0.0.74:7071"),
            exec("exec-b", "10.0.0.75:7070"),
            exec("exec-b2", "10.0.0.75:7071"),
            exec("exec-c", "10.0.0.76:7070"),
        ];
        let names = |m: &str| -> Vec<String> {
            groups
                .select(m, &live)
                .unwrap()
                .iter()
                .map(|e| e.name.clone())
                .collect()
        };
        assert_eq!(names("php"), ["exec-a", "exec-a2", "exec-b2"]);
        assert_eq!(names("named"), ["exec-c"]);
        assert_eq!(names("").len(), 5);
        assert!(groups.select("nope", &live).is_none());
        assert!(groups.is_known("") && groups.is_known("php") && !groups.is_known("nope"));
    }
}
