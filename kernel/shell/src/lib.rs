//! Line editing and command dispatch for the daxbox serial admin shell.
//!
//! The kernel feeds every byte that arrives on the serial console into a
//! [`Shell`], which edits the line and echoes through a [`Terminal`]
//! ([`LineEditor`]: cursor keys, Home/End, Ctrl-A/E/U/W, history on
//! Up/Down), splits finished lines into words ([`split_words`]: `"..."`
//! and backslash escapes),
//! finds the command in the tables it was given ([`find_command`]) and runs
//! it. Each kernel module exports a `&[Command<C>]` table and the kernel's
//! entry point hands the list of tables to [`Shell::new`], so adding a
//! command is one table entry and the shell never imports the modules that
//! register commands. `help` is built in: it lists every table. Nothing
//! here touches hardware, so it is tested on the host.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

mod editor;
mod words;

pub use editor::{Event, LineEditor, HISTORY, MAX_LINE};
pub use words::{split_words, SplitError};

/// Where the shell writes: the console.
pub trait Terminal {
    /// Writes raw bytes (echo of what was typed, which need not be UTF-8
    /// one byte at a time).
    fn write_bytes(&mut self, bytes: &[u8]);
    /// Writes text.
    fn write_text(&mut self, text: &str) {
        self.write_bytes(text.as_bytes());
    }
}

/// A terminal that keeps what it was sent (for tests and for building
/// output to write at once).
impl Terminal for Vec<u8> {
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// The prompt, printed without a newline.
pub const PROMPT: &str = "daxbox> ";

/// A list of command tables, searched in order.
pub type Tables<C> = &'static [&'static [Command<C>]];

/// The shell: the line being edited, the context every command gets, and
/// the command tables.
pub struct Shell<C: 'static> {
    editor: LineEditor,
    context: C,
    tables: Tables<C>,
}

impl<C: 'static> Shell<C> {
    /// A shell running commands from `tables` with `context`. Print the
    /// first prompt with [`Shell::prompt`].
    pub fn new(context: C, tables: Tables<C>) -> Self {
        Self {
            editor: LineEditor::new(),
            context,
            tables,
        }
    }

    /// Writes the prompt.
    pub fn prompt(&self, terminal: &mut dyn Terminal) {
        terminal.write_text(PROMPT);
    }

    /// Writes the prompt and the line typed so far on a new line, after
    /// output that did not come from a command (an event the kernel
    /// reported by itself) left the console without a prompt.
    pub fn redraw(&self, terminal: &mut dyn Terminal) {
        self.prompt(terminal);
        self.editor.redraw(terminal);
    }

    /// Handles one input byte: echo, editing, and at the end of a line the
    /// command and a new prompt.
    pub fn feed(&mut self, byte: u8, terminal: &mut dyn Terminal) {
        match self.editor.feed(byte, terminal) {
            Event::Editing => {}
            Event::Line(line) => {
                terminal.write_text("\n");
                self.run_line(&line, terminal);
                self.prompt(terminal);
            }
            Event::TooLong => {
                terminal.write_text(&alloc::format!(
                    "\nerror: line too long (at most {} bytes)\n",
                    MAX_LINE
                ));
                self.prompt(terminal);
            }
            Event::NotText => {
                terminal.write_text("\nerror: input is not UTF-8 text\n");
                self.prompt(terminal);
            }
        }
    }

    /// Runs one command line; an error is printed as `error: <text>`.
    pub fn run_line(&mut self, line: &str, terminal: &mut dyn Terminal) {
        let words = match split_words(line) {
            Ok(words) => words,
            Err(error) => {
                terminal.write_text(&alloc::format!("error: {}\n", error));
                return;
            }
        };
        // Commands take `&[&str]`, like the storage crate's.
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let Some((&name, args)) = words.split_first() else {
            return;
        };
        if name == "help" {
            terminal.write_text(&help_text(self.tables));
            return;
        }
        match find_command(self.tables, name) {
            Some(command) => {
                if let Err(message) = (command.run)(&mut self.context, args) {
                    terminal.write_text(&alloc::format!("error: {}\n", message));
                }
            }
            None => terminal.write_text(&alloc::format!(
                "error: unknown command '{}' (try 'help')\n",
                name
            )),
        }
    }
}

