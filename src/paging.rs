//! Paging of listings that read the database newest first (audit rows,
//! deployments): page sizes, page tokens and the token of the next page.
//! Pure: no I/O.

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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

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
