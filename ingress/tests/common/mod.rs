//! Helpers for loopback tests: a server on ephemeral ports over the production pipeline node,
//! and a tiny blocking HTTP/1.1 client.

#![allow(dead_code)]

pub mod gate;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use ringfence_core::pipeline::{EgressDriver, MemoryJournal, NoReplicator, NoSnapshots, Node};
use ringfence_core::pipeline::{NodeConfig, Topology};
use ringfence_core::{Command, Engine, EngineConfig, Sequence};
use ringfence_ingress::{Backend, BackendCompletion, NodeStatus, Refusal};
use ringfence_ingress::{HashWatch, NodeBackend, ReplicationControl, ServerConfig, ServerHandle};

pub const TOKEN: &str = "test-admin-token";

/// A server over a fresh node as `serve` runs it on a small machine (compact topology, egress
/// polled by the event loop), listening on ephemeral loopback ports.
pub fn start(config: ServerConfig) -> ServerHandle {
    start_node(config, Topology::Compact)
}

/// A server over the pipeline node (spin-then-park waits, nothing pinned, in-memory journal):
/// `Compact` with egress polled by the event loop, or `Parallel` with an egress thread.
pub fn start_node(config: ServerConfig, topology: Topology) -> ServerHandle {
    let node_config = test_node_config(topology);
    let engine = Engine::new(node_config.engine.clone());
    start_over(config, node_config, engine, None)
}

/// The node configuration the loopback servers run.
pub fn test_node_config(topology: Topology) -> NodeConfig {
    let engine =
        EngineConfig { orders_max: 65_536, request_keys_max: 65_536, ..EngineConfig::small() };
    let egress = match topology {
        Topology::Compact | Topology::Stepped => EgressDriver::Polled,
        Topology::Parallel => EgressDriver::Thread,
    };
    NodeConfig { engine, tick_period_ms: 5, egress, ..NodeConfig::for_tests(topology) }
}

/// Replication control and the primary's HTTP address for a [`NodeBackend`].
pub type Replication = (Arc<dyn ReplicationControl>, Option<String>);

/// A server over a node started from `engine` (its next sequence follows the engine's last),
/// with `replication` handed to the backend if given.
pub fn start_over(
    mut config: ServerConfig,
    node_config: NodeConfig,
    engine: Engine,
    replication: Option<Replication>,
) -> ServerHandle {
    config.admin_token = Some(TOKEN.to_owned());
    config.in_flight_max = node_config.session_pending_max as usize;
    ringfence_ingress::start(config, move |waker| {
        let next = Sequence(engine.last_sequence().0 + 1);
        let epoch = node_config.epoch;
        let (hook, watch) = HashWatch::new(NoSnapshots, &engine);
        let node = Node::start_with(
            node_config,
            engine,
            next,
            MemoryJournal::new(),
            NoReplicator::default(),
            hook,
        )
        .map_err(std::io::Error::other)?;
        let backend = NodeBackend::new(node, waker, watch, epoch, "memory".into(), None)?;
        Ok(match replication {
            Some((control, primary_http)) => backend.with_replication(control, primary_http),
            None => backend,
        })
    })
    .expect("server starts on loopback")
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP connection.
pub struct Http {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Http { stream, buffer: Vec::new() }
    }

    /// A keep-alive HTTP connection over a stream already connected.
    pub fn over(stream: TcpStream) -> Http {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Http { stream, buffer: Vec::new() }
    }

    pub fn request_bytes(
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> Vec<u8> {
        let mut text = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(token) = token {
            text.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method == "POST" {
            text.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        text.push_str("\r\n");
        text.push_str(body);
        text.into_bytes()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> HttpResponse {
        self.send(&Http::request_bytes(method, path, body, token));
        self.read_response().expect("a response")
    }

    /// Reads one response; `None` when the server closed the connection first.
    pub fn read_response(&mut self) -> Option<HttpResponse> {
        loop {
            if let Some(response) = self.try_parse() {
                return Some(response);
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn try_parse(&mut self) -> Option<HttpResponse> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(&self.buffer).expect("valid response head") {
            httparse::Status::Complete(head) => head,
            httparse::Status::Partial => return None,
        };
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        if self.buffer.len() < head + length {
            return None;
        }
        let status = response.code.unwrap();
        let body = self.buffer[head..head + length].to_vec();
        self.buffer.drain(..head + length);
        Some(HttpResponse { status, headers, body })
    }

    /// Reads until the server closes; true if it did within the read timeout.
    pub fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// Creates a SKU through the HTTP admin API.
pub fn create_sku(http: &mut Http, sku: u64, stock: u32, per_user_limit: u32, timeout_ms: u64) {
    let body = format!(
        r#"{{"sku":{sku},"stock":{stock},"price_cents":500,"per_user_limit":{per_user_limit},"payment_timeout_ms":{timeout_ms}}}"#
    );
    let response = http.call("POST", "/v1/skus", Some(&body), Some(TOKEN));
    assert_eq!(response.status, 201, "{:?}", response.json());
}

/// Connects to `target` from the address `source` (port chosen by the system): std cannot bind
/// a client socket before connecting, so this goes through `socket2`.
pub fn connect_from(source: std::net::Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect(&target.into())?;
    Ok(socket.into())
}

/// A node that accepts every command and never answers.
pub struct Stuck;

impl Backend for Stuck {
    fn try_submit(&mut self, _command: Command, _token: u64) -> Result<(), Refusal> {
        Ok(())
    }
    fn poll(&mut self) -> Option<BackendCompletion> {
        None
    }
    fn status(&self) -> NodeStatus {
        NodeStatus::default()
    }
}
