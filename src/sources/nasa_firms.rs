//! `nasa_firms`: NASA FIRMS active-fire CSV (area API, 24h/7d text files, archive downloads).
//!
//! Quirks handled, all seen in real files:
//! - VIIRS brightness under `bright_ti4`/`bright_ti5` or, in archive downloads, under MODIS'
//!   `brightness`/`bright_t31`; the instrument comes from the `instrument` column, else the
//!   satellite code, else the column names;
//! - satellite codes `T`, `A`, `Terra`, `Aqua`, `N`, `1`, `N20`, `N21`… mapped to canonical names;
//! - confidence as `l/n/h`, `low/nominal/high` or MODIS 0–100;
//! - `acq_time` as `HHMM`, with leading zeros lost (`614`, `45`), or ` HH:MM`;
//! - archive `type` column; header-only payload = no fires; non-CSV payload = classified error;
//! - an unknown satellite code is kept as given (a new satellite is data, not an error), its
//!   instrument then from the `instrument` column or the column names.
//!
//! Values outside physical bounds ([`FRP_MW`], [`BRIGHTNESS_K`], [`PIXEL_KM`]) and
//! acquisition times more than a day in the future make the row invalid.

use std::io::BufRead;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};

use super::csv_lines::{Line, LineParser, Lines};
use super::{
    Bounds, Invalid, Parser, PayloadError, Row, SourceType, excerpt, not_in_future, read_head,
    sniff_non_data,
};
use crate::config::SourceConfig;
use crate::record::{
    Confidence, Data, DayNight, DetectionType, FireDetection, Instrument, Kind, Location, Priority,
    Quality, QualityFlag, Record, RecordId, key_number,
};

/// FRP (MW) from which a high-confidence detection is `high` priority, unless configured.
pub const DEFAULT_HIGH_FRP_MW: f64 = 100.0;

/// Fire radiative power of one pixel. Even extreme fires give single-pixel FRP in the
/// thousands of MW (the real files in tests/data/real peak at 2,561 MW for a 1 km MODIS
/// pixel); 100,000 MW (100 GW) from one pixel is beyond any fire, so it is a corrupt value.
pub const FRP_MW: Bounds = Bounds::new(0.0, 100_000.0, "MW");

/// Brightness temperatures of both channels (MODIS 21/22 and 31, VIIRS I4 and I5). Channel
/// 21 saturates near 500 K, VIIRS I4 at 367 K (folding to 208 K), I5 near 380 K; the coldest
/// cloud tops are about 180 K. 150–800 K holds every real reading with a margin.
pub const BRIGHTNESS_K: Bounds = Bounds::new(150.0, 800.0, "K");

/// Pixel size along scan and track. MODIS pixels are 1 km at nadir and grow to about 4.8 ×
/// 2 km at the swath edge, VIIRS 375 m pixels to about 0.8 km; a pixel has a size above 0,
/// and 10 km is twice the largest.
pub const PIXEL_KM: Bounds = Bounds::above(0.0, 10.0, "km");

/// The first day FIRMS has detections for (MODIS on Terra, 2000-11-01): an earlier date is
/// not old data, it is a damaged row. Old data as such is valid (DESIGN §3).
pub const FIRST_ACQ_DATE: NaiveDate = NaiveDate::from_ymd_opt(2000, 11, 1).expect("valid date");

const REQUIRED: [&str; 5] = ["latitude", "longitude", "acq_date", "acq_time", "satellite"];

/// Longest CSV line accepted: real rows are ~100 bytes; a line of megabytes is not FIRMS
/// data, and reading it whole would cost memory without bound. A longer line is skipped
/// (to the DLQ with its first bytes) and the lines after it are read.
const MAX_LINE_BYTES: usize = 1 << 20;

pub struct FirmsParser {
    source_id: Arc<str>,
    high_frp_mw: f64,
    /// The wall clock, which acquisition times may not pass by more than a day (a field so
    /// tests can fix it).
    now: fn() -> DateTime<Utc>,
}

impl FirmsParser {
    pub fn new(source_id: Arc<str>, config: &SourceConfig) -> Self {
        FirmsParser {
            source_id,
            high_frp_mw: config.high_frp_mw.unwrap_or(DEFAULT_HIGH_FRP_MW),
            now: Utc::now,
        }
    }
}

/// Column positions, found by name so any FIRMS layout works.
struct Columns {
    latitude: usize,
    longitude: usize,
    acq_date: usize,
    acq_time: usize,
    satellite: usize,
    brightness: Option<usize>,
    brightness_2: Option<usize>,
    /// True when brightness comes from `bright_ti4/5` (VIIRS naming).
    viirs_names: bool,
    scan: Option<usize>,
    track: Option<usize>,
    instrument: Option<usize>,
    confidence: Option<usize>,
    version: Option<usize>,
    frp: Option<usize>,
    daynight: Option<usize>,
    detection_type: Option<usize>,
}

impl Columns {
    fn from_header(header: &csv::StringRecord, head: &[u8]) -> Result<Self, PayloadError> {
        let names: Vec<String> = header
            .iter()
            .map(|h| h.trim().trim_start_matches('\u{FEFF}').to_ascii_lowercase())
            .collect();
        let find = |name: &str| names.iter().position(|n| n == name);
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|c| find(c).is_none())
            .collect();
        if !missing.is_empty() {
            // A one-field "header" with no known column is a text message such as
            // `Invalid MAP_KEY.`, not a CSV with a bad header.
            if names.len() <= 1 && REQUIRED.iter().all(|c| find(c).is_none()) {
                return Err(PayloadError::Text {
                    expected: "FIRMS CSV",
                    excerpt: excerpt(head),
                });
            }
            return Err(PayloadError::MissingColumns {
                missing: missing.join(", "),
                excerpt: excerpt(head),
            });
        }
        let ti4 = find("bright_ti4");
        Ok(Columns {
            latitude: find("latitude").unwrap_or_default(),
            longitude: find("longitude").unwrap_or_default(),
            acq_date: find("acq_date").unwrap_or_default(),
            acq_time: find("acq_time").unwrap_or_default(),
            satellite: find("satellite").unwrap_or_default(),
            brightness: ti4.or_else(|| find("brightness")),
            brightness_2: find("bright_ti5").or_else(|| find("bright_t31")),
            viirs_names: ti4.is_some(),
            scan: find("scan"),
            track: find("track"),
            instrument: find("instrument"),
            confidence: find("confidence"),
            version: find("version"),
            frp: find("frp"),
            daynight: find("daynight"),
            detection_type: find("type"),
        })
    }
}

