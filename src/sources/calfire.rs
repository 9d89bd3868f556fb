//! `calfire_incidents`: CAL FIRE's incident lists (JSON).
//!
//! Two shapes. The 2022 `GetIncidents` object repeats each active incident in `Incidents`,
//! `ListIncidents` and `AllYearIncidents`, with different field names per list (`Updated` vs
//! `UpdatedDate`, `AcresBurned` vs `AcresBurnedDisplay` "19,244", `Active` vs `IsActive`
//! "Y"/"N"); the same update is emitted once per payload, the first list's copy winning. The
//! 2023+ `GetFiresForMap` array gives `Updated` and `Started` as dates only.
//!
//! Times are California wall-clock time, converted with the America/Los_Angeles rules of the
//! `chrono-tz` crate (maintained IANA data; handles DST, which a fixed offset would get wrong
//! half the year). That includes `GetIncidents`' `Updated`/`Started`, although they end in
//! `Z`: the captured payload shows the `Z` is a label, not UTC. Each of its 13 repeated
//! incidents has the same clock digits in `Updated` (`2022-09-28T18:46:57.693Z`) and the
//! zone-less `UpdatedDate` (`2022-09-28 18:46:57`). Its 147 update times fall between 06:00
//! and 22:59, which are Californian working hours only when read as local time. And the Oak
//! Fire's `Started` `14:10:00Z` is its reported 2:10 p.m. PDT start. An explicit numeric
//! offset (`-07:00`) is honoured as written.
//!
//! Times are kept to the second, since `UpdatedDate` has no milliseconds; both lists then give
//! the same id. A date-only `Updated` stays a date in `updated` and in the natural key, and
//! its `event_time` is that date's midnight in California, in UTC. A date-only `Started` is
//! also taken as midnight in California.
//!
//! Acres burned outside [`ACRES_BURNED`] make the incident invalid.

use std::collections::HashSet;
use std::io::BufRead;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::America::Los_Angeles;
use serde_json::{Map, Value};

use super::http::{json_document, type_name};
use super::{Bounds, Invalid, Parser, PayloadError, Row, SourceType, excerpt, read_to_end_capped};
use crate::config::SourceConfig;
use crate::record::{
    Data, FireIncident, Kind, Location, Priority, Quality, QualityFlag, Record, RecordId,
    format_event_time,
};

/// Acres burned by one incident. The largest US fire complexes burn about a million acres
/// (California's August Complex, 2020: 1,032,648 acres); ten times that is no real fire.
pub const ACRES_BURNED: Bounds = Bounds::new(0.0, 10_000_000.0, "acres");

/// Largest incident list read into memory (a whole year's list is well under 1 MB).
const MAX_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The lists of a `GetIncidents` object, in the order their copies win.
const LISTS: [&str; 3] = ["Incidents", "ListIncidents", "AllYearIncidents"];

/// Where CAL FIRE's relative incident links (`/incidents/2024/6/15/post-fire/`) live.
const SITE: &str = "https://www.fire.ca.gov";

const EXPECTED: &str = "CAL FIRE incident list JSON";

pub struct CalfireParser {
    source_id: Arc<str>,
}

impl CalfireParser {
    pub fn new(source_id: Arc<str>, _config: &SourceConfig) -> Self {
        CalfireParser { source_id }
    }
}

