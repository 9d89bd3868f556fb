//! Layers over a config file (DESIGN §6): a profile from the file's `profiles:` section, then
//! environment overrides `FIRESTREAM__SECTION__KEY=value`, each deep-merged over what is
//! below it. Containers get a config per environment without a file per environment.

use yaml_serde::{Mapping, Value};

use crate::secret::{REDACTED, shown_url};

/// The prefix of an override variable; `__` separates path segments.
pub const ENV_PREFIX: &str = "FIRESTREAM__";

/// One override: the config path it sets and the variable that set it (never its value, which
/// may be a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub path: Vec<String>,
    pub variable: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayerError {
    #[error("profile `{name}` is not defined under `profiles:`; defined: {known}")]
    UnknownProfile { name: String, known: String },
    #[error("profiles.{0}: must be a mapping of settings laid over the rest of the file")]
    ProfileNotMapping(String),
    #[error("{variable}: `{segment}` cannot be set below a value that is not a mapping ({path})")]
    NotAMapping {
        variable: String,
        segment: String,
        path: String,
    },
    #[error(
        "{0}: name a setting after the prefix, each segment non-empty, e.g. FIRESTREAM__QUEUE__MAX_RECORDS=20000"
    )]
    EmptyPath(String),
}

/// Takes the `profiles:` section out of `root` and lays profile `name` (if any) over the
/// rest. Profiles are removed either way: they are not settings themselves.
pub fn apply_profile(root: &mut Value, name: Option<&str>) -> Result<(), LayerError> {
    let profiles = match root {
        Value::Mapping(map) => map.remove("profiles"),
        _ => None,
    };
    let Some(name) = name else {
        return Ok(());
    };
    let mut profiles = match profiles {
        Some(Value::Mapping(p)) => p,
        _ => Mapping::new(),
    };
    let Some(overlay) = profiles.remove(name) else {
        let mut known: Vec<String> = profiles
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        known.sort();
        return Err(LayerError::UnknownProfile {
            name: name.to_owned(),
            known: if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            },
        });
    };
    if !overlay.is_mapping() && !overlay.is_null() {
        return Err(LayerError::ProfileNotMapping(name.to_owned()));
    }
    merge(root, overlay);
    Ok(())
}

/// Applies every `FIRESTREAM__A__B=value` of `vars` (in name order, so the result does not
/// depend on the environment's order). Segments match existing keys case-insensitively,
/// so `FIRESTREAM__SOURCES__FIRMS_VIIRS_CA__INTERVAL` reaches `sources.firms_viirs_ca.interval`;
/// a segment matching no key is added in lower case. Values are read as YAML scalars or flow
/// collections (`5m`, `true`, `[a, b]`); an empty value is an empty string.
pub fn apply_env(
    root: &mut Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, LayerError> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    let mut applied = Vec::new();
    for (variable, raw) in vars {
        let segments: Vec<&str> = variable[ENV_PREFIX.len()..].split("__").collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(LayerError::EmptyPath(variable));
        }
        let mut path = Vec::new();
        let mut node = &mut *root;
        for segment in &segments {
            if node.is_null() {
                *node = Value::Mapping(Mapping::new());
            }
            let Value::Mapping(map) = node else {
                return Err(LayerError::NotAMapping {
                    variable: variable.clone(),
                    segment: segment.to_ascii_lowercase(),
                    path: path.join("."),
                });
            };
            // `_` also reaches `-`: a shell variable name cannot hold a hyphen.
            let same = |k: &str| {
                k.len() == segment.len()
                    && k.bytes()
                        .zip(segment.bytes())
                        .all(|(a, b)| a.eq_ignore_ascii_case(&b) || (a == b'-' && b == b'_'))
            };
            let key = map
                .keys()
                .filter_map(Value::as_str)
                .find(|k| same(k))
                .map(str::to_owned)
                .unwrap_or_else(|| segment.to_ascii_lowercase());
            path.push(key.clone());
            node = map.entry(Value::String(key)).or_insert(Value::Null);
        }
        *node = scalar(&raw);
        applied.push(Override { path, variable });
    }
    Ok(applied)
}

