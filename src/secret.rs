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
    expand_env_noting(text, lookup, &mut Vec::new())
}

/// What an unset variable reads as under [`with_unset_allowed`].
pub const UNSET: &str = "<unset>";

thread_local! {
    static UNSET_ALLOWED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a config load) with unset variables read as [`UNSET`] instead of refused: for the
/// commands that read only the local log (`tail`, `dlq list`), which an operator must be able
/// to run without the production keys of every source.
pub fn with_unset_allowed<T>(f: impl FnOnce() -> T) -> T {
    UNSET_ALLOWED.with(|allowed| {
        let before = allowed.replace(true);
        let out = f();
        allowed.set(before);
        out
    })
}

/// [`expand_env`], also collecting the values it substituted (they are secrets to redact
/// wherever the expanded text is shown, e.g. a key in a URL's query).
pub fn expand_env_noting(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
    substituted: &mut Vec<Secret>,
) -> Result<String, String> {
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
        let allowed = UNSET_ALLOWED.with(std::cell::Cell::get);
        match (lookup(name).filter(|v| !v.is_empty()), fallback) {
            (Some(value), _) => {
                out.push_str(&value);
                substituted.push(Secret(value));
            }
            (None, Some((":-", default))) => {
                out.push_str(default);
                if !default.is_empty() {
                    substituted.push(Secret(default.to_owned()));
                }
            }
            // A stand-in that passes "is it set" checks and is never sent anywhere.
            (None, _) if allowed => out.push_str(UNSET),
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
        // As a query value (`a+b%2F`), and as a path segment or fully escaped (`a%20b%2F`).
        let form: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let escaped =
            percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        // JSON writers may escape `/` as `\/`; escapes may be written in lower-case hex.
        let json_slash = value.replace('/', "\\/");
        for encoded in [
            lower_hex_escapes(&form),
            lower_hex_escapes(&escaped),
            form,
            escaped,
            json_slash,
        ] {
            if encoded != value {
                out = out.replace(&encoded, REDACTED);
            }
        }
    }
    out
}

/// `%2F` → `%2f`: the same escape in lower-case hex, the rest untouched.
fn lower_hex_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(h) = chars.next() {
                    out.push(h.to_ascii_lowercase());
                }
            }
        }
    }
    out
}

/// A URL from config: `${VAR}` references expanded at load, with the values they brought
/// kept as secrets, so the URL can be shown redacted (a token in its query string).
#[derive(Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    expanded: String,
    secrets: Vec<Secret>,
}

impl UrlTemplate {
    pub fn new(text: impl Into<String>) -> Self {
        UrlTemplate {
            expanded: text.into(),
            secrets: Vec::new(),
        }
    }

    /// The URL to request. Never log it: use [`shown_url`].
    pub fn expose(&self) -> &str {
        &self.expanded
    }

    /// The values `${VAR}` references brought in.
    pub fn secrets(&self) -> &[Secret] {
        &self.secrets
    }
}

impl fmt::Debug for UrlTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shown_url(&self.expanded, &self.secrets))
    }
}

impl<'de> Deserialize<'de> for UrlTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut secrets = Vec::new();
        let expanded = expand_env_noting(&text, |name| std::env::var(name).ok(), &mut secrets)
            .map_err(serde::de::Error::custom)?;
        secrets.extend(inline_credentials(&expanded));
        Ok(UrlTemplate { expanded, secrets })
    }
}

/// Query parameters whose values are credentials, by name (case-insensitive substring).
const SECRET_PARAMS: [&str; 8] = [
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "signature",
    "sig",
    "auth",
];

/// Credentials written into a URL itself (a password, `?sig=…`): secrets like `${VAR}`
/// values, so an upstream that echoes the request cannot show them either.
fn inline_credentials(url: &str) -> Vec<Secret> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    let mut found: Vec<Secret> = parsed
        .query_pairs()
        .filter(|(k, _)| {
            let name = k.to_ascii_lowercase();
            SECRET_PARAMS.iter().any(|s| name.contains(s))
        })
        .map(|(_, v)| Secret(v.into_owned()))
        .collect();
    found.extend(parsed.password().map(|p| Secret(p.to_owned())));
    found
}

