//! The one codec for everything that crosses the wire.
//!
//! A frame is a 4-byte big-endian body length followed by the body, the bincode 2
//! encoding (standard config) of a typed enum. The first byte of the body is the
//! enum's variant index and doubles as the frame's *kind*: each kind has its own size
//! limit, checked from the 5 header bytes before a single byte of the body is
//! buffered, so an absurd length prefix costs the reader nothing. A body that does not
//! decode, or decodes with bytes left over, is an error; so is a stream that ends
//! inside a frame.
//!
//! bincode is pinned to `=2.0.1` (bincode 3 on crates.io is an empty tombstone); all
//! encoding goes through this module so it can be swapped in one place.

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// bincode configuration for every frame body. The limit bounds what a decoder
/// may allocate for a claimed length inside a body.
pub const BINCODE: bincode::config::Configuration<
    bincode::config::BigEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ MAX_FRAME }>,
> = bincode::config::standard().with_big_endian().with_limit::<{ MAX_FRAME }>();

/// The largest body of any kind.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// A type that travels in frames, with a size limit per kind (variant index).
pub trait Frame: bincode::Encode + bincode::Decode<()> {
    /// Limit of the body for this kind, or `None` for a kind that does not exist.
    fn limit(kind: u8) -> Option<usize>;
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of kind {kind} is {len} bytes, over its limit of {limit}")]
    TooLarge { kind: u8, len: usize, limit: usize },
    #[error("frame of unknown kind {0}")]
    UnknownKind(u8),
    #[error("empty frame")]
    Empty,
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated { expected: usize, got: usize },
    #[error("frame body does not decode: {0}")]
    Decode(String),
    #[error("frame body has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("frame body is not in canonical form")]
    NonCanonical,
    #[error("read failed: {0}")]
    Read(#[from] std::io::Error),
}

impl FrameError {
    /// The application close code a peer gets for sending this.
    pub fn close_code(&self) -> u32 {
        match self {
            FrameError::TooLarge { .. } => super::close::FRAME_TOO_LARGE,
            FrameError::Read(_) => super::close::PROTOCOL,
            _ => super::close::MALFORMED_FRAME,
        }
    }
}

/// Appends one frame carrying `msg` to `buf`.
pub fn encode_into<T: Frame>(msg: &T, buf: &mut BytesMut) {
    let start = buf.len();
    buf.put_u32(0);
    let mut writer = BytesMutWriter(buf);
    // Encoding into memory fails only on a limit overflow, which our own messages,
    // checked against their limits by the sender, never reach.
    if bincode::encode_into_writer(msg, &mut writer, BINCODE).is_err() {
        buf.truncate(start);
        return;
    }
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// One frame as bytes.
pub fn encode<T: Frame>(msg: &T) -> bytes::Bytes {
    // One allocation of the exact size: the size pass is cheap next to regrowing.
    let mut buf = BytesMut::with_capacity(4 + body_len(msg));
    encode_into(msg, &mut buf);
    buf.freeze()
}

/// Length of the body `msg` encodes to (without the 4-byte prefix).
pub fn body_len<T: Frame>(msg: &T) -> usize {
    let mut counter = bincode::enc::write::SizeWriter::default();
    // SizeWriter cannot fail.
    let _ = bincode::encode_into_writer(msg, &mut counter, BINCODE);
    counter.bytes_written
}

/// Decodes one whole body (without its length prefix), rejecting trailing bytes.
pub fn decode_body<T: Frame>(body: &[u8]) -> Result<T, FrameError> {
    let kind = *body.first().ok_or(FrameError::Empty)?;
    let limit = T::limit(kind).ok_or(FrameError::UnknownKind(kind))?;
    if body.len() > limit {
        return Err(FrameError::TooLarge { kind, len: body.len(), limit });
    }
    let (msg, used) = bincode::decode_from_slice(body, BINCODE).map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::TrailingBytes(body.len() - used));
    }
    // bincode accepts integers in longer varint forms than needed; one message
    // has exactly one encoding here, so a frame that does not re-encode to its own
    // length is refused (found by the `message` fuzz target).
    if body_len(&msg) != body.len() {
        return Err(FrameError::NonCanonical);
    }
    Ok(msg)
}

/// Decodes every frame in `bytes` (a whole stream's contents).
pub fn decode_all<T: Frame>(mut bytes: &[u8]) -> Result<Vec<T>, FrameError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 4 {
            return Err(FrameError::Truncated { expected: 4, got: bytes.len() });
        }
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        check_header::<T>(len, bytes.get(4).copied())?;
        let body = bytes.get(4..4 + len).ok_or(FrameError::Truncated { expected: len, got: bytes.len() - 4 })?;
        out.push(decode_body(body)?);
        bytes = &bytes[4 + len..];
    }
    Ok(out)
}

/// Exactly one frame, as a handshake, request or response stream carries.
pub fn decode_single<T: Frame>(bytes: &[u8]) -> Result<T, FrameError> {
    let mut msgs = decode_all::<T>(bytes)?;
    match msgs.len() {
        1 => Ok(msgs.remove(0)),
        0 => Err(FrameError::Empty),
        n => Err(FrameError::TrailingBytes(n - 1)),
    }
}

