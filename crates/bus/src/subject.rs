//! Subjects on the bus: `invsync.events.<partition>.<encoded-sku>`.
//!
//! The partition is a stable hash of the SKU, so every event of one SKU (across all
//! stores) lands in one partition and keeps its order. The SKU is encoded so that no
//! character can change the subject's shape: NATS splits subjects on `.`, treats `*`
//! and `>` as wildcards and forbids whitespace, and a SKU may contain `.` (the API
//! allows it) — the bus must not trust that nothing else ever gets through.

/// The prefix of every event subject; the stream captures `invsync.events.>`.
pub const EVENTS_PREFIX: &str = "invsync.events";
/// The prefix of dead-letter subjects: `invsync.dlq.<consumer>`.
pub const DLQ_PREFIX: &str = "invsync.dlq";

/// Encodes one subject token: ASCII letters, digits, `-` and `_` stay as they are;
/// every other byte becomes `~` and two upper-case hex digits. Injective (`~` is
/// itself escaped), never empty for a non-empty input, and the result contains no
/// `.`, `*`, `>` or whitespace.
pub fn encode_token(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push('~');
            out.push_str(&format!("{b:02X}"));
        }
    }
    out
}

pub use invsync_core::event::partition;

/// The subject an event of `sku` is published on.
pub fn event_subject(sku: &str, partitions: u32) -> String {
    format!(
        "{EVENTS_PREFIX}.{}.{}",
        partition(sku, partitions),
        encode_token(sku)
    )
}

/// The subject of a consumer's dead letters.
pub fn dlq_subject(consumer: &str) -> String {
    format!("{DLQ_PREFIX}.{}", encode_token(consumer))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn characters_that_shape_subjects_are_escaped() {
        assert_eq!(encode_token("SKU-1_a"), "SKU-1_a");
        assert_eq!(encode_token("a.b"), "a~2Eb");
        assert_eq!(encode_token("*"), "~2A");
        assert_eq!(encode_token(">"), "~3E");
        assert_eq!(encode_token("a b"), "a~20b");
        assert_eq!(encode_token("~"), "~7E");
        assert_eq!(
            event_subject("x.y", 16),
            format!("invsync.events.{}.x~2Ey", partition("x.y", 16))
        );
    }

    #[test]
    fn the_partition_is_stable() {
        // Pinned values: a change of the hash would move SKUs between partitions.
        assert_eq!(partition("", 16), 0x811c_9dc5 % 16);
        assert_eq!(partition("SKU-1", 16), partition("SKU-1", 16));
        assert_eq!(partition("a", 1 << 31), 0xe40c_292c % (1 << 31));
        assert_eq!(partition("anything", 0), 0, "zero partitions act as one");
    }

    proptest! {
        #[test]
        fn an_encoded_token_is_one_valid_token(value in "\\PC{1,64}") {
            let token = encode_token(&value);
            prop_assert!(!token.is_empty());
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')));
        }

        #[test]
        fn encoding_is_injective(a in "\\PC{1,16}", b in "\\PC{1,16}") {
            prop_assume!(a != b);
            prop_assert_ne!(encode_token(&a), encode_token(&b));
        }

        #[test]
        fn partitions_are_in_range(sku in "[A-Za-z0-9._:-]{1,64}", n in 1u32..64) {
            prop_assert!(partition(&sku, n) < n);
        }
    }
}