impl Parser for CalfireParser {
    fn parse(
        &self,
        input: &mut dyn BufRead,
        out: &mut dyn FnMut(Row) -> bool,
    ) -> Result<(), PayloadError> {
        let body = read_to_end_capped(input, MAX_DOCUMENT_BYTES)?;
        let doc = json_document(&body, EXPECTED)?;
        let lists: Vec<(Option<&str>, &Vec<Value>)> = match &doc {
            Value::Array(items) => {
                // Rows of another feed are a wrong payload, not a list of broken incidents.
                let looks_like_incident = |item: &Value| {
                    ["UniqueId", "Updated", "UpdatedDate"]
                        .iter()
                        .any(|f| item.get(f).is_some())
                };
                if !items.is_empty() && !items.iter().any(looks_like_incident) {
                    return Err(PayloadError::UnexpectedJson {
                        detail: "an array without UniqueId, Updated or UpdatedDate in any element"
                            .to_owned(),
                        excerpt: excerpt(&body),
                    });
                }
                vec![(None, items)]
            }
            Value::Object(map) => {
                let mut lists = Vec::new();
                for name in LISTS {
                    match map.get(name) {
                        Some(Value::Array(items)) => lists.push((Some(name), items)),
                        None | Some(Value::Null) => {}
                        Some(other) => {
                            return Err(PayloadError::UnexpectedJson {
                                detail: format!("{name} is {}, not an array", type_name(other)),
                                excerpt: excerpt(&body),
                            });
                        }
                    }
                }
                if lists.is_empty() {
                    return Err(PayloadError::UnexpectedJson {
                        detail: "an object without Incidents, ListIncidents or AllYearIncidents"
                            .to_owned(),
                        excerpt: excerpt(&body),
                    });
                }
                lists
            }
            other => {
                return Err(PayloadError::UnexpectedJson {
                    detail: format!("{}, not an incident list", type_name(other)),
                    excerpt: excerpt(&body),
                });
            }
        };

        let mut emitted = HashSet::new();
        for (list, items) in lists {
            for (i, item) in items.iter().enumerate() {
                let position = match list {
                    Some(name) => format!("incident {} of {name}", i + 1),
                    None => format!("incident {}", i + 1),
                };
                let row = match self.parse_incident(item) {
                    Ok(record) => {
                        if !emitted.insert(record.id) {
                            continue; // The same update, repeated in another list.
                        }
                        Row::Valid(Box::new(record))
                    }
                    Err(reason) => Row::Invalid(Invalid {
                        position,
                        reason,
                        raw: crate::dlq::truncate(item.to_string(), crate::dlq::MAX_RAW_BYTES),
                    }),
                };
                if !out(row) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// An update time: an instant, or a date when the list gives only that.
#[derive(Debug, Clone, Copy, PartialEq)]
enum When {
    Instant(DateTime<Utc>),
    Date(NaiveDate),
}

impl When {
    /// The instant it stands for: a date is its midnight in California.
    fn instant(self) -> Result<DateTime<Utc>, String> {
        match self {
            When::Instant(t) => Ok(t),
            When::Date(d) => california(d.and_time(chrono::NaiveTime::MIN)),
        }
    }

    /// As written in `updated` and the natural key.
    fn text(self) -> String {
        match self {
            When::Instant(t) => format_event_time(&t),
            When::Date(d) => d.format("%Y-%m-%d").to_string(),
        }
    }
}

impl CalfireParser {
    fn parse_incident(&self, item: &Value) -> Result<Record, String> {
        let obj = item
            .as_object()
            .ok_or_else(|| format!("incident is {}, not an object", type_name(item)))?;

        let incident_id = match obj.get("UniqueId") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                return Err("UniqueId is missing or empty".to_owned());
            }
            Some(other) => return Err(format!("UniqueId is {}, not a string", type_name(other))),
        };

        let (field, text) = first_text(obj, &["Updated", "UpdatedDate"])
            .ok_or("incident has neither Updated nor UpdatedDate")?;
        let updated = parse_when(text).map_err(|e| format!("{field} {text:?}: {e}"))?;
        let event_time = updated.instant().map_err(|e| format!("{field}: {e}"))?;

        let started = match first_text(obj, &["Started", "StartedDate"]) {
            Some((field, text)) => Some(
                parse_when(text)
                    .and_then(When::instant)
                    .map_err(|e| format!("{field} {text:?}: {e}"))?,
            ),
            None => None,
        };

        let acres_burned = first_number(obj, &["AcresBurned", "AcresBurnedDisplay"])?;
        if let Some((field, acres)) = acres_burned {
            if acres < 0.0 {
                return Err(format!("{field} {acres} is negative"));
            }
            ACRES_BURNED.check(field, acres)?;
        }
        let percent_contained =
            first_number(obj, &["PercentContained", "PercentContainedDisplay"])?;
        if let Some((field, pct)) = percent_contained
            && !(0.0..=100.0).contains(&pct)
        {
            return Err(format!("{field} {pct} is outside 0..100"));
        }

        let is_active = match ["IsActive", "Active"]
            .iter()
            .find_map(|f| obj.get(*f).filter(|v| !v.is_null()).map(|v| (*f, v)))
        {
            None => None,
            Some((field, value)) => Some(
                flag(value).ok_or_else(|| format!("{field} {value} is not Y/N or true/false"))?,
            ),
        };

        let location = location(obj)?;
        let mut flags = Vec::new();
        if acres_burned.is_none() || percent_contained.is_none() || location.is_none() {
            flags.push(QualityFlag::MissingFields);
        }

        let updated_text = updated.text();
        Ok(Record {
            schema: (),
            id: RecordId::from_natural_key(
                SourceType::CalfireIncidents,
                &[&incident_id, &updated_text],
            ),
            source_id: self.source_id.clone(),
            source_type: SourceType::CalfireIncidents,
            kind: Kind::FireIncident,
            event_time,
            ingested_at: Utc::now(),
            location,
            priority: Priority::Normal,
            quality: Quality::from_flags(flags),
            data: Data::FireIncident(FireIncident {
                incident_id,
                name: first_text(obj, &["Name"]).map(|(_, s)| s.to_owned()),
                acres_burned: acres_burned.map(|(_, v)| v),
                percent_contained: percent_contained.map(|(_, v)| v),
                county: county(obj),
                started,
                updated: Some(updated_text),
                is_active,
                url: first_text(obj, &["CanonicalUrl", "Url"]).map(|(_, u)| absolute(u)),
            }),
        })
    }
}

/// The first of `fields` holding a non-empty string, trimmed (CAL FIRE pads names with
/// spaces).
fn first_text<'a>(
    obj: &'a Map<String, Value>,
    fields: &[&'static str],
) -> Option<(&'static str, &'a str)> {
    fields.iter().find_map(|f| {
        obj.get(*f)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| (*f, s))
    })
}

/// The first of `fields` with a value: a number, or display text such as "19,244" or "98%".
/// Null and "" are missing; any other text is an error naming the field.
fn first_number(
    obj: &Map<String, Value>,
    fields: &[&'static str],
) -> Result<Option<(&'static str, f64)>, String> {
    for field in fields {
        let raw = match obj.get(*field) {
            None | Some(Value::Null) => continue,
            Some(raw) => raw,
        };
        let value = match raw {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => {
                let cleaned = s.trim().trim_end_matches('%').replace(',', "");
                if cleaned.trim().is_empty() {
                    continue;
                }
                cleaned.trim().parse::<f64>().ok()
            }
            _ => None,
        };
        return match value {
            Some(v) if v.is_finite() => Ok(Some((field, v))),
            _ => Err(format!("{field} {raw} is not a number")),
        };
    }
    Ok(None)
}

/// `IsActive` "Y"/"N" (2022 list) or a boolean.
fn flag(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" | "true" => Some(true),
            "n" | "no" | "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Counties as "El Dorado, Placer", from a list (`Counties`) or text (`CountiesList`,
/// `County` "Los Angeles,Ventura").
fn county(obj: &Map<String, Value>) -> Option<String> {
    let names: Vec<String> = match obj.get("Counties") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => first_text(obj, &["CountiesList", "County"])
            .map(|(_, s)| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    let names: Vec<&str> = names
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// Latitude/Longitude when given; 0/0 and missing mean "no location" (fire_incident allows
/// null); a half-given or out-of-range pair is an error.
fn location(obj: &Map<String, Value>) -> Result<Option<Location>, String> {
    let coordinate = |field: &str| -> Result<Option<f64>, String> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .map(Some)
                .map_err(|_| format!("{field} {s:?} is not a number")),
            Some(other) => Err(format!("{field} {other} is not a number")),
        }
    };
    match (coordinate("Latitude")?, coordinate("Longitude")?) {
        (None, None) => Ok(None),
        (Some(lat), Some(lon)) if lat == 0.0 && lon == 0.0 => Ok(None),
        (Some(lat), Some(lon)) => Location::new(lat, lon)
            .map(Some)
            .map_err(|e| format!("Latitude/Longitude: {e}")),
        (Some(_), None) => Err("Latitude is given without Longitude".to_owned()),
        (None, Some(_)) => Err("Longitude is given without Latitude".to_owned()),
    }
}

/// A CAL FIRE link made absolute.
fn absolute(url: &str) -> String {
    if url.starts_with('/') {
        format!("{SITE}{url}")
    } else {
        url.to_owned()
    }
}

/// A CAL FIRE time: a date, California wall-clock time (with or without its misleading `Z`),
/// or a time with an explicit numeric offset. Kept to the second.
fn parse_when(text: &str) -> Result<When, String> {
    let text = text.trim();
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(When::Date(date));
    }
    let wall = text.strip_suffix('Z').unwrap_or(text);
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(wall, format) {
            return california(naive).map(When::Instant);
        }
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| When::Instant(whole_seconds(t.with_timezone(&Utc))))
        .map_err(|_| "not a date, a date and time, or RFC 3339".to_owned())
}

/// California wall-clock time in UTC. In the autumn hour that happens twice the first (PDT)
/// is taken; a time in the spring-forward gap never happened and is an error.
fn california(naive: NaiveDateTime) -> Result<DateTime<Utc>, String> {
    Los_Angeles
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| whole_seconds(t.with_timezone(&Utc)))
        .ok_or_else(|| format!("{naive} does not exist in California (DST gap)"))
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn real(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/real/incidents")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn parse(body: &[u8]) -> Result<Vec<Row>, PayloadError> {
        let parser = CalfireParser::new(Arc::from("calfire"), &SourceConfig::default());
        let mut rows = Vec::new();
        parser.parse(&mut &body[..], &mut |row| {
            rows.push(row);
            true
        })?;
        Ok(rows)
    }

