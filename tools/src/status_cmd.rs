//! `ringfence status`: a pair (or a lone node) at a glance. Each node's `/v1/node` and
//! `/ready` are read and shown in a few lines (role, epoch, position, state hash, replication,
//! the witness's view), then judged together: one primary, its standby following it (in the
//! primary's epoch) and in sync, both of one cluster, both ready, and the same state hash
//! wherever they stand at the same sequence. Nodes of several clusters (one pair per shard)
//! are judged cluster by cluster. The exit status is 0 when healthy, 1 when the verdict names
//! a problem, 2 when a node could not be read (no answer in time, or it refused the read: give
//! a token).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

use crate::admin_cmd::{CallError, call, http_address};
use crate::client_cmd::caller_token;

/// Arguments of `ringfence status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// A node's HTTP API address, e.g. 127.0.0.1:7080 (an `http://` prefix is accepted).
    /// Give both nodes of a pair: `--http A --http B`; or the nodes of several pairs, which
    /// are judged cluster by cluster.
    #[arg(long = "http", value_name = "ADDR", value_parser = http_address, required = true)]
    pub http: Vec<String>,
    /// For nodes whose reads need a token: the file holding a `read` (or stronger) token
    /// [default: RINGFENCE_TOKEN; none where reads are open].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How long each node may take to answer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2_000)]
    pub timeout_ms: u64,
    /// One JSON object: each node's `/v1/node` and `/ready` answers, and the verdict.
    #[arg(long)]
    pub json: bool,
}

/// What one node said, or why it said nothing.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Its `--http` address.
    pub http: String,
    /// Its `/v1/node` answer and its `/ready` answer (status, body).
    pub answer: Result<(Value, (u16, Value)), String>,
}

/// The nodes judged together.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// What is wrong; none when healthy.
    pub problems: Vec<String>,
    /// What is worth knowing but not wrong.
    pub notes: Vec<String>,
    /// A node could not be read.
    pub unreachable: bool,
}

