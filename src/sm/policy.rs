//! The browser's SM middleware (genosdb-data.md §10.4), reproduced decision for
//! decision so the daemon keeps exactly what browsers keep: signed live ops are
//! verified and checked against the role table; envelopes are verified when signed
//! and passed when not; the ops inside deltas and full states are not looked at
//! (§10.6), except under SM_STRICT.
//!
//! Work is split in two: [`check`] verifies a signature and needs nothing else, so it
//! runs without the store lock; [`Policy::decide`] reads roles from the graph as it
//! was before the batch, as browsers do.

use super::date::date_ms;
use super::js::Js;
use super::sig;
use crate::eth;
use crate::store::json::{self, RawObject};
use serde_json::value::RawValue;
use std::collections::HashMap;

/// Why an element was not kept. The names are the metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingFields,
    InvalidAddress,
    AddressMismatch,
    InvalidSignature,
    VerifyError,
    Denied,
    SuperadminGrant,
    Strict,
    Laundered,
    BatchAborted,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::MissingFields,
        Reason::InvalidAddress,
        Reason::AddressMismatch,
        Reason::InvalidSignature,
        Reason::VerifyError,
        Reason::Denied,
        Reason::SuperadminGrant,
        Reason::Strict,
        Reason::Laundered,
        Reason::BatchAborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingFields => "missing-fields",
            Reason::InvalidAddress => "invalid-address",
            Reason::AddressMismatch => "address-mismatch",
            Reason::InvalidSignature => "invalid-signature",
            Reason::VerifyError => "verify-error",
            Reason::Denied => "denied",
            Reason::SuperadminGrant => "superadmin-grant",
            Reason::Strict => "strict",
            Reason::Laundered => "laundered",
            Reason::BatchAborted => "batch-aborted",
        }
    }
}

/// An element after its signature was looked at.
#[derive(Debug, Clone)]
pub enum Checked {
    /// `sync`, or an unsigned envelope: kept as it came.
    Keep,
    /// A signed envelope that verified: kept without its signature fields.
    Envelope,
    /// A live op whose signature verified.
    Op { signer: String, payload: Js },
    Drop {
        reason: Reason,
        signer: Option<String>,
    },
    /// The browser's middleware throws on this element, and loses the whole batch.
    Abort,
}

/// What to do with an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Keep this text instead.
    Rewrite(String),
    Drop {
        reason: Reason,
        signer: Option<String>,
    },
    Abort,
}

const SIG_FIELDS: [&str; 3] = ["signature", "originEthAddress", "originUser"];

/// Looks at an element's signature (§10.4 `verify`), with no graph needed.
pub fn check(raw: &RawValue) -> Checked {
    let Ok(element) = Js::parse(raw.get()) else {
        return Checked::Drop {
            reason: Reason::VerifyError,
            signer: None,
        };
    };
    if element == Js::Null {
        // `w.type` on null throws inside the middleware.
        return Checked::Abort;
    }
    let kind = element.get("type").and_then(Js::as_string);
    match kind.as_deref() {
        Some("sync") => Checked::Keep,
        Some("deltaSync" | "fullStateSync") => {
            if !SIG_FIELDS
                .iter()
                .all(|f| element.get(f).is_some_and(Js::truthy))
            {
                return Checked::Keep;
            }
            match verify(element) {
                Ok(_) => Checked::Envelope,
                Err((reason, signer)) => Checked::Drop { reason, signer },
            }
        }
        _ => match verify(element) {
            Ok((signer, payload)) => Checked::Op { signer, payload },
            Err((reason, signer)) => Checked::Drop { reason, signer },
        },
    }
}

pub type Verified = (String, Js);

/// `verify(w)`: the signer's address, and the element without its three fields.
pub fn verify(mut element: Js) -> Result<Verified, (Reason, Option<String>)> {
    if !SIG_FIELDS
        .iter()
        .all(|f| element.get(f).is_some_and(Js::truthy))
    {
        return Err((Reason::MissingFields, None));
    }
    let claimed = element.get("originEthAddress").and_then(get_address);
    let user = element.get("originUser").and_then(get_address);
    let (Some(address), Some(user)) = (claimed, user) else {
        return Err((Reason::InvalidAddress, None));
    };
    if address != user {
        return Err((Reason::AddressMismatch, Some(address)));
    }
    let Some(signature) = element.get("signature").and_then(Js::as_string) else {
        return Err((Reason::VerifyError, Some(address)));
    };
    element.remove("signature");
    element.remove("originEthAddress");
    let digest = sig::eip191_digest(element.canonical().as_bytes());
    match sig::recover(&digest, &signature) {
        Ok(recovered) if recovered == address => {
            element.remove("originUser");
            Ok((address, element))
        }
        Ok(_) => Err((Reason::InvalidSignature, Some(address))),
        Err(_) => Err((Reason::VerifyError, Some(address))),
    }
}