/// An override's value: YAML when it reads as a scalar or a flow collection, else the text.
fn scalar(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return Value::String(raw.to_owned());
    }
    match yaml_serde::from_str::<Value>(raw) {
        Ok(Value::Mapping(_)) if !raw.trim_start().starts_with('{') => {
            Value::String(raw.to_owned())
        }
        Ok(Value::Tagged(_)) | Err(_) => Value::String(raw.to_owned()),
        Ok(value) => value,
    }
}

/// Keys whose values are credentials wherever they appear (`headers` values are all secret).
const SECRET_KEYS: [&str; 5] = ["map_key", "api_key", "password", "token", "headers"];

/// The config as it may be shown (`GET /api/v1/config`): a secret written inline becomes
/// `<redacted>` — a `${VAR}` reference stays, naming only the variable — and every URL loses
/// its credentials (user, password, `api_key=`-like query values).
pub fn redacted(value: &Value) -> serde_json::Value {
    redact(value, false)
}

fn redact(value: &Value, secret: bool) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Number(n) => serde_json::to_value(n).unwrap_or(J::Null),
        Value::String(s) if secret && !is_reference(s) => J::String(REDACTED.to_owned()),
        Value::String(s) if s.starts_with("http://") || s.starts_with("https://") => {
            J::String(shown_url(s, []))
        }
        Value::String(s) => J::String(s.clone()),
        Value::Sequence(items) => J::Array(items.iter().map(|v| redact(v, secret)).collect()),
        Value::Mapping(map) => J::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k.as_str() {
                        Some(k) => k.to_owned(),
                        None => yaml_serde::to_string(k)
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                    };
                    let under_secret = secret
                        || SECRET_KEYS.contains(&key.as_str())
                        || crate::config::KafkaProperties::is_secret(&key);
                    let shown = match v {
                        // A scalar secret: redacted unless it only names a variable.
                        Value::String(_) | Value::Number(_) | Value::Bool(_) if under_secret => {
                            redact(v, true)
                        }
                        _ => redact(v, under_secret),
                    };
                    (key, shown)
                })
                .collect(),
        ),
        Value::Tagged(tagged) => redact(&tagged.value, secret),
    }
}

/// `${VAR}` (or `${VAR:-…}` / `${VAR:?…}`) and nothing else: it names the variable, not the
/// secret.
fn is_reference(text: &str) -> bool {
    let t = text.trim();
    t.starts_with("${")
        && t.ends_with('}')
        && t[2..].find('}') == Some(t.len() - 3)
        && !t[2..t.len() - 1].contains(":-")
}

