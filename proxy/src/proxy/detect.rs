//! Protocol detection: peeks at the first bytes a client sends to choose HTTP/1.1, HTTP/2 or
//! opaque TCP, then replays those bytes. Undecidable or silent streams are opaque; detection never
//! fails a connection by itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Past this many bytes without a complete request line, hand over to the HTTP parser anyway:
/// it answers an over-long line with an error status, which is what a client should see.
const MAX_PEEK: usize = 16 * 1024;

/// `None` while more bytes are needed to decide.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return None;
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    let method = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method == buf.len() && method < 16 {
        return None;
    }
    if method == 0 || method >= 16 || buf[method] != b' ' {
        return Some(Protocol::Opaque);
    }
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = &buf[..end];
            if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
                Some(Protocol::Http1)
            } else {
                Some(Protocol::Opaque)
            }
        }
        None if buf.len() >= MAX_PEEK => Some(Protocol::Http1),
        None => None,
    }
}

/// Reads until the protocol is known, EOF, or `timeout`; returns the bytes read so far.
pub async fn detect<T: AsyncRead + Unpin>(io: &mut T, timeout: Duration) -> io::Result<(Protocol, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(p) = classify(&buf) {
            return Ok((p, buf.freeze()));
        }
        if buf.len() >= MAX_PEEK {
            return Ok((Protocol::Opaque, buf.freeze()));
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// An IO that first yields `prefix` (the bytes detection consumed), then the inner stream.
pub struct PrefixedIo<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> PrefixedIo<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefixedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_http_and_everything_else() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"POST /x HTTP/1.0\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTT"), None);
        assert_eq!(classify(b"GET / HTT"), None);
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"\x16\x03\x01\x02"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET / SMTP\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"hello"), Some(Protocol::Opaque));
        assert_eq!(classify(b"AAAAAAAAAAAAAAAAAAAAAA"), Some(Protocol::Opaque));
    }

    #[tokio::test]
    async fn silent_client_is_opaque_after_timeout_and_bytes_replay() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let (p, prefix) = detect(&mut a, Duration::from_millis(20)).await.unwrap();
        assert_eq!((p, prefix.len()), (Protocol::Opaque, 0));
        tokio::io::AsyncWriteExt::write_all(&mut b, b"GET / HTTP/1.1\r\nrest").await.unwrap();
        let (p, prefix) = detect(&mut a, Duration::from_secs(1)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        let mut io = PrefixedIo::new(prefix, a);
        let mut out = vec![0u8; 20];
        io.read_exact(&mut out).await.unwrap();
        assert_eq!(&out, b"GET / HTTP/1.1\r\nrest");
    }
}
