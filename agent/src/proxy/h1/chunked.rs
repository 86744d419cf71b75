//! The chunked transfer coding (RFC 9112 §7.1), decoded from a client, as a pure state machine
//! over a buffer: the connection feeds it bytes, it hands back data, trailers and the end.
//!
//! Stricter than the RFC's letter where leniency lets two hops disagree on where a message
//! ends: every line ends in CRLF (a bare LF is an error), a chunk's data must be followed by
//! CRLF, a chunk size is at most [`MAX_CHUNK_SIZE`] (so a size of 2^64-1 is refused at once,
//! not awaited), and extensions and trailers are bounded.
use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;

/// Largest chunk accepted: 4 GiB - 1. No client needs more in one chunk; HAProxy bounds it the
/// same way.
pub const MAX_CHUNK_SIZE: u64 = u32::MAX as u64;
/// Bytes of chunk extensions accepted per chunk line (tether ignores them).
const MAX_EXTENSION_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    InvalidSize,
    #[error("chunk size over {MAX_CHUNK_SIZE}")]
    TooLarge,
    #[error("chunk extension too long")]
    ExtensionTooLong,
    #[error("chunk line not ended by CRLF")]
    LineEnding,
    #[error("chunk data not followed by CRLF")]
    DataNotTerminated,
    #[error("invalid or oversized trailers")]
    Trailers,
}

/// What one step of decoding produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` so far.
    Size {
        digits: u8,
    },
    /// After the size: whitespace and extensions up to CR.
    Extension {
        bytes: usize,
    },
    /// CR seen at the end of a size line; LF must follow.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// After the data: CR, then LF.
    DataCr,
    DataLf,
    /// After the last chunk: the trailer section up to its empty line.
    Trailers,
    Done,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// The current chunk's size, then what is left of its data.
    remaining: u64,
    /// Largest trailer section (the request head limit).
    max_trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub fn new(max_trailer_bytes: usize) -> Self {
        Self {
            state: State::Size { digits: 0 },
            remaining: 0,
            max_trailer_bytes,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the front of `input`, consuming what it used. `Ok(None)`: more input is
    /// needed (everything given so far was consumed or is kept for the trailers).
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Decoded>, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Data => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Some(Decoded::Data(input.split_to(take).freeze())));
                }
                State::Trailers => return self.trailers(input),
                _ => {
                    let Some(&byte) = input.first() else {
                        return Ok(None);
                    };
                    let _ = input.split_to(1);
                    self.step(byte)?;
                }
            }
        }
    }

    /// One byte of a size line or of the CRLF after data.
    fn step(&mut self, byte: u8) -> Result<(), ChunkError> {
        self.state = match (self.state, byte) {
            (State::Size { digits }, _) if byte.is_ascii_hexdigit() => {
                // 8 hex digits hold MAX_CHUNK_SIZE; leading zeros may run a little longer.
                if digits >= 16 {
                    return Err(ChunkError::TooLarge);
                }
                let value = u64::from((byte as char).to_digit(16).unwrap_or(0));
                self.remaining = self.remaining * 16 + value;
                if self.remaining > MAX_CHUNK_SIZE {
                    return Err(ChunkError::TooLarge);
                }
                State::Size { digits: digits + 1 }
            }
            (State::Size { digits: 0 }, _) => return Err(ChunkError::InvalidSize),
            (State::Size { .. }, b'\r') => State::SizeLf,
            (State::Size { .. }, b';' | b' ' | b'\t') => State::Extension { bytes: 1 },
            (State::Size { .. }, b'\n') => return Err(ChunkError::LineEnding),
            (State::Size { .. }, _) => return Err(ChunkError::InvalidSize),
            (State::Extension { .. }, b'\r') => State::SizeLf,
            (State::Extension { .. }, b'\n') => return Err(ChunkError::LineEnding),
            (State::Extension { bytes }, _) => {
                if bytes >= MAX_EXTENSION_BYTES {
                    return Err(ChunkError::ExtensionTooLong);
                }
                if byte != b'\t' && (byte < 0x20 || byte == 0x7f) {
                    return Err(ChunkError::InvalidSize);
                }
                State::Extension { bytes: bytes + 1 }
            }
            (State::SizeLf, b'\n') if self.remaining == 0 => State::Trailers,
            (State::SizeLf, b'\n') => State::Data,
            (State::SizeLf, _) => return Err(ChunkError::LineEnding),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataCr, _) => return Err(ChunkError::DataNotTerminated),
            (State::DataLf, b'\n') => State::Size { digits: 0 },
            (State::DataLf, _) => return Err(ChunkError::DataNotTerminated),
            (State::Data | State::Trailers | State::Done, _) => self.state,
        };
        Ok(())
    }

    /// The trailer section: nothing but its empty line (the usual case), or header lines.
    fn trailers(&mut self, input: &mut BytesMut) -> Result<Option<Decoded>, ChunkError> {
        if input.starts_with(b"\r\n") {
            let _ = input.split_to(2);
            self.state = State::Done;
            return Ok(Some(Decoded::End));
        }
        if input.len() < 2 {
            if input.first().is_some_and(|&b| b != b'\r') && !is_token(input[0]) {
                return Err(ChunkError::Trailers);
            }
            return Ok(None);
        }
        let mut lines = [httparse::EMPTY_HEADER; 32];
        match httparse::parse_headers(input, &mut lines) {
            Ok(httparse::Status::Complete((length, lines))) => {
                if length > self.max_trailer_bytes || !input[..length].ends_with(b"\r\n\r\n") {
                    return Err(ChunkError::Trailers);
                }
                let mut trailers = HeaderMap::with_capacity(lines.len());
                for line in lines.iter() {
                    let name = HeaderName::from_bytes(line.name.as_bytes())
                        .map_err(|_| ChunkError::Trailers)?;
                    let value =
                        HeaderValue::from_bytes(line.value).map_err(|_| ChunkError::Trailers)?;
                    trailers.append(name, value);
                }
                let _ = input.split_to(length);
                self.state = State::Done;
                Ok(Some(Decoded::Trailers(trailers)))
            }
            Ok(httparse::Status::Partial) if input.len() <= self.max_trailer_bytes => Ok(None),
            _ => Err(ChunkError::Trailers),
        }
    }
}

fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` `step` bytes at a time; returns the data, trailers and whether it ended.
    fn decode(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, bool), ChunkError> {
        let mut decoder = ChunkedDecoder::new(1024);
        let mut input = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        for piece in wire.chunks(step.max(1)) {
            input.extend_from_slice(piece);
            while let Some(decoded) = decoder.decode(&mut input)? {
                match decoded {
                    Decoded::Data(bytes) => data.extend_from_slice(&bytes),
                    Decoded::Trailers(map) => trailers = Some(map),
                    Decoded::End => {}
                }
            }
        }
        Ok((data, trailers, decoder.is_done()))
    }

    #[test]
    fn chunks_decode_whatever_the_read_sizes() {
        let wire = b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers, done) = decode(wire, step).expect("valid");
            assert_eq!(data, b"hello world", "step {step}");
            assert!(trailers.is_none());
            assert!(done);
        }
    }

    #[test]
    fn trailers_are_kept() {
        let wire = b"3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n";
        for step in [1, 4, wire.len()] {
            let (data, trailers, done) = decode(wire, step).expect("valid");
            assert_eq!(data, b"abc");
            assert_eq!(trailers.expect("trailers")["x-checksum"], "42");
            assert!(done);
        }
    }

    #[test]
    fn broken_framing_is_refused() {
        let cases: [(&[u8], ChunkError); 8] = [
            (b"FFFFFFFFFFFFFFFF\r\n", ChunkError::TooLarge),
            (b"100000000\r\n", ChunkError::TooLarge),
            (b"1FFFFFFFFFFFFFFFFF\r\n", ChunkError::TooLarge),
            (b"5\r\nhelloXX\r\n", ChunkError::DataNotTerminated),
            (b"5\nhello\r\n", ChunkError::LineEnding),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::DataNotTerminated),
            (b"zz\r\n", ChunkError::InvalidSize),
            (b"\r\n", ChunkError::InvalidSize),
        ];
        for (wire, expected) in cases {
            assert_eq!(decode(wire, 1).err(), Some(expected), "{wire:?}");
            assert_eq!(decode(wire, wire.len()).err(), Some(expected), "{wire:?}");
        }
    }

    #[test]
    fn the_largest_chunk_size_is_refused_before_any_data() {
        let mut decoder = ChunkedDecoder::new(1024);
        let mut input = BytesMut::from(&b"FFFFFFFFFFFFFFFF"[..]);
        assert_eq!(decoder.decode(&mut input), Err(ChunkError::TooLarge));
    }

    #[test]
    fn extensions_and_trailers_are_bounded() {
        let long = format!("1;{}\r\n", "e".repeat(MAX_EXTENSION_BYTES + 1));
        assert_eq!(
            decode(long.as_bytes(), 64).err(),
            Some(ChunkError::ExtensionTooLong)
        );
        let trailer = format!("0\r\nx: {}\r\n\r\n", "t".repeat(2000));
        assert_eq!(
            decode(trailer.as_bytes(), 64).err(),
            Some(ChunkError::Trailers)
        );
    }
}
