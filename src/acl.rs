//! Who may do what: Consul's ACL model, as pure logic.
//!
//! - A **policy** is a set of [`Rules`] on `key`, `key_prefix`, `session`,
//!   `session_prefix` and `operator`, each `read`, `write`, `list` (keys
//!   only) or `deny`, written in Consul's JSON form.
//! - A **token** links policies; its secret is stored only as a SHA-256
//!   hash ([`hash_secret`]). The anonymous token's policies apply to
//!   requests that present no token.
//! - An [`Authorizer`] answers one question at a time: may this token read
//!   this key, write under this prefix, create a session on this node?
//!
//! **Precedence**, as Consul's: an exact `key` (or `session`) rule wins over
//! any prefix; otherwise the longest matching prefix wins; when no rule
//! speaks of a name, `default_policy` decides. Where two policies of one
//! token name the same key or prefix, `deny` wins, then the broader right.
//!
//! Tokens and policies are rows under [`ACL_PREFIX`] in the replicated store
//! (so they travel in snapshots and backups). What a node keeps of them
//! between requests ([`crate::http::acl::AclCache`]) is dropped as soon as
//! an ACL write applies there: nothing outlives a revocation.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The rows of the ACL system, under the cluster's reserved prefix.
pub const ACL_PREFIX: &str = "__quorumd/acl/";
/// Set once by the bootstrap: its `ModifyIndex` is the reset index.
pub const BOOTSTRAP_KEY: &str = "__quorumd/acl/bootstrap";
/// `<accessor>` → [`TokenRecord`] as JSON.
pub const TOKEN_PREFIX: &str = "__quorumd/acl/token/";
/// `<sha256 of the secret, hex>` → the token's accessor.
pub const SECRET_PREFIX: &str = "__quorumd/acl/secret/";
/// `<id>` → [`PolicyRecord`] as JSON.
pub const POLICY_PREFIX: &str = "__quorumd/acl/policy/";
/// `<name>` → the policy's id: names are unique.
pub const POLICY_NAME_PREFIX: &str = "__quorumd/acl/policy-name/";

/// Consul's built-in management policy: every right.
pub const MANAGEMENT_POLICY_ID: &str = "00000000-0000-0000-0000-000000000001";
/// Its name.
pub const MANAGEMENT_POLICY_NAME: &str = "global-management";
/// Consul's anonymous token: what a request without a token may do.
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
/// The secret Consul gives the anonymous token; presenting it is the same
/// as presenting none.
pub const ANONYMOUS_SECRET: &str = "anonymous";
/// Longest rules text a policy may hold.
pub const MAX_RULES_BYTES: usize = 64 * 1024;

/// A right, from none to every one. `List` applies to keys only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Nothing, whatever a broader rule allows.
    Deny,
    /// List keys (not read their values).
    List,
    /// Read (and list).
    Read,
    /// Read and write.
    Write,
}

impl Access {
    fn parse(text: &str) -> Option<Access> {
        match text {
            "deny" => Some(Access::Deny),
            "list" => Some(Access::List),
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            _ => None,
        }
    }

    /// True if a rule of this level grants `want`.
    pub fn grants(self, want: Access) -> bool {
        self != Access::Deny && self >= want
    }

    /// Two policies' rules on the same name: `deny` wins, then the broader.
    fn merge(self, other: Access) -> Access {
        if self == Access::Deny || other == Access::Deny {
            Access::Deny
        } else {
            self.max(other)
        }
    }
}

/// The rules of one policy, or of every policy of a token merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    key: BTreeMap<String, Access>,
    key_prefix: BTreeMap<String, Access>,
    session: BTreeMap<String, Access>,
    session_prefix: BTreeMap<String, Access>,
    operator: Option<Access>,
}

/// Consul's other resources: accepted in a policy's rules (so policies
/// written for Consul load) and ignored, since quorumd serves none of them.
const IGNORED_RESOURCES: [&str; 17] = [
    "acl",
    "agent",
    "agent_prefix",
    "event",
    "event_prefix",
    "identity",
    "identity_prefix",
    "keyring",
    "mesh",
    "node",
    "node_prefix",
    "peering",
    "query",
    "query_prefix",
    "service",
    "service_prefix",
    "partition_prefix",
];

