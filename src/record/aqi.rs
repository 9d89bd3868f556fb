//! US EPA Air Quality Index from a concentration (Technical Assistance Document for the
//! Reporting of Daily Air Quality, EPA-454/B-24-002, May 2024, Table 6).
//!
//! Only the particulate sub-indices are here: they are the ones firestream recomputes (PurpleAir
//! gives no AQI; AirNow's PM concentrations let us apply the 2024 PM2.5 breakpoints to data
//! reported before them). Other pollutants keep the AQI their agency reported.

/// One row of a breakpoint table: concentrations `c_low..=c_high` map linearly onto
/// `i_low..=i_high`.
struct Breakpoint {
    c_low: f64,
    c_high: f64,
    i_low: u16,
    i_high: u16,
}

const fn bp(c_low: f64, c_high: f64, i_low: u16, i_high: u16) -> Breakpoint {
    Breakpoint {
        c_low,
        c_high,
        i_low,
        i_high,
    }
}

/// PM2.5 24-hour breakpoints (µg/m³) as revised in 2024: Good ends at 9.0 (was 12.0) and
/// Hazardous is one 225.5–325.4 → 301–500 segment.
const PM2_5: [Breakpoint; 6] = [
    bp(0.0, 9.0, 0, 50),
    bp(9.1, 35.4, 51, 100),
    bp(35.5, 55.4, 101, 150),
    bp(55.5, 125.4, 151, 200),
    bp(125.5, 225.4, 201, 300),
    bp(225.5, 325.4, 301, 500),
];

/// PM10 24-hour breakpoints (µg/m³); the concentrations did not change in 2024, Hazardous is
/// one 425–604 → 301–500 segment.
const PM10: [Breakpoint; 6] = [
    bp(0.0, 54.0, 0, 50),
    bp(55.0, 154.0, 51, 100),
    bp(155.0, 254.0, 101, 150),
    bp(255.0, 354.0, 151, 200),
    bp(355.0, 424.0, 201, 300),
    bp(425.0, 604.0, 301, 500),
];

/// The highest AQI. A concentration above a table's top is reported as 500: the index has no
/// values beyond it ("Beyond the AQI" is still Hazardous).
pub const MAX_AQI: u16 = 500;

/// PM2.5 AQI of a 24-hour (or NowCast) concentration in µg/m³, 2024 breakpoints.
///
/// The concentration is truncated to 0.1 µg/m³ first, as EPA specifies (35.49 is 35.4, not
/// 35.5). Above 325.4 the AQI is 500. Negative or non-finite input has no AQI (`None`).
pub fn pm2_5(concentration_ugm3: f64) -> Option<u16> {
    // The small epsilon keeps 9.1 (stored as 9.0999…) from truncating to 9.0.
    let truncated = (concentration_ugm3 * 10.0 + 1e-6).floor() / 10.0;
    index(&PM2_5, concentration_ugm3, truncated)
}

/// PM10 AQI of a 24-hour concentration in µg/m³. The concentration is truncated to a whole
/// µg/m³ first; above 604 the AQI is 500. Negative or non-finite input has no AQI.
pub fn pm10(concentration_ugm3: f64) -> Option<u16> {
    let truncated = (concentration_ugm3 + 1e-6).floor();
    index(&PM10, concentration_ugm3, truncated)
}

fn index(table: &[Breakpoint], raw: f64, truncated: f64) -> Option<u16> {
    if !raw.is_finite() || raw < 0.0 {
        return None;
    }
    let Some(row) = table.iter().find(|b| truncated <= b.c_high + 1e-9) else {
        return Some(MAX_AQI);
    };
    // Truncation leaves no value between one row's high and the next row's low; clamp
    // anyway so float noise cannot extrapolate below a row.
    let c = truncated.max(row.c_low);
    let span_i = f64::from(row.i_high - row.i_low);
    let value = span_i / (row.c_high - row.c_low) * (c - row.c_low) + f64::from(row.i_low);
    Some(value.round() as u16)
}

/// The six AQI categories, named as AirNow names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    Good,
    Moderate,
    UnhealthyForSensitiveGroups,
    Unhealthy,
    VeryUnhealthy,
    Hazardous,
}

