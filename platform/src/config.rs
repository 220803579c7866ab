//! Reading settings from the environment. Only this module touches `std::env`; every other module
//! receives typed settings. Errors name the variable and say what was expected.

use std::str::FromStr;

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The variable is set but does not parse as the expected type.
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid { name: &'static str, value: String, reason: String },
}

/// The value of `name`, or `default` when it is unset or empty.
pub fn string(name: &'static str, default: &str) -> String {
    optional(name).unwrap_or_else(|| default.to_owned())
}

/// The value of `name` when it is set and not empty.
pub fn optional(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The value of `name` parsed as `T`, or `default` when it is unset or empty.
pub fn parsed<T>(name: &'static str, default: T) -> Result<T, Error>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match optional(name) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|e: T::Err| Error::Invalid { name, reason: e.to_string(), value }),
    }
}

/// `key=value` pairs separated by commas, as in `KAFKA_PROPERTIES="security.protocol=SSL,ssl.ca.location=/ca.pem"`.
pub fn key_values(name: &'static str) -> Result<Vec<(String, String)>, Error> {
    optional(name).map_or(Ok(Vec::new()), |value| parse_key_values(name, &value))
}

fn parse_key_values(name: &'static str, value: &str) -> Result<Vec<(String, String)>, Error> {
    value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(Error::Invalid {
                name,
                value: value.to_owned(),
                reason: format!("`{pair}` is not of the form key=value"),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_are_split_on_commas_and_the_first_equals_sign() {
        let parsed = parse_key_values("X", "security.protocol=SSL, sasl.jaas=a=b ,").expect("valid");
        assert_eq!(parsed, [("security.protocol".into(), "SSL".into()), ("sasl.jaas".into(), "a=b".into())]);
    }

    #[test]
    fn a_pair_without_a_key_is_refused_with_the_variable_named() {
        let error = parse_key_values("KAFKA_PROPERTIES", "acks=all,=oops").expect_err("invalid");
        let message = error.to_string();
        assert!(message.contains("KAFKA_PROPERTIES") && message.contains("`=oops`"), "{message}");
        assert!(parse_key_values("KAFKA_PROPERTIES", "novalue").is_err());
    }
}
