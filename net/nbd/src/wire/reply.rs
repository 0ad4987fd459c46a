//! Transmission reply headers, smoltcp-style: [`ReplyHeader`] is a view
//! over a byte buffer checked by [`ReplyHeader::new_checked`]; [`Reply`]
//! is the parsed form, with [`Reply::parse`] and [`Reply::emit`].
//!
//! Three layouts, told apart by the magic (the cookie is at bytes 8..16 in
//! all of them):
//! - simple reply (proto.md "Simple reply message", 16 bytes): magic
//!   `0x67446698`, error (u32), cookie (u64);
//! - structured reply chunk ("Structured reply chunk message", 20 bytes):
//!   magic `0x668e33ef`, flags (u16), type (u16), cookie, length (u32);
//! - extended reply chunk (extended headers, 32 bytes): magic
//!   `0x6e8a278c`, flags, type, cookie, offset (u64), length (u64).

use alloc::vec::Vec;

use super::{WireError, EXTENDED_REPLY_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC};

/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured (compact) reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;
/// Length of an extended reply chunk header.
pub const EXTENDED_REPLY_LEN: usize = 32;

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const ERROR: Range<usize> = 4..8;
    pub const FLAGS: Range<usize> = 4..6;
    pub const TYPE: Range<usize> = 6..8;
    pub const COOKIE: Range<usize> = 8..16;
    pub const STRUCTURED_LENGTH: Range<usize> = 16..20;
    pub const EXTENDED_OFFSET: Range<usize> = 16..24;
    pub const EXTENDED_LENGTH: Range<usize> = 24..32;
}

