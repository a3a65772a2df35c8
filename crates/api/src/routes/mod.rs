//! The v1 routes, one module per area of `api.md`.

pub(crate) mod adjustments;
pub(crate) mod channels;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod pipeline;
pub(crate) mod reservations;
pub(crate) mod stock;
pub(crate) mod stream;

/// `limit` of the paged endpoints: default 100, 1 to 1,000.
pub(crate) fn page_limit(limit: Option<i64>) -> Result<usize, crate::error::ApiError> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(n as usize),
        Some(n) => Err(crate::error::ApiError::invalid(
            "limit",
            format!("must be from 1 to 1000, got {n}"),
        )),
    }
}

/// The `next` cursor of the (store, sku) listings: `<store>/<sku>`, each part with `%`
/// and `/` escaped (`%25`, `%2F`) so that ids holding a `/` split back exactly. Ids
/// made before they could hold either are unchanged, so old cursors stay valid.
pub(crate) fn pair_cursor(store_id: &str, sku: &str) -> String {
    fn escape(part: &str) -> String {
        part.replace('%', "%25").replace('/', "%2F")
    }
    format!("{}/{}", escape(store_id), escape(sku))
}

/// Reads a cursor made by [`pair_cursor`].
pub(crate) fn parse_pair_cursor(
    cursor: &str,
) -> Result<(invsync_core::StoreId, invsync_core::Sku), crate::error::ApiError> {
    use crate::extract::field;
    let bad = || crate::error::ApiError::invalid("after", "must be a cursor returned as `next`");
    let (store, sku) = cursor.split_once('/').ok_or_else(bad)?;
    let unescape = |part: &str| -> Result<String, crate::error::ApiError> {
        let mut out = String::with_capacity(part.len());
        let mut rest = part;
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            let escaped = rest.get(at..at + 3).ok_or_else(bad)?;
            out.push(match escaped {
                "%25" => '%',
                "%2F" => '/',
                _ => return Err(bad()),
            });
            rest = &rest[at + 3..];
        }
        out.push_str(rest);
        Ok(out)
    };
    Ok((
        field("after", invsync_core::StoreId::parse(unescape(store)?))?,
        field("after", invsync_core::Sku::parse(unescape(sku)?))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_cursors_split_back_exactly() {
        for (store, sku) in [
            ("S1", "SKU-1"),
            ("a/b", "c"),
            ("a", "b/c"),
            ("50%/off", "%2F"),
            ("CAFÉ 1", "TSHIRT RED/XL"),
        ] {
            let (s, k) = parse_pair_cursor(&pair_cursor(store, sku)).unwrap();
            assert_eq!((s.as_str(), k.as_str()), (store, sku));
        }
        assert_eq!(
            pair_cursor("S1", "SKU-1"),
            "S1/SKU-1",
            "old cursors still parse"
        );
        for bad in ["no-slash", "a/%2", "a/%41", "/x"] {
            assert!(parse_pair_cursor(bad).is_err(), "{bad}");
        }
    }
}
