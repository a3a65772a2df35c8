//! Schemas the wire types refer to that no Rust type of theirs describes exactly:
//! the identifier rule of api.md, and the reasons and channel enums as the strings a
//! client sends. Both the wire types and the OpenAPI document use them; they depend
//! on neither.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// Characters an identifier may not begin or end with: control characters and
/// Unicode white space (what Rust's `char::is_whitespace` and `is_control` match).
const EDGE_EXCLUDED: &str = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// The identifier rule of api.md as a JSON Schema string. `maxLength` counts
/// characters while the rule counts UTF-8 bytes (255): the description says so.
pub(crate) struct Identifier;

impl PartialSchema for Identifier {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        let pattern =
            format!(r"^(?!\.\.?$)[^{EDGE_EXCLUDED}](?:[^\x00-\x1f\x7f-\x9f]*[^{EDGE_EXCLUDED}])?$");
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(invsync_core::MAX_ID_BYTES))
            .pattern(Some(pattern))
            .description(Some(
                "Any UTF-8 string of 1 to 255 bytes with no control characters, no \
                 leading or trailing white space, and not `.` or `..`. Percent-encoded \
                 in a path (`TSHIRT%20RED%2FXL`).",
            ))
            .examples(["TSHIRT RED/XL"])
            .into()
    }
}

impl ToSchema for Identifier {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Identifier")
    }
}

/// A comma-separated list of 1 to 100 SKUs (`skus` of the storefront's listing): each
/// an identifier that holds no comma.
pub(crate) struct SkuList;

impl PartialSchema for SkuList {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        let one = format!(
            r"(?!\.\.?(?:,|$))[^{EDGE_EXCLUDED},](?:[^\x00-\x1f\x7f-\x9f,]*[^{EDGE_EXCLUDED},])?"
        );
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .pattern(Some(format!("^{one}(?:,{one}){{0,99}}$")))
            .description(Some(
                "1 to 100 SKUs, comma-separated; a SKU holding a comma is asked for on \
                 its own route.",
            ))
            .examples(["TSHIRT RED/XL,MUG-1"])
            .into()
    }
}

impl ToSchema for SkuList {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SkuList")
    }
}

/// A string enum of the values `T` serializes to: the reasons a client may send.
fn names<T: serde::Serialize>(all: &[T]) -> Vec<String> {
    all.iter()
        .filter_map(|v| serde_json::to_value(v).ok()?.as_str().map(str::to_owned))
        .collect()
}

fn string_enum(values: Vec<String>, description: &str) -> RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values))
        .description(Some(description))
        .into()
}

/// `reason` of an adjustment.
pub(crate) struct AdjustReason;

impl PartialSchema for AdjustReason {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        string_enum(
            names(&invsync_core::AdjustReason::ALL),
            "Why on_hand changes.",
        )
    }
}

impl ToSchema for AdjustReason {}

/// `reason` of a release.
pub(crate) struct ReleaseReason;

impl PartialSchema for ReleaseReason {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        string_enum(
            names(&invsync_core::ReleaseReason::ALL),
            "Why stock is released (default `order_cancelled`).",
        )
    }
}

impl ToSchema for ReleaseReason {}

/// `allocation` of a channel.
pub(crate) struct Allocation;

impl PartialSchema for Allocation {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        string_enum(
            names(&invsync_core::channel::Allocation::ALL),
            "The order a channel's locations are tried in: `priority` (lowest number \
             first, ties by store_id) or `most_available` (most channel-available units \
             first).",
        )
    }
}

impl ToSchema for Allocation {}

/// `split` of a channel.
pub(crate) struct Split;

impl PartialSchema for Split {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        string_enum(
            names(&invsync_core::channel::Split::ALL),
            "How an order may be divided: `none` (all from one location), `by_line` \
             (each line from one location), `by_unit` (a line across locations).",
        )
    }
}

impl ToSchema for Split {}
