//! What `firestream sources` prints: each connector type and the options a source of it
//! takes, with defaults. Tests hold it to the config's real fields and to the table of which
//! type each type-specific option applies to.

use serde::Serialize;

use super::SourceType;

/// One option of a source.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OptionDoc {
    pub name: &'static str,
    /// The types it applies to; empty: every type.
    #[serde(serialize_with = "type_names")]
    pub types: &'static [SourceType],
    /// The default as written in a config, or what happens without it.
    pub default: &'static str,
    pub description: &'static str,
}

fn type_names<S: serde::Serializer>(types: &[SourceType], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(types.iter().map(|t| t.as_str()))
}

use SourceType::*;

const HTTP_TYPES: &[SourceType] = &[
    NasaFirms,
    NwsObservations,
    NwsAlerts,
    Purpleair,
    Airnow,
    CalfireIncidents,
    Http,
];

/// Every option of `sources.<id>`.
pub const OPTIONS: &[OptionDoc] = &[
    o(
        "type",
        &[],
        "(required)",
        "the connector: nasa_firms, nws_observations, nws_alerts, purpleair, airnow, calfire_incidents, mqtt, http",
    ),
    o(
        "mode",
        &[],
        "real_time",
        "real_time | batch | continuous_streaming",
    ),
    o(
        "interval",
        &[],
        "(required for real_time and polled continuous_streaming; not for mqtt)",
        "time between polls, ≥ 1s",
    ),
    o(
        "schedule",
        &[],
        "(required for batch)",
        "{every: 3h} or {cron: \"0 */3 * * *\"} (UTC)",
    ),
    o(
        "overflow",
        &[],
        "queue.overflow",
        "what a full queue does to this source's records: block | drop_oldest | drop_newest (file sources always block)",
    ),
    o(
        "buffer_size",
        &[],
        "500",
        "continuous_streaming: records held before they go to the queue",
    ),
    o(
        "buffer_flush_interval",
        &[],
        "1s",
        "continuous_streaming: longest a record waits in the buffer",
    ),
    o(
        "paths",
        &[],
        "(none: poll the API)",
        "file transport: globs relative to the config file, plain or gzip",
    ),
    o(
        "topic",
        &[],
        "the type's default topic",
        "overrides routing for every record of this source (required for http)",
    ),
    o(
        "priority",
        &[],
        "(the record's own)",
        "overrides the priority rules: critical | high | normal | low",
    ),
    o(
        "high_frp_mw",
        &[NasaFirms],
        "100",
        "FRP (MW) from which a high-confidence detection is high priority",
    ),
    o(
        "critical_events",
        &[NwsAlerts],
        "Red Flag Warning, Fire Weather Watch, Fire Warning, Extreme Fire Danger, Evacuation Immediate",
        "events delivered as critical",
    ),
    o(
        "url",
        HTTP_TYPES,
        "the type's public API (required for http)",
        "the API's base URL, or the endpoint for http; may hold ${VAR} secrets",
    ),
    o("timeout", HTTP_TYPES, "30s", "per request"),
    o(
        "max_body",
        HTTP_TYPES,
        "64MiB",
        "larger responses are refused while they stream in",
    ),
    o(
        "cache_ttl",
        HTTP_TYPES,
        "(none)",
        "a URL fetched this recently is not asked again",
    ),
    o(
        "retries",
        HTTP_TYPES,
        "3",
        "retries of a failed request within one poll (backoff with full jitter)",
    ),
    o(
        "circuit",
        HTTP_TYPES,
        "{failures: 5, cooldown: 5m}",
        "skip polls after this many failed ones, for the cooldown",
    ),
    o(
        "user_agent",
        HTTP_TYPES,
        "http.user_agent",
        "NWS refuses clients without a descriptive one",
    ),
    o(
        "headers",
        HTTP_TYPES,
        "(none)",
        "extra request headers; values may be ${VAR} secrets",
    ),
    o(
        "map_key",
        &[NasaFirms],
        "(required for the API)",
        "FIRMS MAP_KEY, e.g. ${FIRMS_MAP_KEY}",
    ),
    o(
        "product",
        &[NasaFirms],
        "VIIRS_SNPP_NRT",
        "FIRMS source, e.g. VIIRS_NOAA20_NRT, MODIS_NRT",
    ),
    o(
        "bbox",
        &[NasaFirms, Purpleair, Airnow],
        "(required for FIRMS and PurpleAir)",
        "[west, south, east, north] in degrees",
    ),
    o(
        "day_range",
        &[NasaFirms],
        "1",
        "days back from today (or from date)",
    ),
    o(
        "date",
        &[NasaFirms],
        "today",
        "the last day of the range, YYYY-MM-DD",
    ),
    o(
        "stations",
        &[NwsObservations],
        "(or state)",
        "station ids to poll",
    ),
    o(
        "state",
        &[NwsObservations],
        "(or stations)",
        "discover the stations of this state, e.g. CA",
    ),
    o(
        "area",
        &[NwsAlerts],
        "(all active alerts)",
        "state or marine area code, e.g. CA, PZ",
    ),
    o(
        "api_key",
        &[Purpleair, Airnow],
        "(required)",
        "the API key, e.g. ${PURPLEAIR_API_KEY}",
    ),
    o(
        "fields",
        &[Purpleair],
        "the fields firestream maps",
        "fields requested (points are charged per field)",
    ),
    o(
        "max_age",
        &[Purpleair],
        "(none)",
        "only sensors seen within this age",
    ),
    o(
        "stale_after",
        &[Purpleair],
        "1h",
        "a reading this much older than the response is flagged stale",
    ),
    o(
        "latitude",
        &[Airnow],
        "(or bbox)",
        "observation point, with longitude and distance_miles",
    ),
    o("longitude", &[Airnow], "(or bbox)", "observation point"),
    o(
        "distance_miles",
        &[Airnow],
        "25",
        "search radius around the point",
    ),
    o(
        "parameters",
        &[Airnow],
        "PM25, OZONE",
        "with bbox: parameters for /aq/data",
    ),
    o(
        "broker",
        &[Mqtt],
        "(required)",
        "mqtt://host[:port] or mqtts://host[:port]",
    ),
    o(
        "topics",
        &[Mqtt],
        "(required)",
        "topic filters subscribed with QoS 1",
    ),
    o("username", &[Mqtt], "(none)", "broker login"),
    o(
        "password",
        &[Mqtt],
        "(none)",
        "broker password, e.g. ${MQTT_PASSWORD}",
    ),
    o(
        "client_id",
        &[Mqtt],
        "firestream-<stream id>",
        "persistent session: unacknowledged messages come back",
    ),
    o(
        "ca_file",
        &[Mqtt],
        "(system roots)",
        "PEM of the CA that signed the broker's certificate (mqtts)",
    ),
    o(
        "mapping",
        &[Http, Mqtt],
        "mqtt: time from `time`, every numeric field kept",
        "how a JSON payload maps to a record (field names or JSON pointers)",
    ),
    o("format", &[Http], "json", "json | csv | geojson"),
    o(
        "record_pointer",
        &[Http],
        "the document (or /features for GeoJSON)",
        "JSON pointer to the array of records",
    ),
    o(
        "next_link",
        &[Http],
        "(no pagination)",
        "JSON pointer to the next page's URL",
    ),
];

