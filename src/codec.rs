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
//! Decoding bounds memory by the body's size. bincode counts "claims" against a
//! limit: before allocating a container of `len` elements it claims
//! `len * size_of::<T>()` (24 bytes for each `Vec<u8>` of a `Vec<Vec<u8>>`, 32
//! for each `Bytes` of a block's transactions, not its 1-byte length prefix),
//! and every decoded value claims its in-memory size (8 for a `u64`, even in a
//! 1-byte varint). A limit sized in body bytes refused honest bodies (blocks of
//! 20,000 10-byte transactions claim 32 bytes per 11 encoded ones); a limit sized for the largest body let a 10-byte body claim and
//! allocate megabytes. So the limit follows the body: [`CLAIMS_PER_BYTE`] times
//! the body's size, rounded up to a tier (see [`decode_bounded`]).
//!
//! bincode is pinned to `=2.0.1` (bincode 3 on crates.io is an empty tombstone); all
//! encoding goes through this module so it can be swapped in one place.

use bincode::error::DecodeError;
use bincode::Decode;
use bytes::{Buf, BufMut, Bytes, BytesMut};
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

/// Bodies smaller than this are copied out of the read buffer (see
/// [`FrameReader::next_body`]).
const COPY_BELOW: usize = 4096;

/// Bytes bincode may claim per byte of body. Each body byte is counted by at
/// most one claim that is still open: a decoded value's own size, or one element
/// of a container still to be decoded, which needs at least one body byte of its
/// own. The largest ratio among our types is a block's transaction: a handle
/// (`Bytes`, 32 bytes) encoded as one byte when empty ([`crate::chain::Block`]
/// claims that much for each); integers claim at most 8
/// per byte, and the other containers' elements (`SignedVote`, `Committed`) take
/// more body bytes than half their size (checked by a test). So no well-formed
/// body claims more than this many times its length, and a body that claims
/// more is lying about a length.
pub(crate) const CLAIMS_PER_BYTE: usize = std::mem::size_of::<Bytes>();

/// Decodes one value from the front of `bytes` with claims bounded by
/// [`CLAIMS_PER_BYTE`] times its length, rounded up to a power of 4 (from 4 KiB):
/// a small body can make the decoder allocate at most a few times what its
/// contents could fill, and every body within its kind's limit decodes. Returns
/// the value and the bytes it used.
pub(crate) fn decode_bounded<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    // The limit is a type parameter of bincode's configuration: one per tier.
    macro_rules! tiers {
        ($($size:expr),*) => {
            $(
                if bytes.len() <= $size {
                    let config = bincode::config::standard()
                        .with_big_endian()
                        .with_limit::<{ CLAIMS_PER_BYTE * $size }>();
                    return bincode::decode_from_slice(bytes, config);
                }
            )*
        };
    }
    tiers!(4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20);
    let config = bincode::config::standard().with_big_endian().with_limit::<{ CLAIMS_PER_BYTE * MAX_FRAME }>();
    if bytes.len() > MAX_FRAME {
        return Err(DecodeError::LimitExceeded);
    }
    bincode::decode_from_slice(bytes, config)
}

