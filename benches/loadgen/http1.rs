//! A minimal HTTP/1.1 keep-alive client for the load generator: one
//! request at a time per connection, written in one write, and its answer
//! read whole on the caller's own task (a `Content-Length` body; none for
//! 1xx, 204 and 304; chunked answers are refused as an error).
//!
//! Minimal on purpose: the client has one core. hyper's client (a task per
//! connection, a channel between caller and connection, header maps built
//! and parsed per request) used all of it at 65,000 to 100,000 requests per
//! second, which left even the bare baseline server half idle.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection and its buffers.
pub struct Conn {
    stream: TcpStream,
    /// The `Host` header's value.
    host: String,
    /// The request being written.
    out: Vec<u8>,
    /// The answer being read.
    input: Vec<u8>,
}

/// A connection shared by clones, used by one caller at a time.
pub type Connection = Arc<tokio::sync::Mutex<Conn>>;

/// An answer read whole.
pub struct Answer {
    /// Its status code.
    pub status: u16,
    /// Its status line and headers, up to the empty line.
    head: Vec<u8>,
    /// Its body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The first header `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.head, name)
    }

    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The first header `name` (any case) of a head, trimmed.
fn header_in<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(head)
        .ok()?
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(field, _)| field.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
}

/// `count` connections to `addr`, TCP_NODELAY on.
pub async fn connect(addr: SocketAddr, count: usize) -> Vec<Connection> {
    let mut connections = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the HTTP server");
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        connections.push(Arc::new(tokio::sync::Mutex::new(Conn {
            stream,
            host: addr.to_string(),
            out: Vec::with_capacity(512),
            input: Vec::with_capacity(4096),
        })));
    }
    connections
}

/// Where `needle` first starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Sends `method path` with `headers` and `body` (a `Content-Length` is
/// added for a body, and for any `POST`) on `connection`, and reads the
/// answer whole.
pub async fn exchange(
    connection: &Connection,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, String> {
    let mut conn = connection.lock().await;
    let conn = &mut *conn;
    conn.out.clear();
    for part in [method, " ", path, " HTTP/1.1\r\nHost: ", &conn.host, "\r\n"] {
        conn.out.extend_from_slice(part.as_bytes());
    }
    for (name, value) in headers {
        for part in [name, ": ", value, "\r\n"] {
            conn.out.extend_from_slice(part.as_bytes());
        }
    }
    if !body.is_empty() || method == "POST" {
        conn.out
            .extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    conn.out.extend_from_slice(b"\r\n");
    conn.out.extend_from_slice(body);
    conn.stream
        .write_all(&conn.out)
        .await
        .map_err(|err| format!("write: {err}"))?;

    conn.input.clear();
    let head_end = loop {
        if let Some(end) = find(&conn.input, b"\r\n\r\n") {
            break end + 4;
        }
        read_more(conn).await?;
    };
    let head = &conn.input[..head_end];
    let status: u16 = head
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP/1.1 answer: {:?}",
                String::from_utf8_lossy(&head[..head.len().min(80)])
            )
        })?;
    if header_in(head, "transfer-encoding").is_some() {
        return Err("a chunked answer: this client reads Content-Length bodies only".into());
    }
    let body_len = if (100..200).contains(&status) || status == 204 || status == 304 {
        0
    } else {
        header_in(head, "content-length")
            .and_then(|length| length.parse::<usize>().ok())
            .ok_or("an answer without Content-Length")?
    };
    while conn.input.len() < head_end + body_len {
        read_more(conn).await?;
    }
    if conn.input.len() > head_end + body_len {
        return Err("more bytes than the answer".into());
    }
    Ok(Answer {
        status,
        head: conn.input[..head_end].to_vec(),
        body: conn.input[head_end..].to_vec(),
    })
}

/// Reads what the server has sent into `conn.input`; an error at the end
/// of the stream.
async fn read_more(conn: &mut Conn) -> Result<(), String> {
    conn.input.reserve(4096);
    match conn.stream.read_buf(&mut conn.input).await {
        Ok(0) => Err("the server closed the connection".into()),
        Ok(_) => Ok(()),
        Err(err) => Err(format!("read: {err}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn headers_are_found_in_any_case() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nETag: \"ab\"\r\n\r\n";
        assert_eq!(super::header_in(head, "Content-Length"), Some("5"));
        assert_eq!(super::header_in(head, "etag"), Some("\"ab\""));
        assert_eq!(super::header_in(head, "x-none"), None);
    }
}
