//! Layers over a config file (DESIGN §6): a profile from the file's `profiles:` section, then
//! environment overrides `FIRESTREAM__SECTION__KEY=value`, each deep-merged over what is
//! below it. Containers get a config per environment without a file per environment.

use yaml_serde::{Mapping, Value};

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
    #[error("{0}: name a setting after the prefix, e.g. FIRESTREAM__QUEUE__MAX_RECORDS=20000")]
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
        let segments: Vec<&str> = variable[ENV_PREFIX.len()..]
            .split("__")
            .filter(|s| !s.is_empty())
            .collect();
        if segments.is_empty() {
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
            let key = map
                .keys()
                .filter_map(Value::as_str)
                .find(|k| k.eq_ignore_ascii_case(segment))
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
}