/// Decodes what bincode encodes for a `Vec<T>` (a varint length, then the
/// elements), refusing a length over `max` before anything is allocated for it.
/// The claims limit alone ([`decode_bounded`]) lets a large body claim as many
/// elements as it has bytes, and a body of 1-byte transactions then costs an
/// allocation per byte; no message may carry more elements than the rules allow
/// (20,000 transactions in a block, say), so a length past that is refused at
/// the cost of reading it, whatever the body's size. The bytes are those of
/// `Vec<T>`: a type decoded with this keeps its derived `Encode`, and the wire
/// does not change, only what is accepted. `what` names the sequence in the
/// error ([`FrameError::TooMany`]).
pub(crate) fn decode_seq<T, D>(decoder: &mut D, max: usize, what: &'static str) -> Result<Vec<T>, DecodeError>
where
    D: bincode::de::Decoder,
    T: bincode::Decode<D::Context>,
{
    let len = u64::decode(decoder)?;
    if len > max as u64 {
        return Err(DecodeError::Other(what));
    }
    let len = len as usize;
    decoder.claim_container_read::<T>(len)?;
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        // As bincode's own `Vec` decoding: each element claims its own size
        // again as it decodes, so the container's claim is handed back.
        decoder.unclaim_bytes_read(std::mem::size_of::<T>());
        out.push(T::decode(decoder)?);
    }
    Ok(out)
}

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
    /// A sequence longer than its message may carry (see [`decode_seq`]).
    #[error("frame body claims more {0} than a message may carry")]
    TooMany(&'static str),
    #[error("frame body has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("frame body is not in canonical form")]
    NonCanonical,
    #[error("read failed: {0}")]
    Read(#[from] std::io::Error),
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
    encoded_len(msg)
}

/// Length of the encoding of any value (a frame body is one).
pub fn encoded_len<T: bincode::Encode>(value: &T) -> usize {
    let mut counter = bincode::enc::write::SizeWriter::default();
    // SizeWriter cannot fail.
    let _ = bincode::encode_into_writer(value, &mut counter, BINCODE);
    counter.bytes_written
}

/// Decodes one whole body (without its length prefix), rejecting trailing bytes.
pub fn decode_body<T: Frame>(body: &[u8]) -> Result<T, FrameError> {
    let kind = *body.first().ok_or(FrameError::Empty)?;
    let limit = T::limit(kind).ok_or(FrameError::UnknownKind(kind))?;
    if body.len() > limit {
        return Err(FrameError::TooLarge { kind, len: body.len(), limit });
    }
    let (msg, used) = decode_bounded(body).map_err(|e| match e {
        // Only `decode_seq` makes this error: bincode itself never does.
        DecodeError::Other(what) => FrameError::TooMany(what),
        e => FrameError::Decode(e.to_string()),
    })?;
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
    check_len(len, kind, &T::limit)
}

fn check_len(len: usize, kind: Option<u8>, limit: &impl Fn(u8) -> Option<usize>) -> Result<(), FrameError> {
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if let Some(kind) = kind {
        let limit = limit(kind).ok_or(FrameError::UnknownKind(kind))?;
        if len > limit {
            return Err(FrameError::TooLarge { kind, len, limit });
        }
    } else if len > MAX_FRAME {
        return Err(FrameError::TooLarge { kind: 0, len, limit: MAX_FRAME });
    }
    Ok(())
}

/// Reads frames from a stream. It owns its buffer, so a frame is never lost or torn
/// by a cancelled read: `next` may be dropped at any `.await` and called again. Even
/// so, frames are read in a task of their own, never beside a timer in a `select!`.
///
/// Two ways to read: frame by frame ([`FrameReader::next`] and
/// [`FrameReader::next_body`]), or in runs
/// ([`FrameReader::read_more`] and [`FrameReader::take_frames`]): as many whole
/// frames as one read brought, handed on as one piece of the read buffer, with no
/// copy and no allocation per frame. A stream is read one way only.
pub struct FrameReader<R> {
    stream: R,
    buf: BytesMut,
    /// Runs: the front `scanned` bytes of `buf` are `scanned_frames` whole frames
    /// whose headers were checked.
    scanned: usize,
    scanned_frames: usize,
}

/// Bytes a run read asks the stream for, at least.
const RUN_READ: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(stream: R) -> Self {
        FrameReader { stream, buf: BytesMut::with_capacity(16 * 1024), scanned: 0, scanned_frames: 0 }
    }

    /// Runs: reads once, whatever the stream has ready, into room for the frame
    /// being read (its size known from its checked header) or at least 64 KiB.
    /// `Ok(false)` at the end of the stream; then [`FrameReader::finish`] says
    /// whether it ended cleanly.
    pub async fn read_more(&mut self) -> Result<bool, FrameError> {
        let want = self.wanted().max(self.buf.len() + 1);
        let spare = self.buf.capacity() - self.buf.len();
        if self.buf.capacity() < want || spare < RUN_READ / 4 {
            // When every piece taken from the buffer is gone, this reclaims it;
            // else a new one is allocated (and the partial frame moved there).
            self.buf.reserve((want - self.buf.len()).max(RUN_READ));
        }
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// Runs: every whole frame at the front of the buffer, as one piece (length
    /// prefixes included), and how many frames it holds; `None` when no whole
    /// frame is buffered. Every header is checked against `limit` as soon as it
    /// is buffered, so a frame over its limit or of a kind the stream does not
    /// carry fails before its body is read.
    pub fn take_frames(&mut self, limit: impl Fn(u8) -> Option<usize>) -> Result<Option<(Bytes, usize)>, FrameError> {
        let (mut at, mut frames) = (self.scanned, self.scanned_frames);
        while let Some(&[a, b, c, d, kind]) = self.buf.get(at..at + 5) {
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            if let Err(e) = check_len(len, Some(kind), &limit) {
                (self.scanned, self.scanned_frames) = (at, frames);
                return Err(e);
            }
            if self.buf.len() < at + 4 + len {
                break;
            }
            at += 4 + len;
            frames += 1;
        }
        (self.scanned, self.scanned_frames) = (at, frames);
        if self.scanned == 0 {
            return Ok(None);
        }
        let run = self.buf.split_to(self.scanned).freeze();
        let frames = self.scanned_frames;
        self.scanned = 0;
        self.scanned_frames = 0;
        Ok(Some((run, frames)))
    }

    /// Runs: the size (prefix included) of the frame at the front of the buffer
    /// once its header is buffered and checked, 0 before. A reader makes room
    /// for it downstream before reading its body.
    pub(crate) fn wanted(&self) -> usize {
        if self.buf.len() >= self.scanned + 5 {
            let at = self.scanned;
            4 + u32::from_be_bytes([self.buf[at], self.buf[at + 1], self.buf[at + 2], self.buf[at + 3]]) as usize
        } else {
            0
        }
    }

    /// Runs, at the end of the stream: whether it ended between frames (after
    /// [`FrameReader::take_frames`] took every whole one).
    pub fn finish(&self, limit: impl Fn(u8) -> Option<usize>) -> Result<(), FrameError> {
        match self.buf.len() {
            0 => Ok(()),
            n if n >= 4 => {
                let len = self.peek_len();
                check_len(len, self.buf.get(4).copied(), &limit)?;
                Err(FrameError::Truncated { expected: len, got: n - 4 })
            }
            n => Err(FrameError::Truncated { expected: 4, got: n }),
        }
    }

    /// The next frame, `Ok(None)` at a clean end of stream.
    pub async fn next<T: Frame>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(len) = self.fill_frame(&T::limit).await? else { return Ok(None) };
        let msg = decode_body(&self.buf[4..4 + len]);
        self.buf.advance(4 + len);
        msg.map(Some)
    }

    /// The next frame's body (kind byte first), undecoded, `Ok(None)` at a clean
    /// end of stream. `limit` says which kinds this stream carries and their size
    /// limits; both are checked from the header, before the body is buffered.
    pub(crate) async fn next_body(&mut self, limit: impl Fn(u8) -> Option<usize>) -> Result<Option<Bytes>, FrameError> {
        let Some(len) = self.fill_frame(&limit).await? else { return Ok(None) };
        self.buf.advance(4);
        // A small body is copied out so that it does not pin the whole read buffer
        // for as long as it waits (queues count a body's length, not its buffer's);
        // a large one was read into a buffer sized for it and is split off as is.
        if len < COPY_BELOW {
            let body = Bytes::copy_from_slice(&self.buf[..len]);
            self.buf.advance(len);
            Ok(Some(body))
        } else {
            Ok(Some(self.buf.split_to(len).freeze()))
        }
    }

    /// Buffers the next whole frame (its header checked first); returns its body
    /// length, or `None` at a clean end of stream.
    async fn fill_frame(&mut self, limit: &impl Fn(u8) -> Option<usize>) -> Result<Option<usize>, FrameError> {
        if !self.fill(5).await? {
            return match self.buf.len() {
                0 => Ok(None),
                n if n >= 4 => {
                    let len = self.peek_len();
                    check_len(len, None, limit)?;
                    Err(FrameError::Truncated { expected: len, got: n - 4 })
                }
                n => Err(FrameError::Truncated { expected: 4, got: n }),
            };
        }
        let len = self.peek_len();
        check_len(len, Some(self.buf[4]), limit)?;
        if !self.fill(4 + len).await? {
            return Err(FrameError::Truncated { expected: len, got: self.buf.len() - 4 });
        }
        Ok(Some(len))
    }

    /// Bytes in the buffer not yet returned as frames (tests).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
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
    use super::*;
    use crate::chain::message::Message;

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

    /// Records, per thread, the largest single allocation and the bytes
    /// allocated in all, so a test can see what a decode allocated (tests in
    /// parallel do not see each other's).
    mod probe {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        pub(super) struct Counting;

        thread_local! {
            static LARGEST: Cell<usize> = const { Cell::new(0) };
            static TOTAL: Cell<usize> = const { Cell::new(0) };
        }

        fn note(size: usize) {
            // `try_with`: the slots may be gone while a thread is being torn down.
            let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
            let _ = TOTAL.try_with(|c| c.set(c.get() + size));
        }

        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                unsafe { System.alloc(layout) }
            }
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                unsafe { System.alloc_zeroed(layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                unsafe { System.dealloc(ptr, layout) }
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                note(new_size);
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        /// `f`'s result and the largest allocation it made on this thread.
        pub(super) fn largest_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
            let (r, largest, _) = during(f);
            (r, largest)
        }

        /// `f`'s result, the largest allocation it made on this thread and the
        /// bytes it allocated in all.
        pub(super) fn during<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
            LARGEST.with(|c| c.set(0));
            let before = TOTAL.with(|c| c.get());
            let r = f();
            (r, LARGEST.with(|c| c.get()), TOTAL.with(|c| c.get()) - before)
        }
    }

    #[global_allocator]
    static COUNTING: probe::Counting = probe::Counting;

    /// A few bytes claiming a huge container fail cleanly, having allocated no
    /// more than a few times what such a body could fill.
    #[test]
    fn a_small_body_claiming_a_huge_length_allocates_little() {
        use crate::chain::message::Kind;
        // Varint 252: a 4-byte big-endian length follows.
        let claim = |kind: u8, len: u32| [&[kind, 252][..], &len.to_be_bytes()[..], &[0; 8][..]].concat();
        let bodies = [
            // A transaction of 3 MiB with 8 bytes of it present.
            claim(Kind::TX, 3 << 20),
            // Data of 1 MiB.
            claim(Kind::DATA, 1 << 20),
            // A million blocks, a hundred thousand, and a thousand.
            claim(Kind::BLOCKS, 1 << 20),
            claim(Kind::BLOCKS, 100_000),
            claim(Kind::BLOCKS, 1_000),
        ];
        for body in bodies {
            let (result, largest) = probe::largest_during(|| decode_body::<Message>(&body));
            assert!(matches!(result, Err(FrameError::Decode(_) | FrameError::TooMany(_))), "{body:?}: {result:?}");
            assert!(
                largest <= CLAIMS_PER_BYTE * 4096,
                "{body:?}: allocated {largest} bytes for a {}-byte body",
                body.len()
            );
        }
    }

    /// The ratio [`CLAIMS_PER_BYTE`] rests on: no container element of a frame
    /// claims more memory than that many times its smallest encoding.
    #[test]
    fn container_elements_claim_at_most_claims_per_byte() {
        let committed = bare_block(0);
        let vote = SignedVote {
            vote: Vote { kind: VoteKind::Prevote, height: 0, round: 0, block: None, voter: NodeId([0; 32]) },
            signature: [0; 64],
        };
        let ratios = [
            ("Vec<u8>", std::mem::size_of::<Vec<u8>>(), encoded_len(&Vec::<u8>::new())),
            ("a block's transaction", std::mem::size_of::<Bytes>(), encoded_len(&Vec::<u8>::new())),
            ("SignedVote", std::mem::size_of::<SignedVote>(), encoded_len(&vote)),
            ("Committed", std::mem::size_of::<Committed>(), encoded_len(&committed)),
        ];
        for (name, size, min_encoded) in ratios {
            assert!(size <= CLAIMS_PER_BYTE * min_encoded, "{name}: {size} bytes in memory, {min_encoded} encoded");
        }
    }

    use crate::chain::block::{Block, Hash, Header, MAX_BLOCK_TXS};
    use crate::chain::compact::CompactProposal;
    use crate::chain::limits::MAX_SYNC_BATCH_BLOCKS;
    use crate::chain::members::{Approval, Change, MAX_CHANGES_PER_BLOCK, MAX_MEMBERS};
    use crate::chain::message::Kind;
    use crate::chain::vote::{Certificate, Committed, Proposal, SignedProposal, SignedVote, Vote, VoteKind};
    use crate::identity::NodeId;

    /// A committed block with nothing in it, at `height`.
    fn bare_block(height: u64) -> Committed {
        let header = Header {
            height,
            round: 0,
            prev_hash: Hash([0; 32]),
            timestamp_ms: 0,
            proposer: NodeId([0; 32]),
            tx_root: Hash([0; 32]),
            changes: vec![],
        };
        let cert = Certificate { height, round: 0, block: Hash([0; 32]), precommits: vec![] };
        Committed { block: Block { header, txs: vec![] }, cert }
    }

    fn proposal(block: Block) -> SignedProposal {
        SignedProposal {
            proposal: Proposal { height: 1, round: 0, block, valid_round: None, proposer: NodeId([0; 32]) },
            signature: [0; 64],
        }
    }

    /// The densest bodies the count bounds allow, as large as each tier of
    /// claims: blocks of empty transactions, [`MAX_BLOCK_TXS`] each (the worst
    /// case of [`CLAIMS_PER_BYTE`]), decode.
    #[test]
    fn the_densest_body_of_each_tier_decodes() {
        for tier in [4usize << 10, 64 << 10, 1 << 20] {
            let mut blocks = Vec::new();
            let full = {
                let mut b = bare_block(1);
                b.block.txs = vec![Bytes::new(); MAX_BLOCK_TXS];
                b
            };
            // The kind byte and a count of up to 3 bytes, then the blocks.
            let mut len = 4;
            while len + encoded_len(&full) + 8 <= tier {
                blocks.push(full.clone());
                len += encoded_len(&full);
            }
            let mut last = bare_block(1);
            let room = tier - len - encoded_len(&last) - 8;
            last.block.txs = vec![Bytes::new(); room.min(MAX_BLOCK_TXS)];
            blocks.push(last);
            let msg = Message::Blocks(blocks);
            let len = body_len(&msg);
            assert!(len <= tier && len + 16 > tier, "{len} bytes for the tier of {tier}");
            assert_eq!(decode_body::<Message>(&encode(&msg)[4..]).unwrap(), msg);
        }
    }

    /// Each sequence a message carries is bounded by what the rules let it
    /// hold: at the bound it decodes, one past it is refused as malformed,
    /// having allocated next to nothing, however dense the body. Without the
    /// bounds the densest of these (4 million empty transactions in a `Txs`
    /// answer of 4 MiB, 1.5 million 1-byte ones in a 3 MiB proposal) decoded
    /// or allocated for every element they claimed.
    #[test]
    fn a_sequence_past_what_its_message_may_carry_is_refused_before_allocating() {
        let identity =
            crate::identity::Identity::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[1; 32])).unwrap();
        let approval =
            Approval { change: Change::Remove { id: NodeId([2; 32]) }, approver: identity.id(), signed_at: 1 }
                .sign(&[0; 32], &identity);
        let precommit = SignedVote {
            vote: Vote {
                kind: VoteKind::Precommit,
                height: 1,
                round: 0,
                block: Some(Hash([0; 32])),
                voter: NodeId([0; 32]),
            },
            signature: [0; 64],
        };
        let with_txs = |n: usize, tx: &[u8]| {
            let mut c = bare_block(1);
            c.block.txs = vec![Bytes::copy_from_slice(tx); n];
            c.block
        };
        let with_changes = |n: usize| {
            let mut c = bare_block(1);
            c.block.header.changes = vec![approval.clone(); n];
            c.block
        };
        let with_precommits = |n: usize| {
            let mut c = bare_block(1);
            c.cert.precommits = vec![precommit.clone(); n];
            c
        };
        let compact = |n: usize| {
            let mut cp = CompactProposal::of(&proposal(bare_block(1).block));
            cp.ids = vec![Hash([3; 32]); n];
            cp
        };
        type Make<'a> = Box<dyn Fn(usize) -> Message + 'a>;
        let cases: Vec<(&str, usize, Make)> = vec![
            ("transactions in a proposal", MAX_BLOCK_TXS, Box::new(|n| Message::Proposal(proposal(with_txs(n, &[1]))))),
            (
                "approvals in a proposal",
                MAX_CHANGES_PER_BLOCK,
                Box::new(|n| Message::Proposal(proposal(with_changes(n)))),
            ),
            ("blocks in a response", MAX_SYNC_BATCH_BLOCKS, Box::new(|n| Message::Blocks(vec![bare_block(1); n]))),
            (
                "transactions in a synced block",
                MAX_BLOCK_TXS,
                Box::new(|n| {
                    let mut c = bare_block(1);
                    c.block = with_txs(n, &[]);
                    Message::Blocks(vec![c])
                }),
            ),
            ("precommits in a certificate", MAX_MEMBERS, Box::new(|n| Message::Blocks(vec![with_precommits(n)]))),
            ("ids in a compact proposal", MAX_BLOCK_TXS, Box::new(|n| Message::CompactProposal(compact(n)))),
            (
                "ids in a request",
                MAX_BLOCK_TXS,
                Box::new(|n| Message::GetTxs { height: 1, round: 0, ids: vec![Hash([4; 32]); n] }),
            ),
            ("transactions in an answer", MAX_BLOCK_TXS, Box::new(|n| Message::Txs(vec![vec![]; n]))),
        ];
        for (what, max, make) in &cases {
            let at = make(*max);
            assert_eq!(decode_body::<Message>(&encode(&at)[4..]).unwrap(), at, "{what}: {max} decode");
            let past = encode(&make(max + 1));
            let (result, _, allocated) = probe::during(|| decode_body::<Message>(&past[4..]));
            assert!(matches!(result, Err(FrameError::TooMany(_))), "{what}: {:?}", result.map(|_| "decoded"));
            assert!(allocated < 64 * 1024, "{what}: {allocated} bytes allocated to refuse {} of them", max + 1);
        }
        // The densest frames of all, written by hand: 4 million empty
        // transactions in a 4 MiB answer, 1.5 million 1-byte ones in a 3 MiB
        // proposal (as many bytes as the proposal's limit allows).
        let n = 4_000_000u32;
        let answer = [&[Kind::TXS, 252][..], &n.to_be_bytes()[..], &vec![0u8; n as usize][..]].concat();
        let dense_proposal = encode(&Message::Proposal(proposal(with_txs(1_500_000, &[1]))));
        for (what, body) in [("answer", &answer[..]), ("proposal", &dense_proposal[4..])] {
            assert!(body.len() <= Message::limit(body[0]).unwrap(), "{what}: within its kind's limit");
            let (result, largest, allocated) = probe::during(|| decode_body::<Message>(body));
            let Err(err) = result else { panic!("{what}: decoded, {allocated} bytes allocated") };
            assert!(matches!(err, FrameError::TooMany(_)), "{what}: {err}");
            assert_eq!(crate::net::frame_error_code(&err), crate::net::Close::MALFORMED_FRAME);
            assert!(allocated < 64 * 1024, "{what}: {allocated} bytes allocated in all, the largest {largest}");
        }
    }

    #[test]
    fn body_len_matches_encoding() {
        let m = Message::Data(vec![3; 300]);
        assert_eq!(body_len(&m) + 4, encode(&m).len());
    }
}
