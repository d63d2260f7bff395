//! Protocol detection end to end: HTTP/2 is proxied (and measured) as HTTP, anything else as
//! opaque TCP with byte counts.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// An app that answers HTTP/1.1 and HTTP/2 (prior knowledge) alike.
async fn spawn_h2_app() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let v = format!("{:?}", req.version());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(v))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_proxied_as_http_and_measured() {
    let pki = Pki::new();
    let controller = spawn_controller(&pki, &[]);
    let app = spawn_h2_app().await;
    let b = spawn_proxy(&pki, &controller, "tok-b", app, &[], &[]);
    let a = client_proxy(&pki, &controller, app, &b).await;

    let tcp = TcpStream::connect(a.outbound(0)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for _ in 0..5 {
        let req = hyper::Request::get("http://app.test/").body(Full::new(Bytes::new())).unwrap();
        streams.push(send.send_request(req)); // concurrent streams on one connection
    }
    for s in streams {
        let resp = s.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "HTTP/2.0", "the app saw HTTP/2");
    }
    let m = metrics(&b).await;
    assert_eq!(metric(&m, "response_total", &[("direction", "inbound"), ("authority", "app.test"), ("status_code", "200")]), 5.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_protocols_are_forwarded_as_opaque_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let pki = Pki::new();
    let controller = spawn_controller(&pki, &[]);
    let b = spawn_proxy(&pki, &controller, "tok-b", echo, &[], &[]);
    let a = client_proxy(&pki, &controller, echo, &b).await;

    let mut tcp = TcpStream::connect(a.outbound(0)).await.unwrap();
    let msg = b"\x00\x01binary protocol hello\xff";
    tcp.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, msg);
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = metrics(&b).await;
    let d = [("direction", "inbound"), ("peer", "src")];
    assert_eq!(metric(&m, "tcp_read_bytes_total", &d), msg.len() as f64, "{m}");
    assert_eq!(metric(&m, "tcp_write_bytes_total", &d), msg.len() as f64);
    assert_eq!(metric(&m, "request_total", &[]), 0.0, "not counted as HTTP");
}