/// What `help` prints: itself, then every command of every table, one line
/// each (`  NAME USAGE` padded to 28 columns, then the description).
pub fn help_text<C>(tables: &[&[Command<C>]]) -> String {
    let mut text = String::new();
    let mut line = |name: &str, usage: &str, help: &str| {
        let synopsis = if usage.is_empty() {
            String::from(name)
        } else {
            alloc::format!("{} {}", name, usage)
        };
        text.push_str(&alloc::format!("  {:<28} {}\n", synopsis, help));
    };
    line("help", "", "list commands");
    for command in tables.iter().flat_map(|table| table.iter()) {
        line(command.name, command.usage, command.help);
    }
    text
}

/// A hex dump, 16 bytes a line: the address (from `base`), the bytes in
/// hex, then the printable ones (others as `.`) between bars.
pub fn hex_dump(base: u64, bytes: &[u8]) -> String {
    let mut out = String::new();
    for (index, chunk) in bytes.chunks(16).enumerate() {
        let mut hex = String::new();
        let mut text = String::new();
        for b in chunk {
            hex.push_str(&alloc::format!("{:02x} ", b));
            text.push(if b.is_ascii_graphic() || *b == b' ' {
                *b as char
            } else {
                '.'
            });
        }
        let address = base.wrapping_add((index * 16) as u64);
        out.push_str(&alloc::format!("{:08x}  {:<48} |{}|\n", address, hex, text));
    }
    out
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

    /// A terminal that keeps what it was sent.
    #[derive(Default)]
    struct Screen(Vec<u8>);

    impl Terminal for Screen {
        fn write_bytes(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }

    impl Screen {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0).into_owned()
        }
    }

    fn add(total: &mut u32, args: &[&str]) -> Result<(), String> {
        for word in args {
            *total += word
                .parse::<u32>()
                .map_err(|_| alloc::format!("'{word}' is no number"))?;
        }
        Ok(())
    }

    static MATH: [Command<u32>; 1] = [Command {
        name: "add",
        usage: "N...",
        help: "add numbers to the total",
        run: add,
    }];
    static TABLES: [&[Command<u32>]; 1] = [&MATH];

    fn type_into(shell: &mut Shell<u32>, input: &[u8]) -> String {
        let mut screen = Screen::default();
        for &byte in input {
            shell.feed(byte, &mut screen);
        }
        screen.text()
    }

    #[test]
    fn redraw_gives_back_the_prompt_and_the_line_so_far() {
        let mut shell = Shell::new(0u32, &TABLES);
        type_into(&mut shell, b"add 2");
        let mut screen = Screen::default();
        shell.redraw(&mut screen);
        assert_eq!(screen.text(), "daxbox> add 2");
        // The cursor moved left stays there.
        type_into(&mut shell, b"\x1b[D\x1b[D");
        let mut screen = Screen::default();
        shell.redraw(&mut screen);
        assert_eq!(screen.text(), "daxbox> add 2\x1b[2D");
        assert_eq!(type_into(&mut shell, b"\r"), "\x1b[2C\ndaxbox> ");
        assert_eq!(shell.context, 2);
    }

    #[test]
    fn a_line_runs_its_command_with_the_context_then_prompts_again() {
        let mut shell = Shell::new(0u32, &TABLES);
        let screen = type_into(&mut shell, b"add 2 3\r");
        assert_eq!(screen, "add 2 3\ndaxbox> ");
        assert_eq!(shell.context, 5);
    }

    #[test]
    fn errors_unknown_commands_and_bad_lines_are_reported_and_the_shell_goes_on() {
        let mut shell = Shell::new(0u32, &TABLES);
        assert_eq!(
            type_into(&mut shell, b"add x\n"),
            "add x\nerror: 'x' is no number\ndaxbox> "
        );
        assert_eq!(
            type_into(&mut shell, b"sub 1\n"),
            "sub 1\nerror: unknown command 'sub' (try 'help')\ndaxbox> "
        );
        assert_eq!(
            type_into(&mut shell, b"\xff\n"),
            "\u{fffd}\nerror: input is not UTF-8 text\ndaxbox> "
        );
        let long = alloc::vec![b'y'; MAX_LINE + 1];
        let screen = type_into(&mut shell, &[&long[..], b"\n"].concat());
        assert!(screen.ends_with(&alloc::format!(
            "\nerror: line too long (at most {MAX_LINE} bytes)\ndaxbox> "
        )));
        assert_eq!(type_into(&mut shell, b"\n"), "\ndaxbox> ");
        assert_eq!(type_into(&mut shell, b"add 1\n"), "add 1\ndaxbox> ");
        assert_eq!(shell.context, 1);
    }

    fn record(words: &mut Vec<String>, args: &[&str]) -> Result<(), String> {
        words.extend(args.iter().map(|word| String::from(*word)));
        Ok(())
    }

    static RECORD: [Command<Vec<String>>; 1] = [Command {
        name: "words",
        usage: "WORD...",
        help: "remember the words",
        run: record,
    }];
    static RECORD_TABLES: [&[Command<Vec<String>>]; 1] = [&RECORD];

    fn type_words(shell: &mut Shell<Vec<String>>, input: &[u8]) -> String {
        let mut screen = Screen::default();
        for &byte in input {
            shell.feed(byte, &mut screen);
        }
        screen.text()
    }

    #[test]
    fn typing_a_plain_command_echoes_it_byte_for_byte() {
        let mut shell = Shell::new(Vec::new(), &RECORD_TABLES);
        let typed = "words pmem0:file-1 0 hello,world 1M";
        assert_eq!(
            type_words(&mut shell, alloc::format!("{typed}\r").as_bytes()),
            alloc::format!("{typed}\ndaxbox> ")
        );
        assert_eq!(shell.context, ["pmem0:file-1", "0", "hello,world", "1M"]);
    }

    #[test]
    fn quoted_words_reach_the_command_and_an_open_quote_is_an_error() {
        let mut shell = Shell::new(Vec::new(), &RECORD_TABLES);
        let screen = type_words(&mut shell, b"words \"with space\" a\\ b \"\\\"q\\\"\"\r");
        assert_eq!(screen, "words \"with space\" a\\ b \"\\\"q\\\"\"\ndaxbox> ");
        assert_eq!(shell.context, ["with space", "a b", "\"q\""]);
        shell.context.clear();
        assert_eq!(
            type_words(&mut shell, b"words \"with space 1M\r"),
            "words \"with space 1M\nerror: unterminated quote\ndaxbox> "
        );
        assert!(shell.context.is_empty());
    }

    #[test]
    fn up_recalls_the_last_line_and_unknown_keys_are_not_commands() {
        let mut shell = Shell::new(0u32, &TABLES);
        // Up with no history and an F5 do nothing: no `[A` command.
        assert_eq!(type_into(&mut shell, b"\x1b[A\x1b[15~\r"), "\ndaxbox> ");
        type_into(&mut shell, b"add 2\r");
        assert_eq!(type_into(&mut shell, b"\x1b[A\r"), "add 2\x1b[K\ndaxbox> ");
        assert_eq!(shell.context, 4);
        // Edited in the middle: Home, Right x4, insert '1' -> "add 12".
        let screen = type_into(&mut shell, b"\x1b[A\x01\x1b[C\x1b[C\x1b[C\x1b[C1\r");
        assert_eq!(
            screen,
            "add 2\x1b[K\x1b[5D\x1b[1C\x1b[1C\x1b[1C\x1b[1C12\x1b[K\x1b[1D\x1b[1C\ndaxbox> "
        );
        assert_eq!(shell.context, 16);
    }

    #[test]
    fn help_lists_itself_then_every_table() {
        let text = help_text(&TABLES);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], alloc::format!("  {:<28} list commands", "help"));
        assert_eq!(
            lines[1],
            alloc::format!("  {:<28} add numbers to the total", "add N...")
        );
        let mut shell = Shell::new(0u32, &TABLES);
        assert_eq!(
            type_into(&mut shell, b"help\n"),
            alloc::format!("help\n{text}daxbox> ")
        );
    }

    #[test]
    fn hex_dumps_show_addresses_bytes_and_text() {
        assert_eq!(hex_dump(0, b""), "");
        let dump = hex_dump(0x1230, b"Hello, pmem!\x00\x01\xff~ and more");
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            "00001230  48 65 6c 6c 6f 2c 20 70 6d 65 6d 21 00 01 ff 7e  |Hello, pmem!...~|"
        );
        assert_eq!(
            lines[1],
            alloc::format!(
                "00001240  {:<48} |{}|",
                "20 61 6e 64 20 6d 6f 72 65 ",
                " and more"
            )
        );
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
    }
}
