//! Enterprise roles → agent scopes. An issuer with a role map caps what an agent can do for
//! a user: the effective scopes are the token's scopes intersected with the union of the
//! scopes granted to the user's roles. An agent never exceeds what the employee's role allows.

use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMap {
    /// Name of the claim holding the roles (top-level key, used verbatim, e.g.
    /// `https://example.com/roles`). Its value is an array of strings or a
    /// space-separated string.
    pub claim: String,
    grants: BTreeMap<String, Vec<String>>,
}

impl RoleMap {
    pub fn new(claim: String, grants: BTreeMap<String, Vec<String>>) -> Self {
        RoleMap { claim, grants }
    }

    /// Every scope some role grants (for config validation).
    pub fn grantable(&self) -> HashSet<&str> {
        self.grants.values().flatten().map(String::as_str).collect()
    }

    /// Token scopes kept only if at least one of `roles` grants them. Order follows the token.
    pub fn effective_scopes(&self, token_scopes: &[String], roles: &[String]) -> Vec<String> {
        let allowed: HashSet<&str> = roles
            .iter()
            .filter_map(|r| self.grants.get(r))
            .flatten()
            .map(String::as_str)
            .collect();
        token_scopes
            .iter()
            .filter(|s| allowed.contains(s.as_str()))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::RoleMap;
    use std::collections::BTreeMap;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn map() -> RoleMap {
        let mut g = BTreeMap::new();
        g.insert("finance".into(), v(&["invoices:read", "invoices:pay"]));
        g.insert("viewer".into(), v(&["invoices:read"]));
        RoleMap::new("roles".into(), g)
    }

    #[test]
    fn intersection_of_token_and_roles() {
        let m = map();
        let token = v(&["invoices:read", "invoices:pay", "admin:delete_all"]);
        assert_eq!(
            m.effective_scopes(&token, &v(&["viewer"])),
            v(&["invoices:read"])
        );
        assert_eq!(
            m.effective_scopes(&token, &v(&["finance", "viewer"])),
            v(&["invoices:read", "invoices:pay"])
        );
    }

    #[test]
    fn no_roles_or_unknown_roles_grant_nothing() {
        let m = map();
        let token = v(&["invoices:read"]);
        assert!(m.effective_scopes(&token, &[]).is_empty());
        assert!(m.effective_scopes(&token, &v(&["intern"])).is_empty());
    }

    #[test]
    fn role_cannot_add_scopes_the_token_lacks() {
        let m = map();
        assert!(m
            .effective_scopes(&v(&["openid"]), &v(&["finance"]))
            .is_empty());
    }
}