/// ethers' `getAddress` for a value read from JSON: `0x` optional, mixed case must
/// carry the right checksum, and anything that is not a string is an error.
pub fn get_address(v: &Js) -> Option<String> {
    let s = v.as_string()?;
    let hex = s.strip_prefix("0x").unwrap_or(&s);
    eth::parse_address(&format!("0x{hex}")).ok()
}

/// The default role table (§10.5): what each role can do, and whom it inherits.
#[derive(Debug, Clone)]
pub struct Roles {
    table: HashMap<String, (Vec<String>, Vec<String>)>,
}

impl Default for Roles {
    fn default() -> Self {
        let mut table = HashMap::new();
        for (role, can, inherits) in [
            (
                "superadmin",
                &["assignRole", "deleteAny"][..],
                &["admin"][..],
            ),
            ("admin", &["delete"], &["manager"]),
            ("manager", &["publish"], &["user"]),
            ("user", &["write", "link", "sync"], &["guest"]),
            ("guest", &["read", "sync"], &[]),
        ] {
            let strings = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
            table.insert(role.to_string(), (strings(can), strings(inherits)));
        }
        Self { table }
    }
}

impl Roles {
    pub fn is_role(&self, role: &str) -> bool {
        self.table.contains_key(role)
    }

    /// `can(role, action)`, following `inherits` and stopping at loops.
    pub fn can(&self, role: &str, action: &str) -> bool {
        self.can_from(role, action, &mut Vec::new())
    }

    fn can_from<'a>(&'a self, role: &'a str, action: &str, path: &mut Vec<&'a str>) -> bool {
        let Some((can, inherits)) = self.table.get(role) else {
            return false;
        };
        if path.contains(&role) {
            return false;
        }
        if can.iter().any(|a| a == action) {
            return true;
        }
        path.push(role);
        let found = inherits.iter().any(|r| self.can_from(r, action, path));
        path.pop();
        found
    }
}

/// What the policy reads from the graph.
pub trait Graph {
    /// Whether a node with this id exists.
    fn exists(&self, id: &str) -> bool;
    /// The node's value, parsed, if the node exists and has one.
    fn value(&self, id: &str) -> Option<Js>;
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// EIP-55 addresses.
    pub super_admins: Vec<String>,
    /// Refuse `user:<addr>` nodes that say superadmin for an unlisted address.
    pub strict: bool,
    pub roles: Roles,
}

impl Policy {
    pub fn new(super_admins: Vec<String>, strict: bool) -> Self {
        Self {
            super_admins,
            strict,
            roles: Roles::default(),
        }
    }

    pub fn is_super_admin(&self, address: &str) -> bool {
        self.super_admins.iter().any(|a| a == address)
    }

    /// The role a signer acts with: listed superadmins, else its `user:` node's role
    /// ("guest" when it has none, or when `expiresAt` is past).
    pub fn role_of(&self, address: &str, graph: &dyn Graph, now_ms: u64) -> Js {
        if self.is_super_admin(address) {
            return Js::str("superadmin");
        }
        let Some(node) = graph.value(&format!("user:{address}")) else {
            return Js::str("guest");
        };
        let role = node
            .get("role")
            .filter(|r| r.truthy())
            .cloned()
            .unwrap_or_else(|| Js::str("guest"));
        let expired = node
            .get("expiresAt")
            .filter(|e| e.truthy())
            .is_some_and(|e| date_ms(e) < now_ms as f64);
        if expired { Js::str("guest") } else { role }
    }

    /// Decides one checked element. `raw` is the element as it came.
    pub fn decide(
        &self,
        raw: &RawValue,
        checked: Checked,
        graph: &dyn Graph,
        now_ms: u64,
        now_ts: &mut dyn FnMut() -> String,
    ) -> Verdict {
        match checked {
            Checked::Keep => Verdict::Keep,
            Checked::Envelope => match RawObject::parse(raw) {
                Some(obj) => Verdict::Rewrite(rewrite(&obj, &Edits::default())),
                None => Verdict::Keep,
            },
            Checked::Drop { reason, signer } => Verdict::Drop { reason, signer },
            Checked::Abort => Verdict::Abort,
            Checked::Op { signer, payload } => {
                self.decide_op(raw, signer, payload, graph, now_ms, now_ts)
            }
        }
    }

