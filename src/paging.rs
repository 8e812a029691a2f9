//! Paging of listings: those that read the database newest first (audit
//! rows, deployments), by row id, and those read from the snapshot in key
//! order (flags, config rows, evaluations), by key, in pages that also stay
//! under a byte budget (the message size limit). Page sizes, page tokens and
//! the token of the next page. Pure: no I/O.

use crate::flags::ValidationError;

/// A listing's page sizes.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    /// The size of a page when the request names none (0).
    pub default: u32,
    /// The largest page a request may ask for.
    pub max: u32,
}

/// The page size to use for a request's `page_size`: the default for 0,
/// INVALID_ARGUMENT-worthy when over the limit (refused, not capped, so a
/// client never silently gets less than it asked for).
pub fn page_size(requested: u32, limits: PageLimits) -> Result<u32, ValidationError> {
    match requested {
        0 => Ok(limits.default),
        n if n <= limits.max => Ok(n),
        n => Err(ValidationError::new(
            "page_size",
            format!("{n} is over the limit of {}", limits.max),
        )),
    }
}

/// The row id a page token stands for (rows with a smaller id follow);
/// `None` for the first page (empty token). A token is the decimal id of
/// the last row of the previous page; only the canonical spelling is
/// accepted (no sign, no leading zero, no space), so one page has one token.
pub fn page_token(token: &str, listing: &str) -> Result<Option<i64>, ValidationError> {
    if token.is_empty() {
        return Ok(None);
    }
    let canonical = token.bytes().all(|b| b.is_ascii_digit()) && !token.starts_with('0');
    match token.parse::<i64>() {
        Ok(id) if canonical && id > 0 => Ok(Some(id)),
        _ => Err(ValidationError::new(
            "page_token",
            format!(
                "{:?} is not a token returned by {listing}",
                crate::echo::truncate(token)
            ),
        )),
    }
}

/// Cuts `rows` (fetched with one row more than `size`) to the page and
/// returns the token of the next page, empty when this is the last: the
/// extra row tells whether another page follows, so the last page never
/// ends with a token that leads to nothing.
pub fn next_page_token<T>(rows: &mut Vec<T>, size: u32, id: impl Fn(&T) -> i64) -> String {
    let size = size as usize;
    if rows.len() > size {
        rows.truncate(size);
        rows.last()
            .map(|row| id(row).to_string())
            .unwrap_or_default()
    } else {
        String::new()
    }
}

/// The page size of a listing in key order: `None` for 0 (a client that
/// does not page: everything in one answer, when it fits), INVALID_ARGUMENT-
/// worthy over `max`.
pub fn key_page_size(requested: u32, max: u32) -> Result<Option<u32>, ValidationError> {
    match requested {
        0 => Ok(None),
        n if n <= max => Ok(Some(n)),
        n => Err(ValidationError::new(
            "page_size",
            format!("{n} is over the limit of {max}"),
        )),
    }
}

/// Marks the tokens of listings in key order (and their format version).
const KEY_TOKEN_PREFIX: &str = "k1.";

/// The token of the page after the item at `position` (its key, and for
/// rows of several environments its environment): opaque to clients, but
/// only a position, so a token stays good while the data changes.
pub fn key_token(position: &[&str]) -> String {
    let mut token = String::from(KEY_TOKEN_PREFIX);
    for (i, part) in position.iter().enumerate() {
        if i > 0 {
            token.push_str("00");
        }
        for byte in part.bytes() {
            token.push_str(&format!("{byte:02x}"));
        }
    }
    token
}

/// The position a token of [`key_token`] stands for; `None` for the first
/// page (empty token). Anything else is refused naming `page_token`.
pub fn key_position(token: &str, listing: &str) -> Result<Option<Vec<String>>, ValidationError> {
    if token.is_empty() {
        return Ok(None);
    }
    let refused = || {
        ValidationError::new(
            "page_token",
            format!(
                "{:?} is not a token returned by {listing}",
                token.chars().take(64).collect::<String>()
            ),
        )
    };
    let hex = token.strip_prefix(KEY_TOKEN_PREFIX).ok_or_else(refused)?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(refused());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .filter(|pair| pair.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(refused)?;
    let text = String::from_utf8(bytes).map_err(|_| refused())?;
    Ok(Some(text.split('\0').map(str::to_owned).collect()))
}

/// A listing that does not fit in one answer and was asked for without a
/// page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// The byte budget it went over.
    pub budget: usize,
}

