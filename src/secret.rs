//! Secrets in configuration: API keys, MAP_KEYs, passwords and header values written as
//! `${VAR}` (or `${VAR:-default}`) and read from the environment when the config is loaded.
//!
//! A [`Secret`] prints as `<redacted>` in every `Debug` and `Display`, so it cannot reach a
//! log line, an error or a status document by accident; [`Secret::expose`] is the one way to
//! read it, at the point where it is sent upstream. [`redact`] removes secrets from text
//! that must be shown (a URL with a key in its path, an upstream error echoing the key).

use std::fmt;

use serde::{Deserialize, Deserializer};

/// What is printed in place of a secret.
pub const REDACTED: &str = "<redacted>";

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the request that needs it. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        expand_env(&text, |name| std::env::var(name).ok())
            .map(Secret)
            .map_err(serde::de::Error::custom)
    }
}

/// Expands `${VAR}`, `${VAR:-default}` and `${VAR:?message}` in `text`. `$$` is a literal
/// `$`. An unset variable without a default is an error naming it (never its value).
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body.find('}') else {
            // The value may hold a key typed inline: do not echo it.
            return Err("unclosed `${` in a value; write `${VAR}`".to_owned());
        };
        let expr = &body[..end];
        let (name, fallback) = match expr.find(":-").or_else(|| expr.find(":?")) {
            Some(j) => (&expr[..j], Some((&expr[j..j + 2], &expr[j + 2..]))),
            None => (expr, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "`${{{expr}}}` is not a variable reference; names are letters, digits and `_`"
            ));
        }
        match (lookup(name).filter(|v| !v.is_empty()), fallback) {
            (Some(value), _) => out.push_str(&value),
            (None, Some((":-", default))) => out.push_str(default),
            (None, Some((_, message))) => {
                return Err(format!("environment variable {name} is not set: {message}"));
            }
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set; export it, or write `${{{name}:-default}}`"
                ));
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `text` with every non-empty secret replaced by `<redacted>`, also in its URL-encoded form
/// (a key in a query string).
pub fn redact<'a>(text: &str, secrets: impl IntoIterator<Item = &'a Secret>) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        let value = secret.expose();
        if value.len() < 4 {
            // Too short to replace without mangling ordinary text; such a key is not one.
            continue;
        }
        out = out.replace(value, REDACTED);
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        if encoded != value {
            out = out.replace(&encoded, REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("abc123".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_references_and_defaults() {
        assert_eq!(expand_env("${KEY}", env).unwrap(), "abc123");
        assert_eq!(expand_env("k=${KEY}&x", env).unwrap(), "k=abc123&x");
        assert_eq!(expand_env("${NOPE:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand_env("${EMPTY:-dflt}", env).unwrap(), "dflt");
        assert_eq!(
            expand_env("plain $5 and $$", env).unwrap(),
            "plain $5 and $"
        );
    }

    #[test]
    fn unset_variable_names_it() {
        let err = expand_env("${FIRMS_MAP_KEY}", env).unwrap_err();
        assert!(err.contains("FIRMS_MAP_KEY is not set"), "{err}");
        let err = expand_env("${X:?set the FIRMS key}", env).unwrap_err();
        assert!(err.contains("set the FIRMS key"), "{err}");
        assert!(expand_env("${KEY", env).is_err());
        assert!(expand_env("${a b}", env).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-key");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2-key");
    }

    #[test]
    fn redacts_plain_and_url_encoded_forms() {
        let key = Secret::new("a b/c+d=");
        let text = "https://h/api/a b/c+d=/x?key=a+b%2Fc%2Bd%3D";
        let out = redact(text, [&key]);
        assert_eq!(out, "https://h/api/<redacted>/x?key=<redacted>");
    }
}
