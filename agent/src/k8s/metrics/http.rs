//! The scrape's HTTP/1.1 client: one kept-alive connection per proxy, idle as a bare socket (a
//! few hundred bytes) instead of a pooled hyper connection, whose fixed 8 KB write buffer and
//! 8 KB read buffer made 5,000 idle proxies cost the agent ~70 MB. It speaks only what a scrape
//! needs (GET; Content-Length, chunked or close-delimited bodies) and never follows redirects.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// Idle connections by proxy address, at most one each (a round scrapes a proxy once).
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, TcpStream>>,
}

impl Pool {
    /// `GET path` on `addr` within `timeout` (connect included); the body of a 2xx response.
    pub async fn get(&self, addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, FetchError> {
        tokio::time::timeout(timeout, self.get_within(addr, path)).await.map_err(|_| FetchError::Timeout)?
    }

    async fn get_within(&self, addr: SocketAddr, path: &str) -> Result<String, FetchError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).remove(&addr);
        if let Some(stream) = idle {
            match exchange(stream, addr, path).await {
                Ok(r) => return self.finish(addr, r),
                // The proxy closed the idle connection before answering: a GET is safe to
                // repeat on a new one.
                Err(Failure::Stale) => {}
                Err(Failure::Fatal(e)) => return Err(e),
            }
        }
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        match exchange(stream, addr, path).await {
            Ok(r) => self.finish(addr, r),
            Err(Failure::Stale) => Err(FetchError::Malformed("connection closed without a response")),
            Err(Failure::Fatal(e)) => Err(e),
        }
    }

    fn finish(&self, addr: SocketAddr, r: Response) -> Result<String, FetchError> {
        if let Some(stream) = r.reusable {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).insert(addr, stream);
        }
        if !(200..300).contains(&r.status) {
            return Err(FetchError::Status(r.status));
        }
        Ok(String::from_utf8(r.body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// Closes idle connections to proxies that are no longer scraped.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).retain(|a, _| keep(a));
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
    /// The connection, when it can carry the next request.
    reusable: Option<TcpStream>,
}

enum Failure {
    /// Nothing of a response arrived: the connection was closed or reset.
    Stale,
    Fatal(FetchError),
}

impl<E: Into<FetchError>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Fatal(e.into())
    }
}

async fn exchange(mut stream: TcpStream, addr: SocketAddr, path: &str) -> Result<Response, Failure> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nUser-Agent: meshfleet-agent\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return Err(Failure::Stale);
    }
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let head_end = loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) if buf.is_empty() => return Err(Failure::Stale),
            Ok(0) => return Err(FetchError::Malformed("response head cut short").into()),
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(FetchError::Malformed("response head too large").into());
        }
    };
    let head = Head::parse(&buf[..head_end])?;
    let mut r = Reader { stream, buf, pos: head_end };
    let (body, reusable) = if head.chunked {
        (r.chunked().await?, head.keep_alive)
    } else if let Some(len) = head.content_length {
        if len > MAX_BODY {
            return Err(FetchError::Malformed("body too large").into());
        }
        r.fill(len).await?;
        let body = r.buf[r.pos..r.pos + len].to_vec();
        r.pos += len;
        (body, head.keep_alive)
    } else {
        (r.until_close().await?, false)
    };
    // Leftover bytes would belong to no request: such a connection is not reused.
    let reusable = (reusable && r.pos == r.buf.len()).then_some(r.stream);
    Ok(Response { status: head.status, body, reusable })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    keep_alive: bool,
}