impl Parser for FirmsParser {
    fn parse(
        &self,
        input: &mut dyn BufRead,
        out: &mut dyn FnMut(Row) -> bool,
    ) -> Result<(), PayloadError> {
        let head = read_head(input, 1024)?;
        if let Some(err) = sniff_non_data(&head, "FIRMS CSV") {
            return Err(err);
        }
        // Line by line: FIRMS rows never span lines, so a bad line (far too long, a quote
        // left open) costs that line alone, never the rows after it.
        let mut lines = Lines::new(std::io::Read::chain(head.as_slice(), input), MAX_LINE_BYTES);
        let mut fields = LineParser::new();
        let mut bytes = csv::ByteRecord::new();
        let (header_len, columns) = loop {
            match lines.next_line()? {
                None => {
                    return Err(PayloadError::Empty {
                        expected: "FIRMS CSV",
                    });
                }
                Some((_, Line::Text(b""))) => continue,
                Some((number, Line::TooLong { len, .. })) => {
                    return Err(PayloadError::Csv {
                        detail: format!(
                            "line {number} (the header) is {len} bytes, longer than the {} KiB a FIRMS header can be",
                            MAX_LINE_BYTES / 1024
                        ),
                    });
                }
                Some((number, Line::Text(text))) => {
                    let closed = fields.parse(text, &mut bytes);
                    let header = csv::StringRecord::from_byte_record_lossy(bytes.clone());
                    // Checked first: a one-line text message with a quote is still text.
                    let columns = Columns::from_header(&header, &head)?;
                    if !closed {
                        return Err(PayloadError::Csv {
                            detail: format!("line {number} (the header) has an unterminated quote"),
                        });
                    }
                    break (header.len(), columns);
                }
            }
        };
        let now = (self.now)();
        while let Some((number, line)) = lines.next_line()? {
            let position = format!("line {number}");
            let row = match line {
                Line::Text(b"") => continue,
                Line::TooLong { head, len } => Row::Invalid(Invalid {
                    position,
                    reason: format!(
                        "line is {len} bytes, longer than the {} KiB a FIRMS row can be (rows are about 100 bytes); the line is skipped, the file continues",
                        MAX_LINE_BYTES / 1024
                    ),
                    raw: excerpt(head),
                }),
                Line::Text(text) if !fields.parse(text, &mut bytes) => Row::Invalid(Invalid {
                    position,
                    reason: "unterminated quote: a quoted field opens on this line and is not closed by its end (FIRMS rows never span lines); the next line is read as a new row".to_owned(),
                    raw: String::from_utf8_lossy(text).into_owned(),
                }),
                Line::Text(text) => {
                    match csv::StringRecord::from_byte_record(std::mem::take(&mut bytes)) {
                        Ok(row) => {
                            let checked = self.check_row(&columns, header_len, &row, now);
                            bytes = row.into_byte_record();
                            match checked {
                                Ok(record) => Row::Valid(Box::new(record)),
                                Err(reason) => Row::Invalid(Invalid {
                                    position,
                                    reason,
                                    raw: String::from_utf8_lossy(text).into_owned(),
                                }),
                            }
                        }
                        Err(e) => {
                            let reason = format!("row is not valid UTF-8: {}", e.utf8_error());
                            bytes = e.into_byte_record();
                            Row::Invalid(Invalid {
                                position,
                                reason,
                                raw: String::from_utf8_lossy(text).into_owned(),
                            })
                        }
                    }
                }
            };
            if !out(row) {
                return Ok(());
            }
        }
        Ok(())
    }
}

impl FirmsParser {
    /// A row whose field count matches the header, parsed; anything else is the reason it is
    /// invalid.
    fn check_row(
        &self,
        columns: &Columns,
        fields: usize,
        row: &csv::StringRecord,
        now: DateTime<Utc>,
    ) -> Result<Record, String> {
        if row.len() == fields {
            self.parse_row(columns, row, now)
        } else {
            // A cut or merged row: its values may sit under the wrong columns, and a partial
            // record would shadow the complete row later (dedupe).
            Err(format!(
                "row has {} field(s), the header has {fields}",
                row.len()
            ))
        }
    }