    fn valid(rows: &[Row]) -> Vec<&Record> {
        rows.iter()
            .filter_map(|r| match r {
                Row::Valid(r) => Some(r.as_ref()),
                Row::Invalid(_) => None,
            })
            .collect()
    }

    fn incident(record: &Record) -> &FireIncident {
        match &record.data {
            Data::FireIncident(i) => i,
            other => panic!("{other:?}"),
        }
    }

    fn find<'a>(records: &[&'a Record], name: &str) -> &'a Record {
        records
            .iter()
            .find(|r| incident(r).name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no {name}"))
    }

    fn only_invalid(body: &[u8]) -> Invalid {
        let mut rows = parse(body).unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        match rows.pop() {
            Some(Row::Invalid(inv)) => inv,
            other => panic!("{other:?}"),
        }
    }

    /// The Colorado Fire as `AllYearIncidents` gives it; tests change one detail.
    fn colorado() -> Value {
        json!({"IncidentId": 3215, "UniqueId": "f3558310-247c-4913-a08b-68d568abdf4b", "Name": "Colorado Fire", "Location": "Palo Colorado Canyon, Big Sur, south of Carmel-by-the-sea", "Latitude": 36.396461, "Longitude": -121.880533, "AcresBurnedDisplay": "687", "PercentContainedDisplay": "100%", "ExternalIncidentLink": "", "CountiesList": "Monterey", "UpdatedDate": "2022-02-03 11:08:21", "StartedDate": "2022-01-21", "AdminUnit": "CAL FIRE San Benito Monterey Unit & Mid Coast Fire", "IncidentTypeDisplay": "Wildfire", "Url": "https://www.fire.ca.gov/incidents/2022/1/21/colorado-fire/", "IsActive": "N"})
    }

    fn with(change: &[(&str, Value)]) -> Vec<u8> {
        let mut item = colorado();
        for (field, value) in change {
            item[*field] = value.clone();
        }
        serde_json::to_vec(&json!([item])).unwrap()
    }

    #[test]
    fn get_incidents_collapses_the_repeated_lists_to_one_record_per_update() {
        let rows = parse(&real("calfire_GetIncidents__2022-09-29.json")).unwrap();
        // 13 + 13 + 147 listed; the 13 active ones appear in all three lists.
        assert_eq!(rows.len(), 147);
        let records = valid(&rows);
        assert_eq!(records.len(), 147);
        let ids: HashSet<_> = records.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 147);
        let active = records
            .iter()
            .filter(|r| incident(r).is_active == Some(true))
            .count();
        assert_eq!(active, 13);
    }

    #[test]
    fn the_first_list_wins_and_z_times_are_california_time() {
        let rows = parse(&real("calfire_GetIncidents__2022-09-29.json")).unwrap();
        let records = valid(&rows);
        let r = find(&records, "97 Fire");
        let i = incident(r);
        assert_eq!(i.incident_id, "a5373b17-81bc-4a24-a844-148cb5de6b10");
        // Updated "2022-09-28T18:46:57.693Z" = UpdatedDate "2022-09-28 18:46:57", PDT.
        assert_eq!(format_event_time(&r.event_time), "2022-09-29T01:46:57Z");
        assert_eq!(i.updated.as_deref(), Some("2022-09-29T01:46:57Z"));
        // Started "2022-09-27T08:54:50Z" (from Incidents, which has the time of day).
        assert_eq!(
            i.started.map(|t| format_event_time(&t)).as_deref(),
            Some("2022-09-27T15:54:50Z")
        );
        assert_eq!(i.acres_burned, Some(30.0));
        assert_eq!(i.percent_contained, Some(80.0));
        assert_eq!(i.county.as_deref(), Some("Siskiyou"));
        assert_eq!(i.is_active, Some(true));
        assert_eq!(
            i.url.as_deref(),
            Some("https://www.fire.ca.gov/incidents/2022/9/27/97-fire/")
        );
        let loc = r.location.as_ref().unwrap();
        assert_eq!((loc.lat, loc.lon), (41.4987, -122.3414));
        assert_eq!(r.kind, Kind::FireIncident);
        assert_eq!(
            r.id,
            RecordId::from_natural_key(
                SourceType::CalfireIncidents,
                &[
                    "a5373b17-81bc-4a24-a844-148cb5de6b10",
                    "2022-09-29T01:46:57Z"
                ]
            )
        );
        // Oak Fire (Mariposa): Started "2022-07-22T14:10:00Z", reported at 2:10 p.m. PDT.
        let oak = incident(find(&records, "Oak Fire"));
        assert_eq!(
            oak.started.map(|t| format_event_time(&t)).as_deref(),
            Some("2022-07-22T21:10:00Z")
        );
        assert_eq!(oak.acres_burned, Some(19244.0));
        assert_eq!(oak.percent_contained, Some(98.0));
        let mosquito = incident(find(&records, "Mosquito Fire"));
        assert_eq!(mosquito.county.as_deref(), Some("El Dorado, Placer"));
        assert_eq!(mosquito.acres_burned, None);
    }

    #[test]
    fn all_year_list_display_fields_and_dst() {
        let rows = parse(&real("calfire_GetIncidents__2022-09-29.json")).unwrap();
        let records = valid(&rows);
        // Winter: PST, UTC−8.
        let colorado = find(&records, "Colorado Fire");
        assert_eq!(
            format_event_time(&colorado.event_time),
            "2022-02-03T19:08:21Z"
        );
        let i = incident(colorado);
        assert_eq!(i.acres_burned, Some(687.0));
        assert_eq!(i.percent_contained, Some(100.0));
        assert_eq!(i.is_active, Some(false));
        assert_eq!(
            i.started.map(|t| format_event_time(&t)).as_deref(),
            Some("2022-01-21T08:00:00Z")
        );
        assert_eq!(colorado.quality.flags, vec![]);
        // Summer: PDT, UTC−7. "" acres and percent are null, not 0.
        let six = find(&records, "Six Rivers (SRF) Lightning Complex");
        assert_eq!(format_event_time(&six.event_time), "2022-09-13T16:11:08Z");
        assert_eq!(incident(six).acres_burned, None);
        assert_eq!(incident(six).percent_contained, None);
        assert_eq!(six.quality.flags, vec![QualityFlag::MissingFields]);
        // A comma-grouped display value.
        let airport = incident(find(&records, "Airport Fire"));
        assert_eq!(airport.acres_burned, Some(4136.0));
    }

    #[test]
    fn get_fires_for_map_keeps_date_only_updates_as_dates() {
        let rows = parse(&real("calfire_GetFiresForMap__2024-06-18.json")).unwrap();
        let records = valid(&rows);
        assert_eq!(rows.len(), 19);
        assert_eq!(records.len(), 19);
        let post = find(&records, "Post Fire");
        let i = incident(post);
        assert_eq!(i.incident_id, "c93f7495-a345-4416-80b1-fb91996fa7dd");
        assert_eq!(i.updated.as_deref(), Some("2024-06-18"));
        assert_eq!(format_event_time(&post.event_time), "2024-06-18T07:00:00Z");
        assert_eq!(
            i.started.map(|t| format_event_time(&t)).as_deref(),
            Some("2024-06-15T07:00:00Z")
        );
        assert_eq!(i.acres_burned, Some(15611.0));
        assert_eq!(i.percent_contained, Some(24.0));
        assert_eq!(i.county.as_deref(), Some("Los Angeles, Ventura"));
        assert_eq!(i.is_active, Some(true));
        assert_eq!(
            i.url.as_deref(),
            Some("https://www.fire.ca.gov/incidents/2024/6/15/post-fire/")
        );
        assert_eq!(
            post.id,
            RecordId::from_natural_key(
                SourceType::CalfireIncidents,
                &["c93f7495-a345-4416-80b1-fb91996fa7dd", "2024-06-18"]
            )
        );
        // A real 0 % stays 0.
        let west = incident(find(&records, "West Fire"));
        assert_eq!(west.percent_contained, Some(0.0));
        assert_eq!(
            incident(find(&records, "Rocky Fire")).acres_burned,
            Some(17.7)
        );
    }

    #[test]
    fn a_winter_date_is_midnight_pst() {
        let rows = parse(&with(&[("UpdatedDate", json!("2022-02-03"))])).unwrap();
        let r = valid(&rows)[0];
        assert_eq!(format_event_time(&r.event_time), "2022-02-03T08:00:00Z");
        assert_eq!(incident(r).updated.as_deref(), Some("2022-02-03"));
    }

    #[test]
    fn is_active_as_bool_or_y_n() {
        for (value, expected) in [
            (json!("Y"), Some(true)),
            (json!("N"), Some(false)),
            (json!(true), Some(true)),
            (json!(false), Some(false)),
            (Value::Null, None),
        ] {
            let rows = parse(&with(&[("IsActive", value.clone())])).unwrap();
            assert_eq!(incident(valid(&rows)[0]).is_active, expected, "{value}");
        }
        let inv = only_invalid(&with(&[("IsActive", json!("maybe"))]));
        assert_eq!(inv.reason, "IsActive \"maybe\" is not Y/N or true/false");
    }

    #[test]
    fn an_explicit_offset_is_honoured() {
        let rows = parse(&with(&[(
            "UpdatedDate",
            json!("2022-02-03T11:08:21-08:00"),
        )]))
        .unwrap();
        assert_eq!(
            format_event_time(&valid(&rows)[0].event_time),
            "2022-02-03T19:08:21Z"
        );
    }

    #[test]
    fn dst_edges() {
        // 01:30 on 2022-11-06 happens twice: the first, PDT, is taken.
        let rows = parse(&with(&[("UpdatedDate", json!("2022-11-06 01:30:00"))])).unwrap();
        assert_eq!(
            format_event_time(&valid(&rows)[0].event_time),
            "2022-11-06T08:30:00Z"
        );
        // 02:30 on 2022-03-13 never happened.
        let inv = only_invalid(&with(&[("UpdatedDate", json!("2022-03-13 02:30:00"))]));
        assert_eq!(
            inv.reason,
            "UpdatedDate \"2022-03-13 02:30:00\": 2022-03-13 02:30:00 does not exist in California (DST gap)"
        );
    }

    #[test]
    fn location_zero_or_missing_is_null_out_of_range_is_invalid() {
        let rows = parse(&with(&[("Latitude", json!(0)), ("Longitude", json!(0))])).unwrap();
        assert_eq!(valid(&rows)[0].location, None);
        let rows = parse(&with(&[
            ("Latitude", Value::Null),
            ("Longitude", Value::Null),
        ]))
        .unwrap();
        assert_eq!(valid(&rows)[0].location, None);
        assert_eq!(
            valid(&rows)[0].quality.flags,
            vec![QualityFlag::MissingFields]
        );
        let inv = only_invalid(&with(&[("Latitude", json!(136.396461))]));
        assert_eq!(inv.position, "incident 1");
        assert_eq!(
            inv.reason,
            "Latitude/Longitude: latitude 136.396461 is outside -90..90"
        );
        assert!(inv.raw.contains("f3558310-247c-4913-a08b-68d568abdf4b"));
    }

    #[test]
    fn acres_burned_is_bounded_at_0_and_10_million() {
        let reason = |acres: Value| {
            let mut doc: Value =
                serde_json::from_slice(&real("calfire_GetFiresForMap__2024-06-18.json")).unwrap();
            doc[0]["AcresBurned"] = acres;
            let rows = parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
            match &rows[0] {
                Row::Valid(_) => None,
                Row::Invalid(i) => Some(i.reason.clone()),
            }
        };
        assert_eq!(reason(json!(0)), None);
        assert_eq!(reason(json!(10_000_000)), None);
        assert_eq!(
            reason(json!(10_000_000.5)).as_deref(),
            Some("AcresBurned 10000000.5 acres is outside the accepted range 0 to 10000000 acres")
        );
        assert_eq!(
            reason(json!(1e308)).as_deref(),
            Some("AcresBurned 1e308 acres is outside the accepted range 0 to 10000000 acres")
        );
        assert_eq!(
            reason(json!(-0.5)).as_deref(),
            Some("AcresBurned -0.5 is negative")
        );
    }

    #[test]
    fn bad_rows_are_invalid_with_position_and_field() {
        let mut doc: Value =
            serde_json::from_slice(&real("calfire_GetIncidents__2022-09-29.json")).unwrap();
        doc["AllYearIncidents"][3]
            .as_object_mut()
            .unwrap()
            .remove("UniqueId");
        doc["AllYearIncidents"][4]["AcresBurnedDisplay"] = json!("about 40");
        doc["AllYearIncidents"][5]["PercentContainedDisplay"] = json!("120%");
        doc["AllYearIncidents"][6]["UpdatedDate"] = json!("yesterday");
        doc["AllYearIncidents"][7]["UpdatedDate"] = json!("");
        let rows = parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(rows.len(), 147);
        let invalid: Vec<(String, String)> = rows
            .iter()
            .filter_map(|r| match r {
                Row::Invalid(i) => Some((i.position.clone(), i.reason.clone())),
                Row::Valid(_) => None,
            })
            .collect();
        let expected = [
            (
                "incident 4 of AllYearIncidents",
                "UniqueId is missing or empty",
            ),
            (
                "incident 5 of AllYearIncidents",
                "AcresBurnedDisplay \"about 40\" is not a number",
            ),
            (
                "incident 6 of AllYearIncidents",
                "PercentContainedDisplay 120 is outside 0..100",
            ),
            (
                "incident 7 of AllYearIncidents",
                "UpdatedDate \"yesterday\": not a date, a date and time, or RFC 3339",
            ),
            (
                "incident 8 of AllYearIncidents",
                "incident has neither Updated nor UpdatedDate",
            ),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(p, r)| (p.to_string(), r.to_string()))
            .collect();
        assert_eq!(invalid, expected);
        let body = serde_json::to_vec(&json!([42, colorado()])).unwrap();
        let rows = parse(&body).unwrap();
        match &rows[0] {
            Row::Invalid(inv) => {
                assert_eq!(inv.position, "incident 1");
                assert_eq!(inv.reason, "incident is a number, not an object");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(rows[1], Row::Valid(_)));
    }

    #[test]
    fn not_an_incident_list_is_a_payload_error() {
        let html = b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head></html>";
        assert!(matches!(parse(html), Err(PayloadError::Html { .. })));
        assert!(matches!(
            parse(b"The service is temporarily unavailable."),
            Err(PayloadError::Text { .. })
        ));
        assert!(matches!(
            parse(b"{\"Incidents\": [}"),
            Err(PayloadError::InvalidJson { .. })
        ));
        assert!(matches!(parse(b""), Err(PayloadError::Empty { .. })));
        match parse(b"{\"Message\": \"An error has occurred.\"}") {
            Err(PayloadError::UnexpectedJson { detail, excerpt }) => {
                assert_eq!(
                    detail,
                    "an object without Incidents, ListIncidents or AllYearIncidents"
                );
                assert_eq!(excerpt, "{\"Message\": \"An error has occurred.\"}");
            }
            other => panic!("{other:?}"),
        }
        match parse(b"{\"Incidents\": 3}") {
            Err(PayloadError::UnexpectedJson { detail, .. }) => {
                assert_eq!(detail, "Incidents is a number, not an array")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(b"\"ok\""),
            Err(PayloadError::UnexpectedJson { .. })
        ));
        // Another feed's rows (real AirNow observations) are not incidents with faults.
        let airnow = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/real/airnow/observation_latLong_current__2020-12-20_LA.json"),
        )
        .unwrap();
        match parse(&airnow) {
            Err(PayloadError::UnexpectedJson { detail, .. }) => assert_eq!(
                detail,
                "an array without UniqueId, Updated or UpdatedDate in any element"
            ),
            other => panic!("{other:?}"),
        }
        // An empty list is no fires, not an error.
        assert_eq!(parse(b"[]").unwrap().len(), 0);
    }
}
