//! The byte examples in `docs/protocol.md` are what the encoder writes: the document cannot
//! drift from `ingress/src/wire.rs` and the canonical encoding without this test failing.

use ringfence_core::{
    Action, Command, OrderId, Outcome, RequestKey, Reserve, SkuId, Timestamp, UserId,
};
use ringfence_ingress::wire::{self, ErrorCode, ErrorFrame, Kind, NodeInfo};

const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

/// The hex bytes of the fenced block after `<!-- example: NAME -->`.
fn documented(name: &str) -> Vec<u8> {
    let marker = format!("<!-- example: {name} -->");
    let start = PROTOCOL_MD.find(&marker).unwrap_or_else(|| panic!("no example {name}"));
    let block = &PROTOCOL_MD[start + marker.len()..];
    let block = &block[block.find("```text\n").expect("a fenced block") + 8..];
    let block = &block[..block.find("```").expect("a closed block")];
    block
        .split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).unwrap_or_else(|_| panic!("{name}: {byte}")))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn check(name: &str, encoded: &[u8]) {
    assert_eq!(hex(&documented(name)), hex(encoded), "example {name} in docs/protocol.md");
    let (frame, used) = wire::try_frame(encoded).unwrap().expect("a whole frame");
    assert_eq!(used, encoded.len(), "example {name} is one frame");
    assert_eq!(frame.correlation, 7, "example {name} uses correlation id 7");
}

#[test]
fn the_documented_frames_are_the_encoders_bytes() {
    // Goal: every byte example in docs/protocol.md is what ringfence writes and reads.
    let mut out = Vec::new();
    wire::encode_empty(&mut out, Kind::Ping, 7);
    check("ping", &out);
    let reserve = Command::Client {
        key: RequestKey::from_u128(0x0102),
        action: Action::Reserve(Reserve { user: UserId(42), sku: SkuId(1), qty: 2, coupon: None }),
    };
    out.clear();
    wire::encode_command(&mut out, 7, &reserve);
    check("reserve", &out);
    let reserved = Outcome::Reserved {
        order: OrderId(0x0123_4567_89ab_cdef),
        expires_at: Timestamp(1_700_000_900_000),
        amount_cents: 3_998,
    };
    out.clear();
    wire::encode_outcome(&mut out, 7, &reserved);
    check("reserved", &out);
    let busy = ErrorFrame {
        code: ErrorCode::Busy,
        fatal: false,
        retry_after_ms: 10,
        message: "busy".into(),
    };
    out.clear();
    wire::encode_error(&mut out, 7, &busy);
    check("busy", &out);
    let info = NodeInfo {
        primary: true,
        epoch: 1,
        last_sequence: 5,
        running_hash: 0x1122_3344_5566_7788,
        journal_durable: 5,
    };
    out.clear();
    wire::encode_node_info(&mut out, 7, &info);
    check("node_info", &out);
}

#[test]
fn the_documented_body_tables_are_the_codecs() {
    // Goal: the command, action and outcome tables in docs/protocol.md are, line for line, the
    // ones `core/src/codec.rs` documents next to the encoder, so a client written from the
    // protocol document alone encodes and decodes every body the node does.
    let codec = include_str!("../../core/src/codec.rs");
    let doc: Vec<&str> = (codec.lines())
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect();
    let mut tables = Vec::new();
    let mut open: Option<Vec<&str>> = None;
    for line in doc {
        match (&mut open, line) {
            (None, "```text") => open = Some(Vec::new()),
            (Some(_), "```") => tables.push(open.take().expect("an open table").join("\n")),
            (Some(table), line) => table.push(line),
            (None, _) => {}
        }
    }
    let [commands, actions, outcomes, ..] = &tables[..] else {
        panic!("core/src/codec.rs documents its command, action and outcome tables")
    };
    assert!(commands.starts_with("Tick") && outcomes.starts_with("Ticked"));
    for (name, table) in [("commands", commands), ("actions", actions), ("outcomes", outcomes)] {
        let fenced = format!("```text\n{table}\n```");
        assert!(PROTOCOL_MD.contains(&fenced), "docs/protocol.md lacks the {name} table:\n{table}");
    }
}