    fn parse_row(
        &self,
        c: &Columns,
        row: &csv::StringRecord,
        now: DateTime<Utc>,
    ) -> Result<Record, String> {
        let field = |i: usize| row.get(i).map(str::trim).filter(|s| !s.is_empty());
        let opt = |i: Option<usize>| i.and_then(field);

        let lat = required_number(field(c.latitude), "latitude")?;
        let lon = required_number(field(c.longitude), "longitude")?;
        let location = Location::new(lat, lon)?;

        let date_text = field(c.acq_date).ok_or("acq_date is empty")?;
        let date = NaiveDate::parse_from_str(date_text, "%Y-%m-%d")
            .map_err(|_| format!("acq_date {date_text:?} is not YYYY-MM-DD"))?;
        if date < FIRST_ACQ_DATE {
            return Err(format!(
                "acq_date {date_text} is before {FIRST_ACQ_DATE}, the first day of FIRMS data (MODIS on Terra)"
            ));
        }
        // Not trimmed: ` HH:MM` is a documented layout, handled by parse_acq_time.
        let time_text = row.get(c.acq_time).unwrap_or_default();
        let time = parse_acq_time(time_text)?;
        let event_time = not_in_future(
            "acq_date/acq_time",
            Utc.from_utc_datetime(&date.and_time(time)),
            now,
            "now",
        )?;

        let satellite_text = field(c.satellite).ok_or("satellite is empty")?;
        let (satellite, satellite_instrument) = canonical_satellite(satellite_text);
        let instrument = opt(c.instrument)
            .and_then(parse_instrument)
            .or(satellite_instrument)
            .unwrap_or(if c.viirs_names {
                Instrument::Viirs
            } else {
                Instrument::Modis
            });

        let brightness_k = measurement(opt(c.brightness), "brightness", BRIGHTNESS_K)?;
        let brightness_2_k = measurement(opt(c.brightness_2), "brightness_2", BRIGHTNESS_K)?;
        let frp_mw = measurement(opt(c.frp), "frp", FRP_MW)?;
        let scan_km = measurement(opt(c.scan), "scan", PIXEL_KM)?;
        let track_km = measurement(opt(c.track), "track", PIXEL_KM)?;
        let (confidence, confidence_pct) = match opt(c.confidence) {
            Some(text) => {
                let (class, pct) = parse_confidence(text)?;
                (Some(class), pct)
            }
            None => (None, None),
        };
        let daynight = match opt(c.daynight) {
            Some("D" | "d") => Some(DayNight::Day),
            Some("N" | "n") => Some(DayNight::Night),
            Some(other) => return Err(format!("daynight {other:?} is neither D nor N")),
            None => None,
        };
        let detection_type = match opt(c.detection_type) {
            Some(text) => {
                let code: u8 = text
                    .parse()
                    .map_err(|_| format!("type {text:?} is not a FIRMS detection type code"))?;
                DetectionType::from_code(code)
            }
            None => None,
        };

        let mut flags = Vec::new();
        if daynight == Some(DayNight::Night) {
            flags.push(QualityFlag::Night);
        }
        if confidence == Some(Confidence::Low) {
            flags.push(QualityFlag::LowConfidence);
        }
        if brightness_k.is_none()
            || brightness_2_k.is_none()
            || frp_mw.is_none()
            || confidence.is_none()
            || daynight.is_none()
        {
            flags.push(QualityFlag::MissingFields);
        }

        let hhmm = time.format("%H%M").to_string();
        let id = RecordId::from_natural_key(
            SourceType::NasaFirms,
            &[
                &satellite,
                &date.format("%Y-%m-%d").to_string(),
                &hhmm,
                &key_number(lat),
                &key_number(lon),
            ],
        );
        let priority = if confidence == Some(Confidence::High)
            && frp_mw.is_some_and(|frp| frp >= self.high_frp_mw)
        {
            Priority::High
        } else {
            Priority::Normal
        };

        Ok(Record {
            schema: (),
            id,
            source_id: self.source_id.clone(),
            source_type: SourceType::NasaFirms,
            kind: Kind::FireDetection,
            event_time,
            ingested_at: Utc::now(),
            location: Some(location),
            priority,
            quality: Quality::from_flags(flags),
            data: Data::FireDetection(FireDetection {
                satellite,
                instrument,
                brightness_k,
                brightness_2_k,
                frp_mw,
                scan_km,
                track_km,
                confidence,
                confidence_pct,
                daynight,
                version: opt(c.version).map(str::to_owned),
                detection_type,
            }),
        })
    }
}

fn required_number(text: Option<&str>, name: &str) -> Result<f64, String> {
    let text = text.ok_or_else(|| format!("{name} is empty"))?;
    parse_number(text, name)
}

/// A brightness temperature, FRP or pixel size: absent, or a number within `bounds`.
fn measurement(text: Option<&str>, name: &str, bounds: Bounds) -> Result<Option<f64>, String> {
    match text.map(|t| parse_number(t, name)).transpose()? {
        Some(v) if v < 0.0 => Err(format!("{name} {v} is negative")),
        Some(v) => bounds.check(name, v).map(Some),
        None => Ok(None),
    }
}

fn parse_number(text: &str, name: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{name} {text:?} is not a number")),
    }
}

/// `HHMM`, `HMM`/`MM`/`M` with leading zeros lost, or `HH:MM` (possibly space-padded).
fn parse_acq_time(raw: &str) -> Result<NaiveTime, String> {
    let text = raw.trim();
    let (hour, minute) = if let Some((h, m)) = text.split_once(':') {
        let m = m.strip_suffix(":00").unwrap_or(m);
        (h.parse::<u32>().ok(), m.parse::<u32>().ok())
    } else if !text.is_empty() && text.len() <= 4 && text.bytes().all(|b| b.is_ascii_digit()) {
        let n: u32 = text.parse().unwrap_or(u32::MAX);
        (Some(n / 100), Some(n % 100))
    } else {
        (None, None)
    };
    match (hour, minute) {
        (Some(h), Some(m)) if h < 24 && m < 60 => {
            Ok(NaiveTime::from_hms_opt(h, m, 0).expect("checked range"))
        }
        _ => Err(format!("acq_time {raw:?} is not HHMM or HH:MM")),
    }
}

