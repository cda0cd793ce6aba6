//! A minimal HTTP/1.1 keep-alive client for load generators: one TCP connection, one request
//! at a time, no body sent, the answer's body read to the end and discarded.
//!
//! The API bench's load shares two cores with the cloud it measures and with Postgres, and its
//! reference (pgbench) is lean C; a general-purpose client (connection pool, header maps,
//! per-request allocations, a body stream) costs the cloud cores it would otherwise use. This
//! one writes each request with a single `write_all` from a reused buffer and parses the answer
//! in place ([`httparse`]) from another reused buffer.
//!
//! What it speaks: plain HTTP to one address (the cloud under test, on loopback), `GET` and
//! `POST` with `Content-Length: 0`, a bearer token. What it reads: a status line and headers
//! (at most [`MAX_HEAD`] bytes), then the body framed as HTTP/1.1 frames it — by
//! `Transfer-Encoding: chunked` (extensions and trailers included), by `Content-Length`, by no
//! body at all (1xx, 204, 304), or else until the server closes. Interim (1xx) answers are
//! skipped.
//!
//! The connection is kept for the next request unless the answer said `Connection: close`
//! (or was HTTP/1.0 without `keep-alive`, or was framed by the close). On any error — IO, a
//! malformed or oversized answer, the server closing early — the connection is dropped and
//! the next request connects afresh. [`Client::send`] is also safe to cancel (a timeout around
//! it, say): the connection is taken out of the client while a request is in flight, so a
//! cancelled request drops it rather than leaving half an answer for the next one to read.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response head (status line and headers, or a chunked body's trailers) accepted;
/// past it the answer is refused, rather than buffered without bound.
pub const MAX_HEAD: usize = 64 * 1024;
/// Headers (or trailers) one answer may have at most: more is refused as malformed.
const MAX_HEADERS: usize = 64;
/// The longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// The methods the load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be written as asked (it would not be valid HTTP).
    #[error("invalid request: {0}")]
    Request(&'static str),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The server closed the connection before the answer was complete.
    #[error("connection closed before the response was complete")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
}

/// One keep-alive connection to one server, opened on the first request and again after the
/// server closed it or anything went wrong.
pub struct Client {
    addr: SocketAddr,
    /// The `Host` header: the address as written (an IPv6 one in brackets).
    authority: String,
    /// `None` between connections and while a request is in flight (see the module docs).
    stream: Option<TcpStream>,
    reader: ResponseReader,
    /// The request being written, reused.
    request: Vec<u8>,
}

impl Client {
    /// A client for the server at `addr` (the bench's own cloud: there is no URL to parse);
    /// nothing is connected until the first request.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            authority: addr.to_string(),
            stream: None,
            reader: ResponseReader::default(),
            request: Vec::with_capacity(256),
        }
    }

    /// Sends `method path` with `Authorization: Bearer <token>` and no body, reads the whole
    /// answer and returns its status. On an error the connection is dropped; the next call
    /// reconnects.
    pub async fn send(&mut self, method: Method, path: &str, token: &str) -> Result<u16, Error> {
        // Checked before anything is written, so a bad argument costs no connection.
        if !path.starts_with('/') || !path.bytes().all(is_visible) {
            return Err(Error::Request(
                "the path must start with / and hold no spaces or controls",
            ));
        }
        if token.is_empty() || !token.bytes().all(is_visible) {
            return Err(Error::Request(
                "the token must be non-empty, without spaces or controls",
            ));
        }
        self.write_request(method, path, token);
        // Taken, not borrowed: should this future be dropped part-way, the connection goes with
        // it (see the module docs).
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                // Whatever is buffered belonged to the connection that is gone.
                self.reader.reset();
                self.connect().await?
            }
        };
        stream.write_all(&self.request).await?;
        let response = self.reader.read_response(&mut stream).await?;
        if response.keep_alive {
            self.stream = Some(stream);
        }
        Ok(response.status)
    }

    fn write_request(&mut self, method: Method, path: &str, token: &str) {
        let r = &mut self.request;
        r.clear();
        r.extend_from_slice(method.as_str().as_bytes());
        r.push(b' ');
        r.extend_from_slice(path.as_bytes());
        r.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        r.extend_from_slice(self.authority.as_bytes());
        r.extend_from_slice(b"\r\nAuthorization: Bearer ");
        r.extend_from_slice(token.as_bytes());
        r.extend_from_slice(b"\r\n");
        if method == Method::Post {
            // No body; without the length a server could not tell where the request ends.
            r.extend_from_slice(b"Content-Length: 0\r\n");
        }
        r.extend_from_slice(b"\r\n");
    }

    async fn connect(&self) -> Result<TcpStream, Error> {
        let connect_error = |source| Error::Connect {
            addr: self.authority.clone(),
            source,
        };
        let stream = TcpStream::connect(self.addr).await.map_err(connect_error)?;
        // Each request is one small write, answered before the next: Nagle's algorithm would
        // hold the write back waiting for an ACK that delayed ACKs delay in turn.
        stream.set_nodelay(true).map_err(connect_error)?;
        Ok(stream)
    }
}