/// One page of `items` (already in order and after the page token): at
/// most `size` items, and never more than `budget` bytes by `bytes_of`
/// (though always at least one item, so that paging moves on); `true` with
/// it when more items follow. Without a size every item is taken, and a
/// listing over the budget is refused as a whole (never cut silently).
pub fn fill_page<S, T>(
    items: impl Iterator<Item = S>,
    mut convert: impl FnMut(S) -> T,
    bytes_of: impl Fn(&T) -> usize,
    size: Option<u32>,
    budget: usize,
) -> Result<(Vec<T>, bool), TooLarge> {
    let mut items = items.peekable();
    let mut page = Vec::new();
    let mut used = 0usize;
    while let Some(item) = items.next() {
        let item = convert(item);
        let bytes = bytes_of(&item);
        if used.saturating_add(bytes) > budget && (size.is_none() || !page.is_empty()) {
            return match size {
                None => Err(TooLarge { budget }),
                // This item opens the next page.
                Some(_) => Ok((page, true)),
            };
        }
        used = used.saturating_add(bytes);
        page.push(item);
        if size.is_some_and(|size| page.len() >= size as usize) {
            return Ok((page, items.peek().is_some()));
        }
    }
    Ok((page, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: PageLimits = PageLimits {
        default: 50,
        max: 500,
    };

    #[test]
    fn a_page_with_more_rows_after_it_has_a_token() {
        let mut rows: Vec<i64> = (1..=11).rev().collect();
        assert_eq!(next_page_token(&mut rows, 10, |r| *r), "2");
        assert_eq!(rows.len(), 10);
        let mut last: Vec<i64> = vec![3, 2, 1];
        assert_eq!(next_page_token(&mut last, 10, |r| *r), "");
        assert_eq!(last.len(), 3);
    }

    #[test]
    fn key_tokens_round_trip_and_foreign_tokens_are_refused() {
        for position in [vec!["a"], vec!["flag.number_9"], vec!["max_upload_mb", "*"]] {
            let token = key_token(&position);
            assert_eq!(
                key_position(&token, "ListFlags").expect("valid"),
                Some(position.iter().map(|p| p.to_string()).collect())
            );
        }
        assert_eq!(key_position("", "ListFlags").expect("first page"), None);
        for foreign in [
            "12", "k1.", "k1.6", "k1.zz", "k1.6G", "k1.C3", "k2.61", "k1.ff",
        ] {
            let err = key_position(foreign, "ListFlags").expect_err(foreign);
            assert_eq!(err.field, "page_token");
        }
    }

    #[test]
    fn key_pages_stop_at_their_size_or_their_budget() {
        let bytes = |item: &usize| *item;
        // By size: three of five, more follow; then the rest.
        assert_eq!(
            fill_page([1, 1, 1, 1, 1].into_iter(), |i| i, bytes, Some(3), 100),
            Ok((vec![1, 1, 1], true))
        );
        assert_eq!(
            fill_page([1, 1].into_iter(), |i| i, bytes, Some(2), 100),
            Ok((vec![1, 1], false))
        );
        // By budget: cut before the item that would not fit, more follow.
        assert_eq!(
            fill_page([40, 40, 40].into_iter(), |i| i, bytes, Some(10), 100),
            Ok((vec![40, 40], true))
        );
        // One item larger than the budget still makes a page.
        assert_eq!(
            fill_page([500, 1].into_iter(), |i| i, bytes, Some(10), 100),
            Ok((vec![500], true))
        );
        // Without a size: all, or refused whole.
        assert_eq!(
            fill_page([40, 40].into_iter(), |i| i, bytes, None, 100),
            Ok((vec![40, 40], false))
        );
        assert_eq!(
            fill_page([40, 40, 40].into_iter(), |i| i, bytes, None, 100),
            Err(TooLarge { budget: 100 })
        );
        assert_eq!(key_page_size(0, 1000).expect("valid"), None);
        assert_eq!(key_page_size(1000, 1000).expect("valid"), Some(1000));
        assert_eq!(
            key_page_size(1001, 1000).expect_err("too big").field,
            "page_size"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        #[test]
        fn paging_by_key_yields_every_item_once_in_order(
            items in proptest::collection::vec(0usize..50, 0..60),
            size in 1u32..8,
        ) {
            let mut seen = Vec::new();
            let mut start = 0;
            loop {
                let (page, more) = fill_page(
                    items[start..].iter().copied(),
                    |i| i,
                    |i| *i,
                    Some(size),
                    100,
                )
                .expect("a paged listing never fails");
                prop_assert!(!page.is_empty() || !more);
                prop_assert!(page.len() <= size as usize);
                start += page.len();
                seen.extend(page);
                if !more {
                    break;
                }
            }
            prop_assert_eq!(seen, items);
        }

        #[test]
        fn page_tokens_are_canonical_positive_decimals(token in "\\PC{0,8}|[0-9+-]{0,8}") {
            let expected = if token.is_empty() {
                Some(None)
            } else if !token.starts_with('0') && token.chars().all(|c| c.is_ascii_digit()) {
                token.parse::<i64>().ok().filter(|id| *id > 0).map(Some)
            } else {
                None
            };
            prop_assert_eq!(page_token(&token, "a listing").ok(), expected);
        }

        #[test]
        fn page_sizes_default_and_stop_at_the_limit(n in prop_oneof![0..=600u32, any::<u32>()]) {
            let expected = match n {
                0 => Some(50),
                n if n <= 500 => Some(n),
                _ => None,
            };
            prop_assert_eq!(page_size(n, LIMITS).ok(), expected);
        }
    }
}
