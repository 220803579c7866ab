//! Bearer tokens for the bench's customers and its operator, minted the way `sagactl token` mints them
//! (`orchestrator::auth`): HS256 with `JWT_SECRET` (default: the built-in development secret), issuer
//! `JWT_ISSUER` and audience `JWT_AUDIENCE`, the variables and defaults the orchestrator reads.
//!
//! A stack that verifies tokens with a public key (`JWT_PUBLIC_KEY_FILE`) cannot be benchmarked with minted
//! tokens; the first order then fails with 401, which the bench reports.

use std::time::Duration;

use orchestrator::auth::{DEV_AUDIENCE, DEV_ISSUER, DEV_JWT_SECRET, Role, claims, mint_hs256};

/// How long minted tokens are valid: longer than any sensible run.
pub const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// The operator named in the bench's operator token.
pub const OPERATOR: &str = "saga-bench";

/// Where tokens are minted from.
#[derive(Clone)]
pub struct TokenSettings {
    /// The HS256 secret.
    pub secret: String,
    /// The `iss` claim.
    pub issuer: String,
    /// The `aud` claim.
    pub audience: String,
}

impl std::fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSettings")
            .field("secret", &self.secret_source())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl TokenSettings {
    /// `JWT_SECRET`, `JWT_ISSUER` and `JWT_AUDIENCE`, with the orchestrator's development defaults.
    pub fn from_env() -> Self {
        Self {
            secret: platform::config::string("JWT_SECRET", DEV_JWT_SECRET),
            issuer: platform::config::string("JWT_ISSUER", DEV_ISSUER),
            audience: platform::config::string("JWT_AUDIENCE", DEV_AUDIENCE),
        }
    }

    /// Where the secret comes from, for the report (never the secret itself).
    pub fn secret_source(&self) -> &'static str {
        if self.secret == DEV_JWT_SECRET { "the built-in development secret" } else { "JWT_SECRET" }
    }

    fn mint(&self, subject: &str, role: Role) -> String {
        mint_hs256(&self.secret, &claims(subject, &[role], &self.issuer, &self.audience, TOKEN_TTL.as_secs()))
    }
}

/// The tokens of one run: one per customer (`sub` = the customer id, as the order API requires) and one
/// operator token for the admin API.
#[derive(Clone)]
pub struct Tokens {
    customers: Vec<(String, String)>,
    operator: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("customers", &self.customers.len()).finish_non_exhaustive()
    }
}

impl Tokens {
    /// Mints tokens for `customers` customers (`bench-cust-0`, ...; at least one) and the operator.
    pub fn mint(settings: &TokenSettings, customers: u32) -> Self {
        let customers = (0..customers.max(1))
            .map(|n| {
                let id = format!("bench-cust-{n}");
                let token = settings.mint(&id, Role::Customer);
                (id, token)
            })
            .collect();
        Self { customers, operator: settings.mint(OPERATOR, Role::Operator) }
    }

    /// The customer of the `n`-th order and their token (customers take turns).
    pub fn customer(&self, n: u64) -> (&str, &str) {
        let (id, token) = &self.customers[usize::try_from(n % self.customers.len() as u64).unwrap_or(0)];
        (id, token)
    }

    /// The operator token.
    pub fn operator(&self) -> &str {
        &self.operator
    }
}

#[cfg(test)]
mod tests {
    use orchestrator::auth::{Authenticator, KeySettings};

    use super::*;

    #[test]
    fn minted_tokens_verify_as_the_orchestrator_verifies_them() {
        let settings = TokenSettings {
            secret: DEV_JWT_SECRET.to_owned(),
            issuer: DEV_ISSUER.to_owned(),
            audience: DEV_AUDIENCE.to_owned(),
        };
        let tokens = Tokens::mint(&settings, 3);
        let keys = KeySettings::Hs256 { secret: DEV_JWT_SECRET.to_owned() };
        let verifier = Authenticator::new(&keys, DEV_ISSUER, DEV_AUDIENCE).expect("HS256");
        let (id, token) = tokens.customer(4);
        assert_eq!(id, "bench-cust-1");
        let caller = verifier.verify(token).expect("a valid customer token");
        assert_eq!(caller.subject, "bench-cust-1");
        assert!(caller.is(Role::Customer) && !caller.is(Role::Operator));
        let operator = verifier.verify(tokens.operator()).expect("a valid operator token");
        assert!(operator.is(Role::Operator));
        assert!(!format!("{settings:?}").contains(DEV_JWT_SECRET), "Debug never shows the secret");
    }
}
