//! Validated identifiers: once built, an identifier is known to follow the rule of
//! `api.md` (any UTF-8 string of 1..=255 bytes, no control characters, no leading or
//! trailing whitespace, and not `.` or `..`), so no later layer checks it again.
//!
//! The rule is deliberately wide: real catalogue and order ids (`TSHIRT RED/XL`,
//! `CAFÉ-1`, `gid://shopify/Order/1001`) must pass unchanged. Every layer that puts an
//! identifier inside a larger string (URL paths, NATS subjects, cursors, the implicit
//! idempotency key) therefore escapes it there, never here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest identifier, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 255;

/// Why a string is not a valid identifier. The message names the rule it broke, so the
/// API can hand it to the client beside the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} bytes of UTF-8 long")]
    TooLong { max: usize },
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must not begin or end with whitespace")]
    EdgeWhitespace,
    #[error("must not be '.' or '..', which no URL can carry as a path segment")]
    DotSegment,
}

fn check_identifier(value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.len() > max {
        return Err(IdError::TooLong { max });
    }
    if value.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter);
    }
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err(IdError::EdgeWhitespace);
    }
    // URL parsers remove dot segments, even percent-encoded ones (`%2E`), before a
    // request leaves the client: an id `..` could be stored but never read back.
    if value == "." || value == ".." {
        return Err(IdError::DotSegment);
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest accepted value, in bytes of UTF-8.
            pub const MAX_LEN: usize = $max;

            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_identifier(&value, Self::MAX_LEN)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

identifier!(
    /// A store (or warehouse, or channel location) holding stock.
    StoreId,
    MAX_ID_BYTES
);
identifier!(
    /// A sales channel (`online`, `pos-S1`, `marketplace`): the locations it sells
    /// from and how it allocates (see [`crate::channel`]).
    ChannelId,
    MAX_ID_BYTES
);
identifier!(
    /// A product's stock-keeping unit; the partition key of every event.
    Sku,
    MAX_ID_BYTES
);
identifier!(
    /// The Order domain's identifier of an order.
    OrderId,
    MAX_ID_BYTES
);
identifier!(
    /// An external system's reference for an adjustment; makes the adjustment idempotent.
    ExternalRef,
    MAX_ID_BYTES
);
identifier!(
    /// A client-chosen `Idempotency-Key` for a reservation.
    IdempotencyKey,
    MAX_ID_BYTES
);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn real_world_ids_pass_unchanged() {
        for id in [
            "SKU-1.a_b:c",
            "TSHIRT RED/XL",
            "CAFÉ-1",
            "ORDER#1001",
            "gid://shopify/Order/1001",
            "商品-42",
            "a%2Fb",
        ] {
            assert_eq!(Sku::parse(id).map(String::from), Ok(id.to_owned()));
        }
        assert!(OrderId::parse("o".repeat(MAX_ID_BYTES)).is_ok());
        // 255 bytes of two-byte characters would be 510 bytes: the limit is in bytes.
        assert!(Sku::parse("é".repeat(127)).is_ok());
        assert_eq!(
            Sku::parse("é".repeat(128)),
            Err(IdError::TooLong { max: MAX_ID_BYTES })
        );
    }

    #[test]
    fn rejects_empty_long_control_and_edge_whitespace() {
        assert_eq!(StoreId::parse(""), Err(IdError::Empty));
        assert_eq!(
            Sku::parse("a".repeat(256)),
            Err(IdError::TooLong { max: MAX_ID_BYTES })
        );
        for bad in ["a\nb", "a\tb", "\u{7f}", "a\u{85}b", "\0"] {
            assert_eq!(Sku::parse(bad), Err(IdError::ControlCharacter), "{bad:?}");
        }
        for bad in [" a", "a ", "\u{a0}a", "a\u{3000}", " "] {
            assert_eq!(Sku::parse(bad), Err(IdError::EdgeWhitespace), "{bad:?}");
        }
        assert_eq!(Sku::parse("."), Err(IdError::DotSegment));
        assert_eq!(Sku::parse(".."), Err(IdError::DotSegment));
        assert!(Sku::parse("...").is_ok() && Sku::parse(".a").is_ok());
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<Sku>("\"ok ok\"").is_ok());
        let err = serde_json::from_str::<Sku>("\" padded\"").unwrap_err();
        assert!(err.to_string().contains("whitespace"), "{err}");
    }

    proptest! {
        /// Every string the rule admits parses and comes back byte for byte.
        #[test]
        fn valid_ids_round_trip(id in "[^\\p{Cc}\\s][^\\p{Cc}]{0,60}[^\\p{Cc}\\s]") {
            prop_assume!(id.len() <= MAX_ID_BYTES && id != "." && id != "..");
            let parsed = Sku::parse(id.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.as_str(), id.as_str());
            let json = serde_json::to_string(&parsed).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: Sku = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, parsed);
        }
    }
}
