//! Validated quantities, with the limits of `api.md`.

use serde::{Deserialize, Serialize};

/// Why a number is out of range; the message states the accepted range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be {rule}")]
pub struct RangeError {
    rule: &'static str,
}

/// An integer as a JSON client may write it: `5`, or `5.0`. JSON has one number type
/// and JSON Schema's `integer` is any number without a fraction, so a client whose
/// numbers are floats (Python's, say) is understood; `5.5`, a string or an integer
/// beyond 64 bits is refused as not an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Integer(pub i64);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Integer;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Integer, E> {
                Ok(Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Integer, E> {
                i64::try_from(v)
                    .map(Integer)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Integer, E> {
                // Integral and inside i64 (2^63 is the first float beyond it).
                if v.fract() == 0.0 && v >= -(2f64.powi(63)) && v < 2f64.powi(63) {
                    Ok(Integer(v as i64))
                } else {
                    Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(Visit)
    }
}

impl From<Integer> for i64 {
    fn from(value: Integer) -> i64 {
        value.0
    }
}

/// `Option<i64>` fields read through [`Integer`] (`#[serde(deserialize_with)]`).
pub fn optional_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<Integer>::deserialize(d)?.map(i64::from))
}

macro_rules! bounded {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $rule:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "Integer", into = "i64")]
        pub struct $name(i64);

        impl $name {
            pub const MIN: i64 = $min;
            pub const MAX: i64 = $max;

            pub fn new(value: i64) -> Result<Self, RangeError> {
                if (Self::MIN..=Self::MAX).contains(&value) {
                    Ok(Self(value))
                } else {
                    Err(RangeError { rule: $rule })
                }
            }

            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl TryFrom<i64> for $name {
            type Error = RangeError;
            fn try_from(value: i64) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl TryFrom<Integer> for $name {
            type Error = RangeError;
            fn try_from(value: Integer) -> Result<Self, Self::Error> {
                Self::new(value.0)
            }
        }

        impl From<$name> for i64 {
            fn from(value: $name) -> i64 {
                value.0
            }
        }
    };
}

bounded!(
    /// The quantity of one reservation line (or of a partial release / fulfilment).
    LineQuantity,
    1,
    1_000_000,
    "an integer from 1 to 1000000"
);
bounded!(
    /// An absolute stock count (`set_on_hand`).
    OnHandCount,
    0,
    1_000_000_000,
    "an integer from 0 to 1000000000"
);
bounded!(
    /// A reservation's time to live, in seconds (at most 7 days).
    TtlSeconds,
    1,
    604_800,
    "an integer from 1 to 604800"
);

/// A signed change of `on_hand`: non-zero, |delta| ≤ 1,000,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Integer", into = "i64")]
pub struct Delta(i64);

impl Delta {
    pub const LIMIT: i64 = 1_000_000_000;

    pub fn new(value: i64) -> Result<Self, RangeError> {
        if value != 0 && value.unsigned_abs() <= Self::LIMIT.unsigned_abs() {
            Ok(Self(value))
        } else {
            Err(RangeError {
                rule: "a non-zero integer from -1000000000 to 1000000000",
            })
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for Delta {
    type Error = RangeError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<Integer> for Delta {
    type Error = RangeError;
    fn try_from(value: Integer) -> Result<Self, Self::Error> {
        Self::new(value.0)
    }
}

impl From<Delta> for i64 {
    fn from(value: Delta) -> i64 {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_quantities_are_between_one_and_a_million() {
        assert!(LineQuantity::new(0).is_err());
        assert!(LineQuantity::new(1).is_ok());
        assert!(LineQuantity::new(1_000_000).is_ok());
        assert!(LineQuantity::new(1_000_001).is_err());
        assert!(LineQuantity::new(-1).is_err());
    }

    #[test]
    fn deltas_are_non_zero_and_bounded() {
        assert!(Delta::new(0).is_err());
        assert!(Delta::new(-1_000_000_000).is_ok());
        assert!(Delta::new(1_000_000_001).is_err());
        assert!(Delta::new(i64::MIN).is_err());
    }

    #[test]
    fn ttl_is_at_most_a_week() {
        assert!(TtlSeconds::new(604_800).is_ok());
        assert!(TtlSeconds::new(604_801).is_err());
        assert!(TtlSeconds::new(0).is_err());
    }

    #[test]
    fn deserializing_rejects_out_of_range_and_fractions() {
        assert!(serde_json::from_str::<LineQuantity>("3").is_ok());
        assert!(serde_json::from_str::<LineQuantity>("0").is_err());
        assert!(serde_json::from_str::<LineQuantity>("1.5").is_err());
        assert!(serde_json::from_str::<OnHandCount>("-1").is_err());
        assert!(serde_json::from_str::<Delta>("0.0").is_err());
        assert!(serde_json::from_str::<LineQuantity>("\"3\"").is_err());
    }

    #[test]
    fn an_integral_float_is_the_integer_json_schema_says_it_is() {
        assert_eq!(
            serde_json::from_str::<LineQuantity>("3.0").unwrap().get(),
            3
        );
        assert_eq!(serde_json::from_str::<Delta>("-2.0").unwrap().get(), -2);
        assert_eq!(serde_json::from_str::<Integer>("-0.0").unwrap(), Integer(0));
        assert!(serde_json::from_str::<Integer>("9223372036854775808").is_err());
        assert!(serde_json::from_str::<Integer>("9.3e18").is_err());
        assert!(serde_json::from_str::<Integer>("1e300").is_err());
        let err = serde_json::from_str::<TtlSeconds>("2.5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("an integer"), "{err}");
    }
}