/// Lays `overlay` over `base`: mappings merge key by key, anything else replaces.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(base), Value::Mapping(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (_, Value::Null) => {}
        (base, overlay) => *base = overlay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        yaml_serde::from_str(text).unwrap()
    }

    #[test]
    fn a_profile_is_laid_over_the_file_and_profiles_are_removed() {
        let mut root = yaml(
            "queue: {max_records: 10, overflow: block}\n\
             profiles:\n  production: {queue: {max_records: 50000}, log: {level: warn}}\n",
        );
        apply_profile(&mut root, Some("production")).unwrap();
        assert_eq!(
            root,
            yaml("queue: {max_records: 50000, overflow: block}\nlog: {level: warn}\n")
        );
        let mut root = yaml("profiles: {production: {}}\nqueue: {max_records: 10}\n");
        apply_profile(&mut root, None).unwrap();
        assert_eq!(root, yaml("queue: {max_records: 10}\n"));
    }

    #[test]
    fn an_unknown_profile_names_the_known_ones() {
        let mut root = yaml("profiles: {staging: {}, production: {}}\n");
        assert_eq!(
            apply_profile(&mut root, Some("prod"))
                .unwrap_err()
                .to_string(),
            "profile `prod` is not defined under `profiles:`; defined: production, staging"
        );
    }

    #[test]
    fn env_overrides_reach_existing_keys_whatever_their_case() {
        let mut root = yaml("sources:\n  firms_viirs_ca: {type: nasa_firms, interval: 10m}\n");
        let applied = apply_env(
            &mut root,
            [
                (
                    "FIRESTREAM__SOURCES__FIRMS_VIIRS_CA__INTERVAL".to_owned(),
                    "5m".to_owned(),
                ),
                (
                    "FIRESTREAM__QUEUE__MAX_RECORDS".to_owned(),
                    "20000".to_owned(),
                ),
                ("FIRESTREAM__API__ENABLED".to_owned(), "false".to_owned()),
                ("FIRESTREAM_PROFILE".to_owned(), "ignored".to_owned()),
                ("OTHER".to_owned(), "x".to_owned()),
            ],
        )
        .unwrap();
        assert_eq!(
            root,
            yaml(
                "sources:\n  firms_viirs_ca: {type: nasa_firms, interval: 5m}\n\
                 queue: {max_records: 20000}\napi: {enabled: false}\n"
            )
        );
        assert_eq!(applied.len(), 3);
        assert_eq!(applied[0].path, ["api", "enabled"]);
        assert_eq!(applied[0].variable, "FIRESTREAM__API__ENABLED");
    }

    #[test]
    fn override_values_read_as_yaml_scalars_or_text() {
        assert_eq!(scalar("5m"), Value::String("5m".into()));
        assert_eq!(scalar("3"), yaml("3"));
        assert_eq!(scalar("[a, b]"), yaml("[a, b]"));
        assert_eq!(scalar(""), Value::String(String::new()));
        // Text that YAML would read as a mapping stays text (a password with `: `).
        assert_eq!(scalar("pa: ss"), Value::String("pa: ss".into()));
        assert_eq!(scalar("!tag x"), Value::String("!tag x".into()));
    }

    #[test]
    fn an_override_below_a_scalar_is_refused() {
        let mut root = yaml("queue: 5\n");
        let err = apply_env(
            &mut root,
            [("FIRESTREAM__QUEUE__MAX_RECORDS".to_owned(), "1".to_owned())],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "FIRESTREAM__QUEUE__MAX_RECORDS: `max_records` cannot be set below a value that is not a mapping (queue)"
        );
    }

    #[test]
    fn the_shown_config_hides_inline_secrets_and_url_credentials() {
        let root = yaml(
            "sources:\n  f:\n    map_key: abcdef123456\n    url: \"https://x.example/a?api_key=zzz&q=1\"\n\
             \x20 p:\n    api_key: ${PURPLEAIR_KEY}\n    headers: {X-Token: inline, Accept: text/csv}\n\
             sink:\n  kafka:\n    properties: {sasl.password: hunter2, linger.ms: 20}\n\
             api: {token: \"${T:-fallback-secret}\", bind: \"127.0.0.1:8080\"}\n",
        );
        let shown = redacted(&root);
        assert_eq!(shown["sources"]["f"]["map_key"], "<redacted>");
        assert_eq!(
            shown["sources"]["f"]["url"],
            "https://x.example/a?api_key=<redacted>&q=1"
        );
        assert_eq!(shown["sources"]["p"]["api_key"], "${PURPLEAIR_KEY}");
        assert_eq!(shown["sources"]["p"]["headers"]["X-Token"], "<redacted>");
        assert_eq!(shown["sources"]["p"]["headers"]["Accept"], "<redacted>");
        assert_eq!(
            shown["sink"]["kafka"]["properties"]["sasl.password"],
            "<redacted>"
        );
        assert_eq!(shown["sink"]["kafka"]["properties"]["linger.ms"], 20);
        // A default after `:-` is written inline: hidden.
        assert_eq!(shown["api"]["token"], "<redacted>");
        assert_eq!(shown["api"]["bind"], "127.0.0.1:8080");
        let text = shown.to_string();
        for secret in [
            "abcdef123456",
            "zzz",
            "inline",
            "hunter2",
            "fallback-secret",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn a_hyphenated_id_is_reached_and_an_empty_segment_refused() {
        let mut root = yaml("sources:\n  firms-a: {interval: 10m}\n");
        apply_env(
            &mut root,
            [(
                "FIRESTREAM__SOURCES__FIRMS_A__INTERVAL".to_owned(),
                "5m".to_owned(),
            )],
        )
        .unwrap();
        assert_eq!(root, yaml("sources:\n  firms-a: {interval: 5m}\n"));
        let err = apply_env(
            &mut root,
            [(
                "FIRESTREAM__QUEUE____MAX_RECORDS".to_owned(),
                "5".to_owned(),
            )],
        )
        .unwrap_err();
        assert!(matches!(err, LayerError::EmptyPath(_)), "{err}");
    }
}
