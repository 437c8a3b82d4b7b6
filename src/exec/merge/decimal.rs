//! Exact decimals for merging SUM and AVG of numeric values: a 128-bit mantissa and a scale, with
//! PostgreSQL's rule for the scale of a quotient, so an AVG merged from shards prints exactly as
//! one database would print it. Overflow is an error, never a rounded answer.
//!
//! Written here rather than taken from a crate: the merge needs PostgreSQL's own display-scale
//! rules for division (`select_div_scale`), which general decimal crates do not follow.

use std::cmp::Ordering;
use std::fmt;

/// `mant * 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    /// Mantissa.
    pub mant: i128,
    /// Digits after the point.
    pub scale: u32,
}

/// Arithmetic beyond 38 digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

fn pow10(n: u32) -> Result<i128, Overflow> {
    10i128.checked_pow(n).ok_or(Overflow)
}

impl Decimal {
    /// An integer.
    pub fn int(v: i128) -> Decimal {
        Decimal { mant: v, scale: 0 }
    }

    /// Parses PostgreSQL's numeric text ("-12.340", "5", "1e3" is not produced by numeric_out).
    pub fn parse(s: &str) -> Option<Decimal> {
        let s = s.trim();
        let (neg, digits) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut mant: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mant = mant.checked_mul(10)?.checked_add((b - b'0') as i128)?;
        }
        Some(Decimal {
            mant: if neg { -mant } else { mant },
            scale: frac.len() as u32,
        })
    }

    fn rescale(self, scale: u32) -> Result<i128, Overflow> {
        self.mant.checked_mul(pow10(scale - self.scale)?).ok_or(Overflow)
    }

    /// Exact sum, at the larger scale.
    pub fn checked_add(self, o: Decimal) -> Result<Decimal, Overflow> {
        let scale = self.scale.max(o.scale);
        Ok(Decimal {
            mant: self.rescale(scale)?.checked_add(o.rescale(scale)?).ok_or(Overflow)?,
            scale,
        })
    }

    /// Base-10000 weight of the first non-zero digit group, and that group's value.
    fn weight(self) -> (i64, i128) {
        let m = self.mant.unsigned_abs();
        if m == 0 {
            return (0, 0);
        }
        let e = m.ilog10() as i64 - self.scale as i64; // 10^e <= |v| < 10^(e+1)
        let w = e.div_euclid(4);
        let shift = self.scale as i64 + 4 * w;
        let first = if shift >= 0 {
            m / 10u128.pow(shift as u32)
        } else {
            m * 10u128.pow((-shift) as u32)
        };
        (w, first as i128)
    }

    /// `self / o` with the scale PostgreSQL's numeric division chooses (at least 16 significant
    /// digits, at least either operand's scale), rounded half away from zero.
    pub fn div_pg(self, o: Decimal) -> Result<Option<Decimal>, Overflow> {
        if o.mant == 0 {
            return Ok(None);
        }
        let (w1, f1) = self.weight();
        let (w2, f2) = o.weight();
        let mut qweight = w1 - w2;
        if f1 <= f2 {
            qweight -= 1;
        }
        let rscale = (16 - qweight * 4)
            .max(self.scale as i64)
            .max(o.scale as i64)
            .clamp(0, 1000) as u32;
        // q = self.mant * 10^(rscale + o.scale - self.scale) / o.mant
        let exp = rscale as i64 + o.scale as i64 - self.scale as i64;
        let (num, den) = if exp >= 0 {
            (self.mant.checked_mul(pow10(exp as u32)?).ok_or(Overflow)?, o.mant)
        } else {
            (self.mant, o.mant.checked_mul(pow10((-exp) as u32)?).ok_or(Overflow)?)
        };
        let q = num / den;
        let r = num % den;
        let round = if r.unsigned_abs() * 2 >= den.unsigned_abs() {
            if (num < 0) != (den < 0) { -1 } else { 1 }
        } else {
            0
        };
        Ok(Some(Decimal {
            mant: q + round,
            scale: rscale,
        }))
    }

    /// As a float (for averages of float columns and comparisons with floats).
    pub fn to_f64(self) -> f64 {
        self.mant as f64 / 10f64.powi(self.scale as i32)
    }

    /// The nearest double, as PostgreSQL converts numeric to double precision (through its
    /// text, correctly rounded).
    pub fn to_f64_exact(self) -> f64 {
        self.to_string().parse().unwrap_or(f64::NAN)
    }

    /// Exact product, at the sum of the scales (PostgreSQL's numeric multiplication).
    pub fn checked_mul(self, o: Decimal) -> Result<Decimal, Overflow> {
        Ok(Decimal {
            mant: self.mant.checked_mul(o.mant).ok_or(Overflow)?,
            scale: self.scale.checked_add(o.scale).ok_or(Overflow)?,
        })
    }

    /// Rounded half away from zero to `digits` after the point (tens, hundreds... when negative),
    /// shown with `max(digits, 0)` of them, as PostgreSQL's `round(numeric, int)`.
    pub fn round_to(self, digits: i32) -> Result<Decimal, Overflow> {
        let shown = digits.max(0) as u32;
        if digits >= self.scale as i32 {
            return Ok(Decimal {
                mant: self.rescale(shown)?,
                scale: shown,
            });
        }
        // Drop (scale - digits) digits, rounding half away from zero.
        let drop = (self.scale as i64 - digits as i64) as u32;
        let unit = pow10(drop)?;
        let (q, r) = (self.mant / unit, self.mant % unit);
        let q = if r.abs() * 2 >= unit { q + r.signum() } else { q };
        // q counts units of 10^-digits; shown at scale max(digits, 0).
        let mant = if digits < 0 {
            q.checked_mul(pow10((-digits) as u32)?).ok_or(Overflow)?
        } else {
            q
        };
        Ok(Decimal { mant, scale: shown })
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Decimal {
    fn cmp(&self, o: &Self) -> Ordering {
        let scale = self.scale.max(o.scale);
        match (self.rescale(scale), o.rescale(scale)) {
            (Ok(a), Ok(b)) => a.cmp(&b),
            _ => self.to_f64().total_cmp(&o.to_f64()),
        }
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.mant.unsigned_abs().to_string();
        let sign = if self.mant < 0 { "-" } else { "" };
        let s = self.scale as usize;
        if s == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = s + 1);
        let (i, frac) = padded.split_at(padded.len() - s);
        write!(f, "{sign}{i}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn parses_and_prints() {
        for s in ["0", "-1", "12.340", "0.001", "-0.5", "123456789012345678901234567890"] {
            assert_eq!(d(s).to_string(), s);
        }
        assert!(Decimal::parse("1e5").is_none());
        assert!(Decimal::parse("NaN").is_none());
    }

    #[test]
    fn adds_at_the_larger_scale() {
        assert_eq!(d("1.5").checked_add(d("2.25")).unwrap().to_string(), "3.75");
        assert_eq!(d("-1").checked_add(d("0.10")).unwrap().to_string(), "-0.90");
        assert!(Decimal::int(i128::MAX).checked_add(Decimal::int(1)).is_err());
    }

    #[test]
    fn divides_like_postgres() {
        // SELECT 10::numeric / 4, 1::numeric / 3, 2::numeric / 3, 1000000::numeric / 7,
        //        5.5::numeric / 2, -7::numeric / 2, 123456789::numeric / 1000
        let cases = [
            ("10", "4", "2.5000000000000000"),
            ("1", "3", "0.33333333333333333333"),
            ("2", "3", "0.66666666666666666667"),
            ("1000000", "7", "142857.142857142857"),
            ("5.5", "2", "2.7500000000000000"),
            ("-7", "2", "-3.5000000000000000"),
            ("123456789", "1000", "123456.789000000000"),
        ];
        for (a, b, want) in cases {
            assert_eq!(d(a).div_pg(d(b)).unwrap().unwrap().to_string(), want, "{a}/{b}");
        }
        assert_eq!(d("1").div_pg(d("0")).unwrap(), None);
    }

    #[test]
    fn orders_across_scales() {
        assert!(d("1.10") > d("1.09"));
        assert_eq!(d("1.10").cmp(&d("1.1")), Ordering::Equal);
        assert!(d("-2") < d("-1.5"));
    }
}
