//! SM_RULES governance (genosdb-data.md §10.7), the pure part: parsing the rules and
//! deciding, from the `user:` nodes, which roles change. sm-gov and genossrv run the
//! same algorithm: every rule is evaluated in order, the last matching rule wins for
//! a user, superadmins are immune, and only real changes are written.

use super::js::Js;
use super::policy::{Roles, get_address};
use super::query::{Query, QueryError};

#[derive(Debug, Clone)]
pub struct Rule {
    pub query: Query,
    pub assign_role: String,
    /// Only users whose node is at least this old (ms) are ruled on.
    pub offset_ms: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("is not JSON: {0}")]
    Json(String),
    #[error("must be a rule object or an array of them")]
    Shape,
    #[error("rule {index}: {message}")]
    Rule { index: usize, message: String },
}

/// SM_RULES: inline JSON (`[...]` or `{...}`), or a path to a file holding it.
pub fn load_rules(spec: &str, roles: &Roles) -> Result<Vec<Rule>, RulesError> {
    let spec = spec.trim();
    if spec.starts_with('[') || spec.starts_with('{') {
        return parse_rules(spec, roles);
    }
    let text = std::fs::read_to_string(spec).map_err(|e| RulesError::Read {
        path: spec.into(),
        error: e.to_string(),
    })?;
    parse_rules(&text, roles)
}

pub fn parse_rules(text: &str, roles: &Roles) -> Result<Vec<Rule>, RulesError> {
    let parsed = Js::parse(text.trim()).map_err(|e| RulesError::Json(e.to_string()))?;
    let list = match parsed {
        Js::Arr(items) => items,
        obj @ Js::Obj(_) => vec![obj],
        _ => return Err(RulesError::Shape),
    };
    list.iter()
        .enumerate()
        .map(|(index, r)| {
            parse_rule(r, roles).map_err(|message| RulesError::Rule { index, message })
        })
        .collect()
}

fn parse_rule(rule: &Js, roles: &Roles) -> Result<Rule, String> {
    if !matches!(rule, Js::Obj(_)) {
        return Err("is not an object".into());
    }
    let query = rule.get("if").ok_or("has no \"if\" query")?;
    let query = Query::compile(query).map_err(|e: QueryError| format!("\"if\": {e}"))?;
    let role = rule
        .get("then")
        .and_then(|t| t.get("assignRole"))
        .and_then(Js::as_string)
        .ok_or("has no \"then\": {\"assignRole\": \"<role>\"}")?;
    if !roles.is_role(&role) {
        return Err(format!(
            "assigns unknown role {role:?} (roles: superadmin, admin, manager, user, guest)"
        ));
    }
    let offset_ms = match rule.get("offsetTimestamp") {
        None | Some(Js::Null) => None,
        Some(Js::Num(n)) if *n >= 0.0 => Some(*n),
        Some(_) => return Err("offsetTimestamp must be a non-negative number of ms".into()),
    };
    Ok(Rule {
        query,
        assign_role: role,
        offset_ms,
    })
}

/// A role change to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The EIP-55 address from the node id.
    pub address: String,
    pub role: String,
    /// The role the node has now (absent when it has none).
    pub current: Option<Js>,
}

/// One round: `users` are the `user:` nodes as `{id, value, edges, timestamp}`.
/// Returns the changes, and the rules that failed to evaluate this round.
pub fn plan(
    rules: &[Rule],
    users: &[Js],
    immune: &dyn Fn(&str) -> bool,
    now_ms: u64,
) -> (Vec<Assignment>, Vec<(usize, QueryError)>) {
    let mut chosen: Vec<(String, &str, Option<Js>)> = Vec::new();
    let mut failed = Vec::new();
    'rules: for (index, rule) in rules.iter().enumerate() {
        let mut hits = Vec::new();
        for node in users {
            match rule.query.matches(node) {
                Ok(true) => hits.push(node),
                Ok(false) => {}
                Err(e) => {
                    failed.push((index, e));
                    continue 'rules;
                }
            }
        }
        for node in hits {
            let Some(id) = node.get("id").and_then(Js::as_string) else {
                continue;
            };
            let Some(addr) = id.strip_prefix("user:") else {
                continue;
            };
            if immune(addr) {
                continue;
            }
            if let Some(offset) = rule.offset_ms {
                let physical = node
                    .get("timestamp")
                    .and_then(|t| t.get("physical"))
                    .map(|p| p.to_number())
                    .unwrap_or(0.0);
                if offset > 0.0 && physical > now_ms as f64 - offset {
                    continue;
                }
            }
            let current = node.get("value").and_then(|v| v.get("role")).cloned();
            match chosen.iter_mut().find(|(i, _, _)| *i == id) {
                Some(entry) => {
                    entry.1 = &rule.assign_role;
                    entry.2 = current;
                }
                None => chosen.push((id.clone(), &rule.assign_role, current)),
            }
        }
    }
    let changes = chosen
        .into_iter()
        .filter(|(_, role, current)| {
            !current
                .as_ref()
                .is_some_and(|c| c.strict_eq(&Js::str(role)))
        })
        .filter_map(|(id, role, current)| {
            let address = get_address(&Js::str(id.strip_prefix("user:")?))?;
            Some(Assignment {
                address,
                role: role.to_owned(),
                current,
            })
        })
        .collect();
    (changes, failed)
}