impl Rules {
    /// Parses rules in Consul's JSON form, e.g.
    /// `{"key_prefix": {"devices/a/": {"policy": "write"}}, "operator": "read"}`.
    /// The empty string is a policy without rules. `Err` names the problem.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let mut rules = Rules::default();
        if text.trim().is_empty() {
            return Ok(rules);
        }
        if text.len() > MAX_RULES_BYTES {
            return Err(format!(
                "the rules are {} bytes long; the limit is {MAX_RULES_BYTES}",
                text.len()
            ));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            format!(
                "the rules must be Consul's JSON form (quorumd does not read HCL), e.g. \
                 {{\"key_prefix\": {{\"app/\": {{\"policy\": \"read\"}}}}}}: {e}"
            )
        })?;
        let Value::Object(top) = value else {
            return Err("the rules must be a JSON object".to_string());
        };
        for (resource, body) in top {
            let map = match resource.as_str() {
                "key" => &mut rules.key,
                "key_prefix" => &mut rules.key_prefix,
                "session" => &mut rules.session,
                "session_prefix" => &mut rules.session_prefix,
                "operator" => {
                    let level = body
                        .as_str()
                        .and_then(Access::parse)
                        .filter(|a| *a != Access::List);
                    match level {
                        Some(a) => rules.operator = Some(a),
                        None => {
                            return Err(format!(
                                "operator must be \"read\", \"write\" or \"deny\", not {body}"
                            ))
                        }
                    }
                    continue;
                }
                r if IGNORED_RESOURCES.contains(&r) => continue,
                other => {
                    return Err(format!(
                        "unknown resource {other:?}: the rules speak of key, key_prefix, \
                         session, session_prefix and operator"
                    ))
                }
            };
            let keys_only = resource.starts_with("key");
            for (name, level) in named_levels(&resource, &body)? {
                let access = Access::parse(&level)
                    .filter(|a| keys_only || *a != Access::List)
                    .ok_or_else(|| {
                        let allowed = if keys_only {
                            "\"read\", \"write\", \"list\" or \"deny\""
                        } else {
                            "\"read\", \"write\" or \"deny\""
                        };
                        format!("{resource} {name:?}: the policy must be {allowed}, not {level:?}")
                    })?;
                let slot = map.entry(name).or_insert(access);
                *slot = slot.merge(access);
            }
        }
        Ok(rules)
    }

    /// Adds another policy's rules to these.
    pub fn merge(&mut self, other: Rules) {
        for (mine, theirs) in [
            (&mut self.key, other.key),
            (&mut self.key_prefix, other.key_prefix),
            (&mut self.session, other.session),
            (&mut self.session_prefix, other.session_prefix),
        ] {
            for (name, access) in theirs {
                let slot = mine.entry(name).or_insert(access);
                *slot = slot.merge(access);
            }
        }
        self.operator = match (self.operator, other.operator) {
            (Some(a), Some(b)) => Some(a.merge(b)),
            (a, b) => a.or(b),
        };
    }
}

/// `{"name": {"policy": "read"}}` (or HCL's JSON list form,
/// `[{"name": [{"policy": "read"}]}]`) as (name, level) pairs.
fn named_levels(resource: &str, body: &Value) -> Result<Vec<(String, String)>, String> {
    let bad = || {
        format!(
            "{resource} must map names to {{\"policy\": \"read\"}}-style objects, e.g. \
             {{\"{resource}\": {{\"app/\": {{\"policy\": \"read\"}}}}}}"
        )
    };
    let objects: Vec<&serde_json::Map<String, Value>> = match body {
        Value::Object(m) => vec![m],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_object().ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    let mut out = Vec::new();
    for map in objects {
        for (name, rule) in map {
            let rule = match rule {
                Value::Array(a) if a.len() == 1 => &a[0],
                other => other,
            };
            let level = rule.get("policy").and_then(Value::as_str).ok_or_else(bad)?;
            if let Some(extra) = rule
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "policy"))
            {
                return Err(format!(
                    "{resource} {name:?}: unknown field {extra:?} (only \"policy\")"
                ));
            }
            out.push((name.clone(), level.to_string()));
        }
    }
    Ok(out)
}

