//! The etcd driver: [`Coordinator`] over etcd's v3 HTTP/JSON gateway (served by etcd 3.4 and
//! later on its client port), with a blocking HTTP client on the control-plane thread. Keys
//! and values travel base64-encoded; 64-bit integers come back as JSON strings. Every call
//! has a timeout; a failed endpoint passes the call to the next one.
//!
//! | operation         | gateway call                                                   |
//! |-------------------|----------------------------------------------------------------|
//! | grant             | `/v3/lease/grant {TTL}`                                        |
//! | keep_alive        | `/v3/lease/keepalive {ID}` (no `TTL` in the answer: expired)   |
//! | read              | `/v3/kv/range` over the cluster prefix (linearizable)          |
//! | campaign          | `/v3/kv/txn`: leader CREATE = 0 and sync MOD = seen → put both |
//! | record_sync       | `/v3/kv/txn`: leader VALUE = ours → put sync                   |
//! | resign            | `/v3/kv/txn`: leader VALUE = ours → delete leader              |
//! | register, request | `/v3/kv/put` with the node's lease                             |

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::control::warn;
use crate::coordination::records::{LeaderValue, Member, Switchover, SyncRecord, encode};
use crate::coordination::store::{Coordinator, CoordinatorError, Keys, LeaseId, View};

/// etcd reached through its gateway.
pub struct EtcdCoordinator {
    endpoints: Vec<String>,
    /// The endpoint tried first (the last one that answered).
    current: usize,
    agent: ureq::Agent,
    keys: Keys,
    /// Whether the log has said that etcd granted longer leases than asked.
    said_longer_lease: bool,
}

impl EtcdCoordinator {
    /// A driver for `cluster` over `endpoints` (`http://host:port`), each call bounded by
    /// `timeout`.
    #[must_use]
    pub fn new(endpoints: Vec<String>, cluster: &str, timeout: Duration) -> EtcdCoordinator {
        assert!(!endpoints.is_empty(), "at least one etcd endpoint");
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build();
        let endpoints = endpoints.into_iter().map(|e| e.trim_end_matches('/').to_owned());
        EtcdCoordinator {
            endpoints: endpoints.collect(),
            current: 0,
            agent: config.into(),
            keys: Keys::new(cluster),
            said_longer_lease: false,
        }
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    /// When none answers, the error is [`CoordinatorError::Unsent`] if none even took the
    /// connection, else [`CoordinatorError::Unreachable`].
    fn call(&mut self, path: &str, body: &Value) -> Result<Value, CoordinatorError> {
        let (mut last, mut sent) = (String::new(), false);
        for attempt in 0..self.endpoints.len() {
            let index = (self.current + attempt) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[index]);
            match self.post(&url, body) {
                Ok(answer) => {
                    self.current = index;
                    return answer;
                }
                Err(error) => {
                    sent |= !never_connected(&error);
                    last = format!("{url}: {error}");
                }
            }
        }
        Err(if sent { CoordinatorError::Unreachable(last) } else { CoordinatorError::Unsent(last) })
    }

    /// One POST: `Err` if the endpoint could not be reached (try another), `Ok(Err)` if it
    /// answered with an error.
    fn post(
        &self,
        url: &str,
        body: &Value,
    ) -> Result<Result<Value, CoordinatorError>, ureq::Error> {
        let mut response = self.agent.post(url).send_json(body)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        if status == 503 {
            // No leader in this member's view: another member may have one.
            return Err(ureq::Error::StatusCode(status));
        }
        if status != 200 {
            return Ok(Err(CoordinatorError::Protocol(format!("{url}: HTTP {status}: {text}"))));
        }
        Ok(serde_json::from_str(&text)
            .map_err(|e| CoordinatorError::Protocol(format!("{url}: not JSON ({e}): {text}"))))
    }

    fn txn(&mut self, body: &Value) -> Result<bool, CoordinatorError> {
        let answer = self.call("/v3/kv/txn", body)?;
        Ok(answer.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }
}

/// Whether `error` says the request never left: no connection was made to send it on.
fn never_connected(error: &ureq::Error) -> bool {
    match error {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::AddrNotAvailable
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
        ),
        _ => false,
    }
}

fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// An int64 field, which the gateway writes as a string (and leaves out when zero).
fn int(value: &Value, field: &str) -> Result<i64, CoordinatorError> {
    match value.get(field) {
        None => Ok(0),
        Some(Value::String(text)) => text.parse().map_err(|_| {
            CoordinatorError::Protocol(format!("`{field}` is not an integer: {text}"))
        }),
        Some(Value::Number(number)) => number
            .as_i64()
            .ok_or_else(|| CoordinatorError::Protocol(format!("`{field}` is out of range"))),
        Some(other) => Err(CoordinatorError::Protocol(format!("`{field}` is {other}"))),
    }
}

fn unbase64(value: &Value, field: &str) -> Result<Vec<u8>, CoordinatorError> {
    let text = value.get(field).and_then(Value::as_str).unwrap_or("");
    BASE64
        .decode(text)
        .map_err(|e| CoordinatorError::Protocol(format!("`{field}` is not base64: {e}")))
}

/// The end of the range holding every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    let last = end.last_mut().expect("a prefix is not empty");
    assert!(*last < 0xff, "the cluster prefix ends in `/`");
    *last += 1;
    end
}

fn put_op(key: &str, value: &[u8], lease: Option<LeaseId>) -> Value {
    let mut put = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
    if let Some(lease) = lease {
        put["lease"] = Value::String(lease.0.to_string());
    }
    json!({ "requestPut": put })
}

impl Coordinator for EtcdCoordinator {
    fn grant(&mut self, ttl_s: u64) -> Result<LeaseId, CoordinatorError> {
        let answer = self.call("/v3/lease/grant", &json!({ "TTL": ttl_s.to_string() }))?;
        if let Some(error) = answer.get("error").and_then(Value::as_str) {
            return Err(CoordinatorError::Protocol(format!("lease grant: {error}")));
        }
        let id = int(&answer, "ID")?;
        if id == 0 {
            return Err(CoordinatorError::Protocol(format!("lease grant without an id: {answer}")));
        }
        // etcd raises a lease to its minimum (1.5 election timeouts) without an error. The
        // node keeps to the lease it asked for (it renews and gives up writes by that), but a
        // dead leader's key outlives it by the difference: the operator is told, once.
        let granted = u64::try_from(int(&answer, "TTL")?).unwrap_or(0);
        if granted > ttl_s && !self.said_longer_lease {
            self.said_longer_lease = true;
            warn(format_args!(
                "coordination: etcd granted a lease of {granted} s where {ttl_s} s was asked \
                 (etcd's shortest lease is 1.5 of its election timeouts): a failed leader is \
                 replaced only once {granted} s have passed. Set --lease-ttl-s (lease_ttl_s) to \
                 {granted} or more, or lower etcd's --election-timeout"
            ));
        }
        Ok(LeaseId(id))
    }

    fn keep_alive(&mut self, lease: LeaseId) -> Result<u64, CoordinatorError> {
        let answer = self.call("/v3/lease/keepalive", &json!({ "ID": lease.0.to_string() }))?;
        let result = answer.get("result").ok_or_else(|| {
            CoordinatorError::Protocol(format!("lease keepalive without a result: {answer}"))
        })?;
        Ok(u64::try_from(int(result, "TTL")?).unwrap_or(0))
    }

