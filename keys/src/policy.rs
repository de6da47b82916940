//! A client's policy beyond its ports: where its knocks may come from
//! (`allow_from`) and until when it is honoured (`expires`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use toml::value::{Datetime, Offset};

/// An address block, `203.0.113.0/24` or `2001:db8::/32`; a bare address is
/// a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Does the block hold `addr`? An IPv4-mapped IPv6 address is its IPv4
    /// address.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.network.is_ipv4() == addr.is_ipv4()
            && bits(self.network) & mask(self.prefix) == bits(addr) & mask(self.prefix)
    }
}

/// The address's bits at the top of 128: a /24 of IPv4 is then the top 24.
fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad =
            || format!("{text:?} is not an address block like 203.0.113.0/24 or 2001:db8::/32");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        if bits(network) & !mask(prefix) != 0 {
            return Err(format!(
                "{text:?} has bits set after the /{prefix}: write the network address of the block"
            ));
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// When a client stops being honoured: an RFC 3339 date (the client is
/// honoured through the end of that day, UTC) or date-time with an offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Expiry {
    /// As written, for messages and for writing the entry back.
    text: String,
    /// The first instant at which the client is refused, Unix ms.
    at_ms: u64,
}

impl Expiry {
    /// The first instant at which the client is refused, Unix ms.
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }

    pub fn has_passed(&self, now_ms: u64) -> bool {
        now_ms >= self.at_ms
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Expiry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not an RFC 3339 date or date-time; write 2027-06-30 or 2027-06-30T18:00:00Z"
            )
        };
        let datetime: Datetime = text.trim().parse().map_err(|_| bad())?;
        Self::from_datetime(&datetime, text.trim())
    }
}

impl Expiry {
    /// From a TOML date or date-time value.
    pub fn from_datetime(datetime: &Datetime, text: &str) -> Result<Self, String> {
        let Some(date) = datetime.date else {
            return Err(format!("{text:?} is a time without a date"));
        };
        if !(1970..=9999).contains(&date.year) {
            return Err(format!("{text:?}: the year must be from 1970 to 9999"));
        }
        let days = days_from_civil(
            i64::from(date.year),
            u32::from(date.month),
            u32::from(date.day),
        );
        let at_s = match (datetime.time, datetime.offset) {
            // Through the end of that day.
            (None, _) => (days + 1) * 86_400,
            (Some(_), None) => {
                return Err(format!(
                    "{text:?} has no offset: add Z (UTC) or one like +02:00"
                ))
            }
            (Some(time), Some(offset)) => {
                let offset_min = match offset {
                    Offset::Z => 0,
                    Offset::Custom { minutes } => i64::from(minutes),
                };
                days * 86_400
                    + i64::from(time.hour) * 3_600
                    + i64::from(time.minute) * 60
                    + i64::from(time.second)
                    - offset_min * 60
            }
        };
        let at_ms = u64::try_from(at_s)
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| format!("{text:?} is before 1970"))?;
        Ok(Self {
            text: text.to_owned(),
            at_ms,
        })
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_what_they_should() {
        let block: Cidr = "203.0.113.0/24".parse().unwrap();
        assert!(block.contains("203.0.113.7".parse().unwrap()));
        assert!(block.contains("::ffff:203.0.113.7".parse().unwrap()));
        assert!(!block.contains("203.0.114.7".parse().unwrap()));
        assert!(!block.contains("2001:db8::1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let one: Cidr = "198.51.100.7".parse().unwrap();
        assert_eq!(one.to_string(), "198.51.100.7/32");
        assert!(one.contains("198.51.100.7".parse().unwrap()));
        assert!(!one.contains("198.51.100.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("::/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        for bad in [
            "",
            "x",
            "203.0.113.0/33",
            "2001:db8::/129",
            "203.0.113.0/",
            "203.0.113.0/+8",
            "203.0.113.0/24/1",
            "203.0.113.1/24",
            "2001:db8::1/32",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn expiry_dates_and_times() {
        let date: Expiry = "2027-06-30".parse().unwrap();
        // Honoured through 2027-06-30, refused from 2027-07-01T00:00:00Z.
        assert_eq!(date.at_ms(), 1_814_400_000_000);
        assert!(!date.has_passed(1_814_399_999_999));
        assert!(date.has_passed(1_814_400_000_000));
        assert_eq!(date.to_string(), "2027-06-30");
        let utc: Expiry = "2027-06-30T18:00:00Z".parse().unwrap();
        assert_eq!(utc.at_ms(), 1_814_378_400_000);
        let offset: Expiry = "2027-06-30T20:00:00+02:00".parse().unwrap();
        assert_eq!(offset.at_ms(), utc.at_ms());
        assert_eq!("1970-01-01".parse::<Expiry>().unwrap().at_ms(), 86_400_000);
        assert_eq!(
            "2000-03-01T00:00:00Z".parse::<Expiry>().unwrap().at_ms(),
            951_868_800_000
        );
        for bad in [
            "",
            "tomorrow",
            "2027-06-30T18:00:00",
            "18:00:00",
            "2027-13-01",
            "1969-12-31T00:00:00Z",
            "2027-06-31",
        ] {
            assert!(bad.parse::<Expiry>().is_err(), "{bad:?}");
        }
    }
}