/// Canonical satellite name, and the instrument the name implies.
fn canonical_satellite(raw: &str) -> (String, Option<Instrument>) {
    let lower = raw.to_ascii_lowercase();
    let (name, instrument) = match lower.as_str() {
        "t" | "terra" => ("Terra", Instrument::Modis),
        "a" | "aqua" => ("Aqua", Instrument::Modis),
        "n" | "npp" | "snpp" | "s-npp" | "suomi-npp" | "suomi npp" | "suomi_npp" => {
            ("Suomi-NPP", Instrument::Viirs)
        }
        "1" | "n20" | "j1" | "noaa-20" | "noaa20" | "noaa_20" | "noaa 20" => {
            ("NOAA-20", Instrument::Viirs)
        }
        "2" | "n21" | "j2" | "noaa-21" | "noaa21" | "noaa_21" | "noaa 21" => {
            ("NOAA-21", Instrument::Viirs)
        }
        _ => return (raw.to_owned(), None),
    };
    (name.to_owned(), Some(instrument))
}

fn parse_instrument(text: &str) -> Option<Instrument> {
    if text.eq_ignore_ascii_case("modis") {
        Some(Instrument::Modis)
    } else if text.eq_ignore_ascii_case("viirs") {
        Some(Instrument::Viirs)
    } else {
        None
    }
}

