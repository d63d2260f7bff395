//! Hostile or broken input gets an error response or a closed connection, and the proxy keeps
//! serving everyone else.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Sends `bytes` and returns whatever comes back before the connection closes (or 5 s pass).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    buf
}

fn status_line(buf: &[u8]) -> String {
    String::from_utf8_lossy(buf).lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_malformed_input_do_not_hurt_other_clients() {
    let mesh = Mesh::start(&[]).await;
    let out = mesh.a.outbound(0);
    let good = || async { fresh_client().get(mesh.url("/")).send().await.map(|r| r.status().as_u16()) };
    assert_eq!(good().await.unwrap(), 200);

    // Keep a healthy client running throughout.
    let steady = tokio::spawn(drive(mesh.url("/"), Duration::from_secs(3), true, 1));

    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let reply = exchange(out, &garbage).await;
    assert!(reply.is_empty() || status_line(&reply).starts_with("HTTP/1.1 4"), "garbage: {:?}", status_line(&reply));

    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 200 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let reply = exchange(out, &big).await;
    assert!(reply.is_empty() || status_line(&reply).starts_with("HTTP/1.1 431"), "oversized: {:?}", status_line(&reply));

    let reply = exchange(out, b"GET / HTTP/1.1\r\nthis is not a header\r\n\r\n").await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 400"), "malformed: {:?}", status_line(&reply));

    let reply = exchange(out, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n").await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 400"), "bad length: {:?}", status_line(&reply));

    // Garbage straight at the inbound port: closed without a reply.
    assert!(exchange(mesh.b.addr("inbound"), &garbage).await.is_empty());
    // A TLS record header followed by junk: the handshake fails, the connection closes.
    assert!(exchange(mesh.b.addr("inbound"), b"\x16\x03\x01\x00\x05junkjunkjunk").await.is_empty());
    // A client that connects and says nothing does not block others.
    let _idle = TcpStream::connect(out).await.unwrap();

    let (ok, failed) = steady.await.unwrap();
    assert!(ok > 10 && failed.is_empty(), "steady client: {ok} ok, failures {failed:?}");
    assert_eq!(good().await.unwrap(), 200);
    for p in [&mesh.a, &mesh.b] {
        assert!(p.child.id() > 0);
        assert_eq!(reqwest::get(format!("http://{}/live", p.addr("admin"))).await.unwrap().status(), 200);
    }
}