impl Category {
    /// The category of an AQI value: 0–50, 51–100, 101–150, 151–200, 201–300, 301 and up.
    pub fn of(aqi: u16) -> Self {
        match aqi {
            0..=50 => Category::Good,
            51..=100 => Category::Moderate,
            101..=150 => Category::UnhealthyForSensitiveGroups,
            151..=200 => Category::Unhealthy,
            201..=300 => Category::VeryUnhealthy,
            _ => Category::Hazardous,
        }
    }

    /// AirNow's category number (1–6).
    pub fn from_number(number: u8) -> Option<Self> {
        Some(match number {
            1 => Category::Good,
            2 => Category::Moderate,
            3 => Category::UnhealthyForSensitiveGroups,
            4 => Category::Unhealthy,
            5 => Category::VeryUnhealthy,
            6 => Category::Hazardous,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Category::Good => "Good",
            Category::Moderate => "Moderate",
            Category::UnhealthyForSensitiveGroups => "Unhealthy for Sensitive Groups",
            Category::Unhealthy => "Unhealthy",
            Category::VeryUnhealthy => "Very Unhealthy",
            Category::Hazardous => "Hazardous",
        }
    }
}

/// The category name for an AQI value, e.g. `Moderate` for 51.
pub fn category_name(aqi: u16) -> &'static str {
    Category::of(aqi).name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pm2_5_at_every_breakpoint() {
        let cases = [
            (0.0, 0),
            (9.0, 50),
            (9.1, 51),
            (35.4, 100),
            (35.5, 101),
            (55.4, 150),
            (55.5, 151),
            (125.4, 200),
            (125.5, 201),
            (225.4, 300),
            (225.5, 301),
            (325.4, 500),
        ];
        for (c, expected) in cases {
            assert_eq!(pm2_5(c), Some(expected), "PM2.5 {c}");
        }
    }

    #[test]
    fn pm2_5_truncates_to_a_tenth_before_looking_up() {
        // 9.09 is 9.0 (Good), not 9.1 (Moderate); 35.49 is 35.4.
        assert_eq!(pm2_5(9.09), Some(50));
        assert_eq!(pm2_5(35.49), Some(100));
        assert_eq!(pm2_5(55.45), Some(150));
        // Interior points, from AirNow's own reports (LA, January 2025).
        assert_eq!(pm2_5(60.5), Some(155));
        assert_eq!(pm2_5(55.3), Some(150));
        assert_eq!(pm2_5(21.6), Some(74));
        assert_eq!(pm2_5(2.9), Some(16));
        assert_eq!(pm2_5(1.1), Some(6));
    }

    #[test]
    fn pm2_5_above_the_table_is_500_and_nonsense_has_none() {
        assert_eq!(pm2_5(325.5), Some(500));
        assert_eq!(pm2_5(2020.0), Some(500));
        assert_eq!(pm2_5(-0.1), None);
        assert_eq!(pm2_5(f64::NAN), None);
        assert_eq!(pm2_5(f64::INFINITY), None);
    }

    #[test]
    fn pm10_at_every_breakpoint() {
        let cases = [
            (0.0, 0),
            (54.0, 50),
            (55.0, 51),
            (154.0, 100),
            (155.0, 101),
            (254.0, 150),
            (255.0, 151),
            (354.0, 200),
            (355.0, 201),
            (424.0, 300),
            (425.0, 301),
            (604.0, 500),
            (605.0, 500),
        ];
        for (c, expected) in cases {
            assert_eq!(pm10(c), Some(expected), "PM10 {c}");
        }
        // Truncated to whole µg/m³: 54.9 is 54.
        assert_eq!(pm10(54.9), Some(50));
        assert_eq!(pm10(-1.0), None);
    }

    #[test]
    fn categories_at_their_edges() {
        let cases = [
            (0, "Good"),
            (50, "Good"),
            (51, "Moderate"),
            (100, "Moderate"),
            (101, "Unhealthy for Sensitive Groups"),
            (150, "Unhealthy for Sensitive Groups"),
            (151, "Unhealthy"),
            (200, "Unhealthy"),
            (201, "Very Unhealthy"),
            (300, "Very Unhealthy"),
            (301, "Hazardous"),
            (500, "Hazardous"),
            (999, "Hazardous"),
        ];
        for (aqi, name) in cases {
            assert_eq!(category_name(aqi), name, "AQI {aqi}");
        }
        assert_eq!(
            Category::from_number(3),
            Some(Category::UnhealthyForSensitiveGroups)
        );
        assert_eq!(Category::from_number(7), None);
    }
}