    fn decide_op(
        &self,
        raw: &RawValue,
        signer: String,
        payload: Js,
        graph: &dyn Graph,
        now_ms: u64,
        now_ts: &mut dyn FnMut() -> String,
    ) -> Verdict {
        let Some(obj) = RawObject::parse(raw) else {
            return Verdict::Drop {
                reason: Reason::VerifyError,
                signer: Some(signer),
            };
        };
        let role = self.role_of(&signer, graph, now_ms);
        let kind = payload.get("type").and_then(Js::as_string);
        let action = match kind.as_deref() {
            Some("upsert") => "write",
            Some("remove") => "delete",
            Some("link") => "link",
            Some("sync" | "syncReceive" | "deltaSync") => "sync",
            _ => "unknown",
        };
        let mut value = payload.get("value").cloned();
        let mut edits = Edits::default();
        if kind.as_deref() == Some("upsert") {
            let own = OwnUpsert {
                obj: &obj,
                signer: &signer,
                payload: &payload,
                role: &role,
            };
            if let Some(v) = own.check(&mut value, &mut edits, graph, now_ts) {
                return v;
            }
        }
        if let Some(v) = self.superadmin_grant(value.as_ref(), kind.as_deref(), &payload, &signer) {
            return v;
        }
        if !role_key(&role).is_some_and(|r| self.roles.can(&r, action)) {
            return Verdict::Drop {
                reason: Reason::Denied,
                signer: Some(signer),
            };
        }
        edits.signer = Some(signer);
        Verdict::Rewrite(rewrite(&obj, &edits))
    }

    /// A value naming the superadmin role must name a listed superadmin (and, under
    /// SM_STRICT, be an upsert of that superadmin's own node); `None` lets it pass.
    fn superadmin_grant(
        &self,
        value: Option<&Js>,
        kind: Option<&str>,
        payload: &Js,
        signer: &str,
    ) -> Option<Verdict> {
        let value_role = value.and_then(|v| v.get("role"));
        if !value_role.is_some_and(|r| r.strict_eq(&Js::str("superadmin"))) {
            return None;
        }
        let named = value
            .and_then(|v| v.get("ethAddress"))
            .cloned()
            .unwrap_or_else(|| Js::str(""));
        match get_address(&named) {
            // getAddress throws inside the middleware: the batch is lost.
            None => return Some(Verdict::Abort),
            Some(a) if !self.is_super_admin(&a) => {
                return Some(Verdict::Drop {
                    reason: Reason::SuperadminGrant,
                    signer: Some(signer.to_owned()),
                });
            }
            Some(_) => {}
        }
        if self.strict && kind == Some("upsert") {
            let id = payload.get("id").and_then(Js::as_string);
            if !id.as_deref().is_some_and(|id| self.names_super_admin(id)) {
                return Some(Verdict::Drop {
                    reason: Reason::Strict,
                    signer: Some(signer.to_owned()),
                });
            }
        }
        None
    }

    /// Is `id` the `user:` node of a listed superadmin?
    pub fn names_super_admin(&self, id: &str) -> bool {
        id.strip_prefix("user:")
            .and_then(|a| get_address(&Js::str(a)))
            .is_some_and(|a| self.is_super_admin(&a))
    }

    /// SM_STRICT's test for a node arriving inside a delta or full state: a `user:`
    /// node whose value says superadmin for an address not in SUPER_ADMINS.
    pub fn strict_refuses(&self, id: &str, value: Option<&str>) -> bool {
        if !self.strict || !id.starts_with("user:") {
            return false;
        }
        let says_superadmin = value
            .and_then(|v| Js::parse(v).ok())
            .and_then(|v| v.get("role").cloned())
            .is_some_and(|r| r.strict_eq(&Js::str("superadmin")));
        says_superadmin && !self.names_super_admin(id)
    }
}

/// The property key a role value is looked up by in the role table (`Y[role]`).
fn role_key(role: &Js) -> Option<String> {
    if !role.truthy() {
        return None;
    }
    String::from_utf16(&role.to_js_string()).ok()
}

#[derive(Default)]
struct Edits {
    value: Option<String>,
    timestamp: Option<String>,
    signer: Option<String>,
}