/// Visible ASCII: what a request target and a token may hold.
fn is_visible(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// One answer, read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Response {
    status: u16,
    /// Whether the connection may carry the next request.
    keep_alive: bool,
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body whatever the headers say (204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// When the server closes the connection.
    UntilClose,
}

/// What the head of an answer says.
#[derive(Debug, Clone, Copy)]
struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

/// Reads answers from one connection into a buffer kept across them (and across connections:
/// it is [`reset`](Self::reset), not dropped). `buf[pos..]` is what was read and not yet
/// consumed; bytes past the end of one answer stay for the next.
#[derive(Debug, Default)]
struct ResponseReader {
    buf: Vec<u8>,
    pos: usize,
}

impl ResponseReader {
    fn reset(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads one whole answer (interim 1xx answers before it skipped), body discarded.
    async fn read_response<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Response, Error> {
        loop {
            let head = self.read_head(r).await?;
            match head.status {
                // We never ask to switch protocols; what follows would not be HTTP/1.1.
                101 => return Err(Error::Malformed("unasked-for 101 Switching Protocols")),
                // Interim (100 Continue, 103 Early Hints): the answer is still to come.
                100..=199 => continue,
                _ => {}
            }
            self.skip_body(r, head.framing).await?;
            return Ok(Response {
                status: head.status,
                keep_alive: head.keep_alive,
            });
        }
    }

    async fn read_head<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Head, Error> {
        loop {
            if !self.unread().is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(self.unread()) {
                    Ok(httparse::Status::Complete(len)) => {
                        if len > MAX_HEAD {
                            return Err(Error::HeadTooLarge);
                        }
                        let head = head_of(&response)?;
                        self.pos += len;
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(Error::Malformed("too many headers"));
                    }
                    Err(httparse::Error::Status | httparse::Error::Version) => {
                        return Err(Error::Malformed("not an HTTP/1.x status line"));
                    }
                    Err(_) => return Err(Error::Malformed("invalid header")),
                }
            }
            if self.unread().len() >= MAX_HEAD {
                return Err(Error::HeadTooLarge);
            }
            self.fill(r).await?;
        }
    }

    async fn skip_body<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        framing: Framing,
    ) -> Result<(), Error> {
        match framing {
            Framing::Empty => Ok(()),
            Framing::Length(n) => self.skip(r, n).await,
            Framing::Chunked => self.skip_chunked(r).await,
            Framing::UntilClose => loop {
                self.reset();
                self.buf.reserve(READ_CHUNK);
                if r.read_buf(&mut self.buf).await? == 0 {
                    self.reset();
                    return Ok(());
                }
            },
        }
    }

    /// A chunked body: `size[;ext]\r\n data \r\n` until size 0, then trailers and `\r\n`.
    async fn skip_chunked<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<(), Error> {
        loop {
            let size = loop {
                match httparse::parse_chunk_size(self.unread()) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        self.pos += len;
                        break size;
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.unread().len() >= MAX_CHUNK_LINE {
                            return Err(Error::Malformed("chunk-size line too long"));
                        }
                        self.fill(r).await?;
                    }
                    Err(httparse::InvalidChunkSize) => {
                        return Err(Error::Malformed("invalid chunk size"));
                    }
                }
            };
            if size == 0 {
                return self.skip_trailers(r).await;
            }
            self.skip(r, size).await?;
            self.expect_crlf(r).await?;
        }
    }

    /// The trailer section after the last chunk: header lines, then an empty line.
    async fn skip_trailers<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<(), Error> {
        loop {
            let mut trailers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(self.unread(), &mut trailers) {
                Ok(httparse::Status::Complete((len, _))) => {
                    if len > MAX_HEAD {
                        return Err(Error::HeadTooLarge);
                    }
                    self.pos += len;
                    return Ok(());
                }
                Ok(httparse::Status::Partial) => {
                    if self.unread().len() >= MAX_HEAD {
                        return Err(Error::HeadTooLarge);
                    }
                    self.fill(r).await?;
                }
                Err(_) => return Err(Error::Malformed("invalid trailer")),
            }
        }
    }

    async fn expect_crlf<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<(), Error> {
        while self.unread().len() < 2 {
            self.fill(r).await?;
        }
        if !self.unread().starts_with(b"\r\n") {
            return Err(Error::Malformed("chunk data not followed by CRLF"));
        }
        self.pos += 2;
        Ok(())
    }

    /// Consumes `n` bytes, buffered or still to come.
    async fn skip<R: AsyncRead + Unpin>(&mut self, r: &mut R, n: u64) -> Result<(), Error> {
        let mut left = n;
        loop {
            // At most `left`, which then fits in usize since `unread().len()` does.
            let take = left.min(self.unread().len() as u64);
            self.pos += take as usize;
            left -= take;
            if left == 0 {
                return Ok(());
            }
            self.fill(r).await?;
        }
    }

    /// Reads more: at least one byte, or [`Error::Closed`] at end of stream.
    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<(), Error> {
        // What was consumed goes; what was not moves to the front (usually nothing, or a few
        // bytes of a head or chunk line split across reads).
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.buf.reserve(READ_CHUNK);
        if r.read_buf(&mut self.buf).await? == 0 {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

/// The status, framing and connection persistence an answer's head states (RFC 9112 §6.3,
/// §9.3).
fn head_of(response: &httparse::Response<'_, '_>) -> Result<Head, Error> {
    // `parse` answered Complete, so both are set; still, not unwrapped: they are network input.
    let status = response.code.ok_or(Error::Malformed("no status code"))?;
    let version = response
        .version
        .ok_or(Error::Malformed("no HTTP version"))?;
    if !(100..=999).contains(&status) {
        return Err(Error::Malformed("status code out of range"));
    }
    let mut content_length = None;
    let mut transfer_encoded = false;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(header.value)
                .ok_or(Error::Malformed("invalid Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(Error::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoded = true;
            // Only the final coding decides: chunked must be last to frame the body.
            chunked = tokens(header.value)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(header.value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let framing = if status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if transfer_encoded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let keep_alive = !close
        && (version == 1 || keep_alive_token)
        && framing != Framing::UntilClose
        // Both framings at once: a sign of request smuggling; not a connection to reuse.
        && !(transfer_encoded && content_length.is_some());
    Ok(Head {
        status,
        framing,
        keep_alive,
    })
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Digits only (`u64::from_str` would take a `+`), without overflow.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0_u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;
    use tokio::net::TcpListener;

    use super::*;

    /// A reader that hands out at most `step` bytes per read, then end of stream.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Trickle {
        fn new(data: impl AsRef<[u8]>, step: usize) -> Self {
            Self {
                data: data.as_ref().to_vec(),
                pos: 0,
                step,
            }
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this
                .step
                .min(this.data.len() - this.pos)
                .min(buf.remaining());
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Reads answers from `data` in reads of `step` bytes until one fails or `count` are read.
    async fn read_all(data: &[u8], step: usize, count: usize) -> Vec<Result<Response, Error>> {
        let mut reader = ResponseReader::default();
        let mut input = Trickle::new(data, step);
        let mut out = Vec::new();
        for _ in 0..count {
            let answer = reader.read_response(&mut input).await;
            let failed = answer.is_err();
            out.push(answer);
            if failed {
                break;
            }
        }
        out
    }

    async fn read_one(data: &[u8]) -> Result<Response, Error> {
        ResponseReader::default()
            .read_response(&mut Trickle::new(data, usize::MAX))
            .await
    }

    fn kept(status: u16) -> Response {
        Response {
            status,
            keep_alive: true,
        }
    }

    fn closing(status: u16) -> Response {
        Response {
            status,
            keep_alive: false,
        }
    }

    const CONTENT_LENGTH: &[u8] =
        b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"id\":\"x\"}\n";
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=value;other\r\nhello\r\n\
        A ; spaced-ext\r\n0123456789\r\n\
        0;last\r\nExpires: never\r\nX-Checksum: abc\r\n\r\n";
    const CLOSE: &[u8] =
        b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno";

    /// The three answers above, back to back, then a fourth to show where the third ended.
    fn sequence() -> Vec<u8> {
        [
            CONTENT_LENGTH,
            CHUNKED,
            CLOSE,
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ]
        .concat()
    }

    #[tokio::test]
    async fn a_content_length_body_is_read_exactly() {
        let data = [
            CONTENT_LENGTH,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ]
        .concat();
        let answers = read_all(&data, usize::MAX, 2).await;
        assert!(matches!(answers[..], [Ok(a), Ok(b)] if a == kept(201) && b == kept(200)));
    }

    #[tokio::test]
    async fn a_chunked_body_with_extensions_and_trailers_is_read_exactly() {
        let data = [
            CHUNKED,
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        ]
        .concat();
        let answers = read_all(&data, usize::MAX, 2).await;
        assert!(matches!(answers[..], [Ok(a), Ok(b)] if a == kept(200) && b == kept(202)));
        // Without trailers, in upper case hex, one chunk larger than a read.
        let big = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3FFF\r\n{}\r\n0\r\n\r\n",
            "x".repeat(0x3fff)
        );
        let data = [big.as_bytes(), CONTENT_LENGTH].concat();
        let answers = read_all(&data, 1000, 2).await;
        assert!(matches!(answers[..], [Ok(a), Ok(b)] if a == kept(200) && b == kept(201)));
    }

    #[tokio::test]
    async fn connection_close_ends_the_connection() {
        assert_eq!(read_one(CLOSE).await.ok(), Some(closing(429)));
        // Case and other tokens do not hide it.
        let data = b"HTTP/1.1 200 OK\r\nconnection: Upgrade, CLOSE\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(read_one(data).await.ok(), Some(closing(200)));
        // HTTP/1.0 closes unless it says keep-alive.
        let data = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(read_one(data).await.ok(), Some(closing(200)));
        let data = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(read_one(data).await.ok(), Some(kept(200)));
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close() {
        let data = b"HTTP/1.1 200 OK\r\n\r\nall of this is body, HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(read_one(data).await.ok(), Some(closing(200)));
        // A coding other than chunked last: framed by the close, too.
        let data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello";
        assert_eq!(read_one(data).await.ok(), Some(closing(200)));
    }

    #[tokio::test]
    async fn no_content_and_interim_answers_have_no_body() {
        let data = [
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"[..],
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\n\r\n",
        ]
        .concat();
        let answers = read_all(&data, usize::MAX, 2).await;
        assert!(matches!(answers[..], [Ok(a), Ok(b)] if a == kept(204) && b == kept(304)));
    }

    #[tokio::test]
    async fn answers_split_into_single_bytes_read_as_whole_ones() {
        let expected = [kept(201), kept(200), closing(429), kept(204)];
        for step in [1, 2, 3, 7, 64] {
            let answers = read_all(&sequence(), step, 4).await;
            let answers: Vec<_> = answers.into_iter().map(Result::ok).collect();
            assert_eq!(answers, expected.map(Some), "reads of {step} bytes");
        }
    }

    #[tokio::test]
    async fn answers_through_a_pipe_in_pieces_read_as_whole_ones() {
        let (mut server, mut client) = tokio::io::duplex(16);
        let writer = tokio::spawn(async move {
            for piece in sequence().chunks(5) {
                server.write_all(piece).await?;
                tokio::task::yield_now().await;
            }
            io::Result::Ok(())
        });
        let mut reader = ResponseReader::default();
        for expected in [kept(201), kept(200), closing(429), kept(204)] {
            assert_eq!(reader.read_response(&mut client).await.ok(), Some(expected));
        }
        assert!(matches!(writer.await, Ok(Ok(()))));
    }

    #[tokio::test]
    async fn a_malformed_status_line_is_refused() {
        for data in [
            &b"HTTP/1.1 abc OK\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"\0\0\0\0\r\n\r\n",
        ] {
            let answer = read_one(data).await;
            assert!(
                matches!(answer, Err(Error::Malformed(_))),
                "{:?}: {answer:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[tokio::test]
    async fn malformed_framing_is_refused() {
        for data in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            let answer = read_one(data).await;
            assert!(
                matches!(answer, Err(Error::Malformed(_))),
                "{:?}: {answer:?}",
                String::from_utf8_lossy(data)
            );
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            read_one(many.as_bytes()).await,
            Err(Error::Malformed("too many headers"))
        ));
    }

    #[tokio::test]
    async fn oversized_heads_are_refused_without_buffering_them_all() {
        // One endless header: no line end ever comes.
        let endless = [
            &b"HTTP/1.1 200 OK\r\nX-Long: "[..],
            &vec![b'a'; 4 * MAX_HEAD],
        ]
        .concat();
        let mut reader = ResponseReader::default();
        let answer = reader
            .read_response(&mut Trickle::new(&endless, 1000))
            .await;
        assert!(matches!(answer, Err(Error::HeadTooLarge)), "{answer:?}");
        assert!(reader.buf.len() < MAX_HEAD + READ_CHUNK);
        // Complete, but too large, arriving in one read.
        let whole = format!(
            "HTTP/1.1 200 OK\r\nX-Long: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let answer = read_all(whole.as_bytes(), usize::MAX, 1).await;
        assert!(matches!(answer[..], [Err(Error::HeadTooLarge)]));
        // Trailers are bounded too.
        let trailers = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Long: {}",
            "a".repeat(2 * MAX_HEAD)
        );
        let answer = read_all(trailers.as_bytes(), 1000, 1).await;
        assert!(matches!(answer[..], [Err(Error::HeadTooLarge)]));
        // So is a chunk-size line.
        let line = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;{}",
            "e".repeat(2 * MAX_CHUNK_LINE)
        );
        let answer = read_all(line.as_bytes(), 1000, 1).await;
        assert!(matches!(answer[..], [Err(Error::Malformed(_))]));
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_an_error() {
        for data in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nExpires: never\r\n",
        ] {
            let answer = read_one(data).await;
            assert!(
                matches!(answer, Err(Error::Closed)),
                "{:?}: {answer:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn requests_are_written_as_asked() {
        let mut client = Client::new(SocketAddr::from(([127, 0, 0, 1], 8080)));
        client.write_request(Method::Post, "/v1/users/u/credit-offers", "tok");
        assert_eq!(
            client.request,
            b"POST /v1/users/u/credit-offers HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
              Authorization: Bearer tok\r\nContent-Length: 0\r\n\r\n"
        );
        client.write_request(Method::Get, "/v1/users/u", "tok");
        assert_eq!(
            client.request,
            b"GET /v1/users/u HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
              Authorization: Bearer tok\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn requests_that_would_not_be_http_are_refused_unsent() {
        // Port 9 (discard): nothing is connected to for these.
        let mut client = Client::new(SocketAddr::from(([127, 0, 0, 1], 9)));
        for (path, token) in [
            ("/a b", "t"),
            ("/a\r\nX: y", "t"),
            ("a", "t"),
            ("", "t"),
            ("/a", ""),
            ("/a", "t\r\nX: y"),
            ("/a", "t t"),
        ] {
            let sent = client.send(Method::Get, path, token).await;
            assert!(matches!(sent, Err(Error::Request(_))), "{path:?} {token:?}");
        }
    }

    /// A server on loopback that answers each request with `answer(n)` (n counting from 0 over
    /// all connections); returns its base URL, its request log and its accept count.
    async fn server(
        answer: fn(usize) -> &'static [u8],
    ) -> (
        SocketAddr,
        Arc<std::sync::Mutex<Vec<String>>>,
        Arc<AtomicUsize>,
    ) {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0").await else {
            panic!("cannot listen on loopback");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("no local address");
        };
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepts = Arc::new(AtomicUsize::new(0));
        let (server_log, server_accepts) = (Arc::clone(&log), Arc::clone(&accepts));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                server_accepts.fetch_add(1, Ordering::SeqCst);
                let log = Arc::clone(&server_log);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        // One request head: no request of ours has a body.
                        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let mut more = [0; 1024];
                            match socket.read(&mut more).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&more[..n]),
                            }
                            continue;
                        };
                        let head: Vec<u8> = got.drain(..end + 4).collect();
                        let n = {
                            let Ok(mut log) = log.lock() else { return };
                            log.push(String::from_utf8_lossy(&head).into_owned());
                            log.len() - 1
                        };
                        let reply = answer(n);
                        if reply.is_empty() {
                            // An empty answer: hang up without one.
                            return;
                        }
                        if socket.write_all(reply).await.is_err() {
                            return;
                        }
                        if reply.windows(17).any(|w| w == b"Connection: close") {
                            return;
                        }
                    }
                });
            }
        });
        (addr, log, accepts)
    }

    #[tokio::test]
    async fn two_requests_share_one_connection() {
        let (url, log, accepts) = server(|n| match n {
            0 => b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\n{ }\n",
            _ => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        })
        .await;
        let mut client = Client::new(url);
        let first = client
            .send(Method::Post, "/v1/users/a/credit-offers", "tok-a")
            .await;
        let second = client.send(Method::Get, "/v1/users/b", "tok-b").await;
        assert_eq!((first.ok(), second.ok()), (Some(201), Some(200)));
        assert_eq!(
            accepts.load(Ordering::SeqCst),
            1,
            "the connection was not kept"
        );
        let Ok(log) = log.lock() else {
            panic!("the log was poisoned");
        };
        let host = url;
        assert_eq!(
            *log,
            [
                format!(
                    "POST /v1/users/a/credit-offers HTTP/1.1\r\nHost: {host}\r\n\
                     Authorization: Bearer tok-a\r\nContent-Length: 0\r\n\r\n"
                ),
                format!(
                    "GET /v1/users/b HTTP/1.1\r\nHost: {host}\r\n\
                     Authorization: Bearer tok-b\r\n\r\n"
                ),
            ]
        );
    }

    #[tokio::test]
    async fn a_closed_or_broken_connection_is_replaced_on_the_next_request() {
        let (url, _log, accepts) = server(|n| match n {
            0 => b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            // Cut off mid-body, then hung up on.
            1 => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhel",
            // No answer at all.
            2 => b"",
            _ => b"HTTP/1.1 204 No Content\r\n\r\n",
        })
        .await;
        let mut client = Client::new(url);
        assert_eq!(client.send(Method::Get, "/a", "t").await.ok(), Some(200));
        assert!(matches!(
            client.send(Method::Get, "/b", "t").await,
            Err(Error::Closed)
        ));
        assert!(matches!(
            client.send(Method::Get, "/c", "t").await,
            Err(Error::Closed)
        ));
        assert_eq!(client.send(Method::Get, "/d", "t").await.ok(), Some(204));
        assert_eq!(client.send(Method::Get, "/e", "t").await.ok(), Some(204));
        // One connection per request until the fourth, which is kept for the fifth.
        assert_eq!(accepts.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        // Bound, then closed: a port nothing listens on.
        let Ok(listener) = TcpListener::bind("127.0.0.1:0").await else {
            panic!("cannot listen on loopback");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("no local address");
        };
        drop(listener);
        let mut client = Client::new(addr);
        let sent = client.send(Method::Get, "/", "t").await;
        assert!(matches!(sent, Err(Error::Connect { .. })), "{sent:?}");
    }
}
