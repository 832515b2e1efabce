//! `ringfence promote` and `ringfence replication`: the replication admin calls, sent to a
//! node's HTTP API with the admin bearer token.
//!
//! They are not engine commands, so they have no binary-protocol form: each is one
//! `POST /v1/admin/...` over a fresh connection. The node's JSON answer is printed as it came.
//! The exit status is 0 when the node did it, 1 when it refused (the answer says why), 2 when
//! the node could not be reached or the token could not be read.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::client_cmd::admin_token;

/// How long connecting, sending and reading the answer may each take. A promotion answers in
/// milliseconds; a node that takes this long is not going to answer.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read: the admin answers are a line of JSON.
const ANSWER_LEN_MAX: usize = 64 * 1024;

/// Where to send an admin call, and with which token.
#[derive(clap::Args, Debug)]
pub struct AdminTarget {
    /// The node's HTTP API address, e.g. 127.0.0.1:7080 or localhost:7080 (an
    /// `http://` prefix, as `serve` logs the address, is accepted).
    #[arg(long = "http", value_name = "ADDR", value_parser = http_address)]
    pub http: String,
    /// Admin token file [default: RINGFENCE_ADMIN_TOKEN, else ./ringfence-data/admin.token].
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// Arguments of `ringfence promote`.
#[derive(clap::Args, Debug)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    /// Idempotency id: a retry with the id of the promotion that succeeded answers it again
    /// (200) instead of `not_standby`.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Without etcd: promote even a standby that may lack acknowledged writes (it has not
    /// caught up with its primary since it last joined, or its journal was truncated): what
    /// it lacks is lost. Without --force such a promotion is refused. With etcd it does not
    /// apply and is refused: a switchover never loses acknowledged writes.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `ringfence replication`.
#[derive(clap::Args, Debug)]
pub struct ReplicationArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    /// The ack mode to switch to.
    #[arg(long, value_enum)]
    pub mode: Mode,
}

/// The ack modes `ringfence replication --mode` takes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answers wait for the standby's durable acknowledgement.
    Sync,
    /// Answers wait for the local journal only.
    Async,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }
}

/// Promotes the standby at `--http` to primary.
pub fn promote(args: &PromoteArgs) -> ExitCode {
    let mut body = serde_json::Map::new();
    if let Some(request_id) = &args.request_id {
        body.insert("request_id".into(), request_id.as_str().into());
    }
    if args.force {
        body.insert("force".into(), true.into());
    }
    let body = serde_json::Value::Object(body).to_string();
    run("promote", &args.target, "/v1/admin/promote", &body)
}

/// Switches the ack mode of the node at `--http`.
pub fn replication(args: &ReplicationArgs) -> ExitCode {
    let body = serde_json::json!({ "mode": args.mode.name() }).to_string();
    run("replication", &args.target, "/v1/admin/replication", &body)
}

fn run(name: &str, target: &AdminTarget, path: &str, body: &str) -> ExitCode {
    let answer = admin_token(target.admin_token_file.as_ref())
        .map_err(|message| CallError { message, sent: false })
        .and_then(|token| call(&target.http, ("POST", path), Some(&token), body, TIMEOUT));
    match answer {
        Ok((status, body)) if (200..300).contains(&status) => {
            println!("{}", body.trim_end());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            println!("{}", body.trim_end());
            let error = serde_json::from_str::<serde_json::Value>(&body).ok();
            let code = error.as_ref().and_then(|e| e["error"].as_str()).unwrap_or("error");
            let message = error.as_ref().and_then(|e| e["message"].as_str()).unwrap_or("");
            eprintln!(
                "ringfence {name}: the node at {} refused: {status} {code}: {message}",
                target.http
            );
            ExitCode::FAILURE
        }
        Err(error) if error.sent => {
            eprintln!(
                "ringfence {name}: error: {error}; the request was sent, so it may have taken \
                 effect: `ringfence status --http {}` shows what the node is now",
                target.http
            );
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("ringfence {name}: error: {error}");
            ExitCode::from(2)
        }
    }
}

/// An `--http` address: `host:port`, with or without the `http://` and a trailing `/` that
/// `serve`'s log line shows.
pub(crate) fn http_address(text: &str) -> Result<String, String> {
    let address = text.strip_prefix("http://").unwrap_or(text).trim_end_matches('/');
    if address.starts_with("https://") || address.contains('/') {
        return Err(format!("`{text}`: give host:port (e.g. 127.0.0.1:7080); TLS is not served"));
    }
    Ok(address.to_owned())
}

