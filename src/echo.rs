//! Client input echoed in error messages, cut short. A status message quotes
//! what the client sent so that they see what was refused, but a megabyte of
//! junk must not come back as a megabyte of error, nor fill the logs that
//! record refused calls. Every message that echoes client input goes through
//! [`truncate`]. Pure: no I/O.

/// Characters of client input an error message shows at most.
pub const MAX_ECHO_CHARS: usize = 64;

/// At most the first [`MAX_ECHO_CHARS`] characters of `input` (whole
/// characters, so the result is valid UTF-8). Quote it with `{:?}`, which
/// also escapes control characters.
pub fn truncate(input: &str) -> &str {
    match input.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => &input[..end],
        None => input,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn input_is_cut_to_a_prefix_of_whole_characters(input in "\\PC{0,200}") {
            let cut = truncate(&input);
            prop_assert!(input.starts_with(cut));
            prop_assert_eq!(cut.chars().count(), input.chars().count().min(MAX_ECHO_CHARS));
        }
    }
}