/// The element as it came, without its signature fields, with `value`/`timestamp`
/// replaced in place (or appended) and `signer` appended, as `{...F, signer}` does.
fn rewrite(obj: &RawObject, edits: &Edits) -> String {
    let mut out = String::from("{");
    let mut wrote_value = false;
    let mut wrote_ts = false;
    let push = |out: &mut String, k: &str, v: &str| {
        if out.len() > 1 {
            out.push(',');
        }
        json::write_str(out, k);
        out.push(':');
        out.push_str(v);
    };
    for (k, v) in &obj.members {
        let k = k.as_ref();
        if SIG_FIELDS.contains(&k) || (k == "signer" && edits.signer.is_some()) {
            continue;
        }
        let text = match (k, &edits.value, &edits.timestamp) {
            ("value", Some(new), _) => {
                wrote_value = true;
                new.as_str()
            }
            ("timestamp", _, Some(new)) => {
                wrote_ts = true;
                new.as_str()
            }
            _ => v.get(),
        };
        push(&mut out, k, text);
    }
    if let (Some(v), false) = (&edits.value, wrote_value) {
        push(&mut out, "value", v);
    }
    if let (Some(t), false) = (&edits.timestamp, wrote_ts) {
        push(&mut out, "timestamp", t);
    }
    if let Some(signer) = &edits.signer {
        push(&mut out, "signer", &format!("\"{signer}\""));
    }
    out.push('}');
    out
}

/// An upsert, looked at as one its signer may make of its own `user:` node.
struct OwnUpsert<'a> {
    obj: &'a RawObject<'a>,
    signer: &'a str,
    payload: &'a Js,
    role: &'a Js,
}

impl OwnUpsert<'_> {
    /// Self-registration (the node does not exist yet) is always rewritten as a guest:
    /// that verdict is returned. A user cannot change its own role: the op keeps the
    /// current one, through `value` and `edits`. Other upserts are left alone.
    fn check(
        &self,
        value: &mut Option<Js>,
        edits: &mut Edits,
        graph: &dyn Graph,
        now_ts: &mut dyn FnMut() -> String,
    ) -> Option<Verdict> {
        let (signer, role) = (self.signer, self.role);
        let own_node = format!("user:{signer}");
        let is_own = self
            .payload
            .get("id")
            .is_some_and(|id| id.strict_eq(&Js::str(&own_node)));
        if !is_own {
            return None;
        }
        if !graph.exists(&own_node) {
            // Self-registration: always as a guest, whatever the op asked.
            edits.value = Some(format!(r#"{{"ethAddress":"{signer}","role":"guest"}}"#));
            if !self.payload.get("timestamp").is_some_and(Js::truthy) {
                edits.timestamp = Some(now_ts());
            }
            return Some(Verdict::Rewrite(rewrite(self.obj, edits)));
        }
        let asked = value.as_ref().and_then(|v| v.get("role")).cloned();
        if !role.strict_eq(&Js::str("superadmin"))
            && asked
                .as_ref()
                .is_some_and(|r| r.truthy() && !r.strict_eq(role))
        {
            // A user cannot change its own role: the op keeps the current one.
            if let (Some(v), Some(raw_value)) = (value.as_mut(), self.obj.get("value")) {
                v.set("role", role.clone());
                edits.value = Some(with_member(raw_value, "role", &role.to_json()));
            }
        }
        None
    }
}

/// `raw` (an object) with every `key` member set to `value`.
fn with_member(raw: &RawValue, key: &str, value: &str) -> String {
    let Some(obj) = RawObject::parse(raw) else {
        return raw.get().to_owned();
    };
    let mut out = String::from("{");
    for (i, (k, v)) in obj.members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json::write_str(&mut out, k);
        out.push(':');
        out.push_str(if k == key { value } else { v.get() });
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_inherit() {
        let r = Roles::default();
        assert!(r.can("superadmin", "write") && r.can("superadmin", "delete"));
        assert!(r.can("admin", "delete") && r.can("admin", "link"));
        assert!(r.can("manager", "write") && !r.can("manager", "delete"));
        assert!(r.can("user", "write") && r.can("user", "link") && !r.can("user", "delete"));
        assert!(!r.can("guest", "write") && r.can("guest", "sync"));
        assert!(!r.can("nobody", "read") && !r.can("user", "unknown"));
    }

    #[test]
    fn ethers_get_address() {
        let a = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
        assert_eq!(get_address(&Js::str(a)).as_deref(), Some(a));
        assert_eq!(
            get_address(&Js::str(&a[2..].to_lowercase())).as_deref(),
            Some(a)
        );
        assert_eq!(
            get_address(&Js::str("0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266")),
            None
        );
        assert_eq!(get_address(&Js::str("")), None);
        assert_eq!(get_address(&Js::Num(1.0)), None);
    }
}