/// A read/write view of a reply header in a byte buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ReplyHeader<T> {
    /// Wraps a buffer without checking it; the accessors panic if it is
    /// shorter than the header its magic announces.
    pub const fn new_unchecked(buffer: T) -> Self {
        ReplyHeader { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let header = Self::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// Checks that the buffer holds the whole header its magic announces.
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        let magic = data.get(field::MAGIC).ok_or(WireError::Truncated)?;
        let need = match u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]) {
            SIMPLE_REPLY_MAGIC => SIMPLE_REPLY_LEN,
            STRUCTURED_REPLY_MAGIC => STRUCTURED_REPLY_LEN,
            EXTENDED_REPLY_MAGIC => EXTENDED_REPLY_LEN,
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

    /// The magic, which selects the layout.
    pub fn magic(&self) -> u32 {
        u32::from_be_bytes(self.bytes(field::MAGIC))
    }

    /// Simple reply: the error value (0 for success).
    pub fn error(&self) -> u32 {
        u32::from_be_bytes(self.bytes(field::ERROR))
    }

    /// Chunk: reply flags (`NBD_REPLY_FLAG_*`).
    pub fn flags(&self) -> u16 {
        u16::from_be_bytes(self.bytes(field::FLAGS))
    }

    /// Chunk: reply type (`NBD_REPLY_TYPE_*`).
    pub fn reply_type(&self) -> u16 {
        u16::from_be_bytes(self.bytes(field::TYPE))
    }

    /// The cookie of the request answered.
    pub fn cookie(&self) -> u64 {
        u64::from_be_bytes(self.bytes(field::COOKIE))
    }

    /// Extended chunk: the request offset.
    pub fn offset(&self) -> u64 {
        u64::from_be_bytes(self.bytes(field::EXTENDED_OFFSET))
    }

    /// Chunk: length of the payload that follows (32 bits structured, 64
    /// bits extended).
    pub fn length(&self) -> u64 {
        if self.magic() == EXTENDED_REPLY_MAGIC {
            u64::from_be_bytes(self.bytes(field::EXTENDED_LENGTH))
        } else {
            u64::from(u32::from_be_bytes(self.bytes(field::STRUCTURED_LENGTH)))
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ReplyHeader<T> {
    fn put(&mut self, range: core::ops::Range<usize>, bytes: &[u8]) {
        self.buffer.as_mut()[range].copy_from_slice(bytes);
    }

    /// Sets the magic.
    pub fn set_magic(&mut self, magic: u32) {
        self.put(field::MAGIC, &magic.to_be_bytes());
    }

    /// Simple reply: sets the error value.
    pub fn set_error(&mut self, error: u32) {
        self.put(field::ERROR, &error.to_be_bytes());
    }

    /// Chunk: sets the reply flags.
    pub fn set_flags(&mut self, flags: u16) {
        self.put(field::FLAGS, &flags.to_be_bytes());
    }

    /// Chunk: sets the reply type.
    pub fn set_reply_type(&mut self, reply_type: u16) {
        self.put(field::TYPE, &reply_type.to_be_bytes());
    }

    /// Sets the cookie.
    pub fn set_cookie(&mut self, cookie: u64) {
        self.put(field::COOKIE, &cookie.to_be_bytes());
    }

    /// Extended chunk: sets the offset.
    pub fn set_offset(&mut self, offset: u64) {
        self.put(field::EXTENDED_OFFSET, &offset.to_be_bytes());
    }

    /// Chunk: sets the payload length in the layout the magic selects (a
    /// structured chunk takes the low 32 bits).
    pub fn set_length(&mut self, length: u64) {
        if self.magic() == EXTENDED_REPLY_MAGIC {
            self.put(field::EXTENDED_LENGTH, &length.to_be_bytes());
        } else {
            self.put(field::STRUCTURED_LENGTH, &(length as u32).to_be_bytes());
        }
    }
}

/// A parsed reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A simple reply.
    Simple {
        /// Error value, 0 for success.
        error: u32,
        /// Cookie of the request.
        cookie: u64,
    },
    /// A structured reply chunk (compact header).
    Structured {
        /// `NBD_REPLY_FLAG_*`.
        flags: u16,
        /// `NBD_REPLY_TYPE_*`.
        reply_type: u16,
        /// Cookie of the request.
        cookie: u64,
        /// Payload length.
        len: u32,
    },
    /// An extended reply chunk.
    Extended {
        /// `NBD_REPLY_FLAG_*`.
        flags: u16,
        /// `NBD_REPLY_TYPE_*`.
        reply_type: u16,
        /// Cookie of the request.
        cookie: u64,
        /// Offset of the request.
        offset: u64,
        /// Payload length.
        len: u64,
    },
}

impl Reply {
    /// Parses a header checked by [`ReplyHeader::new_checked`].
    pub fn parse<T: AsRef<[u8]>>(header: &ReplyHeader<T>) -> Result<Reply, WireError> {
        header.check_len()?;
        Ok(match header.magic() {
            SIMPLE_REPLY_MAGIC => Reply::Simple {
                error: header.error(),
                cookie: header.cookie(),
            },
            STRUCTURED_REPLY_MAGIC => Reply::Structured {
                flags: header.flags(),
                reply_type: header.reply_type(),
                cookie: header.cookie(),
                // The structured layout has a 32-bit length field.
                len: header.length() as u32,
            },
            _ => Reply::Extended {
                flags: header.flags(),
                reply_type: header.reply_type(),
                cookie: header.cookie(),
                offset: header.offset(),
                len: header.length(),
            },
        })
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub fn header_len(&self) -> usize {
        match self {
            Reply::Simple { .. } => SIMPLE_REPLY_LEN,
            Reply::Structured { .. } => STRUCTURED_REPLY_LEN,
            Reply::Extended { .. } => EXTENDED_REPLY_LEN,
        }
    }

    /// Writes the header into the first [`header_len`](Self::header_len)
    /// bytes of `header`; [`WireError::Truncated`] if it is shorter.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        header: &mut ReplyHeader<T>,
    ) -> Result<(), WireError> {
        if header.buffer.as_ref().len() < self.header_len() {
            return Err(WireError::Truncated);
        }
        match *self {
            Reply::Simple { error, cookie } => {
                header.set_magic(SIMPLE_REPLY_MAGIC);
                header.set_error(error);
                header.set_cookie(cookie);
            }
            Reply::Structured {
                flags,
                reply_type,
                cookie,
                len,
            } => {
                header.set_magic(STRUCTURED_REPLY_MAGIC);
                header.set_flags(flags);
                header.set_reply_type(reply_type);
                header.set_cookie(cookie);
                header.set_length(u64::from(len));
            }
            Reply::Extended {
                flags,
                reply_type,
                cookie,
                offset,
                len,
            } => {
                header.set_magic(EXTENDED_REPLY_MAGIC);
                header.set_flags(flags);
                header.set_reply_type(reply_type);
                header.set_cookie(cookie);
                header.set_offset(offset);
                header.set_length(len);
            }
        }
        Ok(())
    }

    /// Appends the encoded header to `out`.
    pub fn emit_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.header_len(), 0);
        // Infallible: exactly header_len bytes were just made room for.
        let _ = self.emit(&mut ReplyHeader::new_unchecked(&mut out[start..]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{REPLY_FLAG_DONE, REPLY_TYPE_ERROR, REPLY_TYPE_OFFSET_DATA};

    fn all() -> [Reply; 3] {
        [
            Reply::Simple {
                error: 5,
                cookie: 0x0102_0304_0506_0708,
            },
            Reply::Structured {
                flags: REPLY_FLAG_DONE,
                reply_type: REPLY_TYPE_OFFSET_DATA,
                cookie: 7,
                len: 0x1000_0008,
            },
            Reply::Extended {
                flags: 0,
                reply_type: REPLY_TYPE_ERROR,
                cookie: u64::MAX,
                offset: 1 << 50,
                len: 1 << 33,
            },
        ]
    }

    #[test]
    fn round_trip() {
        for repr in all() {
            let mut out = Vec::new();
            repr.emit_to(&mut out);
            assert_eq!(out.len(), repr.header_len());
            let header = ReplyHeader::new_checked(&out[..]).unwrap();
            assert_eq!(Reply::parse(&header), Ok(repr));
        }
    }

    #[test]
    fn layout_matches_proto_md() {
        let mut out = Vec::new();
        Reply::Simple {
            error: 22,
            cookie: 9,
        }
        .emit_to(&mut out);
        assert_eq!(
            out,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 9]
        );
    }

    #[test]
    fn short_buffers_are_rejected() {
        for repr in all() {
            let mut out = Vec::new();
            repr.emit_to(&mut out);
            for n in 0..out.len() {
                assert_eq!(
                    ReplyHeader::new_checked(&out[..n]),
                    Err(WireError::Truncated),
                    "{repr:?} cut to {n} bytes"
                );
            }
            let mut short = alloc::vec![0u8; repr.header_len() - 1];
            assert_eq!(
                repr.emit(&mut ReplyHeader::new_unchecked(&mut short[..])),
                Err(WireError::Truncated)
            );
        }
        assert_eq!(
            ReplyHeader::new_checked(&[0u8; 32][..]),
            Err(WireError::BadMagic)
        );
    }
}
