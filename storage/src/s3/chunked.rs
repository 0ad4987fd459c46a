//! `Content-Encoding: aws-chunked` bodies (what current AWS SDKs send for
//! `STREAMING-UNSIGNED-PAYLOAD-TRAILER`, and with chunk signatures for
//! `STREAMING-AWS4-HMAC-SHA256-PAYLOAD`): chunks of
//! `HEX[;chunk-signature=SIG]\r\nDATA\r\n`, a last chunk of size 0, then
//! trailer lines (`x-amz-checksum-crc32:BASE64`) and an empty line. The
//! decoder hands out the data as it arrives; it buffers only one chunk
//! header or trailer line ([`MAX_LINE`]) and the trailers
//! ([`MAX_TRAILERS`]).

use alloc::string::String;
use alloc::vec::Vec;

/// Longest chunk header or trailer line.
pub const MAX_LINE: usize = 4096;
/// Most trailer bytes kept.
pub const MAX_TRAILERS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Header,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// One piece of decoded output.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Payload bytes.
    Data(&'a [u8]),
    /// A chunk header was complete: its size and `chunk-signature`, if
    /// any (for signed streams; the data follows).
    Chunk {
        /// Chunk size.
        size: u64,
        /// Its signature, hex.
        signature: Option<String>,
    },
}

/// An aws-chunked decoder.
#[derive(Debug)]
pub struct AwsChunked {
    state: State,
    line: Vec<u8>,
    trailers: String,
    decoded: u64,
}

impl Default for AwsChunked {
    fn default() -> Self {
        Self::new()
    }
}

impl AwsChunked {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Header,
            line: Vec::new(),
            trailers: String::new(),
            decoded: 0,
        }
    }

    /// True once the last chunk and the trailers have been read.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes decoded so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// The value of trailer `name` (case-insensitive), once done.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// Decodes `input`, calling `out` with each piece; an error message for
    /// bad framing (bytes after the end are an error too).
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut dyn FnMut(Piece<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        while !input.is_empty() {
            match self.state {
                State::Done => return Err("bytes after the end of the aws-chunked body".into()),
                State::Data(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(input.len());
                    out(Piece::Data(&input[..take]))?;
                    self.decoded += take as u64;
                    input = &input[take..];
                    self.state = if take as u64 == n {
                        State::DataEnd
                    } else {
                        State::Data(n - take as u64)
                    };
                }
                State::Header | State::DataEnd | State::Trailers => {
                    let byte = input[0];
                    input = &input[1..];
                    self.line.push(byte);
                    if !self.line.ends_with(b"\r\n") {
                        if self.line.len() >= MAX_LINE
                            || (self.state == State::DataEnd && self.line.len() >= 2)
                        {
                            return Err("malformed aws-chunked framing".into());
                        }
                        continue;
                    }
                    let line = core::mem::take(&mut self.line);
                    let line = core::str::from_utf8(&line[..line.len() - 2])
                        .map_err(|_| String::from("aws-chunked header is not UTF-8"))?;
                    match self.state {
                        State::DataEnd => {
                            if !line.is_empty() {
                                return Err("chunk data longer than its size".into());
                            }
                            self.state = State::Header;
                        }
                        State::Header => {
                            let (size, ext) = line.split_once(';').unwrap_or((line, ""));
                            let size = size.trim();
                            if size.is_empty()
                                || size.len() > 15
                                || !size.bytes().all(|b| b.is_ascii_hexdigit())
                            {
                                return Err("malformed aws-chunked chunk size".into());
                            }
                            let size = u64::from_str_radix(size, 16)
                                .map_err(|_| String::from("malformed aws-chunked chunk size"))?;
                            let signature = ext
                                .split(';')
                                .find_map(|e| e.trim().strip_prefix("chunk-signature="))
                                .map(String::from);
                            out(Piece::Chunk { size, signature })?;
                            self.state = if size == 0 {
                                State::Trailers
                            } else {
                                State::Data(size)
                            };
                        }
                        State::Trailers => {
                            if line.is_empty() {
                                self.state = State::Done;
                            } else {
                                if self.trailers.len() + line.len() + 2 > MAX_TRAILERS {
                                    return Err("aws-chunked trailers too large".into());
                                }
                                self.trailers.push_str(line);
                                self.trailers.push_str("\r\n");
                            }
                        }
                        _ => unreachable!(),
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Decoded = (Vec<u8>, AwsChunked, Vec<Option<String>>);

    fn decode(body: &[u8], piece: usize) -> Result<Decoded, String> {
        let mut d = AwsChunked::new();
        let mut data = Vec::new();
        let mut signatures = Vec::new();
        for part in body.chunks(piece) {
            d.feed(part, &mut |p| {
                match p {
                    Piece::Data(bytes) => data.extend_from_slice(bytes),
                    Piece::Chunk { signature, .. } => signatures.push(signature),
                }
                Ok(())
            })?;
        }
        Ok((data, d, signatures))
    }

    #[test]
    fn unsigned_with_trailer_as_botocore_sends_it() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n";
        for piece in [1, 3, 1000] {
            let (data, d, _) = decode(body, piece).unwrap();
            assert_eq!(data, b"hello world");
            assert!(d.done());
            assert_eq!(d.decoded(), 11);
            assert_eq!(d.trailer("X-Amz-Checksum-Crc32"), Some("DUoRhQ=="));
        }
    }

    #[test]
    fn signed_chunks_carry_their_signatures() {
        let body = b"3;chunk-signature=abc\r\nxyz\r\n0;chunk-signature=def\r\n\r\n";
        let (data, d, signatures) = decode(body, 2).unwrap();
        assert_eq!(data, b"xyz");
        assert!(d.done());
        assert_eq!(signatures, [Some("abc".into()), Some("def".into())]);
    }

    #[test]
    fn bad_framing_is_an_error() {
        for bad in [
            &b"5\r\nhello!\r\n0\r\n\r\n"[..],
            b"zz\r\nhello\r\n",
            b"5\r\nhello\r\n0\r\n\r\nextra",
            b"10000000000000000\r\n",
        ] {
            assert!(decode(bad, 4).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let (_, d, _) = decode(b"5\r\nhel", 4).unwrap();
        assert!(!d.done(), "a short body is not done");
    }
}