const fn o(
    name: &'static str,
    types: &'static [SourceType],
    default: &'static str,
    description: &'static str,
) -> OptionDoc {
    OptionDoc {
        name,
        types,
        default,
        description,
    }
}

/// The options of one type, in the order above.
pub fn options_for(source_type: SourceType) -> Vec<OptionDoc> {
    OPTIONS
        .iter()
        .filter(|o| o.types.is_empty() || o.types.contains(&source_type))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, SourceConfig};
    use std::path::Path;

    /// The fields serde knows, read from its "unknown field" message.
    fn config_fields() -> Vec<String> {
        let err = Config::parse("sources:\n  a: {zzz: 1}\n", Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        let list = err.split("expected one of ").nth(1).unwrap();
        list.split(", ")
            .map(|f| f.trim().trim_matches('`').to_owned())
            .collect()
    }

    #[test]
    fn the_catalog_lists_exactly_the_fields_a_source_takes() {
        let mut documented: Vec<String> = OPTIONS.iter().map(|o| o.name.to_owned()).collect();
        let mut fields = config_fields();
        documented.sort();
        fields.sort();
        assert_eq!(documented, fields);
    }

    #[test]
    fn type_specific_options_apply_where_the_config_check_says() {
        for (name, _, types) in crate::transport::http::setting_types(&SourceConfig::default()) {
            let doc = OPTIONS.iter().find(|o| o.name == name).unwrap();
            assert_eq!(doc.types, types, "{name}");
        }
    }

    #[test]
    fn every_type_has_its_own_options() {
        let firms: Vec<&str> = options_for(NasaFirms).iter().map(|o| o.name).collect();
        assert!(firms.contains(&"map_key") && !firms.contains(&"broker"));
        let mqtt: Vec<&str> = options_for(Mqtt).iter().map(|o| o.name).collect();
        assert!(mqtt.contains(&"broker") && !mqtt.contains(&"url"));
    }
}