/// Categorical confidence, plus the MODIS percentage when the source gives one.
fn parse_confidence(text: &str) -> Result<(Confidence, Option<u8>), String> {
    match text.to_ascii_lowercase().as_str() {
        "l" | "low" => return Ok((Confidence::Low, None)),
        "n" | "nominal" => return Ok((Confidence::Nominal, None)),
        "h" | "high" => return Ok((Confidence::High, None)),
        _ => {}
    }
    let pct: u8 =
        text.parse().ok().filter(|p| *p <= 100).ok_or_else(|| {
            format!("confidence {text:?} is not l/n/h, low/nominal/high or 0-100")
        })?;
    let class = match pct {
        0..=29 => Confidence::Low,
        30..=79 => Confidence::Nominal,
        _ => Confidence::High,
    };
    Ok((class, Some(pct)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const M6_HEADER: &str = "latitude,longitude,brightness,scan,track,acq_date,acq_time,satellite,instrument,confidence,version,bright_t31,frp,daynight";
    const M6_ROW: &str =
        "-9.774,-35.884,308.8,3.1,1.7,2020-10-02,0025,Terra,MODIS,76,6.0NRT,292.3,42.8,N";
    const N21_HEADER: &str = "latitude,longitude,bright_ti4,scan,track,acq_date,acq_time,satellite,instrument,confidence,version,bright_ti5,frp,daynight";
    const N21_ROW: &str =
        "28.03833,96.14342,339.68,0.45,0.47,2026-10-01,614,N21,VIIRS,n,2.0NRT,287.9,4.22,D";

    /// A second valid row, distinct from M6_ROW.
    const N21_ROW_AS_M6: &str =
        "-9.801,-35.902,312.1,3.1,1.7,2020-10-02,0025,Terra,MODIS,80,6.0NRT,293.0,51.2,N";

    fn parser() -> FirmsParser {
        FirmsParser {
            source_id: Arc::from("test"),
            high_frp_mw: DEFAULT_HIGH_FRP_MW,
            now: Utc::now,
        }
    }

    fn parse(text: &str) -> Result<Vec<Row>, PayloadError> {
        let mut rows = Vec::new();
        parser().parse(&mut text.as_bytes(), &mut |r| {
            rows.push(r);
            true
        })?;
        Ok(rows)
    }

    fn one_row(row: &str) -> Row {
        let mut rows = parse(&format!("{M6_HEADER}\n{row}\n")).unwrap();
        assert_eq!(rows.len(), 1);
        rows.remove(0)
    }

    fn one(text: &str) -> Record {
        match parse(text).unwrap().pop() {
            Some(Row::Valid(r)) => *r,
            other => panic!("expected one valid row, got {other:?}"),
        }
    }

    fn fire(r: &Record) -> &FireDetection {
        match &r.data {
            Data::FireDetection(f) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn modis_row_maps_every_field() {
        let r = one(&format!("{M6_HEADER}\n{M6_ROW}\n"));
        let f = fire(&r);
        assert_eq!(f.satellite, "Terra");
        assert_eq!(f.instrument, Instrument::Modis);
        assert_eq!(f.brightness_k, Some(308.8));
        assert_eq!(f.brightness_2_k, Some(292.3));
        assert_eq!(f.frp_mw, Some(42.8));
        assert_eq!(f.scan_km, Some(3.1));
        assert_eq!(f.track_km, Some(1.7));
        assert_eq!(f.confidence, Some(Confidence::Nominal));
        assert_eq!(f.confidence_pct, Some(76));
        assert_eq!(f.daynight, Some(DayNight::Night));
        assert_eq!(f.version.as_deref(), Some("6.0NRT"));
        assert_eq!(f.detection_type, None);
        assert_eq!(r.event_time.to_rfc3339(), "2020-10-02T00:25:00+00:00");
        let loc = r.location.as_ref().unwrap();
        assert_eq!((loc.lat, loc.lon), (-9.774, -35.884));
        assert_eq!(r.quality.flags, vec![QualityFlag::Night]);
        assert_eq!(r.quality.score, 0.9);
        assert_eq!(r.priority, Priority::Normal);
        let expected = RecordId::from_natural_key(
            SourceType::NasaFirms,
            &["Terra", "2020-10-02", "0025", "-9.774", "-35.884"],
        );
        assert_eq!(r.id, expected);
    }

    fn invalid_reason(text: &str) -> String {
        match parse(text).unwrap().pop() {
            Some(Row::Invalid(i)) => i.reason,
            other => panic!("expected one invalid row, got {other:?}"),
        }
    }

    #[test]
    fn a_row_with_too_few_or_too_many_fields_is_invalid_not_half_a_record() {
        let short = &M6_ROW[..M6_ROW.len() - 10];
        assert_eq!(
            invalid_reason(&format!("{M6_HEADER}\n{short}\n")),
            "row has 12 field(s), the header has 14"
        );
        assert_eq!(
            invalid_reason(&format!("{M6_HEADER}\n{M6_ROW},extra\n")),
            "row has 15 field(s), the header has 14"
        );
    }

    #[test]
    fn a_row_that_is_not_utf8_is_invalid_with_its_text_kept() {
        let mut text = format!("{M6_HEADER}\n").into_bytes();
        text.extend_from_slice(M6_ROW.replace("Terra", "Ter\u{1}ra").as_bytes());
        let at = text.iter().position(|b| *b == 1).unwrap();
        text[at] = 0xff;
        text.extend_from_slice(format!("\n{M6_ROW}\n").as_bytes());
        let mut rows = Vec::new();
        parser()
            .parse(&mut text.as_slice(), &mut |r| {
                rows.push(r);
                true
            })
            .unwrap();
        match &rows[0] {
            Row::Invalid(inv) => {
                assert!(
                    inv.reason.starts_with("row is not valid UTF-8"),
                    "{}",
                    inv.reason
                );
                assert!(inv.raw.contains("Ter\u{FFFD}ra"), "{}", inv.raw);
                assert_eq!(inv.position, "line 2");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(rows[1], Row::Valid(_)));
    }

    #[test]
    fn negative_measurements_are_invalid() {
        let row = M6_ROW.replace(",42.8,", ",-5,");
        assert_eq!(
            invalid_reason(&format!("{M6_HEADER}\n{row}\n")),
            "frp -5 is negative"
        );
        let row = M6_ROW.replace(",308.8,", ",-308.8,");
        assert_eq!(
            invalid_reason(&format!("{M6_HEADER}\n{row}\n")),
            "brightness -308.8 is negative"
        );
        // A real 0 stays valid.
        let row = M6_ROW.replace(",42.8,", ",0,");
        assert_eq!(
            fire(&one(&format!("{M6_HEADER}\n{row}\n"))).frp_mw,
            Some(0.0)
        );
    }

    /// The reason a one-row M6 file with `column` set to `value` is rejected, or `None` when
    /// the row is valid.
    fn m6_with(column: &str, value: &str) -> Option<String> {
        let at = M6_HEADER.split(',').position(|c| c == column).unwrap();
        let mut fields: Vec<&str> = M6_ROW.split(',').collect();
        fields[at] = value;
        match parse(&format!("{M6_HEADER}\n{}\n", fields.join(",")))
            .unwrap()
            .pop()
        {
            Some(Row::Valid(_)) => None,
            Some(Row::Invalid(i)) => Some(i.reason),
            None => panic!("no row"),
        }
    }

    #[test]
    fn frp_is_bounded_at_0_and_100000_mw() {
        assert_eq!(m6_with("frp", "0"), None);
        assert_eq!(m6_with("frp", "100000"), None);
        assert_eq!(
            m6_with("frp", "100000.01").as_deref(),
            Some("frp 100000.01 MW is outside the accepted range 0 to 100000 MW")
        );
        assert_eq!(
            m6_with("frp", "1e300").as_deref(),
            Some("frp 1e300 MW is outside the accepted range 0 to 100000 MW")
        );
        assert_eq!(
            m6_with("frp", "-0.01").as_deref(),
            Some("frp -0.01 is negative")
        );
    }

    #[test]
    fn brightness_of_both_channels_is_bounded_at_150_and_800_k() {
        for column in ["brightness", "bright_t31"] {
            let name = if column == "brightness" {
                "brightness"
            } else {
                "brightness_2"
            };
            assert_eq!(m6_with(column, "150"), None, "{column}");
            assert_eq!(m6_with(column, "800"), None, "{column}");
            assert_eq!(
                m6_with(column, "149.99"),
                Some(format!(
                    "{name} 149.99 K is outside the accepted range 150 to 800 K"
                ))
            );
            assert_eq!(
                m6_with(column, "800.01"),
                Some(format!(
                    "{name} 800.01 K is outside the accepted range 150 to 800 K"
                ))
            );
        }
        assert_eq!(
            m6_with("brightness", "99999").as_deref(),
            Some("brightness 99999 K is outside the accepted range 150 to 800 K")
        );
        // VIIRS column names are bounded alike.
        let row = N21_ROW.replace(",287.9,", ",800.5,");
        assert_eq!(
            invalid_reason(&format!("{N21_HEADER}\n{row}\n")),
            "brightness_2 800.5 K is outside the accepted range 150 to 800 K"
        );
    }

    #[test]
    fn scan_and_track_are_above_0_and_at_most_10_km() {
        for column in ["scan", "track"] {
            assert_eq!(m6_with(column, "0.001"), None, "{column}");
            assert_eq!(m6_with(column, "10"), None, "{column}");
            assert_eq!(
                m6_with(column, "0"),
                Some(format!(
                    "{column} 0 km is outside the accepted range above 0 up to 10 km"
                ))
            );
            assert_eq!(
                m6_with(column, "10.01"),
                Some(format!(
                    "{column} 10.01 km is outside the accepted range above 0 up to 10 km"
                ))
            );
        }
        assert_eq!(
            m6_with("scan", "1e10").as_deref(),
            Some("scan 1e10 km is outside the accepted range above 0 up to 10 km")
        );
    }

    #[test]
    fn acquisition_more_than_a_day_ahead_of_now_is_invalid_and_old_data_is_not() {
        fn fixed_now() -> DateTime<Utc> {
            Utc.with_ymd_and_hms(2020, 10, 1, 0, 25, 0).unwrap()
        }
        let parser = FirmsParser {
            now: fixed_now,
            ..parser()
        };
        let reason = |row: &str| {
            let mut rows = Vec::new();
            let text = format!("{M6_HEADER}\n{row}\n");
            parser
                .parse(&mut text.as_bytes(), &mut |r| {
                    rows.push(r);
                    true
                })
                .unwrap();
            match rows.pop() {
                Some(Row::Valid(_)) => None,
                Some(Row::Invalid(i)) => Some(i.reason),
                None => panic!("no row"),
            }
        };
        // M6_ROW is 2020-10-02 00:25: exactly now + 1 day.
        assert_eq!(reason(M6_ROW), None);
        assert_eq!(
            reason(&M6_ROW.replace(",0025,", ",0026,")).as_deref(),
            Some(
                "acq_date/acq_time 2020-10-02T00:26:00Z is in the future: the latest accepted is now + 1 day = 2020-10-02T00:25:00Z"
            )
        );
        assert!(reason(&M6_ROW.replace("2020-10-02", "2999-01-01")).is_some());
        // Old data is valid data, back to the first day FIRMS has.
        assert_eq!(reason(&M6_ROW.replace("2020-10-02", "2000-11-01")), None);
        assert_eq!(
            reason(&M6_ROW.replace("2020-10-02", "2000-10-31")).as_deref(),
            Some(
                "acq_date 2000-10-31 is before 2000-11-01, the first day of FIRMS data (MODIS on Terra)"
            )
        );
    }

    #[test]
    fn an_unknown_satellite_code_is_kept_as_given() {
        let row = M6_ROW.replace(",Terra,", ",Z,");
        let r = one(&format!("{M6_HEADER}\n{row}\n"));
        assert_eq!(fire(&r).satellite, "Z");
        assert_eq!(fire(&r).instrument, Instrument::Modis);
    }

    #[test]
    fn a_line_of_megabytes_is_one_invalid_row_and_the_file_continues() {
        let huge = "9".repeat(MAX_LINE_BYTES + 10);
        let text = format!("{M6_HEADER}\n{M6_ROW}\n{huge}\n{N21_ROW_AS_M6}\n");
        let rows = parse(&text).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(matches!(rows[0], Row::Valid(_)));
        match &rows[1] {
            Row::Invalid(inv) => {
                assert_eq!(inv.position, "line 3");
                assert_eq!(
                    inv.reason,
                    "line is 1048586 bytes, longer than the 1024 KiB a FIRMS row can be (rows are about 100 bytes); the line is skipped, the file continues"
                );
                assert_eq!(inv.raw, "9".repeat(crate::sources::EXCERPT_BYTES));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(rows[2], Row::Valid(_)), "{:?}", rows[2]);
        // Exactly at the limit is an ordinary (here invalid) row, kept whole.
        let at_limit = "9".repeat(MAX_LINE_BYTES);
        match &parse(&format!("{M6_HEADER}\n{at_limit}\n")).unwrap()[0] {
            Row::Invalid(inv) => assert_eq!(inv.raw.len(), MAX_LINE_BYTES),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_header_of_megabytes_rejects_the_payload() {
        let text = format!("{M6_HEADER},{}\n{M6_ROW}\n", "x".repeat(MAX_LINE_BYTES));
        let err = parse(&text).unwrap_err();
        assert_eq!(err.kind(), "csv_error");
        assert_eq!(
            err.to_string(),
            format!(
                "CSV could not be read: line 1 (the header) is {} bytes, longer than the 1024 KiB a FIRMS header can be",
                M6_HEADER.len() + 1 + MAX_LINE_BYTES
            )
        );
    }

    #[test]
    fn an_unterminated_quote_is_one_invalid_row_and_the_next_line_is_a_row() {
        let open = format!("{M6_ROW},\"unterminated");
        let text = format!("{M6_HEADER}\n{open}\n{M6_ROW}\n{N21_ROW_AS_M6}\n");
        let rows = parse(&text).unwrap();
        assert_eq!(rows.len(), 3);
        match &rows[0] {
            Row::Invalid(inv) => {
                assert_eq!(inv.position, "line 2");
                assert_eq!(
                    inv.reason,
                    "unterminated quote: a quoted field opens on this line and is not closed by its end (FIRMS rows never span lines); the next line is read as a new row"
                );
                assert_eq!(inv.raw, open);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(rows[1], Row::Valid(_)), "{:?}", rows[1]);
        assert!(matches!(rows[2], Row::Valid(_)), "{:?}", rows[2]);
        // On the last line, without a newline after it, too.
        let rows = parse(&format!("{M6_HEADER}\n{M6_ROW}\n{open}")).unwrap();
        assert!(
            matches!(&rows[1], Row::Invalid(inv) if inv.reason.starts_with("unterminated quote"))
        );
        // A quote opened and closed on its line is an ordinary field.
        let quoted = M6_ROW.replace("6.0NRT", "\"6.0NRT\"");
        assert!(matches!(one_row(&quoted), Row::Valid(_)));
    }

    #[test]
    fn a_header_with_an_unterminated_quote_rejects_the_payload() {
        let err = parse(&format!("{M6_HEADER},\"x\n{M6_ROW}\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CSV could not be read: line 1 (the header) has an unterminated quote"
        );
        // Text with a quote is still text.
        assert_eq!(
            parse("Error: \"bad key\n").unwrap_err().kind(),
            "text_payload"
        );
    }

    #[test]
    fn crlf_blank_lines_and_invalid_utf8_keep_physical_line_numbers() {
        let text = format!("\u{FEFF}{M6_HEADER}\r\n\r\n{M6_ROW}\r\n\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"-9.774,\xff\r\n");
        bytes.extend_from_slice(M6_ROW.replacen("-9.774", "", 1).as_bytes());
        let mut rows = Vec::new();
        parser()
            .parse(&mut bytes.as_slice(), &mut |r| {
                rows.push(r);
                true
            })
            .unwrap();
        assert_eq!(rows.len(), 3);
        assert!(matches!(&rows[0], Row::Valid(r) if fire(r).daynight == Some(DayNight::Night)));
        match &rows[1] {
            Row::Invalid(inv) => {
                assert_eq!(inv.position, "line 5");
                assert!(
                    inv.reason.starts_with("row is not valid UTF-8"),
                    "{}",
                    inv.reason
                );
                assert_eq!(inv.raw, "-9.774,\u{FFFD}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&rows[2], Row::Invalid(inv) if inv.position == "line 6"));
    }

    #[test]
    fn three_digit_time_is_hhmm_with_lost_zero() {
        let r = one(&format!("{N21_HEADER}\n{N21_ROW}\n"));
        assert_eq!(r.event_time.to_rfc3339(), "2026-10-01T06:14:00+00:00");
        let f = fire(&r);
        assert_eq!(f.satellite, "NOAA-21");
        assert_eq!(f.instrument, Instrument::Viirs);
        assert_eq!(f.confidence, Some(Confidence::Nominal));
        assert_eq!(f.confidence_pct, None);
        assert_eq!(r.quality.flags, vec![]);
    }

    #[test]
    fn two_digit_time_is_minutes_past_midnight() {
        let row = N21_ROW.replace(",614,", ",45,");
        let r = one(&format!("{N21_HEADER}\n{row}\n"));
        assert_eq!(r.event_time.to_rfc3339(), "2026-10-01T00:45:00+00:00");
    }

    #[test]
    fn space_padded_colon_time() {
        let row = N21_ROW.replace(",614,", ", 09:32,");
        let r = one(&format!("{N21_HEADER}\n{row}\n"));
        assert_eq!(r.event_time.to_rfc3339(), "2026-10-01T09:32:00+00:00");
        // Same observation as HHMM gives the same id.
        let hhmm = one(&format!(
            "{N21_HEADER}\n{}\n",
            N21_ROW.replace(",614,", ",0932,")
        ));
        assert_eq!(r.id, hhmm.id);
    }

    #[test]
    fn bad_times_are_rejected() {
        for bad in ["2460", "1299", "12345", "ab", "", "25:00", "-1"] {
            assert!(parse_acq_time(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_acq_time("5").unwrap(),
            NaiveTime::from_hms_opt(0, 5, 0).unwrap()
        );
    }

    #[test]
    fn viirs_in_brightness_columns_is_viirs_by_satellite_code() {
        // J1V archive layout without the instrument column: satellite `1` decides.
        let header = "latitude,longitude,brightness,scan,track,acq_date,acq_time,satellite,confidence,version,bright_t31,frp,daynight";
        let row = "0.22305,-50.98979,305.3,0.39,0.6,2020-10-02,0406,1,n,2.0NRT,288.7,1,N";
        let r = one(&format!("{header}\n{row}\n"));
        let f = fire(&r);
        assert_eq!(f.instrument, Instrument::Viirs);
        assert_eq!(f.satellite, "NOAA-20");
        assert_eq!(f.brightness_k, Some(305.3));
        assert_eq!(f.brightness_2_k, Some(288.7));
    }

    #[test]
    fn confidence_variants() {
        assert_eq!(parse_confidence("l").unwrap(), (Confidence::Low, None));
        assert_eq!(
            parse_confidence("nominal").unwrap(),
            (Confidence::Nominal, None)
        );
        assert_eq!(parse_confidence("H").unwrap(), (Confidence::High, None));
        assert_eq!(parse_confidence("0").unwrap(), (Confidence::Low, Some(0)));
        assert_eq!(parse_confidence("29").unwrap(), (Confidence::Low, Some(29)));
        assert_eq!(
            parse_confidence("30").unwrap(),
            (Confidence::Nominal, Some(30))
        );
        assert_eq!(
            parse_confidence("79").unwrap(),
            (Confidence::Nominal, Some(79))
        );
        assert_eq!(
            parse_confidence("80").unwrap(),
            (Confidence::High, Some(80))
        );
        assert_eq!(
            parse_confidence("100").unwrap(),
            (Confidence::High, Some(100))
        );
        assert!(parse_confidence("101").is_err());
        assert!(parse_confidence("x").is_err());
    }

    #[test]
    fn high_confidence_and_large_frp_is_high_priority() {
        let row = M6_ROW.replace(",76,", ",95,").replace(",42.8,", ",150.2,");
        let r = one(&format!("{M6_HEADER}\n{row}\n"));
        assert_eq!(r.priority, Priority::High);
        let small = M6_ROW.replace(",76,", ",95,");
        assert_eq!(
            one(&format!("{M6_HEADER}\n{small}\n")).priority,
            Priority::Normal
        );
    }

    #[test]
    fn empty_coordinate_is_an_invalid_row_and_the_file_continues() {
        let bad = M6_ROW.replacen("-9.774", "", 1);
        let rows = parse(&format!("{M6_HEADER}\n{bad}\n{M6_ROW}\n")).unwrap();
        assert_eq!(rows.len(), 2);
        match &rows[0] {
            Row::Invalid(inv) => {
                assert_eq!(inv.reason, "latitude is empty");
                assert_eq!(inv.position, "line 2");
                assert_eq!(inv.raw, bad);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(rows[1], Row::Valid(_)));
    }

    #[test]
    fn out_of_range_and_garbage_values_are_invalid() {
        let cases = [
            (
                M6_ROW.replacen("-9.774", "-91.2", 1),
                "latitude -91.2 is outside -90..90",
            ),
            (
                M6_ROW.replacen("-35.884", "181", 1),
                "longitude 181 is outside -180..180",
            ),
            (
                M6_ROW.replace("2020-10-02", "2020-13-02"),
                "acq_date \"2020-13-02\" is not YYYY-MM-DD",
            ),
            (
                M6_ROW.replace(",0025,", ",2575,"),
                "acq_time \"2575\" is not HHMM or HH:MM",
            ),
            (
                M6_ROW.replace(",42.8,", ",abc,"),
                "frp \"abc\" is not a number",
            ),
            (
                M6_ROW.replace(",42.8,", ",NaN,"),
                "frp \"NaN\" is not a number",
            ),
            (
                M6_ROW.replace(",76,", ",150,"),
                "confidence \"150\" is not l/n/h, low/nominal/high or 0-100",
            ),
        ];
        for (row, reason) in cases {
            match parse(&format!("{M6_HEADER}\n{row}\n")).unwrap().pop() {
                Some(Row::Invalid(inv)) => assert_eq!(inv.reason, reason, "row {row}"),
                other => panic!("{row}: {other:?}"),
            }
        }
    }

    #[test]
    fn dlq_raw_row_keeps_csv_quoting() {
        let bad = M6_ROW
            .replacen("-9.774", "", 1)
            .replace("6.0NRT", "\"6.0,NRT\"");
        match parse(&format!("{M6_HEADER}\n{bad}\n")).unwrap().pop() {
            Some(Row::Invalid(inv)) => assert_eq!(inv.raw, bad),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_row_is_invalid_not_fatal() {
        let rows = parse(&format!("{M6_HEADER}\n-9.774,-35.884\n{M6_ROW}\n")).unwrap();
        assert!(
            matches!(&rows[0], Row::Invalid(inv) if inv.reason == "row has 2 field(s), the header has 14")
        );
        assert!(matches!(rows[1], Row::Valid(_)));
    }

    #[test]
    fn missing_values_stay_null_and_zero_stays_zero() {
        let row = M6_ROW.replace(",42.8,", ",,").replace(",76,", ",0,");
        let r = one(&format!("{M6_HEADER}\n{row}\n"));
        let f = fire(&r);
        assert_eq!(f.frp_mw, None);
        assert_eq!(f.confidence_pct, Some(0));
        assert!(r.quality.flags.contains(&QualityFlag::MissingFields));
        let zero = one(&format!(
            "{M6_HEADER}\n{}\n",
            M6_ROW.replace(",42.8,", ",0,")
        ));
        assert_eq!(fire(&zero).frp_mw, Some(0.0));
        let json = String::from_utf8(r.to_json()).unwrap();
        assert!(json.contains("\"frp_mw\":null"), "{json}");
    }

    #[test]
    fn archive_type_column() {
        let header = format!("{M6_HEADER},type");
        for (code, expected) in [
            ("0", Some(DetectionType::VegetationFire)),
            ("1", Some(DetectionType::Volcano)),
            ("2", Some(DetectionType::StaticLandSource)),
            ("3", Some(DetectionType::Offshore)),
            ("7", None),
        ] {
            let r = one(&format!("{header}\n{M6_ROW},{code}\n"));
            assert_eq!(fire(&r).detection_type, expected);
        }
    }

    #[test]
    fn header_only_is_zero_rows_and_success() {
        assert!(parse(&format!("{M6_HEADER}\n")).unwrap().is_empty());
        assert!(parse(M6_HEADER).unwrap().is_empty());
    }

    #[test]
    fn invalid_map_key_text_is_a_classified_error() {
        match parse("Invalid MAP_KEY.") {
            Err(PayloadError::Text { excerpt, .. }) => assert_eq!(excerpt, "Invalid MAP_KEY."),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse("Invalid MAP_KEY.\n").unwrap_err().kind(),
            "text_payload"
        );
    }

    #[test]
    fn payload_checks_do_not_depend_on_how_the_reader_chunks_data() {
        // Regression: a reader whose first read returned 2 bytes made `Invalid MAP_KEY.`
        // look like the text "In".
        let mut rows = Vec::new();
        let mut tiny = std::io::BufReader::with_capacity(2, "Invalid MAP_KEY.".as_bytes());
        match parser().parse(&mut tiny, &mut |r| {
            rows.push(r);
            true
        }) {
            Err(PayloadError::Text { excerpt, .. }) => assert_eq!(excerpt, "Invalid MAP_KEY."),
            other => panic!("{other:?}"),
        }
        let text = format!("{M6_HEADER}\n{M6_ROW}\n");
        let mut tiny = std::io::BufReader::with_capacity(1, text.as_bytes());
        parser()
            .parse(&mut tiny, &mut |r| {
                rows.push(r);
                true
            })
            .unwrap();
        assert!(matches!(rows.as_slice(), [Row::Valid(_)]));
    }

    #[test]
    fn html_page_is_a_classified_error() {
        let html = "<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head><body>down</body></html>\n";
        let err = parse(html).unwrap_err();
        assert_eq!(err.kind(), "html_payload");
        assert!(err.to_string().contains("503 Service Unavailable"), "{err}");
    }

    #[test]
    fn csv_without_firms_columns_is_a_classified_error() {
        let err = parse("a,b,c\n1,2,3\n").unwrap_err();
        assert_eq!(err.kind(), "missing_columns");
        assert!(err.to_string().contains("latitude, longitude"), "{err}");
        assert_eq!(parse("").unwrap_err().kind(), "empty_payload");
    }

    #[test]
    fn satellite_codes_are_canonical() {
        for (code, name) in [
            ("T", "Terra"),
            ("Aqua", "Aqua"),
            ("N", "Suomi-NPP"),
            ("1", "NOAA-20"),
            ("N20", "NOAA-20"),
            ("N21", "NOAA-21"),
            ("2", "NOAA-21"),
        ] {
            assert_eq!(canonical_satellite(code).0, name);
        }
        assert_eq!(canonical_satellite("GOES-18"), ("GOES-18".to_owned(), None));
    }
}