/// The rule that governs `name`: its exact rule, else its longest prefix.
fn lookup(
    exact: &BTreeMap<String, Access>,
    prefixes: &BTreeMap<String, Access>,
    name: &str,
) -> Option<Access> {
    if let Some(a) = exact.get(name) {
        return Some(*a);
    }
    prefixes
        .iter()
        .filter(|(p, _)| name.starts_with(p.as_str()))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, a)| *a)
}

/// What one request's token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorizer {
    /// The token's accessor (the anonymous token's, without one).
    pub accessor: String,
    /// When the token stops working, if ever.
    pub expires: Option<SystemTime>,
    management: bool,
    rules: Rules,
    default_allow: bool,
}

impl Authorizer {
    /// Every right: ACLs are off.
    pub fn allow_all() -> Authorizer {
        Authorizer {
            accessor: String::new(),
            expires: None,
            management: true,
            rules: Rules::default(),
            default_allow: true,
        }
    }

    /// A token linked to the management policy.
    pub fn management(accessor: &str) -> Authorizer {
        Authorizer {
            accessor: accessor.to_string(),
            ..Authorizer::allow_all()
        }
    }

    /// A token with these (merged) rules.
    pub fn with_rules(accessor: &str, rules: Rules, default_allow: bool) -> Authorizer {
        Authorizer {
            accessor: accessor.to_string(),
            expires: None,
            management: false,
            rules,
            default_allow,
        }
    }

    /// True once `now` has reached the token's expiration time.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }

    /// True for a management token (the ACL routes need one).
    pub fn is_management(&self) -> bool {
        self.management
    }

    fn decide(&self, rule: Option<Access>, want: Access) -> bool {
        if self.management {
            return true;
        }
        match rule {
            Some(level) => level.grants(want),
            None => self.default_allow,
        }
    }

    /// May the token read `key`'s value?
    pub fn key_read(&self, key: &str) -> bool {
        self.key(key, Access::Read)
    }

    /// May the token see that `key` exists (`?keys`)?
    pub fn key_list(&self, key: &str) -> bool {
        self.key(key, Access::List)
    }

    /// May the token write `key`?
    pub fn key_write(&self, key: &str) -> bool {
        self.key(key, Access::Write)
    }

    /// `want` on `key`, by the rule that governs it.
    pub fn key(&self, key: &str, want: Access) -> bool {
        self.decide(lookup(&self.rules.key, &self.rules.key_prefix, key), want)
    }

    /// May the token write everything under `prefix` (a recursive delete)?
    /// The rule governing `prefix` must allow writes, and so must every
    /// more specific rule under it.
    pub fn key_write_prefix(&self, prefix: &str) -> bool {
        self.key_prefix_all(prefix, Access::Write)
    }

    /// May the token read everything under `prefix` (a transaction's
    /// `get-tree`, which is not filtered)?
    pub fn key_read_prefix(&self, prefix: &str) -> bool {
        self.key_prefix_all(prefix, Access::Read)
    }

    /// `want` on the rule governing `prefix` and on every more specific
    /// rule under it.
    fn key_prefix_all(&self, prefix: &str, want: Access) -> bool {
        if self.management {
            return true;
        }
        if !self.key(prefix, want) {
            return false;
        }
        let narrower = |map: &BTreeMap<String, Access>| {
            map.iter()
                .filter(|(name, _)| name.starts_with(prefix) && name.len() > prefix.len())
                .all(|(_, a)| a.grants(want))
        };
        narrower(&self.rules.key) && narrower(&self.rules.key_prefix)
    }

    /// `want` (`Read` or `Write`) on sessions of node `node`: creating,
    /// renewing or destroying one needs `Write`, reading one `Read`.
    pub fn session(&self, node: &str, want: Access) -> bool {
        self.decide(
            lookup(&self.rules.session, &self.rules.session_prefix, node),
            want,
        )
    }

    /// `want` (`Read` or `Write`) on the cluster's operation: membership
    /// changes need `Write`, the status `Read`.
    pub fn operator(&self, want: Access) -> bool {
        self.decide(self.rules.operator, want)
    }
}

/// A policy as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// A UUID.
    pub id: String,
    /// Unique.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The rules as the client wrote them (Consul's JSON form).
    #[serde(default)]
    pub rules: String,
}

