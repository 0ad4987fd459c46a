//! The line editor: a cursor, editing keys, escape sequences and history.
//!
//! The editor writes what the terminal must show to a [`Terminal`] itself,
//! using only moves relative to the cursor (`ESC [ n D`, `ESC [ n C`) and
//! erase-to-end-of-line (`ESC [ K`), so it never needs to know the prompt.
//! It assumes one column per character and a line that does not wrap.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use crate::Terminal;

/// Longest line the shell accepts, in bytes. Room for a command naming a
/// file with the longest name daxfs allows (255 bytes, FORMAT.md), with a
/// `pmemN:` prefix and arguments, e.g. `write pmem0:<255 bytes> 0 TEXT`.
pub const MAX_LINE: usize = 512;

/// How many lines the history keeps.
pub const HISTORY: usize = 32;

/// Longest escape-sequence parameter string the editor keeps; longer ones
/// are still swallowed whole, and not understood.
const MAX_PARAMS: usize = 8;

/// What happened to the line after one input byte.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The line is still being edited (any echo is already written).
    Editing,
    /// The user finished a line; the cursor is at its end and the newline
    /// is not written yet.
    Line(String),
    /// The user finished a line that was too long; it was discarded.
    TooLong,
    /// The user finished a line that was not valid UTF-8; it was discarded.
    NotText,
}

/// Where the editor is in an escape sequence.
#[derive(Default, Clone, Copy)]
enum Escape {
    /// Not in one.
    #[default]
    None,
    /// After `ESC`.
    Start,
    /// After `ESC [`, collecting parameter bytes.
    Csi,
    /// After `ESC O`: the next byte is the key.
    Ss3,
}

/// A key the editor understands.
#[derive(Clone, Copy)]
enum Key {
    Left,
    Right,
    Home,
    End,
    Up,
    Down,
    Delete,
}

/// A line editor: printable bytes inserted at the cursor, Left/Right,
/// Home/End (and Ctrl-A/Ctrl-E), backspace/DEL before the cursor, Delete
/// at it, Ctrl-W (erase the word before the cursor), Ctrl-U (erase the
/// line), Ctrl-C (abandon the line), Up/Down through the last [`HISTORY`]
/// lines; CR or LF ends a line (CR LF counts once). Escape sequences it
/// does not know are swallowed whole.
#[derive(Default)]
pub struct LineEditor {
    line: Vec<u8>,
    /// Byte offset of the cursor in `line` (at a character boundary except
    /// while a multi-byte character is being typed).
    cursor: usize,
    overflow: bool,
    last_was_cr: bool,
    escape: Escape,
    params: Vec<u8>,
    params_overflow: bool,
    history: VecDeque<String>,
    /// The history entry shown, while browsing it.
    browsing: Option<usize>,
    /// The line being typed before browsing started.
    draft: Vec<u8>,
}

/// `ESC [ n D`: `n` columns left (nothing for 0: `ESC [ 0 D` moves one).
fn left(out: &mut dyn Terminal, columns: usize) {
    if columns > 0 {
        out.write_text(&alloc::format!("\x1b[{}D", columns));
    }
}

/// `ESC [ n C`: `n` columns right.
fn right(out: &mut dyn Terminal, columns: usize) {
    if columns > 0 {
        out.write_text(&alloc::format!("\x1b[{}C", columns));
    }
}

fn is_continuation(byte: u8) -> bool {
    byte & 0xc0 == 0x80
}

/// Screen columns of `bytes`: one per character (invalid bytes count one).
fn columns(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| !is_continuation(b)).count()
}

/// Length of the UTF-8 sequence a lead byte starts.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