fn check_header<T: Frame>(len: usize, kind: Option<u8>) -> Result<(), FrameError> {
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if let Some(kind) = kind {
        let limit = T::limit(kind).ok_or(FrameError::UnknownKind(kind))?;
        if len > limit {
            return Err(FrameError::TooLarge { kind, len, limit });
        }
    }
    Ok(())
}

/// Reads frames from a stream. It owns its buffer, so a frame is never lost or torn
/// by a cancelled read: `next` may be dropped at any `.await` and called again. Even
/// so, frames are read in a task of their own, never beside a timer in a `select!`.
pub struct FrameReader<R> {
    stream: R,
    buf: BytesMut,
    consumed: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(stream: R) -> Self {
        FrameReader { stream, buf: BytesMut::with_capacity(16 * 1024), consumed: 0 }
    }

    /// The next frame, `Ok(None)` at a clean end of stream.
    pub async fn next<T: Frame>(&mut self) -> Result<Option<T>, FrameError> {
        // Header: length and kind.
        if !self.fill(5).await? {
            return match self.buf.len() {
                0 => Ok(None),
                n if n >= 4 => {
                    let len = self.peek_len();
                    check_header::<T>(len, None)?;
                    Err(FrameError::Truncated { expected: len, got: n - 4 })
                }
                n => Err(FrameError::Truncated { expected: 4, got: n }),
            };
        }
        let len = self.peek_len();
        check_header::<T>(len, Some(self.buf[4]))?;
        if !self.fill(4 + len).await? {
            return Err(FrameError::Truncated { expected: len, got: self.buf.len() - 4 });
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len);
        self.consumed += 4 + len as u64;
        decode_body(&body).map(Some)
    }

    /// Bytes of whole frames returned so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Bytes in the buffer not yet returned as frames (tests).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn peek_len(&self) -> usize {
        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
    }

    /// Reads until `n` bytes are buffered; false if the stream ended first.
    async fn fill(&mut self, n: usize) -> Result<bool, FrameError> {
        if self.buf.capacity() < n {
            self.buf.reserve(n - self.buf.len());
        }
        while self.buf.len() < n {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

struct BytesMutWriter<'a>(&'a mut BytesMut);

impl bincode::enc::write::Writer for BytesMutWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::message::Message;
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_through_a_stream() {
        let msgs = vec![Message::Data(vec![1, 2, 3]), Message::Data(vec![]), Message::Data(vec![7; 5000])];
        let mut wire = BytesMut::new();
        for m in &msgs {
            encode_into(m, &mut wire);
        }
        let mut reader = FrameReader::new(&wire[..]);
        let mut got = Vec::new();
        while let Some(m) = reader.next::<Message>().await.unwrap() {
            got.push(m);
        }
        assert_eq!(got, msgs);
        assert_eq!(decode_all::<Message>(&wire).unwrap(), msgs);
    }

    #[tokio::test]
    async fn absurd_length_is_refused_before_buffering() {
        let mut wire = vec![0xff, 0xff, 0xff, 0xff, 0];
        wire.extend_from_slice(&[0; 16]);
        let mut reader = FrameReader::new(&wire[..]);
        let err = reader.next::<Message>().await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        assert!(reader.buffered() <= wire.len());
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error_not_an_end() {
        let wire = encode(&Message::Data(vec![9; 100]));
        let mut reader = FrameReader::new(&wire[..50]);
        assert!(matches!(reader.next::<Message>().await, Err(FrameError::Truncated { .. })));
        let mut reader = FrameReader::new(&wire[..2]);
        assert!(matches!(reader.next::<Message>().await, Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn garbage_unknown_kind_and_trailing_bytes_are_errors() {
        assert!(matches!(decode_body::<Message>(&[250, 1, 2]), Err(FrameError::UnknownKind(250))));
        let mut body = encode(&Message::Data(vec![1])).to_vec().split_off(4);
        body.push(0);
        assert!(matches!(decode_body::<Message>(&body), Err(FrameError::TrailingBytes(1))));
        // A Data whose claimed length exceeds the body.
        assert!(matches!(decode_body::<Message>(&[0, 200]), Err(FrameError::Decode(_))));
        assert!(matches!(decode_body::<Message>(&[]), Err(FrameError::Empty)));
    }

    /// Fuzz regression (`message` target): an overlong varint decoded, so one
    /// message had two encodings.
    #[test]
    fn overlong_varints_are_refused() {
        let crash = [5u8, 253, 0, 0, 0, 0, 2, 253, 59, 137, 1];
        assert!(matches!(decode_body::<Message>(&crash), Err(FrameError::NonCanonical)));
        let canonical = [5u8, 252, 2, 253, 59, 137, 1];
        let msg = decode_body::<Message>(&canonical).unwrap();
        assert_eq!(&encode(&msg)[4..], &canonical[..]);
    }

    #[test]
    fn body_len_matches_encoding() {
        let m = Message::Data(vec![3; 300]);
        assert_eq!(body_len(&m) + 4, encode(&m).len());
    }
}
