//! Transmission request headers (proto.md "Request message" and the
//! extended-headers extension), smoltcp-style: [`RequestHeader`] is a view
//! over a byte buffer whose length is checked once by
//! [`RequestHeader::new_checked`]; [`Request`] is the parsed form, with
//! [`Request::parse`] and [`Request::emit`].
//!
//! Compact header (28 bytes): magic `0x25609513` (u32), command flags
//! (u16), type (u16), cookie (u64), offset (u64), length (u32).
//! Extended header (32 bytes): magic `0x21e41c71`, then the same fields
//! with a 64-bit length.

use super::{
    WireError, CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE,
    CMD_WRITE_ZEROES, COMPACT_REQUEST_LEN, EXTENDED_REQUEST_LEN, EXTENDED_REQUEST_MAGIC,
    REQUEST_MAGIC,
};

/// Field offsets, shared by both layouts up to the length field.
mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const FLAGS: Range<usize> = 4..6;
    pub const TYPE: Range<usize> = 6..8;
    pub const COOKIE: Range<usize> = 8..16;
    pub const OFFSET: Range<usize> = 16..24;
    pub const COMPACT_LENGTH: Range<usize> = 24..28;
    pub const EXTENDED_LENGTH: Range<usize> = 24..32;
}

/// A request type (proto.md "Request types"). Unknown values are kept as
/// [`Command::Unknown`] so the engine can answer them with EINVAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`.
    Write,
    /// `NBD_CMD_DISC`.
    Disc,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// Any other value.
    Unknown(u16),
}

impl Command {
    /// True for the commands that change the export (WRITE, TRIM,
    /// WRITE_ZEROES): refused on a read-only export, and ordered after
    /// overlapping READs.
    pub fn is_write_type(self) -> bool {
        matches!(self, Command::Write | Command::Trim | Command::WriteZeroes)
    }
}