/// A token as stored: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A UUID: how the ACL API names the token.
    pub accessor: String,
    /// [`hash_secret`] of the secret; empty for the anonymous token.
    pub secret_hash: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The linked policies' ids.
    #[serde(default)]
    pub policies: Vec<String>,
    /// When it was made, RFC 3339.
    #[serde(default)]
    pub create_time: String,
    /// When it stops working, RFC 3339, if ever.
    #[serde(default)]
    pub expiration_time: Option<String>,
}

impl TokenRecord {
    /// True once `now` has reached its expiration time.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expiration_time
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .is_some_and(|at| now >= at)
    }
}

/// Why a token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// No token has this secret, or it expired: Consul's `ACL not found`.
    NotFound,
    /// A stored row cannot be read (the sentence says which).
    Corrupt(String),
}

/// The authorizer of the token whose secret is `secret` (`None`: the
/// anonymous token), reading rows through `get` (a key under
/// [`ACL_PREFIX`] to its value, if present).
pub fn resolve(
    secret: Option<&str>,
    now: SystemTime,
    default_allow: bool,
    get: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Authorizer, ResolveError> {
    let accessor = match secret.filter(|s| !s.is_empty() && *s != ANONYMOUS_SECRET) {
        None => ANONYMOUS_ACCESSOR.to_string(),
        Some(secret) => {
            let row = get(&format!("{SECRET_PREFIX}{}", hash_secret(secret)))
                .ok_or(ResolveError::NotFound)?;
            String::from_utf8(row)
                .map_err(|_| ResolveError::Corrupt("a token's secret row".to_string()))?
        }
    };
    let token = match get(&format!("{TOKEN_PREFIX}{accessor}")) {
        Some(row) => serde_json::from_slice::<TokenRecord>(&row)
            .map_err(|e| ResolveError::Corrupt(format!("token {accessor}: {e}")))?,
        // The anonymous token exists before anyone writes it: no policies.
        None if accessor == ANONYMOUS_ACCESSOR => {
            return Ok(Authorizer::with_rules(
                &accessor,
                Rules::default(),
                default_allow,
            ))
        }
        None => return Err(ResolveError::NotFound),
    };
    if token.expired(now) {
        return Err(ResolveError::NotFound);
    }
    let expires = token
        .expiration_time
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
    let with_expiry = |mut a: Authorizer| {
        a.expires = expires;
        a
    };
    let mut rules = Rules::default();
    for id in &token.policies {
        if id == MANAGEMENT_POLICY_ID {
            return Ok(with_expiry(Authorizer::management(&accessor)));
        }
        // A link to a deleted policy grants nothing, as in Consul.
        let Some(row) = get(&format!("{POLICY_PREFIX}{id}")) else {
            continue;
        };
        let policy: PolicyRecord = serde_json::from_slice(&row)
            .map_err(|e| ResolveError::Corrupt(format!("policy {id}: {e}")))?;
        let parsed = Rules::parse(&policy.rules)
            .map_err(|e| ResolveError::Corrupt(format!("policy {id}: {e}")))?;
        rules.merge(parsed);
    }
    Ok(with_expiry(Authorizer::with_rules(
        &accessor,
        rules,
        default_allow,
    )))
}

/// The SHA-256 of a secret, in lowercase hex: what the store keeps.
pub fn hash_secret(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    hex(digest.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// A random (version 4) UUID, from the system's secure generator.
pub fn new_uuid() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    // The system's generator failing is beyond repair.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random generator works");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// True for a UUID in its usual text form (what accessors, secrets and
/// policy ids must be).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Where a request's token is: `X-Consul-Token`, then
/// `Authorization: Bearer`, then `?token=`, as Consul looks.
pub fn presented_token<'a>(
    consul_header: Option<&'a str>,
    authorization: Option<&'a str>,
    query_token: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|a| {
        let (scheme, rest) = a.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    [consul_header.map(str::trim), bearer, query_token]
        .into_iter()
        .flatten()
        .find(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn authz(rules: &str, default_allow: bool) -> Authorizer {
        Authorizer::with_rules("t", Rules::parse(rules).unwrap(), default_allow)
    }

    #[test]
    fn the_longest_prefix_wins_and_an_exact_key_wins_over_any_prefix() {
        let a = authz(
            r#"{"key_prefix": {"": {"policy": "read"}, "devices/": {"policy": "deny"},
                "devices/a/": {"policy": "write"}},
                "key": {"devices/a/secret": {"policy": "deny"}, "devices/b/open": {"policy": "read"}}}"#,
            false,
        );
        assert!(a.key_write("devices/a/t1") && a.key_read("devices/a/t1"));
        assert!(!a.key_read("devices/a/secret"), "the exact key wins");
        assert!(!a.key_read("devices/b/x") && !a.key_write("devices/b/x"));
        assert!(a.key_read("devices/b/open") && !a.key_write("devices/b/open"));
        assert!(a.key_read("config/x") && !a.key_write("config/x"));
        assert!(a.key_list("config/x"));
    }

    #[test]
    fn list_lets_keys_be_seen_but_not_read() {
        let a = authz(r#"{"key_prefix": {"app/": {"policy": "list"}}}"#, false);
        assert!(a.key_list("app/x") && !a.key_read("app/x") && !a.key_write("app/x"));
        assert!(!a.key_list("other"));
    }

    #[test]
    fn default_policy_decides_what_no_rule_speaks_of() {
        let allow = authz(r#"{"key_prefix": {"secret/": {"policy": "deny"}}}"#, true);
        assert!(allow.key_write("any") && allow.operator(Access::Write));
        assert!(!allow.key_read("secret/x"));
        let deny = authz("", false);
        assert!(!deny.key_read("any") && !deny.operator(Access::Read));
        assert!(!deny.session("node1", Access::Read));
    }

    #[test]
    fn a_recursive_delete_needs_write_on_everything_beneath() {
        let a = authz(
            r#"{"key_prefix": {"app/": {"policy": "write"}, "app/locked/": {"policy": "read"}}}"#,
            false,
        );
        assert!(a.key_write_prefix("app/free/"));
        assert!(!a.key_write_prefix("app/"), "app/locked/ lies beneath");
        assert!(!a.key_write_prefix(""), "the root is not writable");
        assert!(a.key_read_prefix("app/") && !a.key_read_prefix(""));
        assert!(Authorizer::management("m").key_write_prefix(""));
    }

    #[test]
    fn operator_and_session_rules() {
        let a = authz(
            r#"{"operator": "read", "session_prefix": {"": {"policy": "read"}, "edge-": {"policy": "write"}},
                "session": {"edge-9": {"policy": "deny"}}}"#,
            false,
        );
        assert!(a.operator(Access::Read) && !a.operator(Access::Write));
        assert!(a.session("edge-1", Access::Write));
        assert!(!a.session("edge-9", Access::Read));
        assert!(a.session("core-1", Access::Read) && !a.session("core-1", Access::Write));
    }

    #[test]
    fn policies_merge_with_deny_first_then_the_broader_right() {
        let mut r = Rules::parse(
            r#"{"key_prefix": {"a/": {"policy": "read"}, "b/": {"policy": "write"}}}"#,
        )
        .unwrap();
        r.merge(
            Rules::parse(
                r#"{"key_prefix": {"a/": {"policy": "write"}, "b/": {"policy": "deny"}}, "operator": "write"}"#,
            )
            .unwrap(),
        );
        let a = Authorizer::with_rules("t", r, true);
        assert!(a.key_write("a/x"));
        assert!(!a.key_read("b/x"));
        assert!(a.operator(Access::Write));
    }

    #[test]
    fn bad_rules_name_the_problem() {
        let e = |t: &str| Rules::parse(t).unwrap_err();
        assert!(e(r#"key_prefix "a/" { policy = "read" }"#).contains("JSON form"));
        assert!(e(r#"{"key": {"a": {"policy": "sometimes"}}}"#).contains("\"sometimes\""));
        assert!(e(r#"{"session": {"n": {"policy": "list"}}}"#).contains("session"));
        assert!(e(r#"{"operator": "list"}"#).contains("operator"));
        assert!(e(r#"{"keys": {}}"#).contains("unknown resource \"keys\""));
        assert!(
            e(r#"{"key": {"a": {"policy": "read", "intentions": "x"}}}"#).contains("intentions")
        );
        assert!(e(r#"{"key": "read"}"#).contains("key must map"));
        assert!(e("[1]").contains("object"));
        // Consul's other resources load and mean nothing here; HCL's JSON
        // list form is read too.
        let r = Rules::parse(
            r#"{"service_prefix": {"": {"policy": "read"}},
                "key_prefix": [{"x/": [{"policy": "write"}]}]}"#,
        )
        .unwrap();
        assert!(Authorizer::with_rules("t", r, false).key_write("x/1"));
    }

    fn store(rows: &[(&str, String)]) -> HashMap<String, Vec<u8>> {
        rows.iter()
            .map(|(k, v)| (k.to_string(), v.clone().into_bytes()))
            .collect()
    }

    #[test]
    fn tokens_resolve_through_hashed_secrets_and_expire() {
        let now = SystemTime::now();
        let policy = PolicyRecord {
            id: "p1".into(),
            name: "gw".into(),
            description: String::new(),
            rules: r#"{"key_prefix": {"devices/a/": {"policy": "write"}}}"#.into(),
        };
        let token = |accessor: &str, policies: &[&str], expiration: Option<String>| TokenRecord {
            accessor: accessor.into(),
            secret_hash: String::new(),
            description: String::new(),
            policies: policies.iter().map(|s| s.to_string()).collect(),
            create_time: String::new(),
            expiration_time: expiration,
        };
        let past = humantime::format_rfc3339(now - Duration::from_secs(1)).to_string();
        let future = humantime::format_rfc3339(now + Duration::from_secs(60)).to_string();
        let rows = store(&[
            (
                &format!("{POLICY_PREFIX}p1"),
                serde_json::to_string(&policy).unwrap(),
            ),
            (
                &format!("{SECRET_PREFIX}{}", hash_secret("s-gw")),
                "a-gw".into(),
            ),
            (
                &format!("{TOKEN_PREFIX}a-gw"),
                serde_json::to_string(&token("a-gw", &["p1", "gone"], Some(future))).unwrap(),
            ),
            (
                &format!("{SECRET_PREFIX}{}", hash_secret("s-old")),
                "a-old".into(),
            ),
            (
                &format!("{TOKEN_PREFIX}a-old"),
                serde_json::to_string(&token("a-old", &["p1"], Some(past))).unwrap(),
            ),
            (
                &format!("{SECRET_PREFIX}{}", hash_secret("s-root")),
                "a-root".into(),
            ),
            (
                &format!("{TOKEN_PREFIX}a-root"),
                serde_json::to_string(&token("a-root", &[MANAGEMENT_POLICY_ID], None)).unwrap(),
            ),
        ]);
        let get = |k: &str| rows.get(k).cloned();
        let gw = resolve(Some("s-gw"), now, false, get).unwrap();
        assert_eq!(gw.accessor, "a-gw");
        assert!(gw.key_write("devices/a/1") && !gw.key_write("devices/b/1"));
        assert!(!gw.is_management());
        assert_eq!(
            resolve(Some("s-old"), now, true, get),
            Err(ResolveError::NotFound)
        );
        assert_eq!(
            resolve(Some("nope"), now, true, get),
            Err(ResolveError::NotFound)
        );
        assert!(resolve(Some("s-root"), now, false, get)
            .unwrap()
            .is_management());
        let anon = resolve(None, now, false, get).unwrap();
        assert_eq!(anon.accessor, ANONYMOUS_ACCESSOR);
        assert!(!anon.key_read("x"));
        assert!(resolve(Some(ANONYMOUS_SECRET), now, true, get)
            .unwrap()
            .key_write("x"));
    }

    #[test]
    fn secrets_hash_and_uuids_look_like_uuids() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let u = new_uuid();
        assert!(is_uuid(&u), "{u}");
        assert_ne!(u, new_uuid());
        assert!(!is_uuid("not-a-uuid") && !is_uuid(&"g".repeat(36)));
    }

    #[test]
    fn tokens_are_looked_for_where_consul_looks() {
        assert_eq!(
            presented_token(Some("a"), Some("Bearer b"), Some("c")),
            Some("a")
        );
        assert_eq!(
            presented_token(None, Some("bearer  b "), Some("c")),
            Some("b")
        );
        assert_eq!(presented_token(None, Some("Basic x"), Some("c")), Some("c"));
        assert_eq!(presented_token(Some(""), None, None), None);
    }
}