/// The value `assignRole` writes: the node's value with `ethAddress`, `role`,
/// `assignedByEthAddress`, `expiresAt: null` and `priority: true` set, existing
/// members keeping their place (`{...existing, …}`).
pub fn assignment_value(existing: Option<&Js>, target: &str, role: &str, by: &str) -> String {
    let mut v = match existing {
        Some(obj @ Js::Obj(_)) => obj.clone(),
        _ => Js::Obj(Vec::new()),
    };
    v.set("ethAddress", Js::str(target));
    v.set("role", Js::str(role));
    v.set("assignedByEthAddress", Js::str(by));
    v.set("expiresAt", Js::Null);
    v.set("priority", Js::Bool(true));
    v.to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "0x9858EfFD232B4033E47d90003D41EC34EcaEda94";
    const SA: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

    fn user(addr: &str, value: &str, physical: u64) -> Js {
        Js::parse(&format!(
            r#"{{"id":"user:{addr}","value":{value},"edges":[],"timestamp":{{"physical":{physical},"logical":1}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn parses_inline_rules_and_refuses_bad_ones() {
        let roles = Roles::default();
        let rules = parse_rules(
            r#"[{"if":{"points":{"$gte":10}},"then":{"assignRole":"user"}},
                {"if":{"points":{"$gte":100}},"then":{"assignRole":"manager"},"offsetTimestamp":5000}]"#,
            &roles,
        )
        .unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].offset_ms, Some(5000.0));
        assert_eq!(
            parse_rules(r#"{"if":{},"then":{"assignRole":"admin"}}"#, &roles)
                .unwrap()
                .len(),
            1
        );
        for (bad, needle) in [
            ("nope", "not JSON"),
            ("5", "rule object"),
            (r#"[{"then":{"assignRole":"user"}}]"#, "no \"if\""),
            (r#"[{"if":{}}]"#, "assignRole"),
            (
                r#"[{"if":{},"then":{"assignRole":"wizard"}}]"#,
                "unknown role \"wizard\"",
            ),
            (
                r#"[{"if":{"$and":1},"then":{"assignRole":"user"}}]"#,
                "$and",
            ),
            (
                r#"[{"if":{},"then":{"assignRole":"user"},"offsetTimestamp":-1}]"#,
                "offsetTimestamp",
            ),
        ] {
            let err = parse_rules(bad, &roles).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let err = load_rules("/nonexistent/rules.json", &roles)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read /nonexistent/rules.json"), "{err}");
    }

    #[test]
    fn last_matching_rule_wins_superadmins_are_immune_and_no_op_changes_are_skipped() {
        let roles = Roles::default();
        let rules = parse_rules(
            r#"[{"if":{"points":{"$gte":10}},"then":{"assignRole":"user"}},
                {"if":{"points":{"$gte":100}},"then":{"assignRole":"manager"}}]"#,
            &roles,
        )
        .unwrap();
        let third = "0x58A57ed9d8d624cBD12e2C467D34787555bB1b25";
        let users = vec![
            user(U, r#"{"role":"guest","points":150}"#, 1),
            user(SA, r#"{"role":"superadmin","points":500}"#, 1),
            user(third, r#"{"role":"user","points":20}"#, 1),
            user(
                "0x0000000000000000000000000000000000000001",
                r#"{"points":1}"#,
                1,
            ),
        ];
        let immune = |a: &str| a.eq_ignore_ascii_case(SA);
        let (changes, failed) = plan(&rules, &users, &immune, 10_000);
        assert!(failed.is_empty());
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].address, U);
        assert_eq!(changes[0].role, "manager");
        assert_eq!(changes[0].current, Some(Js::str("guest")));
    }

    #[test]
    fn offset_waits_for_old_enough_nodes_and_failing_rules_are_reported() {
        let roles = Roles::default();
        let rules = parse_rules(
            r#"[{"if":{"points":{"$gte":10}},"then":{"assignRole":"user"},"offsetTimestamp":5000}]"#,
            &roles,
        )
        .unwrap();
        let users = vec![user(U, r#"{"role":"guest","points":50}"#, 8_000)];
        assert!(plan(&rules, &users, &|_| false, 10_000).0.is_empty());
        assert_eq!(plan(&rules, &users, &|_| false, 13_000).0.len(), 1);
    }

    #[test]
    fn assignment_keeps_existing_members_in_place() {
        let existing = Js::parse(r#"{"ethAddress":"x","role":"guest","points":5}"#).unwrap();
        assert_eq!(
            assignment_value(Some(&existing), U, "user", SA),
            format!(
                r#"{{"ethAddress":"{U}","role":"user","points":5,"assignedByEthAddress":"{SA}","expiresAt":null,"priority":true}}"#
            )
        );
        assert_eq!(
            assignment_value(None, U, "user", SA),
            format!(
                r#"{{"ethAddress":"{U}","role":"user","assignedByEthAddress":"{SA}","expiresAt":null,"priority":true}}"#
            )
        );
    }
}