    fn read(&mut self) -> Result<View, CoordinatorError> {
        let prefix = self.keys.prefix.clone();
        let body = json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(&prefix)) });
        let answer = self.call("/v3/kv/range", &body)?;
        let empty = Vec::new();
        let kvs = answer.get("kvs").and_then(Value::as_array).unwrap_or(&empty);
        let mut decoded = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let key = String::from_utf8(unbase64(kv, "key")?)
                .map_err(|_| CoordinatorError::Protocol("a key is not UTF-8".into()))?;
            decoded.push((
                key,
                unbase64(kv, "value")?,
                int(kv, "lease")?,
                int(kv, "mod_revision")?,
            ));
        }
        let kvs = decoded.iter().map(|(k, v, l, r)| (k.as_str(), v.as_slice(), *l, *r));
        self.keys.view(kvs)
    }

    fn campaign(
        &mut self,
        leader: &LeaderValue,
        lease: LeaseId,
        sync_revision: i64,
        sync: &SyncRecord,
    ) -> Result<bool, CoordinatorError> {
        let (leader_key, sync_key) = (self.keys.leader(), self.keys.sync());
        let body = json!({
            "compare": [
                { "target": "CREATE", "key": b64(leader_key.as_bytes()), "createRevision": "0" },
                { "target": "MOD", "key": b64(sync_key.as_bytes()),
                  "modRevision": sync_revision.to_string() },
            ],
            "success": [
                put_op(&leader_key, &encode(leader), Some(lease)),
                put_op(&sync_key, &encode(sync), None),
            ],
        });
        self.txn(&body)
    }

    fn record_sync(
        &mut self,
        leader: &LeaderValue,
        sync: &SyncRecord,
    ) -> Result<bool, CoordinatorError> {
        let (leader_key, sync_key) = (self.keys.leader(), self.keys.sync());
        let body = json!({
            "compare": [{ "target": "VALUE", "key": b64(leader_key.as_bytes()),
                          "value": b64(&encode(leader)) }],
            "success": [put_op(&sync_key, &encode(sync), None)],
        });
        self.txn(&body)
    }

    fn resign(&mut self, leader: &LeaderValue) -> Result<bool, CoordinatorError> {
        let key = b64(self.keys.leader().as_bytes());
        let body = json!({
            "compare": [{ "target": "VALUE", "key": key, "value": b64(&encode(leader)) }],
            "success": [{ "requestDeleteRange": { "key": key } }],
        });
        self.txn(&body)
    }

    fn register(&mut self, member: &Member, lease: LeaseId) -> Result<(), CoordinatorError> {
        let put = put_op(&self.keys.member(&member.node), &encode(member), Some(lease));
        self.call("/v3/kv/put", &put["requestPut"]).map(drop)
    }

    fn request_switchover(
        &mut self,
        request: &Switchover,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError> {
        let put = put_op(&self.keys.switchover(), &encode(request), Some(lease));
        self.call("/v3/kv/put", &put["requestPut"]).map(drop)
    }

    fn revoke(&mut self, lease: LeaseId) -> Result<(), CoordinatorError> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease.0.to_string() })).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn the_prefix_range_ends_after_every_key_under_it() {
        // Goal: `/ringfence/c/` ranges up to `/ringfence/c0`, which sorts after every key
        // under the prefix and before the next cluster's.
        assert_eq!(prefix_end("/ringfence/c/"), b"/ringfence/c0".to_vec());
    }

    #[test]
    fn gateway_integers_are_strings_or_absent() {
        // Goal: `"7"` and 7 read as 7, an absent field as 0, anything else is refused.
        let value = json!({ "a": "7", "b": 7, "c": true });
        assert_eq!(int(&value, "a"), Ok(7));
        assert_eq!(int(&value, "b"), Ok(7));
        assert_eq!(int(&value, "z"), Ok(0));
        assert!(int(&value, "c").is_err());
    }

    /// A stand-in for one etcd member's gateway: answers every request with `answer`, and
    /// counts requests; once `dark` is set it reads requests and never answers them, as a
    /// member whose machine hangs.
    struct Gateway {
        url: String,
        requests: Arc<AtomicUsize>,
        dark: Arc<AtomicBool>,
    }

    impl Gateway {
        fn start(answer: &'static str) -> Gateway {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let (requests, dark) =
                (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
            let (counted, darkened) = (Arc::clone(&requests), Arc::clone(&dark));
            std::thread::spawn(move || {
                for connection in listener.incoming() {
                    let Ok(connection) = connection else { return };
                    let (counted, darkened) = (Arc::clone(&counted), Arc::clone(&darkened));
                    std::thread::spawn(move || serve(connection, answer, &counted, &darkened));
                }
            });
            Gateway { url, requests, dark }
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }

    /// Answers requests on one kept-alive connection until it closes.
    fn serve(
        connection: std::net::TcpStream,
        answer: &str,
        counted: &AtomicUsize,
        dark: &AtomicBool,
    ) {
        let mut reader = BufReader::new(connection.try_clone().unwrap());
        let mut writer = connection;
        loop {
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            while dark.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            if writer.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }

    const GRANTED: &str = r#"{"ID":"7","TTL":"2","result":{"ID":"7","TTL":"2"}}"#;

    #[test]
    fn a_member_that_never_answers_passes_the_call_to_the_next_which_keeps_the_calls() {
        // Goal: the first endpoint hangs (its machine accepts and never answers). The call
        // times out there and the next member answers it; the calls after go to that member
        // first, not through the hung one again each time.
        let hung = Gateway::start(GRANTED);
        hung.dark.store(true, Ordering::SeqCst);
        let answering = Gateway::start(GRANTED);
        let endpoints = vec![hung.url.clone(), answering.url.clone()];
        let mut witness = EtcdCoordinator::new(endpoints, "c", Duration::from_millis(200));
        assert_eq!(witness.grant(2), Ok(LeaseId(7)));
        for _ in 0..5 {
            assert_eq!(witness.keep_alive(LeaseId(7)), Ok(2));
        }
        assert_eq!(hung.requests(), 1, "only the first call went to the hung member");
        assert_eq!(answering.requests(), 6, "the answering member took every call");
    }

    #[test]
    fn a_member_that_goes_dark_mid_run_loses_the_calls_to_another() {
        // Goal: the member in use stops answering (its machine hangs, the kept-alive
        // connection stays open). The next call moves to another member within the timeout,
        // and stays there.
        let (first, second) = (Gateway::start(GRANTED), Gateway::start(GRANTED));
        let endpoints = vec![first.url.clone(), second.url.clone()];
        let mut witness = EtcdCoordinator::new(endpoints, "c", Duration::from_millis(200));
        assert_eq!(witness.keep_alive(LeaseId(7)), Ok(2));
        assert_eq!((first.requests(), second.requests()), (1, 0));
        first.dark.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(witness.keep_alive(LeaseId(7)), Ok(2));
        }
        assert_eq!(first.requests(), 2, "one call waited on the dark member, then no more");
        assert_eq!(second.requests(), 3);
    }

    #[test]
    fn every_member_unreachable_is_an_unreachable_witness_naming_the_last() {
        // Goal: when no member answers, the call fails as `Unreachable`, naming the last
        // member tried, rather than hanging or passing as an answer.
        let (first, second) = (Gateway::start(GRANTED), Gateway::start(GRANTED));
        first.dark.store(true, Ordering::SeqCst);
        second.dark.store(true, Ordering::SeqCst);
        let endpoints = vec![first.url.clone(), second.url.clone()];
        let mut witness = EtcdCoordinator::new(endpoints, "c", Duration::from_millis(100));
        match witness.keep_alive(LeaseId(7)) {
            Err(CoordinatorError::Unreachable(text)) => {
                assert!(text.contains(&second.url), "{text}");
            }
            other => panic!("expected the witness unreachable, got {other:?}"),
        }
        assert_eq!((first.requests(), second.requests()), (1, 1));
    }

    #[test]
    fn members_that_refuse_the_connection_are_a_witness_sent_nothing() {
        // Goal: with every member refusing the connection nothing was sent, and the error
        // says so (a write is then known not to have taken effect); one member that took the
        // connection and did not answer makes it a plain `Unreachable`.
        let refusing = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let endpoints = vec![refusing(), refusing()];
        let mut witness = EtcdCoordinator::new(endpoints, "c", Duration::from_secs(2));
        match witness.keep_alive(LeaseId(7)) {
            Err(CoordinatorError::Unsent(text)) => assert!(text.contains("127.0.0.1"), "{text}"),
            other => panic!("expected nothing sent, got {other:?}"),
        }
        let dark = Gateway::start(GRANTED);
        dark.dark.store(true, Ordering::SeqCst);
        let endpoints = vec![refusing(), dark.url.clone()];
        let mut witness = EtcdCoordinator::new(endpoints, "c", Duration::from_millis(100));
        assert!(matches!(witness.keep_alive(LeaseId(7)), Err(CoordinatorError::Unreachable(_))));
    }
}