/// Why [`call`] got no answer: the message, and whether the request was sent first (a
/// mutation sent and unanswered may have taken effect).
#[derive(Debug)]
pub(crate) struct CallError {
    message: String,
    sent: bool,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<CallError> for String {
    fn from(error: CallError) -> String {
        error.message
    }
}

/// Sends one request (`method`, `path`), with a JSON body and the bearer token if given,
/// connecting and sending each bounded by `timeout`, and the whole answer read within
/// `timeout` of the request (a node that trickles its answer cannot hold the call); returns
/// the status and the body.
pub(crate) fn call(
    addr: &str,
    (method, path): (&str, &str),
    token: Option<&str>,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), CallError> {
    let unreachable = |e: std::io::Error| CallError {
        message: format!("reaching the node at {addr}: {e}"),
        sent: false,
    };
    // Each address a name stands for in turn: `localhost` may be `::1` first.
    let (mut stream, _) = ringfence_ingress::connect_first(addr, timeout).map_err(unreachable)?;
    stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    stream.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    let authorization =
        token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let unanswered = |message: String| CallError { message, sent: true };
    // `Connection: close`: the node closes after its answer, so the answer is all there is.
    let deadline = std::time::Instant::now() + timeout;
    let response = ringfence_ingress::read_to_end_by(&mut stream, deadline, ANSWER_LEN_MAX)
        .map_err(|e| unanswered(format!("no whole answer from the node at {addr}: {e}")))?;
    if response.is_empty() {
        return Err(unanswered(format!(
            "the node at {addr} closed the connection without an answer (it may have stopped \
             or restarted)"
        )));
    }
    parse_response(&response).ok_or_else(|| {
        unanswered(format!(
            "the node at {addr} sent {} bytes that are not an HTTP answer",
            response.len()
        ))
    })
}

/// The status and body of a whole HTTP/1.1 response.
fn parse_response(bytes: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()?;
    Some((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_trickles_its_answer_cannot_hold_the_call() {
        // Goal: the timeout bounds reading the whole answer, not each read: a "node" sending
        // one byte every 20 ms is given up on at the timeout, saying so. Fails with the
        // timeout set per read: the call waits until the node stops.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            for _ in 0..1_000 {
                if stream.write_all(b"H").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let timeout = Duration::from_millis(300);
            let _ = done.send(call(&addr, ("GET", "/v1/node"), None, "", timeout));
        });
        // A liveness bound: the node trickles for 20 s.
        let called = result.recv_timeout(Duration::from_secs(15)).expect("the call returned");
        let error = called.unwrap_err();
        assert!(error.message.contains("timed out") && error.sent, "{error:?}");
    }

    #[test]
    fn a_request_sent_and_unanswered_is_told_apart_from_a_node_not_reached() {
        // Goal: a node that reads the request and closes without answering (stopping, or
        // restarting, as a promotion can make it) is said to have closed the connection, and
        // the request counts as sent (a promotion may have happened); a node not listening is
        // not reached and nothing was sent. Fails with both as "sent no HTTP answer".
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // The whole request read (its body, `{}`, ends it), so that the close is a FIN.
            let (mut request, mut chunk) = (Vec::new(), [0u8; 1024]);
            while !request.ends_with(b"{}") {
                match std::io::Read::read(&mut stream, &mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
        });
        let timeout = Duration::from_secs(10);
        let closed = call(&addr, ("POST", "/v1/admin/promote"), None, "{}", timeout).unwrap_err();
        assert!(closed.sent, "{closed:?}");
        assert!(closed.message.contains("closed the connection without an answer"), "{closed}");
        let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nobody = spare.local_addr().unwrap().to_string();
        drop(spare);
        let refused = call(&nobody, ("POST", "/v1/admin/promote"), None, "{}", timeout);
        let refused = refused.unwrap_err();
        assert!(!refused.sent && refused.message.contains("reaching the node"), "{refused:?}");
    }

    #[test]
    fn responses_give_their_status_and_body() {
        // Goal: the status line and the body are read; anything else is no answer.
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(ok), Some((200, "{}".to_owned())));
        let refused = b"HTTP/1.1 409 Conflict\r\n\r\n{\"error\":\"not_standby\"}\n";
        assert_eq!(parse_response(refused).unwrap().0, 409);
        assert_eq!(parse_response(b""), None);
        assert_eq!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n"), None);
    }

    #[test]
    fn an_http_address_is_taken_as_serve_logs_it_or_bare() {
        // Goal: the address `serve` logs (`http://127.0.0.1:7080`) can be pasted as it is;
        // a path or TLS is refused with what to give instead.
        assert_eq!(http_address("127.0.0.1:7080").unwrap(), "127.0.0.1:7080");
        assert_eq!(http_address("http://127.0.0.1:7080").unwrap(), "127.0.0.1:7080");
        assert_eq!(http_address("http://localhost:7080/").unwrap(), "localhost:7080");
        assert!(http_address("https://127.0.0.1:7080").unwrap_err().contains("host:port"));
        assert!(http_address("http://127.0.0.1:7080/v1").unwrap_err().contains("host:port"));
    }
}