/// A URL as it may be shown: `secrets` redacted, any user and password in it redacted,
/// and the values of query parameters named like credentials (`api_key`, `token`, …)
/// redacted. Text that is not a URL is only redacted of `secrets`.
pub fn shown_url<'a>(url: &str, secrets: impl IntoIterator<Item = &'a Secret>) -> String {
    let secrets: Vec<&Secret> = secrets.into_iter().collect();
    // Secrets first, in the text as configured: a value holding `&` or `=` would otherwise be
    // split into several query pairs, and only the first named like a credential.
    let url = redact(url, secrets.iter().copied());
    let Ok(mut parsed) = url::Url::parse(&url) else {
        return url;
    };
    if !parsed.username().is_empty() {
        let _ = parsed.set_username(REDACTED);
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(REDACTED));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let name = k.to_ascii_lowercase();
                let secret = SECRET_PARAMS.iter().any(|s| name.contains(s));
                (
                    k.into_owned(),
                    if secret {
                        REDACTED.to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    // The URL's own encoding of `<redacted>` reads badly in logs.
    let text = parsed
        .to_string()
        .replace("%3Credacted%3E", REDACTED)
        .replace("%3credacted%3e", REDACTED);
    redact(&text, secrets)
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

    #[test]
    fn shown_urls_hide_credentials_in_userinfo_query_and_references() {
        let shown = shown_url(
            "https://user:pa55word@example.org/v1/x?api_key=K123&format=json&access_token=T9&page=2",
            [],
        );
        assert_eq!(
            shown,
            "https://<redacted>:<redacted>@example.org/v1/x?api_key=<redacted>&format=json&access_token=<redacted>&page=2"
        );
        let key = Secret::new("PATHKEY-42");
        assert_eq!(
            shown_url("https://h/api/PATHKEY-42/world", [&key]),
            "https://h/api/<redacted>/world"
        );
        let mut found = Vec::new();
        let url = expand_env_noting("https://h/q?t=${KEY}", env, &mut found).unwrap();
        assert_eq!(url, "https://h/q?t=abc123");
        assert_eq!(shown_url(&url, &found), "https://h/q?t=<redacted>");
    }

    #[test]
    fn redacts_percent_escaped_forms() {
        let key = Secret::new("k ey/+&=");
        assert_eq!(redact("x k%20ey%2F%2B%26%3D y", [&key]), "x <redacted> y");
        assert_eq!(redact("x k%20ey%2f%2b%26%3d y", [&key]), "x <redacted> y");
        let key = Secret::new("FAKE2/k+e=y");
        assert_eq!(
            redact("/csv/FAKE2%2fk%2be%3dy/V", [&key]),
            "/csv/<redacted>/V"
        );
        assert_eq!(
            redact(r#"{"u": "API_KEY=FAKE2\/k+e=y"}"#, [&key]),
            r#"{"u": "API_KEY=<redacted>"}"#
        );
    }

    #[test]
    fn a_secret_holding_query_syntax_is_redacted_whole() {
        let secret = Secret::new("S3cr+t/Key&x=1");
        let url = "https://api.example/v1?api_key=S3cr+t/Key&x=1&q=1";
        let shown = shown_url(url, [&secret]);
        assert_eq!(shown, "https://api.example/v1?api_key=<redacted>&q=1");
    }

    #[test]
    fn unset_variables_can_be_allowed_for_read_only_commands() {
        let lookup = |_: &str| None;
        assert!(expand_env("k=${NOPE}", lookup).is_err());
        assert_eq!(
            with_unset_allowed(|| expand_env("k=${NOPE}&q=${NOPE2:?needed}", lookup)),
            Ok("k=<unset>&q=<unset>".to_owned())
        );
        // Only for that call.
        assert!(expand_env("k=${NOPE}", lookup).is_err());
    }

    #[test]
    fn credentials_written_into_a_url_are_secrets_too() {
        let url: UrlTemplate =
            yaml_serde::from_str("\"https://u:pw123456@h.example/d?sig=SIGSECRET11&q=1\"").unwrap();
        let echoed = "400: you asked for /d?sig=SIGSECRET11&q=1 as u:pw123456";
        let shown = redact(echoed, url.secrets());
        assert!(
            !shown.contains("SIGSECRET11") && !shown.contains("pw123456"),
            "{shown}"
        );
    }
}