impl From<u16> for Command {
    fn from(value: u16) -> Self {
        match value {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }
}

impl From<Command> for u16 {
    fn from(command: Command) -> Self {
        match command {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disc => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::Cache => CMD_CACHE,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::BlockStatus => CMD_BLOCK_STATUS,
            Command::Unknown(other) => other,
        }
    }
}

/// A read/write view of a request header in a byte buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RequestHeader<T> {
    /// Wraps a buffer without checking it; the accessors panic if it is
    /// shorter than the header its magic announces. Use
    /// [`new_checked`](Self::new_checked) on received bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        RequestHeader { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let header = Self::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// Checks that the buffer holds the whole header its magic announces:
    /// [`WireError::Truncated`] if it is too short (or shorter than the
    /// magic), [`WireError::BadMagic`] if the magic is neither request
    /// magic.
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        let magic = data.get(field::MAGIC).ok_or(WireError::Truncated)?;
        let need = match u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]) {
            REQUEST_MAGIC => COMPACT_REQUEST_LEN,
            EXTENDED_REQUEST_MAGIC => EXTENDED_REQUEST_LEN,
            _ => return Err(WireError::BadMagic),
        };
        if data.len() < need {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn bytes<const N: usize>(&self, range: core::ops::Range<usize>) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buffer.as_ref()[range]);
        out
    }

    /// The magic.
    pub fn magic(&self) -> u32 {
        u32::from_be_bytes(self.bytes(field::MAGIC))
    }

    /// True for the extended (32-byte, 64-bit length) layout.
    pub fn is_extended(&self) -> bool {
        self.magic() == EXTENDED_REQUEST_MAGIC
    }

    /// Length of the header: 28 bytes compact, 32 extended.
    pub fn header_len(&self) -> usize {
        if self.is_extended() {
            EXTENDED_REQUEST_LEN
        } else {
            COMPACT_REQUEST_LEN
        }
    }

    /// Command flags (`NBD_CMD_FLAG_*`).
    pub fn flags(&self) -> u16 {
        u16::from_be_bytes(self.bytes(field::FLAGS))
    }

    /// The request type.
    pub fn command(&self) -> Command {
        Command::from(u16::from_be_bytes(self.bytes(field::TYPE)))
    }

    /// The cookie (called "handle" before 2023).
    pub fn cookie(&self) -> u64 {
        u64::from_be_bytes(self.bytes(field::COOKIE))
    }

    /// Offset into the export.
    pub fn offset(&self) -> u64 {
        u64::from_be_bytes(self.bytes(field::OFFSET))
    }

    /// Length: 32 bits compact, 64 bits extended.
    pub fn length(&self) -> u64 {
        if self.is_extended() {
            u64::from_be_bytes(self.bytes(field::EXTENDED_LENGTH))
        } else {
            u64::from(u32::from_be_bytes(self.bytes(field::COMPACT_LENGTH)))
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RequestHeader<T> {
    fn put(&mut self, range: core::ops::Range<usize>, bytes: &[u8]) {
        self.buffer.as_mut()[range].copy_from_slice(bytes);
    }

    /// Sets the magic (and with it the layout).
    pub fn set_magic(&mut self, magic: u32) {
        self.put(field::MAGIC, &magic.to_be_bytes());
    }

    /// Sets the command flags.
    pub fn set_flags(&mut self, flags: u16) {
        self.put(field::FLAGS, &flags.to_be_bytes());
    }

    /// Sets the request type.
    pub fn set_command(&mut self, command: Command) {
        self.put(field::TYPE, &u16::from(command).to_be_bytes());
    }

    /// Sets the cookie.
    pub fn set_cookie(&mut self, cookie: u64) {
        self.put(field::COOKIE, &cookie.to_be_bytes());
    }

    /// Sets the offset.
    pub fn set_offset(&mut self, offset: u64) {
        self.put(field::OFFSET, &offset.to_be_bytes());
    }

    /// Sets the length in the layout the magic selects; a compact header
    /// takes the low 32 bits (use [`Request::emit`], which refuses longer
    /// lengths).
    pub fn set_length(&mut self, length: u64) {
        if self.is_extended() {
            self.put(field::EXTENDED_LENGTH, &length.to_be_bytes());
        } else {
            self.put(field::COMPACT_LENGTH, &(length as u32).to_be_bytes());
        }
    }
}

/// A parsed transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Sent with the extended (32-byte) header.
    pub extended: bool,
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// The request type.
    pub command: Command,
    /// The cookie, echoed in the reply.
    pub cookie: u64,
    /// Offset into the export.
    pub offset: u64,
    /// Length in bytes (of data to read or write, or of the range).
    pub len: u64,
}

impl Request {
    /// Parses a header checked by [`RequestHeader::new_checked`].
    pub fn parse<T: AsRef<[u8]>>(header: &RequestHeader<T>) -> Result<Request, WireError> {
        header.check_len()?;
        Ok(Request {
            extended: header.is_extended(),
            flags: header.flags(),
            command: header.command(),
            cookie: header.cookie(),
            offset: header.offset(),
            len: header.length(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes: 28 compact, 32 extended.
    pub fn header_len(&self) -> usize {
        if self.extended {
            EXTENDED_REQUEST_LEN
        } else {
            COMPACT_REQUEST_LEN
        }
    }

    /// Writes the header into the first [`header_len`](Self::header_len)
    /// bytes of `header`: [`WireError::Truncated`] if the buffer is
    /// shorter, [`WireError::Overflow`] if a compact header cannot carry
    /// the length.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        header: &mut RequestHeader<T>,
    ) -> Result<(), WireError> {
        if header.buffer.as_ref().len() < self.header_len() {
            return Err(WireError::Truncated);
        }
        if !self.extended && u32::try_from(self.len).is_err() {
            return Err(WireError::Overflow);
        }
        header.set_magic(if self.extended {
            EXTENDED_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        });
        header.set_flags(self.flags);
        header.set_command(self.command);
        header.set_cookie(self.cookie);
        header.set_offset(self.offset);
        header.set_length(self.len);
        Ok(())
    }

    /// One past the last byte of the range (saturating).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{CMD_FLAG_FUA, CMD_FLAG_PAYLOAD_LEN};

    fn request(extended: bool, command: Command, len: u64) -> Request {
        Request {
            extended,
            flags: CMD_FLAG_FUA,
            command,
            cookie: 0x0102_0304_0506_0708,
            offset: 0x1122_3344_5566_7788,
            len,
        }
    }

    #[test]
    fn compact_round_trip() {
        let repr = request(false, Command::Write, 0xdead_beef);
        let mut buf = [0u8; COMPACT_REQUEST_LEN];
        repr.emit(&mut RequestHeader::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(&buf[..4], &REQUEST_MAGIC.to_be_bytes());
        assert_eq!(&buf[6..8], &CMD_WRITE.to_be_bytes());
        assert_eq!(&buf[24..28], &0xdead_beefu32.to_be_bytes());
        let header = RequestHeader::new_checked(&buf[..]).unwrap();
        assert_eq!(header.header_len(), COMPACT_REQUEST_LEN);
        assert_eq!(Request::parse(&header), Ok(repr));
    }

    #[test]
    fn extended_round_trip() {
        let repr = Request {
            flags: CMD_FLAG_PAYLOAD_LEN,
            ..request(true, Command::BlockStatus, 1 << 40)
        };
        let mut buf = [0u8; EXTENDED_REQUEST_LEN];
        repr.emit(&mut RequestHeader::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(&buf[..4], &EXTENDED_REQUEST_MAGIC.to_be_bytes());
        assert_eq!(&buf[24..32], &(1u64 << 40).to_be_bytes());
        let header = RequestHeader::new_checked(&buf[..]).unwrap();
        assert!(header.is_extended());
        assert_eq!(Request::parse(&header), Ok(repr));
    }

    #[test]
    fn every_command_round_trips() {
        for value in 0..=u16::MAX {
            assert_eq!(u16::from(Command::from(value)), value);
        }
        for (value, command) in [
            (CMD_READ, Command::Read),
            (CMD_WRITE, Command::Write),
            (CMD_DISC, Command::Disc),
            (CMD_FLUSH, Command::Flush),
            (CMD_TRIM, Command::Trim),
            (CMD_CACHE, Command::Cache),
            (CMD_WRITE_ZEROES, Command::WriteZeroes),
            (CMD_BLOCK_STATUS, Command::BlockStatus),
        ] {
            assert_eq!(Command::from(value), command);
        }
    }

    #[test]
    fn unknown_command_is_kept() {
        let repr = request(false, Command::Unknown(0x1234), 512);
        let mut buf = [0u8; COMPACT_REQUEST_LEN];
        repr.emit(&mut RequestHeader::new_unchecked(&mut buf[..]))
            .unwrap();
        let parsed = Request::parse(&RequestHeader::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(parsed.command, Command::Unknown(0x1234));
        assert_eq!(Command::from(8), Command::Unknown(8));
        assert!(!Command::Unknown(CMD_WRITE + 100).is_write_type());
    }

    #[test]
    fn short_buffers_are_rejected() {
        let mut compact = [0u8; COMPACT_REQUEST_LEN];
        request(false, Command::Read, 4096)
            .emit(&mut RequestHeader::new_unchecked(&mut compact[..]))
            .unwrap();
        for n in 0..COMPACT_REQUEST_LEN {
            assert_eq!(
                RequestHeader::new_checked(&compact[..n]),
                Err(WireError::Truncated),
                "{n} bytes"
            );
        }
        let mut extended = [0u8; EXTENDED_REQUEST_LEN];
        request(true, Command::Read, 4096)
            .emit(&mut RequestHeader::new_unchecked(&mut extended[..]))
            .unwrap();
        // 28 bytes are a whole compact header but not an extended one.
        for n in 0..EXTENDED_REQUEST_LEN {
            assert_eq!(
                RequestHeader::new_checked(&extended[..n]),
                Err(WireError::Truncated),
                "{n} bytes"
            );
        }
        let short = &mut [0u8; COMPACT_REQUEST_LEN - 1][..];
        assert_eq!(
            request(false, Command::Read, 1).emit(&mut RequestHeader::new_unchecked(short)),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn bad_magic_and_long_compact_length_are_rejected() {
        let buf = [0u8; EXTENDED_REQUEST_LEN];
        assert_eq!(
            RequestHeader::new_checked(&buf[..]),
            Err(WireError::BadMagic)
        );
        let mut buf = [0u8; COMPACT_REQUEST_LEN];
        assert_eq!(
            request(false, Command::Read, 1 << 32)
                .emit(&mut RequestHeader::new_unchecked(&mut buf[..])),
            Err(WireError::Overflow)
        );
    }
}