/// Shows the nodes at `--http` and judges them.
pub fn status(args: &StatusArgs) -> ExitCode {
    let token = match caller_token(args.token_file.as_ref()) {
        Ok(token) => token,
        Err(error) => {
            eprintln!("ringfence status: error: {error}");
            return ExitCode::from(2);
        }
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let observed: Vec<Observed> = args
        .http
        .iter()
        .map(|http| Observed {
            http: http.clone(),
            answer: observe(http, token.as_deref(), timeout),
        })
        .collect();
    let verdict = judge(&observed);
    if args.json {
        println!("{}", to_json(&observed, &verdict));
    } else {
        print!("{}", to_text(&observed, &verdict));
    }
    if verdict.unreachable {
        ExitCode::from(2)
    } else if verdict.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn observe(
    http: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(Value, (u16, Value)), String> {
    let parse = |what: &str, body: &str| {
        serde_json::from_str::<Value>(body).map_err(|e| format!("{what} is not JSON: {e}"))
    };
    let no_answer = |error: CallError| format!("no answer: {error}");
    let (status, body) = call(http, ("GET", "/v1/node"), token, "", timeout).map_err(no_answer)?;
    let node = parse("/v1/node", &body)?;
    if status != 200 {
        let (error, message) = (node["error"].as_str(), node["message"].as_str());
        let (error, message) = (error.unwrap_or("error"), message.unwrap_or(""));
        return Err(format!("/v1/node answered {status} {error}: {message}"));
    }
    let (ready_status, ready) =
        call(http, ("GET", "/ready"), token, "", timeout).map_err(no_answer)?;
    Ok((node, (ready_status, parse("/ready", &ready)?)))
}

/// A node that answered: its address, its `/v1/node` and its `/ready` (status, body).
type Answered<'a> = (&'a str, &'a Value, &'a (u16, Value));

/// Judges what the nodes said: the rules in the module's documentation. Nodes of several
/// clusters (several pairs, one shard each) are judged pair by pair, each problem and note
/// naming its cluster; a node that could not be read then counts on its own.
#[must_use]
pub fn judge(observed: &[Observed]) -> Verdict {
    // A node with replication is of its cluster; a lone node is a pair of its own.
    let cluster = |node: &Observed| {
        let (view, _) = node.answer.as_ref().ok()?;
        Some(match view["replication"]["cluster"].as_str() {
            Some(cluster) => format!("cluster {cluster}"),
            None => format!("node {}", node.http),
        })
    };
    let mut clusters: Vec<String> = observed.iter().filter_map(cluster).collect();
    clusters.sort();
    clusters.dedup();
    if clusters.len() <= 1 {
        return judge_pair(observed);
    }
    let mut verdict = Verdict::default();
    let groups = clusters.iter().map(Some).chain([None]);
    for group in groups {
        let nodes: Vec<Observed> =
            observed.iter().filter(|node| cluster(node).as_ref() == group).cloned().collect();
        let judged = judge_pair(&nodes);
        let name = group.map_or_else(String::new, |group| format!("{group}: "));
        verdict.unreachable |= judged.unreachable;
        verdict.problems.extend(judged.problems.iter().map(|p| format!("{name}{p}")));
        verdict.notes.extend(judged.notes.iter().map(|n| format!("{name}{n}")));
    }
    verdict
}

/// [`judge`] for the nodes of one pair (or a lone node).
fn judge_pair(observed: &[Observed]) -> Verdict {
    let mut verdict = Verdict::default();
    let mut answered: Vec<Answered<'_>> = Vec::new();
    for node in observed {
        match &node.answer {
            Ok((view, ready)) => answered.push((node.http.as_str(), view, ready)),
            Err(error) => {
                verdict.unreachable = true;
                verdict.problems.push(format!("{}: {error}", node.http));
            }
        }
    }
    let primaries: Vec<_> =
        answered.iter().filter(|(_, view, _)| view["role"] == "primary").collect();
    match primaries.as_slice() {
        [] if !answered.is_empty() => verdict.problems.push("no node is primary".into()),
        [_, _, ..] => {
            let named: Vec<String> = primaries
                .iter()
                .map(|(http, view, _)| format!("{http} (epoch {})", view["epoch"]))
                .collect();
            verdict
                .problems
                .push(format!("more than one node says it is primary: {}", named.join(", ")));
        }
        [(leader, leader_view, _)] => judge_following(leader, leader_view, &answered, &mut verdict),
        _ => {}
    }
    for (http, view, (ready_status, ready)) in &answered {
        let primary = view["role"] == "primary";
        let error = ready["error"].as_str().unwrap_or("not_ready");
        if *ready_status != 200 && (primary || error != "not_primary") {
            let message = ready["message"].as_str().unwrap_or("");
            verdict.problems.push(format!("{http}: not ready: {error}: {message}"));
        }
        judge_replication(http, view, primary, &mut verdict);
    }
    // Two nodes at one sequence hold one state.
    for (i, (a, view_a, _)) in answered.iter().enumerate() {
        for (b, view_b, _) in &answered[i + 1..] {
            let (state_a, state_b) = (&view_a["state"], &view_b["state"]);
            if state_a["sequence"] == state_b["sequence"] {
                if state_a["hash"] != state_b["hash"] {
                    verdict.problems.push(format!(
                        "{a} and {b} hold different states at sequence {}: {} and {}",
                        state_a["sequence"], state_a["hash"], state_b["hash"]
                    ));
                }
            } else {
                verdict.notes.push(format!(
                    "{a} stands at sequence {}, {b} at {}: their states are compared only at \
                     the same sequence",
                    state_a["sequence"], state_b["sequence"]
                ));
            }
        }
    }
    verdict
}

/// A standby streaming from its primary (following or catching up) promised that primary's
/// epoch first: one that promised another streams from another primary, not `leader`. Under
/// etcd, a primary in sync has its standby named in the in-sync record, or the standby would
/// not take over.
fn judge_following(
    leader: &str,
    leader_view: &Value,
    answered: &[Answered<'_>],
    verdict: &mut Verdict,
) {
    let recorded = &leader_view["replication"]["coordination"]["in_sync_standby"];
    let leader_in_sync = leader_view["replication"]["state"] == "in_sync";
    for (http, view, _) in answered {
        let replication = &view["replication"];
        let name = &replication["coordination"]["node"];
        // Under etcd, only the standby the in-sync record names may take over.
        if leader_in_sync && view["role"] == "standby" && name.is_string() && recorded != name {
            let named = recorded.as_str().unwrap_or("nobody");
            verdict.problems.push(format!(
                "{leader}: etcd's in-sync record names {named}, not {http} ({}): it would not \
                 take over",
                name.as_str().unwrap_or("?")
            ));
        }
        let promised = &replication["promised_epoch"];
        let streaming = matches!(replication["state"].as_str(), Some("following" | "catching_up"));
        if streaming && !promised.is_null() && *promised != leader_view["epoch"] {
            verdict.problems.push(format!(
                "{http} follows a primary of epoch {promised}, but {leader} leads epoch {}: \
                 {leader} is not its primary",
                leader_view["epoch"]
            ));
        }
    }
}

fn judge_replication(http: &str, view: &Value, primary: bool, verdict: &mut Verdict) {
    let replication = &view["replication"];
    if replication.is_null() {
        return;
    }
    let state = replication["state"].as_str().unwrap_or("unknown");
    let why = match (primary, state) {
        (true, "in_sync") | (false, "following") => None,
        (true, "alone") => Some("no standby is in sync: it acknowledges on its own journal"),
        (true, "catching_up") => {
            Some("its standby is catching up: meanwhile it acknowledges on its own journal")
        }
        (true, "standby_lost") => Some(
            "its standby went silent: writes are held until it is back or the primary goes on \
             alone",
        ),
        (true, _) => Some("it does not acknowledge with a standby"),
        (false, _) => Some("the standby does not follow its primary"),
    };
    if let Some(why) = why {
        verdict.problems.push(format!("{http}: {why} ({state})"));
    }
    if replication["mode"] == "async" {
        verdict.notes.push(format!("{http}: async: a failover may lose acknowledged writes"));
    }
    let coordination = &replication["coordination"];
    if let Some(waiting) = coordination["waiting"].as_str() {
        verdict.problems.push(format!("{http}: waiting: {waiting}"));
    }
    if let Some(witness) = coordination["witness"].as_str().filter(|w| *w != "reachable") {
        verdict.problems.push(format!("{http}: etcd: {witness}"));
    }
    if coordination["recorded_mode"] == "async" {
        verdict.notes.push(format!("{http}: the in-sync record says async"));
    }
}

fn to_text(observed: &[Observed], verdict: &Verdict) -> String {
    let mut out = String::new();
    for node in observed {
        let Ok((view, _)) = &node.answer else {
            let _ = writeln!(out, "{}  not read", node.http);
            continue;
        };
        let _ = writeln!(
            out,
            "{}  {}, epoch {}, sequence {} (durable {}), state {}",
            node.http,
            view["role"].as_str().unwrap_or("?"),
            view["epoch"],
            view["state"]["sequence"],
            view["journal"]["durable_sequence"],
            view["state"]["hash"].as_str().unwrap_or("?"),
        );
        let replication = &view["replication"];
        if !replication.is_null() {
            let _ = writeln!(
                out,
                "    replication  {} {}, peer {}, {} records behind; cluster {}, promised epoch {}",
                replication["mode"].as_str().unwrap_or("?"),
                replication["state"].as_str().unwrap_or("?"),
                replication["peer"].as_str().unwrap_or("none"),
                replication["lag_records"],
                replication["cluster"].as_str().unwrap_or("?"),
                replication["promised_epoch"],
            );
        }
        let coordination = &replication["coordination"];
        if !coordination.is_null() {
            let _ = writeln!(
                out,
                "    etcd         {}; in-sync standby {}, {} record",
                etcd_role(coordination),
                coordination["in_sync_standby"].as_str().unwrap_or("none"),
                coordination["recorded_mode"].as_str().unwrap_or("no"),
            );
        }
    }
    for note in &verdict.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if verdict.problems.is_empty() {
        let _ = writeln!(out, "healthy");
    }
    for problem in &verdict.problems {
        let _ = writeln!(out, "problem: {problem}");
    }
    out
}

/// What etcd makes of a node, from its `/v1/node` `replication.coordination`: what it is
/// (`state`) and who holds the leader key (`leader`, `leader_epoch`). Said as sentences, since
/// `state` and `leader` side by side ("leader of b") read as if this node led b.
fn etcd_role(coordination: &Value) -> String {
    let node = coordination["node"].as_str().unwrap_or("this node");
    let state = coordination["state"].as_str().unwrap_or("?");
    let is = match state {
        "leader" => "is the leader".to_owned(),
        "taking_office" => "is taking office as the leader".to_owned(),
        "handing_over" => "is handing the leader key over".to_owned(),
        "standby" => "is a standby".to_owned(),
        other => format!("is {other}"),
    };
    let epoch = &coordination["leader_epoch"];
    match coordination["leader"].as_str() {
        // A leader's own key: its epoch is the one it leads in.
        Some(leader) if leader == node && state != "standby" => {
            format!("{node} {is} (epoch {epoch})")
        }
        Some(leader) if state == "standby" => {
            format!("{node} {is}; the leader is {leader} (epoch {epoch})")
        }
        Some(leader) => format!("{node} {is}, but the leader key is {leader}'s (epoch {epoch})"),
        None => format!("{node} {is}; nobody holds the leader key"),
    }
}

fn to_json(observed: &[Observed], verdict: &Verdict) -> Value {
    let nodes: Vec<Value> = observed
        .iter()
        .map(|node| match &node.answer {
            Ok((view, (status, ready))) => {
                json!({ "http": node.http, "node": view, "ready": { "status": status, "body": ready } })
            }
            Err(error) => json!({ "http": node.http, "error": error }),
        })
        .collect();
    json!({
        "nodes": nodes,
        "healthy": verdict.problems.is_empty(),
        "problems": verdict.problems,
        "notes": verdict.notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's answers: `role`, replication `state` (none: no replication), state at
    /// (`sequence`, `hash`), and `/ready`'s status and error.
    fn node(
        http: &str,
        role: &str,
        state: Option<&str>,
        (sequence, hash): (u64, &str),
        (ready, error): (u16, &str),
    ) -> Observed {
        let replication = state.map(|state| {
            json!({
                "role": role, "mode": "sync", "state": state, "cluster": "shop",
                "promised_epoch": 2,
            })
        });
        let view = json!({
            "role": role, "epoch": 2, "state": { "sequence": sequence, "hash": hash },
            "journal": { "durable_sequence": sequence }, "replication": replication,
        });
        let body = if ready == 200 { json!({ "ready": true }) } else { json!({ "error": error }) };
        Observed { http: http.into(), answer: Ok((view, (ready, body))) }
    }

    #[test]
    fn a_pair_in_sync_at_one_state_is_healthy() {
        // Goal: one primary in sync, its standby following (its /ready says not_primary, as a
        // standby's does), both at sequence 9 with one hash: no problem, no note.
        let pair = [
            node("a", "primary", Some("in_sync"), (9, "ab"), (200, "")),
            node("b", "standby", Some("following"), (9, "ab"), (503, "not_primary")),
        ];
        assert_eq!(judge(&pair), Verdict::default());
        let text = to_text(&pair, &judge(&pair));
        assert!(text.ends_with("healthy\n"), "{text}");
        assert!(text.contains("a  primary, epoch 2, sequence 9 (durable 9), state ab\n"), "{text}");
    }

    #[test]
    fn each_way_a_pair_goes_wrong_is_named() {
        // Goal: a standby lost, two primaries, a failed journal, different states at one
        // sequence, and a node that does not answer are each a problem naming the node.
        let cases: [(Vec<Observed>, &str); 5] = [
            (
                vec![
                    node(
                        "a",
                        "primary",
                        Some("standby_lost"),
                        (9, "ab"),
                        (503, "replication_unavailable"),
                    ),
                    node("b", "standby", Some("catching_up"), (5, "cd"), (503, "not_primary")),
                ],
                "a: its standby went silent: writes are held until it is back or the primary goes \
                 on alone (standby_lost)",
            ),
            (
                vec![
                    node("a", "primary", Some("alone"), (9, "ab"), (200, "")),
                    node("b", "primary", Some("alone"), (9, "ab"), (200, "")),
                ],
                "more than one node says it is primary: a (epoch 2), b (epoch 2)",
            ),
            (
                vec![node("a", "primary", None, (9, "ab"), (503, "journal_failed"))],
                "a: not ready: journal_failed",
            ),
            (
                vec![
                    node("a", "primary", Some("in_sync"), (9, "ab"), (200, "")),
                    node("b", "standby", Some("following"), (9, "ff"), (503, "not_primary")),
                ],
                "a and b hold different states at sequence 9",
            ),
            (
                vec![
                    node("a", "primary", None, (9, "ab"), (200, "")),
                    Observed {
                        http: "b".into(),
                        answer: Err("no answer: connection refused".into()),
                    },
                ],
                "b: no answer: connection refused",
            ),
        ];
        for (nodes, said) in cases {
            let verdict = judge(&nodes);
            assert!(verdict.problems.iter().any(|p| p.contains(said)), "{said}: {verdict:?}");
            assert_eq!(verdict.unreachable, said.contains("no answer"), "{verdict:?}");
        }
        let apart = [
            node("a", "primary", Some("in_sync"), (9, "ab"), (200, "")),
            node("b", "standby", Some("following"), (8, "cd"), (503, "not_primary")),
        ];
        let verdict = judge(&apart);
        assert!(verdict.problems.is_empty(), "{verdict:?}");
        assert!(verdict.notes[0].contains("compared only at the same sequence"), "{verdict:?}");
    }

    /// `observed` with its `/v1/node` answer's `replication.field` set to `value`.
    fn with(mut observed: Observed, field: &str, value: Value) -> Observed {
        observed.answer.as_mut().expect("an answer").0["replication"][field] = value;
        observed
    }

    #[test]
    fn nodes_of_two_pairs_are_not_taken_for_one() {
        // Goal: a standby that follows another primary is named; nodes of other clusters are
        // judged with their own, so two whole pairs are healthy and a node of another cluster
        // given alone lacks its primary; a standby in the primary's epoch of the same cluster
        // is healthy.
        let primary = || node("a", "primary", Some("in_sync"), (9, "ab"), (200, ""));
        let standby = || node("b", "standby", Some("following"), (9, "ab"), (503, "not_primary"));
        let elsewhere = [primary(), with(standby(), "promised_epoch", json!(5))];
        let verdict = judge(&elsewhere);
        assert_eq!(
            verdict.problems,
            ["b follows a primary of epoch 5, but a leads epoch 2: a is not its primary"]
        );
        // Given a standby of another cluster, each is judged with its own: b has no primary.
        let other_cluster = [primary(), with(standby(), "cluster", json!("shop-us"))];
        assert_eq!(judge(&other_cluster).problems, ["cluster shop-us: no node is primary"]);
        // Two pairs, each whole, are healthy; one node of them unread is named on its own.
        let in_us = |observed: Observed, http: &str| Observed {
            http: http.into(),
            ..with(observed, "cluster", json!("shop-us"))
        };
        let shards = [primary(), standby(), in_us(primary(), "c"), in_us(standby(), "d")];
        assert_eq!(judge(&shards), Verdict::default());
        let mut unread = shards.clone();
        unread[3].answer = Err("no answer: connection refused".into());
        let verdict = judge(&unread);
        assert!(verdict.unreachable, "{verdict:?}");
        assert_eq!(verdict.problems, ["d: no answer: connection refused"]);
        let text = to_text(&elsewhere, &verdict);
        assert!(text.contains("records behind; cluster shop, promised epoch 5\n"), "{text}");
        // Catching up, a standby streams in the epoch it promised, as it does following.
        let catching_up = with(standby(), "state", json!("catching_up"));
        let behind = [primary(), with(catching_up, "promised_epoch", json!(1))];
        assert!(judge(&behind).problems.iter().any(|p| p.contains("a is not its primary")));
        // Under etcd: the in-sync record must name the standby.
        let under_etcd =
            |observed: Observed, coordination: Value| with(observed, "coordination", coordination);
        let pair = |recorded: Value| {
            [
                under_etcd(primary(), json!({ "node": "a", "in_sync_standby": recorded })),
                under_etcd(standby(), json!({ "node": "b", "in_sync_standby": "b" })),
            ]
        };
        assert_eq!(judge(&pair(json!("b"))), Verdict::default());
        assert_eq!(
            judge(&pair(json!("c"))).problems,
            ["a: etcd's in-sync record names c, not b (b): it would not take over"]
        );
        assert_eq!(
            judge(&pair(Value::Null)).problems,
            ["a: etcd's in-sync record names nobody, not b (b): it would not take over"]
        );
        // Still connecting, it has not yet promised the epoch it will follow in.
        let connecting = with(standby(), "state", json!("connecting"));
        let joining = [primary(), with(connecting, "promised_epoch", json!(1))];
        assert!(judge(&joining).problems.iter().all(|p| !p.contains("is not its primary")));
    }

    #[test]
    fn the_etcd_line_says_who_this_node_is_and_who_leads() {
        // Goal: under etcd each node's line names the node, what it is and who holds the
        // leader key, as sentences: "leader of a" on the primary read as if it led a, and
        // "standby of a" beside it as if a were a standby.
        let primary = || node("a", "primary", Some("in_sync"), (9, "ab"), (200, ""));
        let standby = || node("b", "standby", Some("following"), (9, "ab"), (503, "not_primary"));
        let coordination = |node: &str, state: &str, leader: Value| {
            json!({
                "node": node, "state": state, "leader": leader, "leader_epoch": 2,
                "in_sync_standby": "b", "recorded_mode": "sync", "witness": "reachable",
            })
        };
        let etcd_line = |observed: Observed| {
            let text = to_text(&[observed], &Verdict::default());
            let line = text.lines().find(|line| line.trim_start().starts_with("etcd"));
            line.expect("an etcd line").trim_start().to_owned()
        };
        let cases = [
            (primary(), "a", "leader", json!("a"), "a is the leader (epoch 2)"),
            (
                primary(),
                "a",
                "taking_office",
                json!("a"),
                "a is taking office as the leader (epoch 2)",
            ),
            (
                primary(),
                "a",
                "handing_over",
                json!("a"),
                "a is handing the leader key over (epoch 2)",
            ),
            (
                primary(),
                "a",
                "leader",
                json!("c"),
                "a is the leader, but the leader key is c's (epoch 2)",
            ),
            (standby(), "b", "standby", json!("a"), "b is a standby; the leader is a (epoch 2)"),
            (standby(), "b", "standby", Value::Null, "b is a standby; nobody holds the leader key"),
        ];
        for (observed, name, state, leader, said) in cases {
            let observed = with(observed, "coordination", coordination(name, state, leader));
            let expected = format!("etcd         {said}; in-sync standby b, sync record");
            assert_eq!(etcd_line(observed), expected);
        }
    }
}
