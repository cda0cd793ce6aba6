//! How dead letters are shown to an operator: a table or JSON lines for a list, a block or one
//! JSON object for one dead letter, counts for a replay. Pure text; the binary prints it.

use std::fmt::Write as _;

use serde_json::json;

use super::{Contents, DeadLetter, ReasonCode, ReplayReport, Summary};

/// Bytes of an undecodable payload shown in hex.
const HEX_PREFIX: usize = 256;
const TIME: &str = "%Y-%m-%d %H:%M:%S%.3fZ";

fn code(code: Option<ReasonCode>) -> &'static str {
    code.map_or("unknown", ReasonCode::as_str)
}

/// A human table, one dead letter a line, newest first as given.
pub fn table(letters: &[Summary]) -> String {
    if letters.is_empty() {
        return "no dead letters\n".to_owned();
    }
    let id_width = letters
        .iter()
        .map(|l| l.id.to_string().len())
        .chain(["ID".len()])
        .max()
        .unwrap_or(2);
    let device_width = letters
        .iter()
        .map(|l| l.device_id.as_deref().map_or(1, str::len))
        .chain(["DEVICE".len()])
        .max()
        .unwrap_or(6);
    let code_width = letters
        .iter()
        .map(|l| code(l.reason_code).len())
        .chain(["CODE".len()])
        .max()
        .unwrap_or(4);
    let mut out = format!(
        "{:>id_width$}  {:<24}  {:<device_width$}  {:<code_width$}  {:>5}  REASON\n",
        "ID", "RECEIVED (UTC)", "DEVICE", "CODE", "BYTES"
    );
    for l in letters {
        let _ = writeln!(
            out,
            "{:>id_width$}  {:<24}  {:<device_width$}  {:<code_width$}  {:>5}  {}",
            l.id,
            l.received_at.format(TIME).to_string(),
            l.device_id.as_deref().unwrap_or("-"),
            code(l.reason_code),
            l.payload_bytes,
            l.reason,
        );
    }
    out
}

/// One JSON object a line.
pub fn json_lines(letters: &[Summary]) -> String {
    letters
        .iter()
        .map(|l| {
            let mut line = json!({
                "id": l.id,
                "received_at": l.received_at,
                "device_id": l.device_id,
                "reason_code": l.reason_code,
                "reason": l.reason,
                "payload_bytes": l.payload_bytes,
            })
            .to_string();
            line.push('\n');
            line
        })
        .collect()
}

/// Everything about one dead letter: the row, the payload decoded (or a hex dump of its start).
pub fn details(letter: &DeadLetter) -> String {
    let mut out = format!("dead letter {}\n", letter.id);
    let mut field = |name: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "  {name:<10}  {value}");
    };
    field("received", &letter.received_at.format(TIME));
    field("topic", &letter.topic);
    field("device", &letter.device_id.as_deref().unwrap_or("-"));
    field("code", &code(letter.reason_code()));
    field("reason", &letter.reason);
    field("payload", &format!("{} bytes", letter.payload.len()));
    match letter.contents() {
        Contents::ReadingBatch {
            device_id,
            first_seq,
            readings,
            base_time_ms,
            first_taken_at,
            last_taken_at,
        } => {
            field("decoded", &"reading batch");
            field("  device", &device_id);
            field("  seq", &seq_range(first_seq, readings));
            field("  readings", &readings);
            let taken = match (first_taken_at, last_taken_at) {
                (Some(first), Some(last)) => {
                    format!("{} to {}", first.format(TIME), last.format(TIME))
                }
                _ => format!("not representable (base_time_ms {base_time_ms})"),
            };
            field("  taken", &taken);
        }
        Contents::NotificationReceipt { notifications } => {
            field("decoded", &"notification receipt");
            field("  ids", &notifications);
        }
        Contents::Undecodable { error } => {
            field("decoded", &format!("no: {error}"));
            let shown = letter.payload.len().min(HEX_PREFIX);
            let _ = writeln!(out, "  hex dump (first {shown} bytes):");
            out.push_str(&hex_dump(&letter.payload[..shown]));
        }
    }
    out
}

/// [`details`] as one JSON object.
pub fn details_json(letter: &DeadLetter) -> String {
    let contents = letter.contents();
    let hex_prefix = matches!(contents, Contents::Undecodable { .. })
        .then(|| hex::encode(&letter.payload[..letter.payload.len().min(HEX_PREFIX)]));
    json!({
        "id": letter.id,
        "received_at": letter.received_at,
        "topic": letter.topic,
        "device_id": letter.device_id,
        "reason_code": letter.reason_code(),
        "reason": letter.reason,
        "payload_bytes": letter.payload.len(),
        "contents": contents,
        "payload_hex_prefix": hex_prefix,
    })
    .to_string()
        + "\n"
}

/// The counts of a replay, one outcome a line; a dry run says what would happen.
pub fn replay_report(report: &ReplayReport) -> String {
    let (stored, deleted) = if report.dry_run {
        ("would store", "would delete")
    } else {
        ("stored", "deleted")
    };
    let mut out = String::new();
    if report.dry_run {
        out.push_str(
            "dry run: nothing written (a refusal by a database constraint shows only on a real replay)\n",
        );
    }
    let mut line = |what: &str, n: u64| {
        let _ = writeln!(out, "{n:>8}  {what}");
    };
    line("replayed", report.replayed);
    line(
        &format!("{stored} ({} readings)", report.readings_stored),
        report.stored,
    );
    line("already stored", report.already_stored);
    line("notification receipts applied", report.receipts_applied);
    line(&format!("{deleted} from dead_letters"), report.deleted);
    for (code, n) in &report.still_refused {
        line(&format!("still refused: {code} (kept)"), *n);
    }
    line("without consent (kept)", report.without_consent);
    for (code, n) in &report.not_accepted {
        line(&format!("not accepted: {code} (kept)"), *n);
    }
    line("skipped: changed meanwhile, run again", report.skipped);
    if let Some(stopped) = &report.stopped {
        let _ = writeln!(
            out,
            "stopped at dead letter {}: {}; the ones before it are done, run again for the rest",
            stopped.id, stopped.error
        );
    }
    out
}

fn seq_range(first_seq: u64, readings: usize) -> String {
    match u64::try_from(readings)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|n| first_seq.checked_add(n))
    {
        Some(last) => format!("{first_seq}..={last}"),
        None if readings == 0 => format!("{first_seq} (no readings)"),
        None => format!("{first_seq}.. (overflows)"),
    }
}

/// `offset  16 hex bytes  |ascii|`, like `hexdump -C`.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (row, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "    {:08x} ", row * 16);
        for i in 0..16 {
            if i == 8 {
                out.push(' ');
            }
            match chunk.get(i) {
                Some(b) => {
                    let _ = write!(out, " {b:02x}");
                }
                None => out.push_str("   "),
            }
        }
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(out, "  |{ascii}|");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hex_dump_shows_offsets_bytes_and_printable_text() {
        let dump = hex_dump(b"\xff\xff\xffnot postcard, at all");
        assert_eq!(
            dump,
            "    00000000  ff ff ff 6e 6f 74 20 70  6f 73 74 63 61 72 64 2c  |...not postcard,|\n\
             \x20   00000010  20 61 74 20 61 6c 6c                              | at all|\n"
        );
    }

    #[test]
    fn a_seq_range_never_overflows() {
        assert_eq!(seq_range(10, 3), "10..=12");
        assert_eq!(
            seq_range(u64::MAX, 2),
            format!("{}.. (overflows)", u64::MAX)
        );
        assert_eq!(seq_range(5, 0), "5 (no readings)");
    }
}