impl LineEditor {
    /// An empty editor with an empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The history, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &str> {
        self.history.iter().map(String::as_str)
    }

    /// Writes the line typed so far again (other output interrupted it),
    /// leaving the terminal's cursor where the editor's is.
    pub fn redraw(&self, out: &mut dyn Terminal) {
        out.write_bytes(&self.line);
        let behind = self
            .line
            .get(self.cursor..)
            .map_or(0, |rest| String::from_utf8_lossy(rest).chars().count());
        if behind > 0 {
            out.write_text(&alloc::format!("\x1b[{behind}D"));
        }
    }

    /// Feeds one input byte; writes the echo to `out`.
    pub fn feed(&mut self, byte: u8, out: &mut dyn Terminal) -> Event {
        let after_cr = core::mem::replace(&mut self.last_was_cr, byte == b'\r');
        match self.escape {
            Escape::None => {}
            Escape::Start => {
                self.escape = Escape::None;
                match byte {
                    b'[' => {
                        self.escape = Escape::Csi;
                        self.params.clear();
                        self.params_overflow = false;
                        return Event::Editing;
                    }
                    b'O' => {
                        self.escape = Escape::Ss3;
                        return Event::Editing;
                    }
                    0x1b => {
                        self.escape = Escape::Start;
                        return Event::Editing;
                    }
                    // Alt-key and the like: ignore the key.
                    0x20..=0x7e => return Event::Editing,
                    // A control byte (Enter after a stray ESC) counts.
                    _ => {}
                }
            }
            Escape::Csi => match byte {
                0x20..=0x3f => {
                    if self.params.len() < MAX_PARAMS {
                        self.params.push(byte);
                    } else {
                        self.params_overflow = true;
                    }
                    return Event::Editing;
                }
                0x40..=0x7e => {
                    self.escape = Escape::None;
                    if !self.params_overflow {
                        if let Some(key) = csi_key(&self.params, byte) {
                            self.key(key, out);
                        }
                    }
                    return Event::Editing;
                }
                // A control byte ends a broken sequence and counts.
                _ => self.escape = Escape::None,
            },
            Escape::Ss3 => {
                self.escape = Escape::None;
                if (0x20..=0x7e).contains(&byte) {
                    if let Some(key) = ss3_key(byte) {
                        self.key(key, out);
                    }
                    return Event::Editing;
                }
            }
        }
        match byte {
            b'\n' if after_cr => Event::Editing,
            b'\r' | b'\n' => self.finish(out),
            0x1b => {
                self.escape = Escape::Start;
                Event::Editing
            }
            // Backspace (^H) and DEL both erase the character before the
            // cursor.
            0x08 | 0x7f => {
                self.backspace(out);
                Event::Editing
            }
            // ^A, ^E: start and end of the line.
            0x01 => self.key(Key::Home, out),
            0x05 => self.key(Key::End, out),
            // ^U: erase the whole line.
            0x15 => {
                let was_overflow = core::mem::replace(&mut self.overflow, false);
                if !self.line.is_empty() || was_overflow {
                    self.replace_line(Vec::new(), out);
                }
                Event::Editing
            }
            // ^W: erase the word before the cursor.
            0x17 => {
                self.erase_word(out);
                Event::Editing
            }
            // ^C: abandon the line.
            0x03 => {
                // The newline that follows goes after the whole line.
                right(out, columns(&self.line[self.cursor..]));
                self.line.clear();
                self.cursor = 0;
                self.overflow = false;
                self.browsing = None;
                Event::Line(String::new())
            }
            0x20..=0x7e | 0x80..=0xff => {
                self.insert(byte, out);
                Event::Editing
            }
            // Other control bytes (tabs, ^L, ...) are ignored.
            _ => Event::Editing,
        }
    }

    fn key(&mut self, key: Key, out: &mut dyn Terminal) -> Event {
        if self.overflow {
            // Only Enter, ^U and ^C matter once the line is too long.
            return Event::Editing;
        }
        match key {
            Key::Left => {
                if self.cursor > 0 {
                    self.cursor = self.char_start(self.cursor - 1);
                    left(out, 1);
                }
            }
            Key::Right => {
                if self.cursor < self.line.len() {
                    self.cursor = self.char_end(self.cursor);
                    right(out, 1);
                }
            }
            Key::Home => {
                left(out, columns(&self.line[..self.cursor]));
                self.cursor = 0;
            }
            Key::End => {
                right(out, columns(&self.line[self.cursor..]));
                self.cursor = self.line.len();
            }
            Key::Up => {
                let index = match self.browsing {
                    None if !self.history.is_empty() => {
                        self.draft = self.line.clone();
                        self.history.len() - 1
                    }
                    Some(index) if index > 0 => index - 1,
                    _ => return Event::Editing,
                };
                self.browsing = Some(index);
                let entry = self.history[index].as_bytes().to_vec();
                self.replace_line(entry, out);
            }
            Key::Down => {
                let Some(index) = self.browsing else {
                    return Event::Editing;
                };
                let entry = if index + 1 < self.history.len() {
                    self.browsing = Some(index + 1);
                    self.history[index + 1].as_bytes().to_vec()
                } else {
                    self.browsing = None;
                    core::mem::take(&mut self.draft)
                };
                self.replace_line(entry, out);
            }
            Key::Delete => {
                if self.cursor < self.line.len() {
                    let end = self.char_end(self.cursor);
                    self.line.drain(self.cursor..end);
                    let column = columns(&self.line[..self.cursor]);
                    self.repaint(column, self.cursor, out);
                }
            }
        }
        Event::Editing
    }

    /// Start of the character that `at` is in.
    fn char_start(&self, mut at: usize) -> usize {
        let floor = at.saturating_sub(3);
        while at > floor && is_continuation(self.line[at]) {
            at -= 1;
        }
        at
    }

    /// End of the character that starts at `at`.
    fn char_end(&self, at: usize) -> usize {
        let mut end = at + 1;
        while end < self.line.len() && end < at + 4 && is_continuation(self.line[end]) {
            end += 1;
        }
        end
    }

    /// Redraws the line from byte `from` on, with the terminal's cursor
    /// `screen` columns into the line now, and puts the terminal's cursor
    /// back at `self.cursor`.
    fn repaint(&self, screen: usize, from: usize, out: &mut dyn Terminal) {
        let target = columns(&self.line[..from]);
        if screen > target {
            left(out, screen - target);
        } else {
            right(out, target - screen);
        }
        out.write_bytes(&self.line[from..]);
        out.write_bytes(b"\x1b[K");
        left(out, columns(&self.line[self.cursor..]));
    }

    /// Shows `line` instead of the current one, the cursor at its end.
    fn replace_line(&mut self, line: Vec<u8>, out: &mut dyn Terminal) {
        let screen = columns(&self.line[..self.cursor]);
        self.line = line;
        self.cursor = self.line.len();
        self.repaint(screen, 0, out);
    }

    fn insert(&mut self, byte: u8, out: &mut dyn Terminal) {
        if self.overflow || self.line.len() >= MAX_LINE {
            self.overflow = true;
            return;
        }
        if self.cursor == self.line.len() {
            // Typing at the end: echo the byte, nothing else.
            self.line.push(byte);
            self.cursor += 1;
            out.write_bytes(&[byte]);
            return;
        }
        self.line.insert(self.cursor, byte);
        self.cursor += 1;
        // Redraw only once a multi-byte character is complete.
        let start = self.char_start(self.cursor - 1);
        if self.cursor - start < sequence_len(self.line[start]) {
            return;
        }
        let screen = columns(&self.line[..start]);
        self.repaint(screen, start, out);
    }

    fn backspace(&mut self, out: &mut dyn Terminal) {
        if self.overflow || self.cursor == 0 {
            return;
        }
        let start = self.char_start(self.cursor - 1);
        if self.cursor == self.line.len() {
            self.line.truncate(start);
            self.cursor = start;
            out.write_bytes(b"\x08 \x08");
            return;
        }
        let screen = columns(&self.line[..self.cursor]);
        self.line.drain(start..self.cursor);
        self.cursor = start;
        self.repaint(screen, start, out);
    }

    fn erase_word(&mut self, out: &mut dyn Terminal) {
        if self.overflow || self.cursor == 0 {
            return;
        }
        let mut start = self.cursor;
        while start > 0 && self.line[start - 1] == b' ' {
            start -= 1;
        }
        while start > 0 && self.line[start - 1] != b' ' {
            start -= 1;
        }
        let screen = columns(&self.line[..self.cursor]);
        self.line.drain(start..self.cursor);
        self.cursor = start;
        self.repaint(screen, start, out);
    }

    fn finish(&mut self, out: &mut dyn Terminal) -> Event {
        self.browsing = None;
        self.draft.clear();
        if core::mem::replace(&mut self.overflow, false) {
            self.line.clear();
            self.cursor = 0;
            return Event::TooLong;
        }
        right(out, columns(&self.line[self.cursor..]));
        self.cursor = 0;
        let line = core::mem::take(&mut self.line);
        match String::from_utf8(line) {
            Ok(text) => {
                self.remember(&text);
                Event::Line(text)
            }
            Err(_) => Event::NotText,
        }
    }

    /// Adds a finished line to the history: not blank lines, and not the
    /// line the history ends with already.
    fn remember(&mut self, text: &str) {
        if text.trim().is_empty() || self.history.back().map(String::as_str) == Some(text) {
            return;
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(String::from(text));
    }
}