impl Head {
    fn parse(raw: &[u8]) -> Result<Head, FetchError> {
        let text = std::str::from_utf8(raw).map_err(|_| FetchError::Malformed("response head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status = parts.next().and_then(|s| s.parse::<u16>().ok()).ok_or(FetchError::Malformed("bad status line"))?;
        if !version.starts_with("HTTP/1.") {
            return Err(FetchError::Malformed("not HTTP/1.x"));
        }
        let mut head = Head { status, content_length: None, chunked: false, keep_alive: version == "HTTP/1.1" };
        for line in lines.filter(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else { return Err(FetchError::Malformed("bad header line")) };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.content_length = Some(value.parse().map_err(|_| FetchError::Malformed("bad content-length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = value.rsplit(',').next().is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        head.keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") && version == "HTTP/1.0" {
                        head.keep_alive = true;
                    }
                }
            }
        }
        // A response without a body by definition (RFC 9112 6.3).
        if status == 204 || status == 304 || (100..200).contains(&status) {
            head.content_length = Some(0);
            head.chunked = false;
        }
        Ok(head)
    }
}

/// The response bytes read so far and the parse position in them.
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Reader {
    /// Reads until `n` bytes are available after `pos`.
    async fn fill(&mut self, n: usize) -> Result<(), FetchError> {
        while self.buf.len() - self.pos < n {
            self.buf.reserve((n - (self.buf.len() - self.pos)).min(64 * 1024));
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(FetchError::Malformed("body cut short"));
            }
        }
        Ok(())
    }

    /// The next CRLF-terminated line, without the CRLF.
    async fn line(&mut self) -> Result<String, FetchError> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.buf.len() - self.pos > MAX_HEAD {
                return Err(FetchError::Malformed("chunk line too long"));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(FetchError::Malformed("body cut short"));
            }
        }
    }

    async fn chunked(&mut self) -> Result<Vec<u8>, FetchError> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| FetchError::Malformed("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            // Compared without adding: a hostile size near usize::MAX must not overflow.
            if size > MAX_BODY - body.len() {
                return Err(FetchError::Malformed("body too large"));
            }
            self.fill(size + 2).await?;
            body.extend_from_slice(&self.buf[self.pos..self.pos + size]);
            if &self.buf[self.pos + size..self.pos + size + 2] != b"\r\n" {
                return Err(FetchError::Malformed("chunk without CRLF"));
            }
            self.pos += size + 2;
            // Bytes already consumed are dropped so a long chunked body is not held twice.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    async fn until_close(&mut self) -> Result<Vec<u8>, FetchError> {
        loop {
            if self.buf.len() - self.pos > MAX_BODY {
                return Err(FetchError::Malformed("body too large"));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                let body = self.buf[self.pos..].to_vec();
                self.pos = self.buf.len();
                return Ok(body);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves each accepted connection the given responses in turn, one per request head read.
    async fn server(responses: Vec<&'static str>) -> (SocketAddr, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut accepted = 0;
            let mut responses = responses.into_iter();
            loop {
                let Ok((mut s, _)) = listener.accept().await else { break };
                accepted += 1;
                loop {
                    let mut buf = Vec::new();
                    while find(&buf, b"\r\n\r\n").is_none() {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if buf.is_empty() {
                        break;
                    }
                    let Some(r) = responses.next() else { return accepted };
                    s.write_all(r.as_bytes()).await.unwrap();
                    if r.contains("Connection: close") || r.starts_with("CLOSE") {
                        break;
                    }
                }
            }
            accepted
        });
        (addr, task)
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn keeps_one_connection_across_requests_and_decodes_bodies() {
        let (addr, task) = server(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\nno",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ])
        .await;
        let pool = Pool::default();
        assert_eq!(pool.get(addr, "/metrics", T).await.unwrap(), "hello");
        assert_eq!(pool.idle(), 1);
        assert_eq!(pool.get(addr, "/metrics", T).await.unwrap(), "abcde");
        assert!(matches!(pool.get(addr, "/metrics", T).await, Err(FetchError::Status(500))));
        assert_eq!(pool.get(addr, "/metrics", T).await.unwrap(), "ok");
        assert_eq!(pool.idle(), 0, "a connection the server closes is not kept");
        drop(pool);
        task.abort();
        let _ = task.await;
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced() {
        // The first connection answers once and is then closed by the server.
        let (addr, task) = server(vec!["HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"]).await;
        let pool = Pool::default();
        assert_eq!(pool.get(addr, "/", T).await.unwrap(), "a");
        // Simulate the proxy's idle timeout: close the kept socket from our side's peer by
        // swapping in a connection whose peer is gone.
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            drop(l.accept().await.unwrap());
            c
        };
        pool.idle.lock().unwrap().insert(addr, dead);
        assert_eq!(pool.get(addr, "/", T).await.unwrap(), "b");
        task.abort();
    }

    #[tokio::test]
    async fn close_delimited_bodies_and_timeouts() {
        let (addr, task) = server(vec!["HTTP/1.0 200 OK\r\n\r\nuntil close"]).await;
        let pool = Pool::default();
        // The server keeps the connection open after this response, so the close-delimited body
        // never ends: the timeout answers.
        assert!(matches!(pool.get(addr, "/", Duration::from_millis(300)).await, Err(FetchError::Timeout)));
        task.abort();
        let (addr, task) = server(vec!["CLOSE"]).await;
        assert!(pool.get(addr, "/", T).await.is_err(), "garbage is an error");
        task.abort();
    }

    #[tokio::test]
    async fn malformed_and_hostile_responses_are_errors_not_panics() {
        for response in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nx",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        ] {
            let (addr, task) = server(vec![response]).await;
            assert!(Pool::default().get(addr, "/", T).await.is_err(), "{response:?} was accepted");
            task.abort();
        }
    }
}
