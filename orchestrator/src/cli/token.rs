//! Development tokens: durations such as `15m`, and HS256 tokens minted the way the orchestrator verifies
//! them (see `orchestrator::auth`).

use std::time::Duration;

use orchestrator::auth::{self, DEV_JWT_SECRET, Role};

/// Parses `500ms`, `90s`, `15m`, `2h` or `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let invalid = || format!("{text:?} is not a duration; write a number and a unit, such as 90s, 15m, 2h or 1d");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let seconds = |factor: u64| n.checked_mul(factor).map(Duration::from_secs).ok_or_else(invalid);
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => Err(invalid()),
    }
}

/// An age the admin API accepts in `older_than`: one to six digits and `s`, `m`, `h` or `d`.
pub fn parse_age(text: &str) -> Result<String, String> {
    let digits = text.len().saturating_sub(1);
    let valid = (1..=6).contains(&digits)
        && text[..digits].bytes().all(|b| b.is_ascii_digit())
        && text.ends_with(['s', 'm', 'h', 'd']);
    if valid { Ok(text.to_owned()) } else { Err(format!("{text:?} is not an age; use such as 90s, 15m, 2h or 1d")) }
}

/// Where tokens are minted from: the HS256 secret, issuer and audience.
#[derive(Debug, Clone)]
pub struct Minter {
    /// The secret, or `None` for the built-in development secret.
    pub secret: Option<String>,
    /// The issuer.
    pub issuer: String,
    /// The audience.
    pub audience: String,
}

impl Minter {
    /// A token for `subject` with `roles`, valid for `ttl` from now.
    pub fn mint(&self, subject: &str, roles: &[Role], ttl: Duration) -> (String, auth::Claims) {
        let claims = auth::claims(subject, roles, &self.issuer, &self.audience, ttl.as_secs().max(1));
        (auth::mint_hs256(self.secret(), &claims), claims)
    }

    /// The secret tokens are signed with.
    fn secret(&self) -> &str {
        self.secret.as_deref().unwrap_or(DEV_JWT_SECRET)
    }

    /// Where the secret comes from, for the notice on stderr (never the secret itself).
    pub fn secret_source(&self) -> &'static str {
        if self.secret.is_some() {
            "the secret in JWT_SECRET (or --jwt-secret)"
        } else {
            "the built-in development secret"
        }
    }
}

#[cfg(test)]
mod tests {
    use orchestrator::auth::{Authenticator, DEV_AUDIENCE, DEV_ISSUER, KeySettings};

    use super::*;

    #[test]
    fn durations_take_a_number_and_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "m", "15", "15x", "-1m", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn ages_match_what_the_admin_api_accepts() {
        assert_eq!(parse_age("15m").as_deref(), Ok("15m"));
        assert_eq!(parse_age("999999d").as_deref(), Ok("999999d"));
        for bad in ["", "m", "15", "1234567s", "15ms", "x5m"] {
            assert!(parse_age(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn minted_tokens_verify_with_the_same_secret_only() {
        let minter = Minter { secret: None, issuer: DEV_ISSUER.into(), audience: DEV_AUDIENCE.into() };
        let (token, claims) = minter.mint("alice", &[Role::Operator], Duration::from_secs(60));
        assert_eq!(claims.sub, "alice");
        let dev = KeySettings::Hs256 { secret: DEV_JWT_SECRET.into() };
        let caller = Authenticator::new(&dev, DEV_ISSUER, DEV_AUDIENCE).expect("HS256").verify(&token).expect("valid");
        assert!(caller.is(Role::Operator));
        let other = KeySettings::Hs256 { secret: "another-secret-of-at-least-32-characters".into() };
        assert!(Authenticator::new(&other, DEV_ISSUER, DEV_AUDIENCE).expect("HS256").verify(&token).is_err());
    }
}