/// The key an `ESC [ PARAMS FINAL` sequence stands for.
fn csi_key(params: &[u8], last: u8) -> Option<Key> {
    Some(match (params, last) {
        (b"", b'A') => Key::Up,
        (b"", b'B') => Key::Down,
        (b"", b'C') => Key::Right,
        (b"", b'D') => Key::Left,
        (b"", b'H') | (b"1" | b"7", b'~') => Key::Home,
        (b"", b'F') | (b"4" | b"8", b'~') => Key::End,
        (b"3", b'~') => Key::Delete,
        _ => return None,
    })
}

/// The key an `ESC O X` sequence stands for.
fn ss3_key(last: u8) -> Option<Key> {
    Some(match last {
        b'A' => Key::Up,
        b'B' => Key::Down,
        b'C' => Key::Right,
        b'D' => Key::Left,
        b'H' => Key::Home,
        b'F' => Key::End,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input`; returns what the terminal got and the events that
    /// were not [`Event::Editing`].
    fn feed(editor: &mut LineEditor, input: &[u8]) -> (String, Vec<Event>) {
        let mut screen = Vec::new();
        let mut events = Vec::new();
        for &byte in input {
            match editor.feed(byte, &mut screen) {
                Event::Editing => {}
                event => events.push(event),
            }
        }
        (String::from_utf8_lossy(&screen).into_owned(), events)
    }

    /// The screen and the finished line for `input` typed into a fresh
    /// editor (`input` must end the line).
    fn edit(input: &[u8]) -> (String, String) {
        let (screen, events) = feed(&mut LineEditor::new(), input);
        match &events[..] {
            [Event::Line(line)] => (screen, line.clone()),
            other => panic!("expected one line, got {other:?}"),
        }
    }

    fn line(text: &str) -> Vec<Event> {
        alloc::vec![Event::Line(text.into())]
    }

    #[test]
    fn plain_typing_echoes_each_byte_and_nothing_else() {
        let (screen, line) = edit(b"create pmem0:file 1M\r");
        assert_eq!(screen, "create pmem0:file 1M");
        assert_eq!(line, "create pmem0:file 1M");
    }

    #[test]
    fn backspace_at_the_end_rubs_out() {
        assert_eq!(
            edit(b"helq\x7fp\r"),
            ("helq\x08 \x08p".into(), "help".into())
        );
        assert_eq!(edit(b"a\x08\x08\r"), ("a\x08 \x08".into(), "".into()));
    }

    #[test]
    fn crlf_ends_one_line_only() {
        let (_, events) = feed(&mut LineEditor::new(), b"a\r\nb\n");
        assert_eq!(events, [Event::Line("a".into()), Event::Line("b".into())]);
    }

    #[test]
    fn overlong_lines_are_refused_then_editing_resumes() {
        let mut editor = LineEditor::new();
        let long = alloc::vec![b'x'; MAX_LINE + 10];
        let (screen, _) = feed(&mut editor, &long);
        assert_eq!(screen.len(), MAX_LINE);
        // Moving and erasing do nothing once the line is too long.
        let (screen, events) = feed(&mut editor, b"\x1b[D\x7f\x17\n");
        assert_eq!((screen.as_str(), &events[..]), ("", &[Event::TooLong][..]));
        assert_eq!(feed(&mut editor, b"ok\n").1, line("ok"));
        // ^U forgets an overlong line.
        feed(&mut editor, &long);
        assert_eq!(feed(&mut editor, b"\x15ok\n").1, line("ok"));
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let (_, events) = feed(&mut LineEditor::new(), b"\xff\xfe\n");
        assert_eq!(events, [Event::NotText]);
    }

    #[test]
    fn left_and_right_move_and_typing_inserts_at_the_cursor() {
        // "vrsion", five left (after the 'v'), 'e', one right, Enter.
        let (screen, line) = edit(b"vrsion\x1b[D\x1b[D\x1b[D\x1b[D\x1b[De\x1b[C\r");
        assert_eq!(
            screen,
            "vrsion\x1b[1D\x1b[1D\x1b[1D\x1b[1D\x1b[1Dersion\x1b[K\x1b[5D\x1b[1C\x1b[4C"
        );
        assert_eq!(line, "version");
    }

    #[test]
    fn insertion_redraws_the_rest_of_the_line() {
        let (screen, line) = edit(b"ac\x1b[Db\r");
        // Left one, then "bc", clear, back one over "c"; Enter goes to the
        // end first.
        assert_eq!(screen, "ac\x1b[1Dbc\x1b[K\x1b[1D\x1b[1C");
        assert_eq!(line, "abc");
    }

    #[test]
    fn right_stops_at_the_end_and_left_at_the_start() {
        let (screen, line) = edit(b"ab\x1b[C\x1b[D\x1b[D\x1b[Dx\r");
        assert_eq!(screen, "ab\x1b[1D\x1b[1Dxab\x1b[K\x1b[2D\x1b[2C");
        assert_eq!(line, "xab");
    }

    #[test]
    fn home_and_end_in_every_spelling() {
        for home in [&b"\x1b[H"[..], b"\x1b[1~", b"\x1b[7~", b"\x1bOH", b"\x01"] {
            for end in [&b"\x1b[F"[..], b"\x1b[4~", b"\x1b[8~", b"\x1bOF", b"\x05"] {
                let input = [b"bc", home, b"a", end, b"d\r"].concat();
                let (screen, line) = edit(&input);
                assert_eq!(screen, "bc\x1b[2Dabc\x1b[K\x1b[2D\x1b[2Cd", "{input:?}");
                assert_eq!(line, "abcd");
            }
        }
        // At the start Home writes nothing, at the end End neither.
        assert_eq!(edit(b"\x01\x05x\x05\r").0, "x");
    }

    #[test]
    fn backspace_and_delete_in_the_middle() {
        // "abcd", left twice (cursor before 'c'), backspace erases 'b'.
        let (screen, line) = edit(b"abcd\x1b[D\x1b[D\x7f\r");
        assert_eq!(screen, "abcd\x1b[1D\x1b[1D\x1b[1Dcd\x1b[K\x1b[2D\x1b[2C");
        assert_eq!(line, "acd");
        // Delete erases the character under the cursor, not past the end.
        let (screen, line) = edit(b"abcd\x1b[D\x1b[D\x1b[3~\x1b[3~\x1b[3~\r");
        assert_eq!(screen, "abcd\x1b[1D\x1b[1Dd\x1b[K\x1b[1D\x1b[K");
        assert_eq!(line, "ab");
        // Backspace at the start does nothing.
        assert_eq!(
            edit(b"ab\x01\x7f\r"),
            ("ab\x1b[2D\x1b[2C".into(), "ab".into())
        );
    }

    #[test]
    fn ctrl_w_erases_the_word_before_the_cursor() {
        let (screen, line) = edit(b"rm old  \x17new\r");
        assert_eq!(screen, "rm old  \x1b[5D\x1b[Knew");
        assert_eq!(line, "rm new");
        // In the middle: the rest of the line moves left.
        let (screen, line) = edit(b"cat aaa bbb\x1b[D\x1b[D\x1b[D\x1b[D\x17\r");
        assert_eq!(
            screen,
            "cat aaa bbb\x1b[1D\x1b[1D\x1b[1D\x1b[1D\x1b[3D bbb\x1b[K\x1b[4D\x1b[4C"
        );
        assert_eq!(line, "cat  bbb");
        assert_eq!(edit(b"\x17x\r"), ("x".into(), "x".into()));
    }

    #[test]
    fn ctrl_u_erases_the_line_and_keeps_the_prompt() {
        let (screen, line) = edit(b"abc\x1b[D\x15x\r");
        assert_eq!(screen, "abc\x1b[1D\x1b[2D\x1b[Kx");
        assert_eq!(line, "x");
        assert_eq!(edit(b"\x15\r"), ("".into(), "".into()));
    }

    #[test]
    fn ctrl_c_abandons_the_line() {
        let mut editor = LineEditor::new();
        let (screen, events) = feed(&mut editor, b"abc\x03");
        assert_eq!((screen.as_str(), events), ("abc", line("")));
        assert_eq!(feed(&mut editor, b"d\r").1, line("d"));
        let (screen, events) = feed(&mut editor, b"abc\x01\x03");
        assert_eq!((screen.as_str(), events), ("abc\x1b[3D\x1b[3C", line("")));
    }

    #[test]
    fn unknown_escape_sequences_are_swallowed_whole() {
        // Ctrl-Left, F5, PageUp, an overlong one, Alt-x, SS3 F1.
        let (screen, line) = edit(b"a\x1b[1;5D\x1b[15~\x1b[5~\x1b[123456789012D\x1bx\x1bOPb\r");
        assert_eq!((screen.as_str(), line.as_str()), ("ab", "ab"));
        // A sequence cut short by Enter: Enter still ends the line.
        assert_eq!(edit(b"a\x1b[1\r"), ("a".into(), "a".into()));
        assert_eq!(edit(b"a\x1b\r"), ("a".into(), "a".into()));
        // ESC ESC [ A is one ESC too many, then Up (no history: nothing).
        assert_eq!(edit(b"a\x1b\x1b[Ab\r"), ("ab".into(), "ab".into()));
        // Application-mode arrows (ESC O D) move too.
        assert_eq!(edit(b"ac\x1bODb\r").1, "abc");
    }

    #[test]
    fn up_and_down_walk_the_history() {
        let mut editor = LineEditor::new();
        feed(&mut editor, b"first\rsecond\r");
        // Up shows the newest entry, Up again the older, Up at the oldest
        // stays, Down goes forward, and Down past the newest brings back
        // the line being typed.
        let (screen, events) = feed(&mut editor, b"dr\x1b[A");
        assert_eq!(
            (screen.as_str(), events),
            ("dr\x1b[2Dsecond\x1b[K", alloc::vec![])
        );
        let (screen, _) = feed(&mut editor, b"\x1b[A\x1b[A");
        assert_eq!(screen, "\x1b[6Dfirst\x1b[K");
        let (screen, _) = feed(&mut editor, b"\x1b[B");
        assert_eq!(screen, "\x1b[5Dsecond\x1b[K");
        let (screen, _) = feed(&mut editor, b"\x1b[B\x1b[B");
        assert_eq!(screen, "\x1b[6Ddr\x1b[K");
        let (_, events) = feed(&mut editor, b"aft\r");
        assert_eq!(events, line("draft"));
        // A recalled line can be edited and run.
        let (screen, events) = feed(&mut editor, b"\x1bOA\x1bOA\x7f\x7fst\r");
        assert_eq!(screen, "draft\x1b[K\x1b[5Dsecond\x1b[K\x08 \x08\x08 \x08st");
        assert_eq!(events, line("secost"));
        assert_eq!(
            editor.history().collect::<Vec<_>>(),
            ["first", "second", "draft", "secost"]
        );
    }

    #[test]
    fn history_skips_blank_lines_and_repeats_and_keeps_the_last_32() {
        let mut editor = LineEditor::new();
        feed(&mut editor, b"a\ra\r\r  \r\x03b\r\xff\ra\r");
        assert_eq!(editor.history().collect::<Vec<_>>(), ["a", "b", "a"]);
        for n in 0..40 {
            feed(&mut editor, alloc::format!("cmd {n}\r").as_bytes());
        }
        let history: Vec<_> = editor.history().collect();
        assert_eq!(history.len(), HISTORY);
        assert_eq!((history[0], history[31]), ("cmd 8", "cmd 39"));
        // Down without browsing, Up with an empty history: nothing.
        assert_eq!(feed(&mut editor, b"\x1b[B").0, "");
        assert_eq!(feed(&mut LineEditor::new(), b"\x1b[A").0, "");
    }

    #[test]
    fn multi_byte_characters_move_and_erase_as_one_column() {
        // "é" is two bytes, one column.
        let (screen, line) = edit("aé\x1b[D\x1b[Dxé\x1b[C\x7f\r".as_bytes());
        assert_eq!(
            screen,
            "aé\x1b[1D\x1b[1Dxaé\x1b[K\x1b[2Déaé\x1b[K\x1b[2D\x1b[1C\
             \x1b[1Dé\x1b[K\x1b[1D\x1b[1C"
        );
        assert_eq!(line, "xéé");
    }
}
