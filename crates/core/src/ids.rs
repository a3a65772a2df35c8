//! Validated identifiers: once built, an identifier is known to match the pattern of
//! `api.md` (`^[A-Za-z0-9._:-]{1,N}$`), so no later layer checks it again.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier. The message names the rule it broke, so the
/// API can hand it to the client beside the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters long")]
    TooLong { max: usize },
    #[error("may contain only letters, digits, '.', '_', ':' and '-'")]
    BadCharacter,
}

fn check_identifier(value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.len() > max {
        return Err(IdError::TooLong { max });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(IdError::BadCharacter);
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
            /// Longest accepted value, in bytes (all accepted characters are ASCII).
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
    64
);
identifier!(
    /// A product's stock-keeping unit; the partition key of every event.
    Sku,
    64
);
identifier!(
    /// The Order domain's identifier of an order.
    OrderId,
    128
);
identifier!(
    /// An external system's reference for an adjustment; makes the adjustment idempotent.
    ExternalRef,
    128
);
identifier!(
    /// A client-chosen `Idempotency-Key` for a reservation.
    IdempotencyKey,
    128
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(Sku::parse("SKU-1.a_b:c").is_ok());
        assert!(Sku::parse("a".repeat(64)).is_ok());
        assert!(OrderId::parse("o".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(StoreId::parse(""), Err(IdError::Empty));
        assert_eq!(
            Sku::parse("a".repeat(65)),
            Err(IdError::TooLong { max: 64 })
        );
        assert_eq!(
            OrderId::parse("o".repeat(129)),
            Err(IdError::TooLong { max: 128 })
        );
        for bad in ["a b", "a/b", "ä", "a*", "a>", "a\n"] {
            assert_eq!(Sku::parse(bad), Err(IdError::BadCharacter), "{bad:?}");
        }
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<Sku>("\"ok\"").is_ok());
        let err = serde_json::from_str::<Sku>("\"not ok\"").unwrap_err();
        assert!(err.to_string().contains("may contain only"), "{err}");
    }
}
