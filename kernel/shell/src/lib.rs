//! Line editing and command dispatch for the daxbox serial admin shell.
//!
//! The kernel feeds every byte that arrives on the serial console into a
//! [`LineEditor`]; the editor says what to echo and hands back whole lines.
//! [`split_words`] turns a line into words, and [`find_command`] looks a
//! command up in the tables that kernel modules register (each module
//! exports a `&[Command<C>]`, so adding a command is one table entry).
//! Nothing here touches hardware, so it is tested on the host.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

/// Longest line the shell accepts, in bytes. Room for a command naming a
/// file with the longest name daxfs allows (255 bytes, FORMAT.md), with a
/// `pmemN:` prefix and arguments, e.g. `write pmem0:<255 bytes> 0 TEXT`.
pub const MAX_LINE: usize = 512;

/// What the caller should do after feeding one byte to the editor.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing visible happens.
    None,
    /// Echo these bytes back to the terminal.
    Echo(&'static [u8]),
    /// Echo this one byte.
    EchoByte(u8),
    /// The user finished a line (already echoed as a newline).
    Line(String),
    /// The user finished a line that was too long; it was discarded.
    TooLong,
    /// The user finished a line that was not valid UTF-8; it was discarded.
    NotText,
}

/// A minimal line editor: printable bytes, backspace/delete, Ctrl-U (kill
/// line), Ctrl-C (cancel line), CR or LF ends a line (CR LF counts once).
#[derive(Default)]
pub struct LineEditor {
    line: Vec<u8>,
    overflow: bool,
    last_was_cr: bool,
}

impl LineEditor {
    /// An empty editor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one input byte.
    pub fn feed(&mut self, byte: u8) -> Event {
        let after_cr = core::mem::replace(&mut self.last_was_cr, byte == b'\r');
        match byte {
            b'\n' if after_cr => Event::None,
            b'\r' | b'\n' => self.finish(),
            // Backspace (^H) and DEL both erase one character.
            0x08 | 0x7f => {
                if self.overflow {
                    Event::None
                } else if self.line.pop().is_some() {
                    Event::Echo(b"\x08 \x08")
                } else {
                    Event::None
                }
            }
            // ^U: erase the whole line.
            0x15 => {
                let erased = self.line.len();
                self.line.clear();
                self.overflow = false;
                if erased > 0 {
                    Event::Echo(b"\r\x1b[K")
                } else {
                    Event::None
                }
            }
            // ^C: abandon the line.
            0x03 => {
                self.line.clear();
                self.overflow = false;
                Event::Line(String::new())
            }
            0x20..=0x7e | 0x80..=0xff => {
                if self.line.len() >= MAX_LINE {
                    self.overflow = true;
                    Event::None
                } else {
                    self.line.push(byte);
                    Event::EchoByte(byte)
                }
            }
            // Other control bytes (escape sequences, tabs) are ignored.
            _ => Event::None,
        }
    }

    fn finish(&mut self) -> Event {
        let line = core::mem::take(&mut self.line);
        if core::mem::replace(&mut self.overflow, false) {
            return Event::TooLong;
        }
        match String::from_utf8(line) {
            Ok(text) => Event::Line(text),
            Err(_) => Event::NotText,
        }
    }
}

/// Splits a command line into whitespace-separated words.
pub fn split_words(line: &str) -> Vec<&str> {
    line.split_ascii_whitespace().collect()
}

/// One shell command. `C` is whatever context the kernel passes to commands.
pub struct Command<C: ?Sized> {
    /// The word that invokes it.
    pub name: &'static str,
    /// Argument synopsis, e.g. `DEVICE OFFSET LENGTH`.
    pub usage: &'static str,
    /// One-line description for `help`.
    pub help: &'static str,
    /// Runs the command with the words after its name; an `Err` is printed
    /// as `error: <text>`.
    pub run: fn(&mut C, &[&str]) -> Result<(), String>,
}

/// Finds `name` in a list of command tables.
pub fn find_command<'a, C: ?Sized>(
    tables: &[&'a [Command<C>]],
    name: &str,
) -> Option<&'a Command<C>> {
    tables
        .iter()
        .flat_map(|table| table.iter())
        .find(|command| command.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(editor: &mut LineEditor, bytes: &[u8]) -> Vec<Event> {
        bytes.iter().map(|&b| editor.feed(b)).collect()
    }

    #[test]
    fn backspace_edits_the_line() {
        let mut editor = LineEditor::new();
        let events = feed_all(&mut editor, b"helq\x7fp\r");
        assert_eq!(events.last(), Some(&Event::Line("help".into())));
        assert!(events.contains(&Event::Echo(b"\x08 \x08")));
    }

    #[test]
    fn crlf_ends_one_line_only() {
        let mut editor = LineEditor::new();
        let events = feed_all(&mut editor, b"a\r\nb\n");
        let lines: Vec<_> = events
            .into_iter()
            .filter(|e| matches!(e, Event::Line(_)))
            .collect();
        assert_eq!(lines, [Event::Line("a".into()), Event::Line("b".into())]);
    }

    #[test]
    fn overlong_lines_are_refused_then_editing_resumes() {
        let mut editor = LineEditor::new();
        let long = alloc::vec![b'x'; MAX_LINE + 10];
        feed_all(&mut editor, &long);
        assert_eq!(editor.feed(b'\n'), Event::TooLong);
        let events = feed_all(&mut editor, b"ok\n");
        assert_eq!(events.last(), Some(&Event::Line("ok".into())));
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let mut editor = LineEditor::new();
        let events = feed_all(&mut editor, b"\xff\xfe\n");
        assert_eq!(events.last(), Some(&Event::NotText));
    }

    #[test]
    fn backspace_on_empty_line_does_nothing() {
        let mut editor = LineEditor::new();
        assert_eq!(editor.feed(0x7f), Event::None);
        assert_eq!(editor.feed(b'\r'), Event::Line(String::new()));
    }

    #[test]
    fn commands_are_found_across_tables() {
        fn ok(_: &mut (), _: &[&str]) -> Result<(), String> {
            Ok(())
        }
        let first = [Command::<()> {
            name: "a",
            usage: "",
            help: "",
            run: ok,
        }];
        let second = [Command::<()> {
            name: "b",
            usage: "",
            help: "",
            run: ok,
        }];
        let tables: [&[Command<()>]; 2] = [&first, &second];
        assert_eq!(find_command(&tables, "b").map(|c| c.name), Some("b"));
        assert!(find_command(&tables, "c").is_none());
        assert_eq!(split_words("  blk  read pmem0 "), ["blk", "read", "pmem0"]);
    }
}
