//! Splitting a command line into words, with quoting.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Why a line could not be split into words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// A `"` was opened and never closed.
    UnterminatedQuote,
    /// The line ends in a backslash that escapes nothing.
    TrailingBackslash,
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SplitError::UnterminatedQuote => "unterminated quote",
            SplitError::TrailingBackslash => "line ends in a backslash",
        })
    }
}

/// Splits a command line into words separated by ASCII whitespace.
///
/// `"..."` keeps spaces inside a word; within it `\"` is a quote and `\\`
/// a backslash (any other backslash is kept as it is). Outside quotes a
/// backslash makes the next character literal, so `with\ space` is one
/// word. Quoted and unquoted parts next to each other form one word
/// (`a"b c"` is `ab c`), and `""` is an empty word.
pub fn split_words(line: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    // The word being built, if one has started (`""` starts an empty one).
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let word = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => return Err(SplitError::UnterminatedQuote),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return Err(SplitError::UnterminatedQuote),
                            Some(escaped @ ('"' | '\\')) => word.push(escaped),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                        },
                        Some(other) => word.push(other),
                    }
                }
            }
            '\\' => match chars.next() {
                None => return Err(SplitError::TrailingBackslash),
                Some(escaped) => word.get_or_insert_with(String::new).push(escaped),
            },
            c if c.is_ascii_whitespace() => {
                if let Some(done) = word.take() {
                    words.push(done);
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Result<Vec<String>, SplitError> {
        split_words(line)
    }

    #[test]
    fn plain_words_split_on_whitespace() {
        assert_eq!(
            split("  blk  read\tpmem0 ").unwrap(),
            ["blk", "read", "pmem0"]
        );
        assert!(split("").unwrap().is_empty());
        assert!(split("   ").unwrap().is_empty());
    }

    #[test]
    fn double_quotes_keep_spaces() {
        assert_eq!(
            split(r#"create "with space" 1M"#).unwrap(),
            ["create", "with space", "1M"]
        );
        assert_eq!(
            split(r#"write f 0 "two  spaces, a tab	too""#).unwrap(),
            ["write", "f", "0", "two  spaces, a tab\ttoo"]
        );
    }

    #[test]
    fn escapes_inside_quotes() {
        assert_eq!(
            split(r#"x "say \"hi\" \\ \n""#).unwrap(),
            ["x", r#"say "hi" \ \n"#]
        );
    }

    #[test]
    fn backslash_outside_quotes_makes_the_next_character_literal() {
        assert_eq!(
            split(r#"rm with\ space a\"b c\\d \e"#).unwrap(),
            ["rm", "with space", "a\"b", "c\\d", "e"]
        );
    }

    #[test]
    fn adjacent_parts_form_one_word_and_empty_quotes_are_a_word() {
        assert_eq!(split(r#"a"b c"d"#).unwrap(), ["ab cd"]);
        assert_eq!(split(r#"mv "" x"#).unwrap(), ["mv", "", "x"]);
        assert_eq!(
            split("caf\u{e9} \"\u{e9}t\u{e9}\"").unwrap(),
            ["café", "été"]
        );
    }

    #[test]
    fn unterminated_quotes_and_trailing_backslashes_are_errors() {
        assert_eq!(
            split(r#"create "with space 1M"#),
            Err(SplitError::UnterminatedQuote)
        );
        assert_eq!(split(r#"x "ends in \"#), Err(SplitError::UnterminatedQuote));
        assert_eq!(split("x\""), Err(SplitError::UnterminatedQuote));
        assert_eq!(split(r"x \"), Err(SplitError::TrailingBackslash));
        assert_eq!(
            SplitError::UnterminatedQuote.to_string(),
            "unterminated quote"
        );
    }
}
